"""The request path never waits on the store: verification answers from memory while reading the log
hangs or fails, a legacy token's use is recorded off the request path (and once the store is back),
``POST /v2/token`` refuses without the store, and a PostgreSQL command is tried once, not ten times.

The store's failures are made in-process here (a read that hangs, a write that fails);
``tests/e2e/test_postgres_outage.py`` stops a real PostgreSQL under load."""

from __future__ import annotations

import base64
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import OperationalError

from service.api import create_app
from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from service.domain.errors import Unavailable
from tests.backend import event_states, make_settings
from tests.conftest import TEST_PEPPER, wait_until

ADMIN = Actor.system("test")
CONTRACT = 1.0  # seconds: no verification may take longer, whatever the store does


def settings_for(data_dir, **kw):
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05,
                         legacy_sunset_at=datetime.now(UTC) + timedelta(days=30), **kw)


@pytest.fixture
def two(tmp_path):
    """Two serving processes' systems on one data directory (they share the change beacon)."""
    writer, reader = build_system(settings_for(tmp_path / "var")), build_system(settings_for(tmp_path / "var"))
    yield writer, reader
    reader.close()
    writer.close()


def _an_app_with_a_key(system):
    owner, _ = system.keys_app.register_account(email="o@example.com", name="O", role="owner", by=ADMIN,
                                                request=NO_REQUEST)
    _, key, secret = system.keys_app.create_app(name="A", slug="a", owner_id=owner["id"], by=ADMIN,
                                                request=NO_REQUEST)
    system.after_command()
    return key, secret


def _timed(call):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.mark.timing_sensitive  # wall-clock bound
def test_a_verdict_does_not_wait_for_a_log_read_that_hangs(two, monkeypatch):
    writer, reader = two
    key, secret = _an_app_with_a_key(writer)
    client = create_app(system=reader).test_client()
    assert wait_until(lambda: client.post("/v2/verify", json={"key": secret}).json["code"] == "VALID", CONTRACT)

    released = threading.Event()
    read_events = reader.keys_app.read_events

    def hanging(after, limit):  # type: ignore[no-untyped-def]
        released.wait(30)  # the store does not answer
        return read_events(after, limit)

    monkeypatch.setattr(reader.keys_app, "read_events", hanging)
    try:
        writer.keys_app.revoke_key(key["id"], by=ADMIN, request=NO_REQUEST)
        writer.after_command()  # published on the beacon: the reader must catch up, and cannot
        assert writer.verifier.verify(secret)[0] == "REVOKED"
        for path, kwargs in (("/v2/verify", {"json": {"key": secret}}),
                             ("/v2/auth/check", {"headers": {"Authorization": f"Key {secret}"}})) * 5:
            call = client.post if path == "/v2/verify" else client.get
            response, took = _timed(lambda call=call, path=path, kwargs=kwargs: call(path, **kwargs))
            assert response.status_code == 200 and took < CONTRACT, (path, response.status_code, took)
    finally:
        released.set()
    # the catch-up thread finishes its read: the revocation reaches this process too
    assert wait_until(lambda: client.post("/v2/verify", json={"key": secret}).json["code"] == "REVOKED", CONTRACT)


@pytest.mark.timing_sensitive  # wall-clock bound
def test_a_verdict_does_not_wait_while_the_log_cannot_be_read(two, monkeypatch):
    writer, reader = two
    key, secret = _an_app_with_a_key(writer)
    client = create_app(system=reader).test_client()
    assert wait_until(lambda: client.post("/v2/verify", json={"key": secret}).json["code"] == "VALID", CONTRACT)

    def unreachable(*args):  # type: ignore[no-untyped-def]
        raise Unavailable("The event store cannot be read right now; retry shortly.")

    monkeypatch.setattr(reader.keys_app, "read_events", unreachable)
    monkeypatch.setattr(reader.keys_app, "last_position", unreachable)
    writer.keys_app.revoke_key(key["id"], by=ADMIN, request=NO_REQUEST)
    writer.after_command()
    assert wait_until(lambda: "X-Keyledger-Index-Stale" in client.post("/v2/verify", json={"key": secret}).headers,
                      5.0), "verdicts never said the index may be stale"
    for _ in range(10):
        response, took = _timed(lambda: client.get("/v2/auth/check", headers={"Authorization": f"Key {secret}"}))
        assert response.status_code == 200 and took < CONTRACT, (response.status_code, took)
    monkeypatch.undo()  # the store is back: the catch-up thread and the poll bring the revocation in
    assert wait_until(lambda: client.post("/v2/verify", json={"key": secret}).json["code"] == "REVOKED", CONTRACT)
    assert wait_until(lambda: "X-Keyledger-Index-Stale" not in client.post("/v2/verify", json={"key": secret}).headers,
                      CONTRACT)


