"""The console's session: one signed cookie, and the sessions signed out on the server side.

The cookie holds a random nonce (the CSRF token is derived from it), an expiry and, once
signed in, the keyed digest of the personal token the session was opened with — never the
token. Each request looks the digest up in the verification index like any credential, so a
replaced or revoked personal token ends its console sessions at once, on every instance.
The cookie is signed with a key derived from the pepper, which every instance shares.
Signing out records the session's id (a keyed digest of its nonce) in the shared view store
(``projections.console_sessions``): any copy of the cookie then stops working, on every instance.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "keyledger_console"  # the signed-in session
# Before signing in: a session without a token, for the sign-in form's CSRF token. A cookie of its
# own, so a visit that arrives without the session cookie (SameSite=Strict: a link from another
# site) never overwrites the signed-in session.
PRE_COOKIE = "keyledger_console_pre"
LIFETIME_SECONDS = 8 * 3600  # a working day; then sign in again
_NONCE_BYTES = 18


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    digest: bytes | None = None  # the personal token's keyed digest, once signed in

    @property
    def signed_in(self) -> bool:
        return self.digest is not None


class Sessions:
    """Makes, signs and reads console sessions; derives their CSRF tokens."""

    def __init__(self, key: bytes, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self._key = key
        self._clock = clock

    def new(self, digest: bytes | None = None) -> Session:
        """A fresh session (a new nonce: signing in never keeps the anonymous session's)."""
        return Session(nonce=_b64(secrets.token_bytes(_NONCE_BYTES)),
                       expires=int(self._clock()) + LIFETIME_SECONDS, digest=digest)

    def dump(self, session: Session) -> str:
        payload = {"n": session.nonce, "e": session.expires}
        if session.digest is not None:
            payload["d"] = _b64(session.digest)
        body = _b64(json.dumps(payload, separators=(",", ":")).encode("ascii"))
        return f"{body}.{self._sign(body)}"

    def load(self, value: str | None) -> Session | None:
        """The session in a cookie value; None if absent, altered, malformed or expired."""
        if not value or len(value) > 512 or value.count(".") != 1:
            return None
        body, signature = value.split(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = json.loads(_unb64(body))
            nonce, expires = payload["n"], payload["e"]
            digest = _unb64(payload["d"]) if "d" in payload else None
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(nonce, str) or not isinstance(expires, int) or expires <= self._clock():
            return None
        return Session(nonce=nonce, expires=expires, digest=digest)

    def session_id(self, session: Session) -> str:
        """The id a signed-out session is recorded under (not the nonce, which the CSRF token
        derives from)."""
        return _b64(hmac.new(self._key, b"id|" + session.nonce.encode("ascii"), hashlib.sha256).digest())

    def now(self) -> float:
        return self._clock()

    def csrf_token(self, session: Session) -> str:
        return _b64(hmac.new(self._key, b"csrf|" + session.nonce.encode("ascii"), hashlib.sha256).digest())

    def csrf_ok(self, session: Session, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(offered.encode("utf-8", "replace"),
                                                     self.csrf_token(session).encode("ascii"))

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, b"session|" + body.encode("ascii"), hashlib.sha256).digest())
