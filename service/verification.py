"""Verifying a credential for a gateway: may it do this scope (on this app), now?

The hot path: a local format check (prefix, length, CRC32), one HMAC, one dictionary
look-up in the in-memory index, a few comparisons, and a note of the use in memory.
No I/O, no logging, no store access.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from projections.last_used import LastUsed
from projections.verification import (
    API_KEY,
    INSUFFICIENT_SCOPE,
    NOT_FOUND,
    PERSONAL_TOKEN,
    VALID,
    Credential,
    VerificationIndex,
)
from service import credentials

MALFORMED = "MALFORMED"

# What a refused credential is told (management API and forward-auth alike), by code.
REFUSALS = {
    MALFORMED: "The credential is malformed (wrong length or checksum); copy it again in full.",
    "UNAUTHENTICATED": "Unknown credential; check that it is complete and still exists.",
    "REVOKED": "This credential has been revoked; use another one.",
    "EXPIRED": "This credential has expired; use another one.",
}


class Verifier:
    __slots__ = ("_digest", "_check", "_clock", "_touch")

    def __init__(self, digester: credentials.Digester, index: VerificationIndex,
                 clock: Callable[[], datetime], last_used: LastUsed) -> None:
        self._digest = digester.digest
        self._check = index.check
        self._clock = clock
        self._touch = last_used.touch

    def verify(self, credential: str, scope: str | None = None, app_id: str | None = None
               ) -> tuple[str, str | None, Credential | None]:
        """(code, kind, entry): the verdict, the credential's kind if known, its entry if found."""
        kind = credentials.classify(credential)
        if kind == credentials.MALFORMED:
            return MALFORMED, None, None
        now = self._clock().timestamp()
        code, entry = self._check(self._digest(credential), scope, app_id, now)
        if entry is None:
            # ``kind`` is what the string looks like; one without a known prefix counts as
            # a legacy access token (unknown ones are NOT_FOUND).
            return NOT_FOUND, kind, None
        if code == VALID:
            if entry.kind == API_KEY:
                self._touch(entry.id, now)
            elif entry.kind == PERSONAL_TOKEN:
                # Personal tokens manage keys; they carry no API scopes.
                return INSUFFICIENT_SCOPE, entry.kind, entry
        return code, entry.kind, entry