@pytest.mark.timing_sensitive  # wall-clock bound
def test_a_legacy_use_is_answered_at_once_and_recorded_when_the_store_is_back(tmp_path, monkeypatch):
    system = build_system(settings_for(tmp_path / "var"))
    try:
        key, _ = _an_app_with_a_key(system)
        client, secret = system.keys_app.issue_legacy_credentials("a", by=ADMIN, request=NO_REQUEST)
        token, _, _ = system.keys_app.issue_access_token(client["client_id"], secret, request=NO_REQUEST)
        system.after_command()
        app = create_app(system=system).test_client()

        attempts = []
        insert_events = system.keys_app.recorder.insert_events

        def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
            attempts.append(1)
            raise OperationalError("the database system is shutting down")

        monkeypatch.setattr(system.keys_app.recorder, "insert_events", failing)
        response, took = _timed(lambda: app.get("/v2/auth/check", headers={"Authorization": f"Bearer {token}"}))
        assert response.status_code == 200 and took < CONTRACT
        assert wait_until(lambda: len(attempts) >= 2, 5.0), "the use was not retried"
        assert event_states(system.settings.data_dir, "LegacyTokenUsed") == []
        assert app.get("/v2/auth/check", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        monkeypatch.setattr(system.keys_app.recorder, "insert_events", insert_events)  # the store is back
        assert wait_until(lambda: len(event_states(system.settings.data_dir, "LegacyTokenUsed")) == 1, 10.0)
        [use] = event_states(system.settings.data_dir, "LegacyTokenUsed")
        assert use["client_id"] == client["client_id"]
    finally:
        system.close()


def test_a_use_still_queued_at_shutdown_is_written_if_the_store_takes_it(tmp_path, monkeypatch):
    system = build_system(settings_for(tmp_path / "var"))
    _an_app_with_a_key(system)
    client, secret = system.keys_app.issue_legacy_credentials("a", by=ADMIN, request=NO_REQUEST)
    token, _, _ = system.keys_app.issue_access_token(client["client_id"], secret, request=NO_REQUEST)
    system.after_command()
    monkeypatch.setattr(system, "store_unreachable", lambda: True)
    monkeypatch.setattr(system.use_writer, "healthy", lambda: False)  # known down: queued, not tried
    assert system.verifier.verify(token)[0] == "VALID"
    assert len(system.use_writer) == 1
    system.use_writer.healthy = lambda: True  # back just before the process stops
    system.close()
    assert len(event_states(system.settings.data_dir, "LegacyTokenUsed")) == 1


def _basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_token_requests_while_the_store_is_known_down(tmp_path, monkeypatch):
    system = build_system(settings_for(tmp_path / "var"))
    try:
        _an_app_with_a_key(system)
        client, secret = system.keys_app.issue_legacy_credentials("a", by=ADMIN, request=NO_REQUEST)
        system.after_command()
        app = create_app(system=system).test_client()
        monkeypatch.setattr(system, "store_unreachable", lambda: True)
        answer = app.post("/v2/token", data={"grant_type": "client_credentials"},
                          headers=_basic(client["client_id"], secret))
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert answer.json["error"] == "temporarily_unavailable"
        refused = app.post("/v2/token", data={"grant_type": "password"}, headers=_basic(client["client_id"], secret))
        assert refused.status_code == 400 and refused.json["error"] == "unsupported_grant_type"
    finally:
        system.close()


def test_after_the_sunset_a_token_request_is_refused_without_the_store(system, client, monkeypatch):
    monkeypatch.setattr(system, "store_unreachable", lambda: True)
    monkeypatch.setattr(system.keys_app, "_find", lambda *a: pytest.fail("the store was read"))
    answer = client.post("/v2/token", data={"grant_type": "client_credentials"}, headers=_basic("c", "s"))
    assert answer.status_code == 400 and answer.json["error"] == "unauthorized_client"


@pytest.mark.postgres_only("the PostgreSQL recorders' retries")
def test_a_postgresql_call_is_tried_once_on_the_request_path_and_patiently_elsewhere(system, monkeypatch):
    from service import event_store

    datastore = system.keys_app.recorder.datastore
    assert (datastore.pool.timeout, datastore.pool.reconnect_timeout) == (1.0, 0.5)
    assert (system.views.pool.timeout, system.views.pool.reconnect_timeout) == (1.0, 0.5)
    calls = []
    me = threading.get_ident()

    def unreachable():  # type: ignore[no-untyped-def]
        if threading.get_ident() == me:  # this test's calls, not the follower's catch-up thread's
            calls.append(1)
        raise OperationalError("connection refused")

    monkeypatch.setattr(datastore, "get_connection", unreachable)
    monkeypatch.setattr(event_store, "RETRY_PAUSE", 0.0)
    with event_store.on_the_request_path():
        with pytest.raises(Unavailable):
            system.keys_app.register_account(email="o@example.com", name="O", role="owner", by=ADMIN,
                                             request=NO_REQUEST)
        with pytest.raises(Unavailable):
            system.keys_app.read_events(0, 10)
        with pytest.raises(Unavailable):
            system.keys_app.last_position()
        with pytest.raises(Unavailable):  # reads the aggregate's snapshot first: that recorder too
            system.keys_app.issue_key("vision", description="k", scopes=["Predict"], by=ADMIN, request=NO_REQUEST)
    assert len(calls) == 4  # the library alone tries each ten times, 0.2 s apart (~20 s with its pool)
    with pytest.raises(Unavailable):  # a background reader (the follower, a job) keeps that patience
        system.keys_app.last_position()
    assert len(calls) == 4 + event_store.BACKGROUND_ATTEMPTS


def test_every_request_is_on_the_request_path(client, monkeypatch):
    from service import event_store

    seen = []
    monkeypatch.setattr("service.api.operations.Health.get",
                        lambda self: seen.append(event_store._request_path.get()) or {"status": "ok"})
    assert client.get("/healthz").status_code == 200
    assert seen == [True] and event_store._request_path.get() is False
