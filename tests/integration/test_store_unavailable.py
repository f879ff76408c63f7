"""When the event store cannot be written, commands answer 503 UNAVAILABLE; verification goes on."""

from __future__ import annotations

import sqlite3

import pytest

from service.api import create_app
from service.composition import build_system
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, Caller, make_account

pytestmark = pytest.mark.sqlite_only("locks the SQLite file; tests/e2e/test_postgres_outage.py is PostgreSQL's")


@pytest.fixture
def impatient_client(tmp_path):
    settings = make_settings(data_dir=tmp_path / "var", pepper=TEST_PEPPER, store_lock_timeout=1)
    system = build_system(settings)
    yield system, create_app(system=system).test_client()
    system.close()


def test_a_locked_store_is_503_with_retry_after_and_verification_continues(impatient_client, tmp_path):
    system, client = impatient_client
    owner = Caller(client, make_account(system, "owner", "o@example.com")["token"])
    app = owner.post("/v2/apps", json={"id": "vision", "name": "Vision"}).json
    key = app["default_key"]

    blocker = sqlite3.connect(tmp_path / "var" / "events.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the store
    try:
        response = owner.patch(f"/v2/keys/{key['id']}", json={"description": "blocked"})
        assert response.status_code == 503
        assert response.json["error"]["code"] == "UNAVAILABLE"
        assert response.headers["Retry-After"] == "1"
        verdict = client.post("/v2/verify", json={"key": key["key"], "scope": "Predict"})
        assert verdict.status_code == 200 and verdict.json["code"] == "VALID"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    retried = owner.patch(f"/v2/keys/{key['id']}", json={"description": "later"})
    assert retried.status_code == 200 and retried.json["version"] == 2
