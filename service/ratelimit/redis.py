"""Counters in Redis (or Valkey), shared by every instance: one Lua script per check.

The script runs GCRA (``engine.gcra``, the same arithmetic) on Redis's own clock (``TIME``), so
instances whose clocks differ still count as one. While Redis cannot be reached the check is
answered from the instance's local counters (``local.LocalCounters``): a warning is logged once
per outage, ``on_fallback`` is called for every check answered that way (a metric), and Redis is
tried again once a second (a single check waits for it, never longer than the socket timeouts);
when it answers again, counting is shared again (logged once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.ratelimit.engine import Decision, LimitSet

log = logging.getLogger("keyledger.ratelimit")

RETRY_EVERY = 1.0  # seconds between attempts to reach Redis again
CONNECT_TIMEOUT = 0.1
SOCKET_TIMEOUT = 0.25

# KEYS: one hash per limit set (field i: the TAT of limit i). ARGV: per set, the number of limits,
# then (interval, period) per limit. Returns {admitted 0|1, wait (µs) or remaining, the limit's
# index across every set, reset (µs)}.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local states = {}
local arg = 1
local wait, worst = 0, 0
local n = 0
for k = 1, #KEYS do
  local count = tonumber(ARGV[arg]); arg = arg + 1
  local fields = {}
  for j = 1, count do fields[j] = tostring(j) end
  local tats = redis.call('HMGET', KEYS[k], unpack(fields))
  local set = {}
  for j = 1, count do
    local interval = tonumber(ARGV[arg]); local period = tonumber(ARGV[arg + 1]); arg = arg + 2
    local tat = tonumber(tats[j]) or 0
    if tat < now then tat = now end
    n = n + 1
    local later = tat + interval - period - now
    if later > wait then wait = later; worst = n end
    set[j] = {tat, interval, period}
  end
  states[k] = set
end
if wait > 1e-9 then
  return {0, math.floor(wait * 1000000 + 0.5), worst, 0}
end
local best, best_remaining, best_reset = 0, -1, 0
n = 0
for k = 1, #KEYS do
  local set = states[k]
  local args = {}
  local longest = 0
  for j = 1, #set do
    local tat = set[j][1] + set[j][2]
    n = n + 1
    args[#args + 1] = tostring(j)
    args[#args + 1] = string.format('%.6f', tat)
    local remaining = math.floor((set[j][3] - (tat - now)) / set[j][2] + 1e-9)
    if best_remaining < 0 or remaining < best_remaining then
      best, best_remaining, best_reset = n, remaining, tat - now
    end
    if tat - now > longest then longest = tat - now end
  end
  redis.call('HSET', KEYS[k], unpack(args))
  redis.call('PEXPIRE', KEYS[k], math.ceil(longest * 1000) + 1000)
end
return {1, best_remaining, best, math.floor(best_reset * 1000000 + 0.5)}
"""


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

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def take(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        if self._down_since is not None:
            # One check at a time tries Redis again, once a second; the others count locally.
            if time.monotonic() < self._retry_at or not self._probing.acquire(blocking=False):
                return self._local(sets, now)
            try:
                self._retry_at = time.monotonic() + RETRY_EVERY
                return self._shared(sets, now)
            finally:
                self._probing.release()
        return self._shared(sets, now)

    def _shared(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        args: list[str] = []
        for s in sets:
            args += s.redis_args
        try:
            admitted, value, which, reset = self._script(keys=[s.redis_key for s in sets], args=args)
        except self._errors as error:
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
        if admitted:
            return Decision(True, 0, name, int(value), _seconds(reset), sets)
        retry = _seconds(value)
        return Decision(False, retry, name, 0, retry, sets)

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
