"""Builds the compiled row masking core (jitgate/masking/_rowcore.c); everything else is in pyproject.toml.

The extension is optional: when it cannot be built (no compiler, no Python headers) pip still
installs the package, and the broker logs that it masks with the pure-Python reference
(jitgate/masking/rows.py): the same bytes, several times slower. With libcrypto's headers
(libssl-dev) its HMAC uses OpenSSL's SHA-256 (the CPU's SHA instructions); without, a
portable SHA-256 in the same file.
"""
import hashlib
import os
import sysconfig

from setuptools import Extension, setup

_OPENSSL = any(os.path.exists(os.path.join(d, "openssl", "sha.h"))
               for d in ("/usr/include", "/usr/local/include", sysconfig.get_paths()["include"]))



def _source_hash(path: str) -> tuple[str, str]:
    # jitgate.native refuses a build whose hash differs from the source beside it (a stale build).
    with open(path, "rb") as fh:
        return ("SOURCE_SHA256", '"%s"' % hashlib.sha256(fh.read()).hexdigest())


setup(ext_modules=[Extension(
    "jitgate.masking._rowcore", ["jitgate/masking/_rowcore.c"],
    define_macros=[_source_hash("jitgate/masking/_rowcore.c")] + ([("JITGATE_OPENSSL", "1")] if _OPENSSL else []),
    libraries=["crypto"] if _OPENSSL else [],
    extra_compile_args=["-O2"],
    optional=True,
), Extension(
    # The PostgreSQL relay's message framing (reference: broker/pg/codec.py), same terms.
    "broker.pg._framing", ["broker/pg/_framing.c"],
    define_macros=[_source_hash("broker/pg/_framing.c")],
    extra_compile_args=["-O2"],
    optional=True,
)])
