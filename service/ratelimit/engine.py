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


class LimitSet:
    """The limits of one key or of one app, compiled for the engine (immutable once built; a
    change of limits builds a new set, with new counters)."""

    __slots__ = ("id", "scope", "owner", "limits", "quotas", "periods", "intervals", "names", "policy",
                 "offset", "redis_key", "redis_args")

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
        self.names = tuple(f"{scope}-{per}" for _, per in self.limits)
        self.policy = ", ".join(f'"{name}";q={n};w={int(p)}'
                                for name, n, p in zip(self.names, self.quotas, self.periods, strict=True))
        self.offset = -1  # its record in the local counters, once found
        self.redis_key = f"keyledger:rl:{digest.hex()}"
        self.redis_args = [str(len(self.limits))] + [f"{x!r}" for pair in zip(
            self.intervals, self.periods, strict=True) for x in pair]


class Decision:
    """The outcome of one check: admitted or not, and what the RateLimit headers say."""

    __slots__ = ("allowed", "retry_after", "name", "remaining", "reset", "sets")

    def __init__(self, allowed: bool, retry_after: int, name: str, remaining: int, reset: int,
                 sets: tuple[LimitSet, ...]) -> None:
        self.allowed = allowed
        self.retry_after = retry_after  # whole seconds until a retry is admitted (0 when admitted)
        self.name = name  # the limit closest to refusing (the one that refused)
        self.remaining = remaining  # requests it still admits now
        self.reset = reset  # seconds until it has its whole quota back (refused: retry_after)
        self.sets = sets

    def headers(self) -> list[tuple[str, str]]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers), and
        ``Retry-After`` when refused."""
        headers = [("RateLimit-Policy", ", ".join(s.policy for s in self.sets)),
                   ("RateLimit", f'"{self.name}";r={self.remaining};t={self.reset}')]
        if not self.allowed:
            headers.append(("Retry-After", str(self.retry_after)))
        return headers


def gcra(sets: tuple[LimitSet, ...], states: list[list[float]], now: float) -> tuple[Decision, bool]:
    """The decision for ``sets`` whose TATs are ``states`` (one list per set, changed in place
    when admitted). Returns (decision, changed)."""
    wait = 0.0
    refused_name = ""
    for s, tats in zip(sets, states, strict=True):
        for j, interval in enumerate(s.intervals):
            tat = tats[j] if tats[j] > now else now
            later = tat + interval - s.periods[j] - now  # > 0: admitted only that much later
            if later > wait:
                wait, refused_name = later, s.names[j]
    if wait > 1e-9:
        retry = math.ceil(wait - 1e-9)
        return Decision(False, retry, refused_name, 0, retry, sets), False
    best_name, best_remaining, best_reset = "", -1, 0
    for s, tats in zip(sets, states, strict=True):
        for j, interval in enumerate(s.intervals):
            tat = (tats[j] if tats[j] > now else now) + interval
            tats[j] = tat
            remaining = int((s.periods[j] - (tat - now)) / interval + 1e-9)
            if best_remaining < 0 or remaining < best_remaining:
                best_name, best_remaining, best_reset = s.names[j], remaining, math.ceil(tat - now - 1e-9)
    return Decision(True, 0, best_name, best_remaining, best_reset, sets), True


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

    def check(self, key_id: bytes, app_id: str, now: float) -> Decision | None:
        """None when neither the key nor its app has limits."""
        key_set = self.book.keys.get(key_id)
        app_set = self.book.apps.get(app_id)
        if key_set is None:
            if app_set is None:
                return None
            return self.counters.take((app_set,), now)
        return self.counters.take((key_set,) if app_set is None else (key_set, app_set), now)
