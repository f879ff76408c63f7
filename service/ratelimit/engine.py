"""GCRA (the generic cell rate algorithm) over one or more limit sets, and the interface its
counter stores keep.

Why GCRA: one number per limit (the theoretical arrival time, TAT) is the whole state, so a
check is one read and one write of a few floats under one lock (or one Redis script), it needs
no clean-up of windows, and the exact moment the next request would be admitted falls out of
the arithmetic: ``Retry-After`` is that moment, rounded up to the second. A limit of N per P
admits a burst of N, then one request every P/N: over any span d it admits at most N + d·N/P.

A verification of a limited key takes one unit from every limit of the key and of its app, or
from none: a refused request consumes nothing.
"""

from __future__ import annotations

import math
from hashlib import blake2b
from typing import Protocol

from service.domain.limits import period_seconds

RATE_LIMITED = "RATE_LIMITED"
MAX_LIMITS = 7  # TATs a counter record holds (service.domain.limits allows 5)


def lease_size(sets: tuple[LimitSet, ...]) -> tuple[int, float]:
    """How many units a process may take at once for ``sets``, and for how long it may spend
    them: 1 % of the smallest quota (at most 100; 1, no lease, under 200 a period), within 1 %
    of the shortest period (at most 0.1 s)."""
    units = min(min(s.quotas) for s in sets) // 100
    seconds = min(min(s.periods) for s in sets) / 100
    return (min(units, 100) if units >= 2 else 1), min(seconds, 0.1)


class LimitSet:
    """The limits of one key or of one app, compiled for the engine (immutable once built; a
    change of limits builds a new set, with new counters)."""

    __slots__ = ("id", "scope", "owner", "limits", "quotas", "periods", "intervals", "pairs", "padding", "names",
                 "policy", "offset", "redis_key", "redis_args", "alone")

    def __init__(self, scope: str, owner: str, limits: list[dict]) -> None:
        self.scope = scope  # "key" or "app"
        self.owner = owner
        self.limits = tuple((item["limit"], item["per"]) for item in limits)[:MAX_LIMITS]
        canonical = ",".join(f"{n}/{per}" for n, per in self.limits)
        digest = blake2b(f"{scope}:{owner}:{canonical}".encode(), digest_size=8).digest()
        self.id = int.from_bytes(digest, "little") or 1  # 0 marks a free slot
        self.quotas = tuple(n for n, _ in self.limits)
        self.periods = tuple(float(period_seconds(per)) for _, per in self.limits)
        self.intervals = tuple(p / n for p, (n, _) in zip(self.periods, self.limits, strict=True))
        self.pairs = tuple(zip(self.intervals, self.periods, strict=True))
        self.padding = (0.0,) * (MAX_LIMITS - len(self.limits))  # a record holds MAX_LIMITS TATs
        self.names = tuple(f"{scope}-{per}" for _, per in self.limits)
        self.policy = ", ".join(f'"{name}";q={n};w={int(p)}'
                                for name, n, p in zip(self.names, self.quotas, self.periods, strict=True))
        self.offset = -1  # its record in the local counters, once found
        self.redis_key = f"keyledger:rl:{digest.hex()}"
        self.redis_args = [str(len(self.limits))] + [f"{x!r}" for pair in self.pairs for x in pair]
        self.alone = (self,)  # the sets checked for a key (or app) whose app (or key) has no limits


