"""Verifying a credential for a gateway: may it do this scope (on this app), now?

The hot path: one HMAC, one dictionary look-up in the in-memory index, a few comparisons, and a
note of the use in memory. No I/O, no logging, no store access. A known credential needs no check
of its shape: it is an issued secret, and every issued secret is well-formed. Only a credential the
index does not know is classified: a key or token of the wrong length, with a character outside
base62 or a wrong checksum (CRC32) is ``MALFORMED`` rather than ``NOT_FOUND``. A string longer than
any credential (``LONGEST_CREDENTIAL``) gets no HMAC at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from projections.last_used import LastUsed
from projections.usage import Usage
from projections.verification import (
    _KEY_RECORD_SIZE,
    API_KEY,
    APP_MISMATCH,
    DIGEST_BYTES,
    EXPIRED,
    GRANTS,
    INSUFFICIENT_SCOPE,
    KEY_ID_BYTES,
    NOT_FOUND,
    PERSONAL_TOKEN,
    REVOKED,
    VALID,
    AccessTokenEntry,
    Credential,
    KeyEntry,
    KeyRecord,
    TokenEntry,
    VerificationIndex,
    _unpack_ends,
    _unpack_head,
    verdict,
)
from service import credentials
from service.credentials import LONGEST_CREDENTIAL
from service.domain.actors import RequestInfo
from service.domain.restrictions import NO_FACTS, Facts
from service.domain.restrictions import REFUSALS as RESTRICTION_REFUSALS
from service.ratelimit import RATE_LIMITED, Decision, Limiter

log = logging.getLogger("keyledger.verification")

# record_use(client's UUID bytes, token display hint, time of use, the request) writes the
# LegacyTokenUsed event of that time's window (or finds it written); it raises if it cannot.
RecordUse = Callable[[bytes, str, float, RequestInfo], None]
RETRY_RECORD_AFTER = 1.0  # seconds before a failed record of a legacy use is tried again

MALFORMED = "MALFORMED"

# What a refused credential is told (management API and forward-auth alike), by code.
REFUSALS = {
    MALFORMED: "The credential is malformed (wrong length or checksum); copy it again in full.",
    "UNAUTHENTICATED": "Unknown credential; check that it is complete and still exists.",
    "REVOKED": "This credential has been revoked; use another one.",
    "EXPIRED": "This credential has expired; use another one.",
    "LEGACY_TOKEN_SUNSET": "Access tokens stopped working at the sunset; send an API key as "
                           "'Authorization: Key <api key>' instead.",
    RATE_LIMITED: "This key (or its app) is over its rate limit; retry after the number of seconds in "
                  "Retry-After.",
    **RESTRICTION_REFUSALS,  # ORIGIN_NOT_ALLOWED, IP_NOT_ALLOWED, APP_NOT_ALLOWED
}


def epoch_now() -> float:
    """The real time as epoch seconds, without a datetime: ``time.time()``, looked up at each call
    (so a test that freezes time freezes it here too)."""
    return time.time()


class Verifier:
    """Verdicts for gateways. ``now`` gives the time as epoch seconds (``epoch_now`` when the
    clock is the real one: no datetime per call)."""

    __slots__ = ("_digest", "_index", "_now", "_touch", "_last_used", "_count_legacy", "_record_use", "_window", "limiter",
                 "_valid", "_refused")

    def __init__(self, digester: credentials.Digester, index: VerificationIndex,
                 clock: Callable[[], datetime], last_used: LastUsed,
                 record_use: RecordUse | None = None, legacy_window: float = 3600.0,
                 now: Callable[[], float] | None = None, usage: Usage | None = None) -> None:
        self._digest = digester.digest
        self._index = index
        self._now = now if now is not None else lambda: clock().timestamp()
        self._touch = last_used.touch
        self._last_used = last_used
        self._count_legacy = last_used.count_legacy
        self._record_use = record_use
        self._window = legacy_window
        self.limiter: Limiter | None = None  # rate limits (service.ratelimit), set by the composition root
        # Usage per key (projections.usage): one count in memory per verdict that names a key.
        self._valid = usage.valid if usage is not None else _uncounted
        self._refused = usage.refused if usage is not None else _uncounted

    def verify(self, credential: str, scope: str | None = None, app_id: str | None = None,
               request: Callable[[], RequestInfo] | None = None, facts: Facts = NO_FACTS,
               ) -> tuple[str, str | None, Credential | None]:
        """(code, kind, entry): the verdict, the credential's kind if known, its entry if found.
        ``request`` gives the facts of the request, should a legacy token's use be recorded;
        ``facts`` (or a function giving them) what a restricted key is judged by."""
        # One HMAC and one look-up first: a hit is an issued secret, well-formed by construction, so
        # its shape needs no check. Only a miss is classified (prefix, length, base62, checksum).
        # A string longer than any credential could be is a miss without an HMAC.
        entry = (self._index.by_digest.get(self._digest(credential)[:DIGEST_BYTES])
                 if len(credential) <= LONGEST_CREDENTIAL else None)
        if entry is None:
            # Unknown: is it even well-formed? A wrong length or checksum is MALFORMED; else
            # ``kind`` is what the string looks like (one without a known prefix counts as a
            # legacy access token).
            kind = credentials.classify(credential)
            return (MALFORMED, None, None) if kind == credentials.MALFORMED else (NOT_FOUND, kind, None)
        # Found: the digest of an issued secret, which was well-formed when it was issued, so the
        # checksum needs no checking (the verdict is the same, for a third of the cost).
        now = self._now()
        if type(entry) is KeyRecord:
            # The common case, with ``verdict``'s first branch written out here: a call less on the
            # hot path (``tests/unit/test_verifier_shapes.py`` holds the two to the same answers).
            if len(entry) != _KEY_RECORD_SIZE and now >= _unpack_ends(entry, _KEY_RECORD_SIZE)[0]:
                code = REVOKED
            else:
                expires_at, number = _unpack_head(entry)
                grant = GRANTS[number]
                if now >= expires_at:  # inf when it never expires
                    code = EXPIRED
                elif app_id is not None and grant.app_id != app_id:
                    code = APP_MISMATCH
                elif scope is not None and not grant.everything and scope not in grant.scopes:
                    code = INSUFFICIENT_SCOPE
                elif grant.restriction is not None:  # the client restriction: only keys that carry one
                    code = grant.restriction.refusal(facts() if callable(facts) else facts) or VALID
                else:
                    code = VALID
            if code != VALID:
                self._refused(entry, code, now)
                return code, API_KEY, entry
            # The use, noted in LastUsed's pending dict (its ``touch``, written out: a call less);
            # the record holds its UUID, so no slice here (LastUsed reads it at its flush).
            self._last_used.pending[entry] = now
            if (limiter := self.limiter) is not None and (book := limiter.book).active:  # someone has limits
                # ``Limiter.check`` written out: most keys have no limits of their own, nor their app.
                key_set = book.keys.get(entry[KEY_ID_BYTES])
                app_set = book.apps.get(grant.app_id) if book.apps else None
                if key_set is None:  # ``Limiter.take`` written out: the counters asked at once
                    decision = None if app_set is None else limiter.counters.take(app_set.alone, now)
                else:
                    decision = limiter.counters.take(key_set.alone if app_set is None else (key_set, app_set), now)
                if decision is not None:
                    if decision.allowed:
                        self._valid(entry, now)
                        return VALID, API_KEY, Limited(entry, decision)
                    self._refused(entry, RATE_LIMITED, now)
                    return RATE_LIMITED, API_KEY, Limited(entry, decision)
            self._valid(entry, now)
            return VALID, API_KEY, entry
        code = verdict(entry, scope, app_id, now, facts)
        if code != VALID:
            if type(entry) is KeyEntry:
                self._refused(entry.id, code, now)
            return code, entry.kind, entry
        if type(entry) is KeyEntry:
            self._touch(entry.id, now)
            if (limiter := self.limiter) is not None and limiter.book.active:
                decision = limiter.check(entry.id, entry, now)
                if decision is not None:
                    if decision.allowed:
                        self._valid(entry.id, now)
                        return VALID, API_KEY, Limited(entry, decision)
                    self._refused(entry.id, RATE_LIMITED, now)
                    return RATE_LIMITED, API_KEY, Limited(entry, decision)
            self._valid(entry.id, now)
            return VALID, API_KEY, entry
        if type(entry) is TokenEntry:
            # Personal tokens manage keys; they carry no API scopes.
            return INSUFFICIENT_SCOPE, PERSONAL_TOKEN, entry
        self._legacy_use(entry, credential, now, request)
        return VALID, entry.kind, entry

    def introspect(self, credential: str, request: Callable[[], RequestInfo] | None = None,
                   ) -> tuple[str, Credential | None]:
        """(code, entry): the verdict on a token alone, for RFC 7662 introspection. The same index and
        rules as ``verify`` with no scope, no app and no request facts (so a key with a client
        restriction is refused, as forward-auth refuses it without the facts). It is a use of the
        credential (a key's last use, a legacy token's recorded use), but a question, not a request:
        nothing is counted against a rate limit or in the key's usage. A personal token is
        ``INSUFFICIENT_SCOPE``: it carries no API scopes."""
        # As in ``verify``: the look-up first (a hit is well-formed by construction); a miss is
        # inactive whatever its shape, so it needs no classifying at all.
        if len(credential) > LONGEST_CREDENTIAL:
            return MALFORMED, None
        entry = self._index.by_digest.get(self._digest(credential)[:DIGEST_BYTES])
        if entry is None:
            return NOT_FOUND, None
        now = self._now()
        code = verdict(entry, None, None, now, NO_FACTS)
        if code != VALID:
            return code, entry
        kind = type(entry)
        if kind is KeyRecord:
            self._touch(entry, now)
        elif kind is KeyEntry:
            self._touch(entry.id, now)
        elif kind is TokenEntry:
            return INSUFFICIENT_SCOPE, entry
        else:
            self._legacy_use(entry, credential, now, request)
        return VALID, entry

    def _legacy_use(self, entry: AccessTokenEntry, token: str, now: float,
                    request: Callable[[], RequestInfo] | None) -> None:
        """Count the use; the first in its window (in any process) is recorded as an event
        before the answer goes out."""
        client = entry.client
        window_start = now - now % self._window
        self._count_legacy(client.id, window_start, now)
        if now < client.recorded_until or now < client.retry_at or self._record_use is None:
            return
        try:
            self._record_use(client.id, credentials.display_hint(token), now,
                             request() if request is not None else RequestInfo())
        except Exception:  # the store is unavailable: answer, and try again shortly
            client.retry_at = now + RETRY_RECORD_AFTER
            log.warning("could not record a legacy token use of client %s; retrying in %.0f s",
                        client.client_id, RETRY_RECORD_AFTER, exc_info=True)
            return
        client.recorded_until = window_start + self._window


def _uncounted(*_args: object) -> None:
    """Usage not counted (a verifier built without a ``Usage``)."""


class Limited(Credential):
    """A limited key's entry in a verdict: the key's own entry and the rate-limit decision."""

    __slots__ = ("entry", "decision")
    kind = API_KEY
    role = None

    def __init__(self, entry: Credential, decision: Decision) -> None:
        self.entry = entry
        self.decision = decision

    @property
    def id(self) -> bytes:  # type: ignore[override]
        return self.entry.id

    @property
    def app_id(self) -> str | None:  # type: ignore[override]
        return self.entry.app_id

    @property
    def scopes(self) -> frozenset:  # type: ignore[override]
        return self.entry.scopes

    @property
    def expires_at(self) -> float | None:  # type: ignore[override]
        return self.entry.expires_at

    @property
    def ends_at(self) -> float | None:  # type: ignore[override]
        return self.entry.ends_at
