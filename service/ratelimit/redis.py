"""Counters in Redis (or Valkey), shared by every instance: one Lua script per check, or per lease.

The script runs GCRA (``engine.gcra``, the same arithmetic) on Redis's own clock (``TIME``), so
instances whose clocks differ still count as one. While Redis cannot be reached the check is
answered from the instance's local counters (``local.LocalCounters``): a warning is logged once
per outage, ``on_fallback`` is called for every check answered that way (a metric), and Redis is
tried again once a second (a single check waits for it, never longer than the socket timeouts);
when it answers again, counting is shared again (logged once).

Leases, as the local counters take them (``engine.lease_size``): for a large limit a process takes
up to 1 % of its quota in one script call (at most 100 units; none under 200 a period: those are
counted one by one, as before), and admits that many without a round trip within 1 % of the
shortest period (at most 0.1 s) by its own clock. The script advances the TATs by the units it
hands out; if the whole lease does not fit it hands out as many as fit, down to one, and when not
even one fits it refuses with the exact wait, as without leases: a refusal (and its Retry-After)
always comes from Redis. What a lease did not spend is given back in the next script call of that
process for the same limits (the TATs moved back by as many intervals, never before Redis's now).
Nothing is admitted that Redis did not hand out, so the limits hold across instances as without
leases (never over); what is under-admitted is at most the unspent leases, each until its process's
next take (units given back by a script call that fails are not given back: under, never over).
The RateLimit figures of an admission under a lease are those of the lease's take. A lease is this
process's, shared by its threads under one lock held for a few operations, never across a round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.ratelimit.engine import Decision, LimitSet, lease_size

log = logging.getLogger("keyledger.ratelimit")

RETRY_EVERY = 1.0  # seconds between attempts to reach Redis again
CONNECT_TIMEOUT = 0.1
SOCKET_TIMEOUT = 0.25
MAX_LEASES = 10_000  # limit sets with a lease kept at once (beyond: forgotten, their unspent units with them)

# KEYS: one hash per limit set (field i: the TAT of limit i). ARGV: the units wanted (a lease's, or 1),
# the units given back (the last lease's unspent ones), then per set the number of limits and
# (interval, period) per limit. Returns {admitted 0|1, wait (µs) or remaining, the limit's index
# across every set, reset (µs), the units handed out}.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local want = tonumber(ARGV[1])
local give = tonumber(ARGV[2])
local states = {}
local arg = 3
local wait, worst = 0, 0
local fit = want
local n = 0
for k = 1, #KEYS do
  local count = tonumber(ARGV[arg]); arg = arg + 1
  local fields = {}
  for j = 1, count do fields[j] = tostring(j) end
  local tats = redis.call('HMGET', KEYS[k], unpack(fields))
  local set = {}
  for j = 1, count do
    local interval = tonumber(ARGV[arg]); local period = tonumber(ARGV[arg + 1]); arg = arg + 2
    local tat = (tonumber(tats[j]) or 0) - give * interval
    if tat < now then tat = now end
    n = n + 1
    local later = tat + interval - period - now
    if later > wait then wait = later; worst = n end
    local room = math.floor((period - (tat - now) + 1e-9) / interval)
    if room < fit then fit = room end
    set[j] = {tat, interval, period}
  end
  states[k] = set
end
local function store(units)
  for k = 1, #KEYS do
    local set = states[k]
    local args = {}
    local longest = 0
    for j = 1, #set do
      local tat = set[j][1] + set[j][2] * units
      set[j][1] = tat
      args[#args + 1] = tostring(j)
      args[#args + 1] = string.format('%.17g', tat)
      if tat - now > longest then longest = tat - now end
    end
    redis.call('HSET', KEYS[k], unpack(args))
    redis.call('PEXPIRE', KEYS[k], math.ceil(longest * 1000) + 1000)
  end
end
if wait > 1e-9 then
  if give > 0 then store(0) end
  return {0, math.floor(wait * 1000000 + 0.5), worst, 0, 0}
end
if fit < 1 then fit = 1 end
store(fit)
local best, best_remaining, best_reset = 0, -1, 0
n = 0
for k = 1, #KEYS do
  local set = states[k]
  for j = 1, #set do
    local tat = set[j][1]
    n = n + 1
    local remaining = math.floor((set[j][3] - (tat - now)) / set[j][2] + 1e-9)
    if best_remaining < 0 or remaining < best_remaining then
      best, best_remaining, best_reset = n, remaining, tat - now
    end
  end
end
return {1, best_remaining, best, math.floor(best_reset * 1000000 + 0.5), fit}
"""


