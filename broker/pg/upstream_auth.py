"""Logging in to the upstream PostgreSQL with the held credential, sans-IO.

Feed each Authentication request from the server to ``respond``; it returns the
bytes to send back (or b"" when nothing is due). SCRAM-SHA-256 (via scramp) and
md5 are supported; cleartext is refused unless the connection is encrypted, so a
misconfigured upstream cannot make us send the held password in the clear.
"""
from __future__ import annotations

import hashlib

import scramp

from broker.pg import codec


class UpstreamAuthError(Exception):
    pass


class UpstreamLogin:
    def __init__(self, user: str, password: str, *, encrypted: bool):
        self.user = user
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
                raise UpstreamAuthError(f"upstream offers SASL mechanisms {auth.mechanisms}; only SCRAM-SHA-256 is supported")
            self._scram = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self._password)
            return codec.build_sasl_initial("SCRAM-SHA-256", self._scram.get_client_first().encode())
        if auth.code == codec.AUTH_SASL_CONTINUE and self._scram:
            try:
                self._scram.set_server_first(auth.data.decode())
            except scramp.ScramException as exc:
                raise UpstreamAuthError(f"SCRAM exchange failed: {exc}") from None
            return codec.build_sasl_response(self._scram.get_client_final().encode())
        if auth.code == codec.AUTH_SASL_FINAL and self._scram:
            try:
                self._scram.set_server_final(auth.data.decode())
            except scramp.ScramException:
                raise UpstreamAuthError("the upstream's SCRAM signature does not verify (is it the real server?)") from None
            return b""
        raise UpstreamAuthError(f"unsupported upstream authentication method (code {auth.code})")
