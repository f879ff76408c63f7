"""PostgreSQL stops for 20 s under load — a cluster of the test's own, never the machine's.

Three instances (real ``keyledger serve`` processes, two workers each) answer forward-auth and take
key creations throughout (``tests/e2e/outage_drill.py``). While the database is down, verification
answers from memory — none slower than a second, none a 5xx, marked stale once the store is out of
reach — and writes answer 503 ``UNAVAILABLE`` with ``Retry-After``. When it is back, everything
resumes without a restart: writes succeed, a revocation is refused at once where it was made and
within a second elsewhere, a legacy token's use first seen during the outage is recorded, and no
key whose creation was acknowledged is missing from the store. The figures are printed.
"""

from __future__ import annotations

import time

import pytest

from projections.listener import LogListener
from tests.conftest import wait_until
from tests.e2e.conftest import StartServer
from tests.e2e.outage_drill import AFTER, BASELINE, OUTAGE, Drill
from tests.throwaway_postgres import ThrowawayPostgres

pytestmark = [pytest.mark.postgres_only("stops PostgreSQL: its own throwaway cluster, in the PostgreSQL pass"),
              pytest.mark.timing_sensitive]  # every verification under 1 s

CONTRACT = 1.0  # seconds: no verification may take longer, whatever the store does


def test_three_instances_under_load_through_a_20_s_outage(tmp_path, start_server: StartServer,
                                                           throwaway_postgres: ThrowawayPostgres):
    drill = Drill(throwaway_postgres, tmp_path, start_server)
    drill.prepare()
    drill.run(baseline=5.0, outage=20.0, after=10.0)
    print("\n" + drill.report())

    # Forward-auth answered from memory, whatever the store did.
    verifications = drill.verifications()
    assert len(drill.verifications(phase=OUTAGE)) > 100 * drill.instances, "too little load to judge"
    slow = [s for s in verifications if s.seconds > CONTRACT]
    assert not slow, f"{len(slow)} verifications took over {CONTRACT} s, e.g. {slow[:3]}"
    refused = [s for s in verifications if s.status != 200]
    assert not refused, f"{len(refused)} verifications not answered 200 (5xx, or no answer), e.g. {refused[:3]}"
    for n in range(drill.instances):
        assert not any(s.stale for s in drill.verifications(n, BASELINE))
        assert any(s.stale for s in drill.verifications(n, OUTAGE)), f"instance{n + 1} never said its index may be stale"

    # Writes: acknowledged, or 503 UNAVAILABLE with Retry-After — nothing else, and they resume.
    writes = drill.writes()
    assert {s.status for s in writes} <= {201, 503}, sorted({(s.status, s.error) for s in writes})
    assert {s.error for s in writes if s.status == 503} <= {"UNAVAILABLE"}
    assert any(s.status == 503 for s in drill.writes(OUTAGE))
    for n in range(drill.instances):
        assert any(s.status == 201 and s.instance == n for s in drill.writes(AFTER)), f"instance{n + 1} took no write after"
    assert all(server.running and server.starts == 1 for server in drill.servers), "an instance restarted"

    # Nothing acknowledged lost; the outage's legacy use recorded once the store was back.
    assert drill.unstored() == []
    assert wait_until(drill.legacy_use_recorded, 10), "the legacy use made during the outage was never recorded"

    # Read-your-writes where the change was made, and within a second on the other instances.
    first, *others = drill.servers
    key = first.post("/v2/apps/vision/keys", {"description": "after", "scopes": ["Predict"]}, token=drill.owner).json
    assert first.delete(f"/v2/keys/{key['id']}", token=drill.owner).status == 204
    answered = time.monotonic()
    assert first.post("/v2/verify", {"key": key["key"]}).json["code"] == "REVOKED"
    for server in others:
        while (verdict := server.post("/v2/verify", {"key": key["key"]})).json["code"] != "REVOKED":
            assert time.monotonic() - answered < CONTRACT, f"{server.url} accepts a key revoked {CONTRACT} s ago"
        assert "X-Keyledger-Index-Stale" not in verdict.headers


def test_the_breaker_opens_when_the_database_goes_and_the_pools_are_refreshed_before_it_closes(
        throwaway_postgres: ThrowawayPostgres):
    seen: list[bool] = []  # the breaker's state while the pools are being refreshed
    conninfo = f"host=127.0.0.1 port={throwaway_postgres.port} dbname=postgres user=postgres connect_timeout=2"
    listener = LogListener(conninfo, "keyledger_test", lambda: None,
                           on_reachable=lambda: seen.append(listener.unreachable))
    listener.start()
    try:
        assert wait_until(lambda: listener.connected, 5.0)
        throwaway_postgres.stop()
        assert wait_until(lambda: listener.unreachable and not listener.connected, 5.0)
        assert seen == []
        throwaway_postgres.start()
        assert wait_until(lambda: not listener.unreachable and listener.connected, 5.0)
        assert seen == [True]  # refreshed while requests were still refused, then the breaker closed
    finally:
        listener.stop()
