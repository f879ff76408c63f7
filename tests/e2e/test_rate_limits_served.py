"""Rate limits as served: across the gunicorn workers of one instance (the counters they share), and
across three instances on one PostgreSQL store with one redis-server (started by the test), a large
limit leased from it by each worker, Redis stopped mid-run and brought back."""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections import Counter

import pytest

from tests import throwaway_redis
from tests.conftest import require
from tests.e2e.conftest import ServerProcess, StartServer
from tests.e2e.many_instances import Cluster, cluster_env

OVER_ADMISSION = 1.05


def hammer(servers: list[ServerProcess], secret: str, *, threads: int, seconds: float | None = None,
           requests: int | None = None, stop: threading.Event | None = None) -> tuple[Counter, float]:
    """Forward-auth calls from ``threads`` clients spread over ``servers`` (keep-alive connections):
    the statuses, and the seconds it took."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    left = [requests if requests is not None else 10**9]
    deadline = time.monotonic() + (seconds if seconds is not None else 10**9)

    def client(n: int) -> None:
        server = servers[n % len(servers)]
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        mine: Counter = Counter()
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            try:
                connection.request("GET", "/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {secret}"})
                answer = connection.getresponse()
                answer.read()
                mine[answer.status] += 1
            except (OSError, http.client.HTTPException) as error:
                mine[type(error).__name__] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.close()
        with lock:
            statuses.update(mine)

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statuses, time.monotonic() - started


def allowance(limit: int, period: float, elapsed: float) -> float:
    """What GCRA may admit in ``elapsed`` seconds: the burst, and one per interval since."""
    return limit + elapsed * limit / period


def test_limits_hold_across_the_workers_of_one_instance(start_server: StartServer):
    server = start_server(workers=3)
    owner = server.create_account("owner", "o@example.com", "O")["token"]
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).status == 201
    limit = 300
    key = server.post("/v2/apps/vision/keys", {"description": "web", "scopes": ["Predict"],
                                                "limits": [{"limit": limit, "per": "1h"}]}, token=owner).json
    statuses, elapsed = hammer([server], key["key"], threads=8, requests=1500)
    assert set(statuses) <= {200, 429}, statuses
    admitted = statuses[200]
    ceiling = allowance(limit, 3600, elapsed)
    print(f"\none instance, 3 workers, 8 clients: {admitted} admitted of {sum(statuses.values())} against a "
          f"limit of {limit}/h over {elapsed:.1f} s (GCRA allows {ceiling:.1f}): over-admission "
          f"{(admitted / ceiling - 1) * 100:+.1f} %")
    assert limit * 0.95 <= admitted <= ceiling * OVER_ADMISSION, statuses
    assert statuses[429] == 1500 - admitted


@pytest.mark.postgres_only
def test_an_apps_limit_holds_across_three_instances_with_redis_and_survives_its_outage(tmp_path,
                                                                                       start_server: StartServer):
    require("redis-server", throwaway_redis.unavailable_reason() is None, "install Debian's redis-server")
    redis = throwaway_redis.ThrowawayRedis().start()
    try:
        cluster = Cluster({**cluster_env("rl_" + uuid.uuid4().hex[:16]), "KEYLEDGER_REDIS_URL": redis.url},
                          tmp_path, start_server)
        cluster.cli("db", "init")
        servers = cluster.start(3)
        first = servers[0]
        admin = first.create_account("admin", "admin@example.com", "Admin")["token"]
        owner = first.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                           token=admin).json["token"]
        assert first.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).status == 201
        limit = 240
        assert first.patch("/v2/apps/vision", {"limits": [{"limit": limit, "per": "1m"}]}, token=owner).status == 200
        secret = first.post("/v2/apps/vision/keys", {"description": "web", "scopes": ["Predict"]},
                            token=owner).json["key"]
        # A large limit, which each worker leases from Redis (30 units at a time)
        large = 3000
        assert first.post("/v2/apps", {"id": "search", "name": "Search"}, token=owner).status == 201
        large_secret = first.post("/v2/apps/search/keys", {"description": "busy", "scopes": ["Predict"],
                                                           "limits": [{"limit": large, "per": "1h"}]},
                                  token=owner).json["key"]
        time.sleep(1.0)  # every instance has the app's limits (within a second, as any change)

        statuses, elapsed = hammer(servers, secret, threads=9, requests=1200)
        assert set(statuses) <= {200, 429}, statuses
        ceiling = allowance(limit, 60, elapsed)
        print(f"\nthree instances, one Redis, 9 clients: {statuses[200]} admitted of {sum(statuses.values())} "
              f"against {limit}/min over {elapsed:.1f} s (GCRA allows {ceiling:.1f}): over-admission "
              f"{(statuses[200] / ceiling - 1) * 100:+.1f} %")
        assert limit * 0.95 <= statuses[200] <= ceiling * OVER_ADMISSION

        statuses, elapsed = hammer(servers, large_secret, threads=9, requests=4000)
        assert set(statuses) <= {200, 429}, statuses
        ceiling = allowance(large, 3600, elapsed)
        print(f"a key's limit of {large}/h, leased: {statuses[200]} admitted of {sum(statuses.values())} over "
              f"{elapsed:.1f} s (GCRA allows {ceiling:.1f}): over-admission {(statuses[200] / ceiling - 1) * 100:+.1f} %")
        assert large * 0.95 <= statuses[200] <= ceiling * OVER_ADMISSION

        # Redis stopped mid-run: every answer still comes, from each instance's own counters
        stop = threading.Event()
        during: list = []
        runner = threading.Thread(target=lambda: during.append(hammer(servers, secret, threads=6, stop=stop)))
        runner.start()
        time.sleep(0.5)
        redis.stop()
        time.sleep(2.0)
        stop.set()
        runner.join()
        outage, _ = during[0]
        assert set(outage) <= {200, 429}, outage  # no 5xx, no error
        assert outage[200] > 0  # local counters: each instance's own budget
        for server in servers:
            assert "cannot be reached" in server.log_path.read_text(errors="replace")
            metrics = server.get("/metrics").body.decode()
            assert "keyledger_rate_limit_fallbacks_total" in metrics

        # Redis back: shared counting again (a fresh Redis: the app's whole budget, once, over all three)
        redis.start()
        time.sleep(1.5)
        statuses, elapsed = hammer(servers, secret, threads=9, requests=1200)
        assert set(statuses) <= {200, 429}, statuses
        ceiling = allowance(limit, 60, elapsed)
        print(f"after Redis came back: {statuses[200]} admitted (GCRA allows {ceiling:.1f})")
        assert statuses[200] <= ceiling * OVER_ADMISSION + 3  # up to one local answer each while reconnecting
        assert all("answers again" in s.log_path.read_text(errors="replace") for s in servers)
    finally:
        redis.remove()