class Decision:
    """The outcome of one check: admitted or not, and what the RateLimit headers say. An admitted
    check of the local counters works out the headers' figures only when they are asked for."""

    __slots__ = ("allowed", "retry_after", "sets", "_name", "_remaining", "_reset", "_tats", "_now")

    def __init__(self, allowed: bool, retry_after: int, name: str, remaining: int, reset: int,
                 sets: tuple[LimitSet, ...], tats: list | None = None, now: float = 0.0) -> None:
        self.allowed = allowed
        self.retry_after = retry_after  # whole seconds until a retry is admitted (0 when admitted)
        self.sets = sets
        self._name, self._remaining, self._reset = name, remaining, reset
        self._tats, self._now = tats, now  # the TATs after an admitted check (figures not yet worked out)

    def _figures(self) -> None:
        """The limit closest to refusing: requests it still admits, and seconds until it has its
        whole quota back."""
        best = None
        now = self._now
        for s, tats in zip(self.sets, self._tats, strict=True):
            for j, (interval, period) in enumerate(s.pairs):
                remaining = int((period - (tats[j] - now)) / interval + 1e-9)
                if best is None or remaining < best[1]:
                    best = (s.names[j], remaining, math.ceil(tats[j] - now - 1e-9))
        self._name, self._remaining, self._reset = best
        self._tats = None

    @property
    def name(self) -> str:  # the limit closest to refusing (the one that refused)
        if self._tats is not None:
            self._figures()
        return self._name

    @property
    def remaining(self) -> int:  # requests it still admits now
        if self._tats is not None:
            self._figures()
        return self._remaining

    @property
    def reset(self) -> int:  # seconds until it has its whole quota back (refused: retry_after)
        if self._tats is not None:
            self._figures()
        return self._reset

    def headers(self) -> list[tuple[str, str]]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers), and
        ``Retry-After`` when refused."""
        headers = [("RateLimit-Policy", ", ".join(s.policy for s in self.sets)),
                   ("RateLimit", f'"{self.name}";r={self.remaining};t={self.reset}')]
        if not self.allowed:
            headers.append(("Retry-After", str(self.retry_after)))
        return headers


def gcra(sets: tuple[LimitSet, ...], records: list, now: float, units: int = 1) -> Decision:
    """The decision for ``sets`` whose counter records are ``records`` (each the set's id, then
    its TATs), taking ``units`` at once. When admitted, ``decision._tats`` holds each set's new
    TATs, to be written back."""
    wait = 0.0
    refused = ""
    for s, record in zip(sets, records, strict=True):
        j = 1
        for interval, period in s.pairs:
            tat = record[j]
            if tat < now:
                tat = now
            later = tat + interval * units - period - now  # > 0: admitted only that much later
            if later > wait:
                wait, refused = later, s.names[j - 1]
            j += 1
    if wait > 1e-9:
        retry = math.ceil(wait - 1e-9)
        return Decision(False, retry, refused, 0, retry, sets)
    written = []
    for s, record in zip(sets, records, strict=True):
        j = 1
        tats = []
        for interval, _ in s.pairs:
            tat = record[j]
            tats.append((tat if tat > now else now) + interval * units)
            j += 1
        written.append(tats)
    return Decision(True, 0, "", 0, 0, sets, written, now)


class Counters(Protocol):
    def take(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        """One unit from every limit of ``sets``, or none; atomically across the processes sharing it."""


class Limiter:
    """What a verdict asks: the limits of a key and of its app (from ``book``), checked against
    ``counters``. ``active`` is False while no key and no app has limits: then nothing is asked."""

    __slots__ = ("book", "counters")

    def __init__(self, book, counters: Counters) -> None:  # noqa: ANN001 - projections.limits.LimitBook
        self.book = book
        self.counters = counters

    @property
    def active(self) -> bool:
        return self.book.active

    def check(self, key_id: bytes, entry, now: float) -> Decision | None:  # noqa: ANN001
        """The decision for the key ``key_id`` whose index entry is ``entry`` (its ``app_id`` is read
        only when some app has limits); None when neither the key nor its app has limits."""
        book = self.book
        key_set = book.keys.get(key_id)
        app_set = book.apps.get(entry.app_id) if book.apps else None
        if key_set is None and app_set is None:
            return None
        return self.take(key_set, app_set, now)

    def take(self, key_set: LimitSet | None, app_set: LimitSet | None, now: float) -> Decision:
        """One unit from the key's limits and its app's (at least one of them set), or none."""
        if key_set is None:
            return self.counters.take(app_set.alone, now)
        return self.counters.take(key_set.alone if app_set is None else (key_set, app_set), now)
