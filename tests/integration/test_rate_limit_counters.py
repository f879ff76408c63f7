"""The rate-limit engine and its counters: GCRA's arithmetic, the counters shared by the processes of
one instance (a mapped file and a semaphore), and Redis's (a throwaway redis-server), with the fallback
to local counters while Redis is away, and the leases both take for large limits."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from service.ratelimit import LimitSet
from service.ratelimit.local import ProcessCounters, SharedCounters
from tests import throwaway_redis
from tests.conftest import require


def limits(*pairs: tuple[int, str], scope: str = "key", owner: str = "k1") -> LimitSet:
    return LimitSet(scope, owner, [{"limit": n, "per": per} for n, per in pairs])


def admitted(counters, sets, times) -> list[bool]:
    return [counters.take(sets, t).allowed for t in times]


def test_gcra_admits_a_burst_of_the_limit_then_one_per_interval():
    counters, key = ProcessCounters(), limits((5, "10s"))
    assert admitted(counters, (key,), [100.0] * 6) == [True] * 5 + [False]
    refused = counters.take((key,), 100.0)
    assert refused.retry_after == 2  # one every 2 s
    assert admitted(counters, (key,), [101.9, 102.0, 102.1]) == [False, True, False]


def test_every_limit_of_the_key_and_its_app_must_admit_and_a_refusal_takes_nothing():
    counters = ProcessCounters()
    key, app = limits((2, "1s"), (3, "1h")), limits((100, "1m"), scope="app", owner="vision")
    assert admitted(counters, (key, app), [0.0, 0.0, 0.0]) == [True, True, False]
    assert admitted(counters, (key, app), [1.0, 1.0]) == [True, False]  # the hourly quota is spent
    decision = counters.take((key, app), 1.0)
    # 3 per hour: one per 20 minutes; the first of them came at 0, so the fourth is admitted at 1200
    assert decision.name == "key-1h" and decision.retry_after == 1199
    assert decision.headers()[0] == ("RateLimit-Policy", '"key-1s";q=2;w=1, "key-1h";q=3;w=3600, "app-1m";q=100;w=60')
    # the refusals took nothing from the app: four taken in all (this one too), 1.67 back after a second
    other_key = limits((1000, "1s"), owner="k2")
    assert counters.take((other_key, app), 1.0).remaining == 97


def _hammer(path: str, n: int, out) -> None:  # noqa: ANN001
    counters, key = SharedCounters(Path(path)), limits((500, "1h"))
    out.put(sum(counters.take((key,), time.time()).allowed for _ in range(n)))


def test_shared_counters_hold_across_processes(tmp_path: Path):
    path = tmp_path / "ratelimit.counters"
    context = multiprocessing.get_context("spawn")  # nothing inherited: the file and the name are the link
    out = context.Queue()
    workers = [context.Process(target=_hammer, args=(str(path), 400, out)) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        total = sum(out.get(timeout=60) for _ in workers)
        for w in workers:
            w.join(30)
        # 1,600 tries against 500 per hour for a few seconds: 500 and the trickle (one per 7.2 s)
        assert 500 <= total <= 502, total
    finally:
        SharedCounters(path).remove()


def test_shared_counters_reuse_records_whose_counters_have_run_out(tmp_path: Path):
    counters = SharedCounters(tmp_path / "c", slots=8)
    try:
        for i in range(40):  # five times the slots, each set spent long before the next
            assert counters.take((limits((1, "1s"), owner=f"k{i}"),), float(i * 10)).allowed
    finally:
        counters.remove()


@pytest.fixture
def redis_server():
    require("redis-server", throwaway_redis.unavailable_reason() is None, "install Debian's redis-server")
    server = throwaway_redis.ThrowawayRedis().start()
    yield server
    server.remove()


def test_redis_counters_hold_and_fall_back_to_local_counters_while_redis_is_away(redis_server, tmp_path, caplog):
    from service.ratelimit.redis import RETRY_EVERY, RedisCounters

    fallbacks = []
    local = ProcessCounters()
    counters = RedisCounters(redis_server.url, local, on_fallback=lambda: fallbacks.append(1))
    key = limits((10, "1h"))
    now = time.time()
    assert admitted(counters, (key,), [now] * 12) == [True] * 10 + [False, False]
    assert counters.take((key,), now).retry_after in (360, 361)  # one per 6 minutes
    with caplog.at_level(logging.WARNING, logger="keyledger.ratelimit"):
        redis_server.stop()
        # Redis away: answered from the local counters (a fresh budget of their own), no error
        assert admitted(counters, (key,), [now] * 12) == [True] * 10 + [False, False]
        assert len(fallbacks) == 12 and not counters.reachable
        warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, not per check
        redis_server.start()
        time.sleep(RETRY_EVERY + 0.1)
        # Back to Redis (a fresh one: no persistence), not the spent local counters
        assert admitted(counters, (key,), [now] * 11) == [True] * 10 + [False]
        assert counters.reachable and len(fallbacks) == 12
        assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_lease_admits_without_the_lock_and_what_it_did_not_spend_is_given_back(tmp_path: Path):
    counters, key = SharedCounters(tmp_path / "c"), limits((1000, "1s"))  # lease: 10 units for 10 ms
    other = SharedCounters(tmp_path / "c")  # another process's view of the same counters
    try:
        assert counters.take((key,), 100.0).allowed  # takes 10: one spent, nine leased
        assert other.take((key,), 100.0).remaining == 980  # sees them taken, and takes ten of its own
        assert counters.take((key,), 100.001).allowed  # from the lease
        # The lease ran out at 100.01 with 8 unspent: given back at the next take, which takes ten
        # more: 22 taken in all, 11 back after 11 ms (without giving back: 30 taken, 981 left).
        assert 988 <= counters.take((key,), 100.011).remaining <= 989
    finally:
        counters.remove()


# -- leases of the Redis counters ------------------------------------------------------------


def redis_counters(url: str, fallbacks: list | None = None):  # noqa: ANN201 - (RedisCounters, its script calls)
    """Counters in Redis at ``url`` whose script calls (round trips) are counted in the list returned."""
    from service.ratelimit.redis import RedisCounters

    counters = RedisCounters(url, ProcessCounters(),
                             on_fallback=(lambda: fallbacks.append(1)) if fallbacks is not None else None)
    calls: list[int] = []
    script = counters._script

    def counted(**kwargs):  # noqa: ANN003, ANN202
        calls.append(1)
        return script(**kwargs)

    counters._script = counted
    return counters, calls


def test_a_redis_lease_admits_without_a_round_trip_until_it_is_spent_or_its_time_runs_out(redis_server):
    counters, calls = redis_counters(redis_server.url)
    key = limits((1000, "1h"))  # lease: 10 units for 0.1 s
    t = time.time()
    first = counters.take((key,), t)
    assert first.allowed and first.remaining == 990 and len(calls) == 1
    # The lease's nine other units: no round trip, the figures of the lease's take
    assert all(counters.take((key,), t + 0.001 * i) is first for i in range(1, 10))
    assert len(calls) == 1
    assert counters.take((key,), t + 0.01).remaining == 980 and len(calls) == 2  # spent: a new lease
    assert counters.take((key,), t + 0.1099).allowed and len(calls) == 2
    # Its time ran out (0.1 s after its take) with 8 units unspent: Redis again, which gets them back
    assert counters.take((key,), t + 0.1101).remaining == 978 and len(calls) == 3


def test_a_redis_leases_unspent_units_are_given_back(redis_server):
    (a, calls_a), (b, calls_b) = redis_counters(redis_server.url), redis_counters(redis_server.url)
    key = limits((1000, "1h"))  # lease: 10 units for 0.1 s; one unit every 3.6 s
    t = time.time()
    assert a.take((key,), t).remaining == 990  # 10 taken: one spent, nine leased
    assert b.take((key,), t).remaining == 980  # another process sees them taken, and takes ten of its own
    assert a.take((key,), t + 0.001).allowed and len(calls_a) == 1  # from the lease: 8 left in it
    # a's lease ran out with 8 unspent: given back by its next take, which takes ten more:
    # 22 taken in all (without giving back: 30, 970 left)
    assert a.take((key,), t + 0.2).remaining == 978
    # b's nine: the same (23 taken)
    assert b.take((key,), t + 0.2).remaining == 977
    assert len(calls_a) == len(calls_b) == 2


def test_a_redis_lease_takes_what_fits_and_a_refusal_comes_from_redis_with_the_exact_retry_after(redis_server):
    counters, calls = redis_counters(redis_server.url)
    key = limits((450, "1h"))  # lease: 4 units; one unit every 8 s
    decisions = [counters.take((key,), time.time()) for _ in range(460)]
    assert [d.allowed for d in decisions] == [True] * 450 + [False] * 10
    # 112 leases of 4, then the 2 that fit: 113 round trips for 450 admissions, then one per refusal
    assert len(calls) == 113 + 10
    refused = decisions[-1]
    # The burst was spent a moment ago: the next unit comes 8 s after the first take, less that moment
    assert refused.retry_after == 8 and refused.name == "key-1h"
    assert ("Retry-After", "8") in refused.headers() and ("RateLimit", '"key-1h";r=0;t=8') in refused.headers()
    assert all(d.retry_after == 8 for d in decisions[450:])


def test_a_redis_leases_unspent_units_are_admitted_again_once_the_limit_is_spent(redis_server):
    (a, calls_a), (b, _) = redis_counters(redis_server.url), redis_counters(redis_server.url)
    key = limits((400, "1h"))  # lease: 4 units; one unit every 9 s
    t = time.time()
    assert a.take((key,), t).allowed  # a holds 3 leased units
    assert sum(b.take((key,), t).allowed for _ in range(450)) == 396  # b gets the rest, then is refused
    # a's lease ran out unspent: its next take gives the 3 back and takes them again (the 4 wanted do not fit)
    assert [a.take((key,), t + 1 + 0.01 * i).allowed for i in range(4)] == [True, True, True, False]
    assert len(calls_a) == 3 and a.take((key,), t + 2).retry_after == 9  # 400 admitted in all
    assert not any(b.take((key,), t + 2).allowed for _ in range(10))


def test_a_redis_lease_is_spent_while_redis_is_away_then_the_local_counters_answer(redis_server):
    from service.ratelimit.redis import RETRY_EVERY

    fallbacks: list = []
    counters, calls = redis_counters(redis_server.url, fallbacks)
    key = limits((1000, "1h"))  # lease: 10 units for 0.1 s
    t = time.time()
    assert counters.take((key,), t).allowed and len(calls) == 1
    redis_server.stop()
    # What Redis handed out is spent without it (no fallback counted), then the local counters answer
    assert all(counters.take((key,), t + 0.001).allowed for _ in range(9)) and not fallbacks
    assert counters.take((key,), t + 0.002).allowed and len(fallbacks) == 1 and not counters.reachable
    redis_server.start()
    time.sleep(RETRY_EVERY + 0.1)
    later = time.time()
    assert counters.take((key,), later).remaining == 990  # a fresh Redis (no persistence): a lease of 10
    assert counters.reachable and len(fallbacks) == 1


def _hammer_redis(url: str, limit: int, threads: int, tries: int, out) -> None:  # noqa: ANN001
    counters, calls = redis_counters(url, fallbacks := [])
    key = limits((limit, "1h"), owner="shared")
    admitted: list[int] = []

    def client() -> None:
        admitted.append(sum(counters.take((key,), time.time()).allowed for _ in range(tries)))

    clients = [threading.Thread(target=client) for _ in range(threads)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    out.put((sum(admitted), len(calls), len(fallbacks)))


def test_redis_leases_hold_a_large_limit_across_processes_and_their_threads(redis_server):
    limit, processes, threads, tries = 2000, 3, 4, 400  # lease: 20 units; 4,800 tries
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_hammer_redis, args=(redis_server.url, limit, threads, tries, out))
               for _ in range(processes)]
    started = time.monotonic()
    for w in workers:
        w.start()
    results = [out.get(timeout=120) for _ in workers]
    elapsed = time.monotonic() - started
    for w in workers:
        w.join(30)
    admitted = sum(r[0] for r in results)
    assert all(r[2] == 0 for r in results)  # every answer from Redis's counters, none from the fallback
    # Never over GCRA's allowance (the burst and one per 1.8 s since); under by at most the unspent leases
    assert limit - processes * 20 <= admitted <= limit + elapsed * limit / 3600 + 1, (admitted, elapsed)
    # Far fewer round trips than admissions: leases (every refusal is one)
    refusals = processes * threads * tries - admitted
    assert sum(r[1] for r in results) - refusals <= admitted / 5, results
