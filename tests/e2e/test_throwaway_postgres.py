"""The throwaway PostgreSQL cluster the outage tests stop and start: its own folder and port,
stopped and started at will, every file gone afterwards."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import require
from tests.throwaway_postgres import ThrowawayPostgres, unavailable_reason

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)


def test_a_throwaway_cluster_stops_starts_and_leaves_nothing_behind(throwaway_postgres: ThrowawayPostgres):
    cluster = throwaway_postgres
    assert cluster.port != 5432 and str(cluster.root).startswith("/tmp/")
    with cluster.connect() as db:
        db.execute("CREATE TABLE kept (n INTEGER)")
        db.execute("INSERT INTO kept VALUES (1)")
        assert db.execute("SHOW port").fetchone()[0] == str(cluster.port)
    cluster.stop()
    with pytest.raises(psycopg.OperationalError):
        cluster.connect().close()
    cluster.start()  # the same port and data
    with cluster.connect() as db:
        assert db.execute("SELECT n FROM kept").fetchall() == [(1,)]
    root = cluster.root
    cluster.remove()
    assert not root.exists()


def test_a_cluster_that_fails_to_start_is_removed_too():
    reason = unavailable_reason()
    require("a throwaway PostgreSQL cluster", reason is None, reason or "")
    cluster = ThrowawayPostgres(settings={"max_connections": "not-a-number"})
    root = cluster.root
    with pytest.raises(RuntimeError, match="pg_ctl exited"):
        with cluster:
            pass
    assert not root.exists()
