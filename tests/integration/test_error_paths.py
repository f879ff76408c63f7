"""The error paths: a store that fails answers 503 (reads and writes), an unexpected error the 500
envelope, /readyz says when it is not ready, and a command that keeps meeting concurrent writes
gives up with 409 after a bounded number of attempts.

The stores are made to fail at their boundary (the eventsourcing recorder, the view store's
connection), as a broken disk or a locked file would; nothing of Keyledger's own is replaced.
"""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, OperationalError

from service.application.base import COMMAND_ATTEMPTS
from tests.conftest import secrets_in


def broken(error: Exception):
    def fail(*args, **kwargs):
        raise error
    return fail


def break_reads(recorder, monkeypatch, error: Exception) -> None:  # type: ignore[no-untyped-def]
    """The recorder's reads of an aggregate fail (on PostgreSQL the current version is read in one
    statement, ``select_latest``; a past version and the history with ``select_events``)."""
    monkeypatch.setattr(recorder, "select_events", broken(error))
    if hasattr(recorder, "select_latest"):
        monkeypatch.setattr(recorder, "select_latest", broken(error))


@pytest.fixture
def key(owner) -> dict:
    return owner.post("/v2/apps", json={"id": "vision", "name": "Vision"}).json["default_key"]


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "UNAVAILABLE"
    assert response.headers["Retry-After"] == "1"
    assert response.json["request_id"] == response.headers["X-Request-Id"]


def test_a_read_of_the_event_store_that_fails_is_503(system, owner, key, monkeypatch):
    break_reads(system.keys_app.recorder, monkeypatch, OperationalError("disk I/O error"))
    assert_unavailable(owner.get(f"/v2/keys/{key['id']}"))
    assert_unavailable(owner.get(f"/v2/keys/{key['id']}?as_of=2030-01-01T00:00:00Z"))


def test_a_write_to_the_event_store_that_fails_is_503(system, owner, key, monkeypatch):
    monkeypatch.setattr(system.keys_app.recorder, "insert_events",
                        broken(OperationalError("database or disk is full")))
    assert_unavailable(owner.patch(f"/v2/keys/{key['id']}", json={"description": "full disk"}))
    assert_unavailable(owner.post("/v2/apps/vision/keys", json={"description": "d", "scopes": ["Predict"]}))
    assert_unavailable(owner.post(f"/v2/keys/{key['id']}/roll", json={}))
    assert_unavailable(owner.delete(f"/v2/keys/{key['id']}"))


def test_a_view_store_that_fails_is_503_not_500(system, owner, key, monkeypatch):
    error = (psycopg.OperationalError("connection refused") if system.views.dialect == "postgresql"
             else sqlite3.OperationalError("unable to open database file"))
    monkeypatch.setattr(system.views, "read", broken(error))
    assert_unavailable(owner.get("/v2/apps"))
    assert_unavailable(owner.get("/v2/apps/vision/keys"))


def test_an_unexpected_error_is_the_500_envelope_without_a_traceback(system, client, owner, key, monkeypatch):
    break_reads(system.keys_app.recorder, monkeypatch, RuntimeError("boom ak_secret"))
    response = owner.get(f"/v2/keys/{key['id']}")
    assert response.status_code == 500
    assert response.mimetype == "application/json"
    assert response.json["error"]["code"] == "INTERNAL"
    assert response.json["request_id"] == response.headers["X-Request-Id"]
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and "boom" not in body and not secrets_in(body)


def test_readyz_is_503_when_the_store_cannot_be_read(system, client, monkeypatch):
    monkeypatch.setattr(system.keys_app.recorder, "max_notification_id", broken(OperationalError("locked")))
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json == {"status": "unavailable", "store": "unreachable", "projections_lag": -1}


def test_readyz_is_503_while_the_views_are_far_behind(system, client, monkeypatch):
    monkeypatch.setattr(system.keys_app.recorder, "max_notification_id", lambda: system.follower.position + 5000)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "catching_up" and response.json["projections_lag"] >= 5000


def test_readyz_is_200_when_caught_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json["status"] == "ready"


def test_a_change_that_keeps_meeting_concurrent_writes_gives_up_with_409(system, owner, key, monkeypatch):
    attempts = []

    def always_raced(*args, **kwargs):
        attempts.append(1)
        raise IntegrityError("UNIQUE constraint failed: stored_events.originator_id, originator_version")

    monkeypatch.setattr(system.keys_app.recorder, "insert_events", always_raced)
    response = owner.patch(f"/v2/keys/{key['id']}", json={"description": "raced"})
    assert response.status_code == 409 and response.json["error"]["code"] == "CONFLICT"
    assert len(attempts) == COMMAND_ATTEMPTS
    monkeypatch.undo()
    assert owner.get(f"/v2/keys/{key['id']}").json["version"] == 1  # nothing was half-written
