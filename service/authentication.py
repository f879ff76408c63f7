"""Who is calling: a credential from an ``Authorization`` header becomes an ``Actor``.

No I/O: the credential's format is checked locally, then its digest is looked up in
the in-memory verification index.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from projections.verification import (
    EXPIRED,
    NOT_FOUND,
    PERSONAL_TOKEN,
    REVOKED,
    VerificationIndex,
)
from service import credentials
from service.domain.actors import Actor
from service.domain.errors import CredentialRefused, Unauthenticated
from service.verification import MALFORMED, REFUSALS


class Authenticator:
    def __init__(self, digester: credentials.Digester, index: VerificationIndex,
                 clock: Callable[[], datetime]) -> None:
        self.digester = digester
        self.index = index
        self.clock = clock

    def actor(self, authorization: str | None) -> Actor:
        if not authorization:
            raise Unauthenticated("Send a personal token as 'Authorization: Key pat_…'.")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "key" or not credential:
            raise Unauthenticated("Use the 'Authorization: Key <token>' scheme with a personal token.")
        kind = credentials.classify(credential)
        if kind == credentials.MALFORMED:
            raise CredentialRefused(MALFORMED, REFUSALS[MALFORMED])
        if kind == credentials.ACCESS_TOKEN:
            raise Unauthenticated("Unknown credential; send a personal token (pat_…).")
        return self.actor_of_digest(self.digester.digest(credential))

    def actor_of_digest(self, digest: bytes) -> Actor:
        """The caller whose credential has this keyed digest (the web console's session keeps
        the digest of the personal token it was opened with, never the token)."""
        code, entry = self.index.check(digest, None, None, self.clock().timestamp())
        if code == NOT_FOUND or entry is None:
            raise Unauthenticated("Unknown credential; send a valid personal token (pat_…).")
        if code in (REVOKED, EXPIRED):
            raise CredentialRefused(code, REFUSALS[code])
        if entry.kind == PERSONAL_TOKEN:
            return Actor(kind="account", id=entry.key_id, role=entry.role)
        return Actor(kind="key", id=entry.key_id, app_id=entry.app_id)
