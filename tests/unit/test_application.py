"""The use cases on the in-memory store, and optimistic concurrency on a shared SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service import credentials
from service.application import Keyledger
from service.domain.actors import NO_REQUEST, Actor
from service.domain.errors import (
    Conflict,
    Forbidden,
    InvalidExpiry,
    KeyRevoked,
    NotFound,
    ScopeUnknown,
)

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

ADMIN = Actor.system("test")
DIGESTER = credentials.Digester(b"unit-test-pepper-0123456789abcdef")


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2017, 6, 1, 10, tzinfo=UTC))


@pytest.fixture
def keys_app(clock) -> Keyledger:
    return Keyledger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, digester=DIGESTER, clock=clock)


@pytest.fixture
def owner(keys_app) -> Actor:
    account, _ = keys_app.register_account(email="o@example.com", name="O", role="owner", by=ADMIN,
                                           request=NO_REQUEST)
    return Actor(kind="account", id=account["id"], role="owner")


def test_events_take_the_application_clock(keys_app, owner, clock):
    app, key, _ = keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    assert app["created_at"] == clock.now == key["created_at"]


def test_app_ids_are_unique(keys_app, owner):
    keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    with pytest.raises(Conflict):
        keys_app.create_app(name="Other", slug="vision", by=owner, request=NO_REQUEST)


def test_duplicate_email_conflicts(keys_app, owner):
    with pytest.raises(Conflict):
        keys_app.register_account(email="O@example.com ", name="again", role="owner", by=ADMIN,
                                  request=NO_REQUEST)


def test_unknown_scope_lists_the_catalogue(keys_app, owner):
    keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    with pytest.raises(ScopeUnknown) as raised:
        keys_app.issue_key("vision", description="", scopes=["Predict", "Fly"], by=owner, request=NO_REQUEST)
    assert raised.value.details["unknown"] == ["Fly"]
    assert "Models:Train" in raised.value.details["valid_scopes"]


def test_all_swallows_other_scopes(keys_app, owner):
    keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    key, _ = keys_app.issue_key("vision", description="", scopes=["Predict", "All"], by=owner,
                                request=NO_REQUEST)
    assert key["scopes"] == ["All"]


def test_expiry_must_be_in_the_future(keys_app, owner, clock):
    keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    with pytest.raises(InvalidExpiry):
        keys_app.issue_key("vision", description="", scopes=["Search"], expires_at=clock.now, by=owner,
                           request=NO_REQUEST)


def test_revoked_keys_cannot_change_but_revoking_again_is_fine(keys_app, owner):
    _, key, _ = keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    revoked = keys_app.revoke_key(key["id"], by=owner, request=NO_REQUEST)
    assert keys_app.revoke_key(key["id"], by=owner, request=NO_REQUEST)["version"] == revoked["version"]
    with pytest.raises(KeyRevoked):
        keys_app.change_key(key["id"], scopes=["Search"], by=owner, request=NO_REQUEST)


def test_other_owners_and_keys_cannot_touch_an_app(keys_app, owner):
    _, key, _ = keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    other, _ = keys_app.register_account(email="x@example.com", name="X", role="owner", by=ADMIN,
                                         request=NO_REQUEST)
    with pytest.raises(NotFound):
        keys_app.get_key(key["id"], by=Actor(kind="account", id=other["id"], role="owner"))
    with pytest.raises(Forbidden):
        keys_app.get_key(key["id"], by=Actor(kind="key", id=key["id"], app_id="vision"))


def test_as_of_replays_the_key_to_that_moment(keys_app, owner, clock):
    _, key, _ = keys_app.create_app(name="Vision", slug="vision", by=owner, request=NO_REQUEST)
    clock.now += timedelta(hours=1)
    keys_app.change_key(key["id"], scopes=["Predict"], by=owner, request=NO_REQUEST)
    before = keys_app.get_key(key["id"], by=owner, as_of=clock.now - timedelta(minutes=1))
    assert before["scopes"] == ["All"] and before["version"] == 1


def test_a_concurrent_change_is_retried_not_lost(tmp_path):
    """Two processes change one key at once: the loser of the race reloads and re-applies."""
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "events.sqlite")}
    rival = Keyledger(env=env, digester=DIGESTER)
    state = {"raced": False}

    def racing_clock() -> datetime:
        # Called after the key was loaded and before it is saved: the rival writes in between.
        if state.get("key_id") and not state["raced"]:
            state["raced"] = True
            rival.change_key(state["key_id"], description="rival", by=ADMIN, request=NO_REQUEST)
        return datetime.now(UTC)

    keys_app = Keyledger(env=env, digester=DIGESTER, clock=racing_clock)
    account, _ = keys_app.register_account(email="o@example.com", name="O", role="owner", by=ADMIN,
                                           request=NO_REQUEST)
    _, key, _ = keys_app.create_app(name="V", slug="v", owner_id=account["id"], by=ADMIN, request=NO_REQUEST)
    state["key_id"] = key["id"]

    changed = keys_app.change_key(key["id"], scopes=["Search"], by=ADMIN, request=NO_REQUEST)

    assert state["raced"]
    assert changed["version"] == 3
    final = rival.get_key(key["id"], by=ADMIN)
    assert final["description"] == "rival" and final["scopes"] == ["Search"]