class Lease:
    """Units handed out by Redis for one tuple of limit sets, spent by this process's threads."""

    __slots__ = ("left", "until", "decision", "owed")

    def __init__(self) -> None:
        self.left = 0  # units still to spend
        self.until = 0.0  # spent only before then (the caller's clock)
        self.decision: Decision | None = None  # the lease's take: what each of its admissions answers
        self.owed = 0  # units of a lease replaced before it was spent, to be given back too


class RedisCounters:
    """GCRA counters in Redis; ``fallback`` answers while Redis is unreachable."""

    def __init__(self, url: str, fallback, on_fallback: Callable[[], None] | None = None) -> None:  # noqa: ANN001
        import redis  # only a deployment that sets KEYLEDGER_REDIS_URL needs the client
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.fallback = fallback
        self.on_fallback = on_fallback
        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT,
                                           socket_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0),
                                           health_check_interval=0)
        self._script = self.client.register_script(SCRIPT)
        self._down_since: float | None = None  # monotonic time Redis was found unreachable
        self._retry_at = 0.0
        self._probing = threading.Lock()
        self._leases: dict[tuple[LimitSet, ...], Lease] = {}
        self._leasing = threading.Lock()  # guards every lease's fields (held for a few operations)

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def take(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        give = 0
        lease = self._leases.get(sets)
        if lease is not None:
            with self._leasing:
                if lease.left > 0 and now < lease.until:
                    lease.left -= 1
                    return lease.decision
                give = lease.left + lease.owed  # unspent: given back by the next script call
                lease.left = lease.owed = 0
        if self._down_since is not None:
            # One check at a time tries Redis again, once a second; the others count locally.
            if time.monotonic() < self._retry_at or not self._probing.acquire(blocking=False):
                return self._local(sets, now)
            try:
                self._retry_at = time.monotonic() + RETRY_EVERY
                return self._shared(sets, now, give)
            finally:
                self._probing.release()
        return self._shared(sets, now, give)

    def _shared(self, sets: tuple[LimitSet, ...], now: float, give: int = 0) -> Decision:
        units, seconds = lease_size(sets)
        args: list[str] = [str(units), str(give)]
        for s in sets:
            args += s.redis_args
        try:
            admitted, value, which, reset, taken = self._script(keys=[s.redis_key for s in sets], args=args)
        except self._errors as error:
            # What was to be given back is not (the script may have run): under-admission, never over.
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._retry_at = self._down_since + RETRY_EVERY
                log.warning("Redis at %s cannot be reached (%s); rate limits are counted by this instance "
                            "alone until it answers again", _redacted(self.url), type(error).__name__)
            return self._local(sets, now)
        if self._down_since is not None:
            log.warning("Redis at %s answers again after %.1f s; rate limits are shared again",
                        _redacted(self.url), time.monotonic() - self._down_since)
            self._down_since = None
        name = _name(sets, which)
        if not admitted:
            retry = _seconds(value)
            return Decision(False, retry, name, 0, retry, sets)
        decision = Decision(True, 0, name, int(value), _seconds(reset), sets)
        if taken > 1:
            self._lease(sets, int(taken) - 1, now + seconds, decision)
        return decision

    def _lease(self, sets: tuple[LimitSet, ...], units: int, until: float, decision: Decision) -> None:
        with self._leasing:
            lease = self._leases.get(sets)
            if lease is None:
                if len(self._leases) >= MAX_LEASES:  # limits changed many times: forget the old sets'
                    self._leases.clear()
                lease = self._leases[sets] = Lease()
            lease.owed += lease.left  # another thread's lease, taken meanwhile: given back later
            lease.left, lease.until, lease.decision = units, until, decision

    def _local(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        if self.on_fallback is not None:
            self.on_fallback()
        return self.fallback.take(sets, now)


def _seconds(micros: int) -> int:
    """Whole seconds, rounded up (a wait of 0.2 s is "retry after 1 s")."""
    return -(-int(micros) // 1_000_000)


def _name(sets: tuple[LimitSet, ...], which: int) -> str:
    n = int(which)
    for s in sets:
        if n <= len(s.names):
            return s.names[n - 1]
        n -= len(s.names)
    return sets[0].names[0]


def _redacted(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "…@" + rest.rpartition("@")[2]
    return scheme + sep + rest
