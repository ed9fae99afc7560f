"""Logging in to the upstream PostgreSQL with the held credential, sans-IO.

Feed each Authentication request from the server to ``respond``; it returns the
bytes to send back (or b"" when nothing is due). SCRAM-SHA-256 (via scramp) and
md5 are supported; cleartext is refused unless the connection is encrypted, so a
misconfigured upstream cannot make us send the held password in the clear.

Whatever the upstream sends, ``respond`` raises only ``UpstreamAuthError`` (or the
codec's ``ProtocolError`` for bytes that are not the protocol). The SCRAM step costs
one PBKDF2 of the upstream's chosen iteration count, so the count is capped and the
I/O side runs ``respond`` for that step in a worker thread (``is_expensive``).
"""
from __future__ import annotations

import hashlib

import scramp

from broker.pg import codec
from jitgate.settings import PG_MAX_SCRAM_ITERATIONS


class UpstreamAuthError(Exception):
    pass


DEFAULT_MAX_SCRAM_ITERATIONS = PG_MAX_SCRAM_ITERATIONS  # why this number: jitgate/settings.py


def is_expensive(auth: codec.Authentication) -> bool:
    """The step that hashes the password (SCRAM server-first): run it off the event loop."""
    return auth.code == codec.AUTH_SASL_CONTINUE


class UpstreamLogin:
    def __init__(self, user: str, password: str, *, encrypted: bool,
                 max_scram_iterations: int = DEFAULT_MAX_SCRAM_ITERATIONS):
        self.user = user
        self.max_scram_iterations = max_scram_iterations
        self._password = password
        self._encrypted = encrypted
        self._scram: scramp.ScramClient | None = None
        self.done = False

    def respond(self, auth: codec.Authentication) -> bytes:
        if auth.code == codec.AUTH_OK:
            self.done = True
            return b""
        if auth.code == codec.AUTH_MD5:
            if len(auth.data) != 4:
                raise UpstreamAuthError("malformed md5 salt from upstream")
            inner = hashlib.md5((self._password + self.user).encode()).hexdigest()
            return codec.build_password("md5" + hashlib.md5(inner.encode() + auth.data).hexdigest())
        if auth.code == codec.AUTH_CLEARTEXT:
            if not self._encrypted:
                raise UpstreamAuthError(
                    "the upstream asks for a cleartext password over an unencrypted connection; "
                    "set the target's tls to 'require' or switch the upstream to scram-sha-256"
                )
            return codec.build_password(self._password)
        if auth.code == codec.AUTH_SASL:
            if "SCRAM-SHA-256" not in auth.mechanisms:
                offered = ", ".join(m[:40] for m in auth.mechanisms[:5]) or "none"
                raise UpstreamAuthError(f"upstream offers SASL mechanisms {offered}; only SCRAM-SHA-256 is supported")
            self._scram = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self._password)
            return codec.build_sasl_initial("SCRAM-SHA-256", self._scram.get_client_first().encode())
        if auth.code == codec.AUTH_SASL_CONTINUE and self._scram:
            try:
                self._scram.set_server_first(auth.text())
                iterations = int(self._scram.iterations)
                if iterations > self.max_scram_iterations:
                    raise UpstreamAuthError(
                        f"the upstream asks for {iterations} SCRAM iterations; the gateway refuses more than "
                        f"{self.max_scram_iterations} (setting JITGATE_PG_MAX_SCRAM_ITERATIONS; or lower the "
                        "target's scram_iterations and reset the password)"
                    )
                return codec.build_sasl_response(self._scram.get_client_final().encode())
            except scramp.ScramException as exc:
                raise UpstreamAuthError(f"SCRAM exchange failed: {exc}") from None
        if auth.code == codec.AUTH_SASL_FINAL and self._scram:
            try:
                self._scram.set_server_final(auth.text())
            except scramp.ScramException:
                raise UpstreamAuthError("the upstream's SCRAM signature does not verify (is it the real server?)") from None
            return b""
        raise UpstreamAuthError(f"unsupported upstream authentication method (code {auth.code})")
