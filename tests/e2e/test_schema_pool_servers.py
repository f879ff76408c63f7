"""The PostgreSQL pass's ready-made stores (tests/schema_pool.py) for server processes: the first
start through the harness takes a copy, and the server, the CLI and the test all use that schema."""

from __future__ import annotations

import pytest

from tests import backend, schema_pool
from tests.conftest import wait_until
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.postgres_only("the copies are PostgreSQL schemas")


def test_a_server_s_first_start_takes_a_copy_and_its_restart_does_not(start_server: StartServer) -> None:
    pool = schema_pool.pool_in_use()
    assert wait_until(lambda: pool.ready.qsize() > 0, timeout=30), "no copy ready within 30 s"
    placed = pool.placed
    server = start_server()
    assert pool.placed == placed + 1
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]  # a CLI process
    assert server.get("/v2/me", token=admin).status == 200
    server.restart()
    assert pool.placed == placed + 1 and server.get("/v2/me", token=admin).status == 200
    with backend.connect(server.data_dir) as db:
        assert db.execute("SELECT count(*) FROM keyledger_events").fetchone()[0] >= 1
        assert db.execute("SELECT count(*) FROM store_identity").fetchone()[0] == 2  # the server's own


def test_a_server_on_a_schema_of_the_test_s_choosing_makes_its_own_store(start_server: StartServer) -> None:
    pool = schema_pool.pool_in_use()
    placed = pool.placed
    server = start_server(env={"KEYLEDGER_DATABASE_SCHEMA": "chosen_by_the_test"})
    assert pool.placed == placed
    assert server.get("/readyz").status == 200
