"""Commands committed last, and answers recorded with them, on the in-memory store with a given clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from service import credentials
from service.application import Keyledger
from service.application.idempotency import (
    Answer,
    AnswerUnreadable,
    CommitRaced,
    IdempotencyKeyReused,
)
from service.domain.actors import NO_REQUEST, Actor
from service.domain.errors import Conflict
from service.domain.idempotency import RETENTION, IdempotentRequest

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

ADMIN = Actor.system("test")
DIGESTER = credentials.Digester(b"unit-test-pepper-0123456789abcdef")
# Markers with "_", which neither hex nor base64 (the stored forms) can contain by chance
ANSWER = Answer(status=201, headers=[("Content-Type", "application/json")],
                body=b'{"id": "id_of_the_key", "key": "ak_the_secret"}')


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


def new_account(keys_app: Keyledger, email: str = "o@example.com") -> dict:
    account, _ = keys_app.register_account(email=email, name="O", role="owner", by=ADMIN, request=NO_REQUEST)
    return account


def stored(keys_app: Keyledger) -> int:
    return keys_app.last_position()


def test_a_deferred_command_writes_nothing_until_committed(keys_app):
    before = stored(keys_app)
    with keys_app.deferred() as batch:
        new_account(keys_app)
    assert batch and stored(keys_app) == before
    keys_app.commit(batch)
    assert stored(keys_app) == before + 1


def test_a_deferred_command_meets_a_conflict_where_a_save_would(keys_app):
    new_account(keys_app)
    with keys_app.deferred() as batch, pytest.raises(Conflict):  # the account's deterministic id exists
        new_account(keys_app)
    assert not batch


def test_a_commit_that_lost_a_race_writes_nothing(keys_app):
    before = stored(keys_app)
    with keys_app.deferred() as first:
        new_account(keys_app)
    with keys_app.deferred() as second:
        new_account(keys_app)  # not yet committed by the first: no conflict seen
    keys_app.commit(first)
    with pytest.raises(CommitRaced):
        keys_app.commit(second)
    assert stored(keys_app) == before + 1


def test_an_answer_is_recorded_with_its_command_and_opened_with_the_same_call(keys_app):
    seal_key = os.urandom(32)
    call = keys_app.idempotent_call("account:a", "key-1", b"POST /v2/accounts {}")
    assert keys_app.recorded_answer(call, lambda: seal_key) is None
    with keys_app.deferred() as batch:
        new_account(keys_app)
    keys_app.commit_answered(batch, call, ANSWER, seal_key, by="account:a", request={})
    assert keys_app.recorded_answer(call, lambda: seal_key) == ANSWER
    again = keys_app.idempotent_call("account:a", "key-1", b"POST /v2/accounts {}")
    assert keys_app.recorded_answer(again, lambda: seal_key) == ANSWER


def test_the_record_holds_neither_the_answer_nor_the_key_in_plain_form(keys_app):
    call = keys_app.idempotent_call("account:a", "my_idempotency_key", b"POST /v2/accounts {}")
    with keys_app.deferred() as batch:
        new_account(keys_app)
    keys_app.commit_answered(batch, call, ANSWER, os.urandom(32), by="account:a", request={})
    record = keys_app.repository.get(call.record_id)
    assert isinstance(record, IdempotentRequest)
    text = repr(vars(record))
    assert "ak_the_secret" not in text and "my_idempotency_key" not in text and "id_of_the_key" not in text


def test_another_caller_with_the_same_key_has_no_answer(keys_app):
    seal_key = os.urandom(32)
    call = keys_app.idempotent_call("account:a", "key-1", b"request")
    with keys_app.deferred() as batch:
        new_account(keys_app)
    keys_app.commit_answered(batch, call, ANSWER, seal_key, by="account:a", request={})
    other = keys_app.idempotent_call("account:b", "key-1", b"request")
    assert other.record_id != call.record_id
    assert keys_app.recorded_answer(other, lambda: seal_key) is None


def test_the_same_key_with_another_request_is_refused(keys_app):
    seal_key = os.urandom(32)
    call = keys_app.idempotent_call("account:a", "key-1", b"request")
    with keys_app.deferred() as batch:
        new_account(keys_app)
    keys_app.commit_answered(batch, call, ANSWER, seal_key, by="account:a", request={})
    with pytest.raises(IdempotencyKeyReused):
        keys_app.recorded_answer(keys_app.idempotent_call("account:a", "key-1", b"another"), lambda: seal_key)


def test_without_its_seal_key_an_answer_cannot_be_opened(keys_app):
    call = keys_app.idempotent_call("account:a", "key-1", b"request")
    with keys_app.deferred() as batch:
        new_account(keys_app)
    keys_app.commit_answered(batch, call, ANSWER, os.urandom(32), by="account:a", request={})
    for seal_key in (None, os.urandom(32)):  # deleted, or another
        with pytest.raises(AnswerUnreadable):
            keys_app.recorded_answer(call, lambda key=seal_key: key)


def test_a_duplicate_commit_under_the_same_key_loses_and_writes_nothing(keys_app):
    seal_key = os.urandom(32)
    call = keys_app.idempotent_call("account:a", "key-1", b"request")
    with keys_app.deferred() as first:
        new_account(keys_app, "one@example.com")
    with keys_app.deferred() as second:
        new_account(keys_app, "two@example.com")
    keys_app.commit_answered(first, call, ANSWER, seal_key, by="account:a", request={})
    before = stored(keys_app)
    with pytest.raises(CommitRaced):
        keys_app.commit_answered(second, call, ANSWER, seal_key, by="account:a", request={})
    assert stored(keys_app) == before


def test_the_answer_expires_after_the_retention_period_by_the_application_s_clock(keys_app, clock):
    seal_key = os.urandom(32)
    call = keys_app.idempotent_call("account:a", "key-1", b"request")
    with keys_app.deferred() as batch:
        new_account(keys_app, "one@example.com")
    keys_app.commit_answered(batch, call, ANSWER, seal_key, by="account:a", request={})
    clock.now += RETENTION - timedelta(microseconds=1)
    assert keys_app.recorded_answer(call, lambda: seal_key) == ANSWER
    clock.now += timedelta(microseconds=1)
    assert keys_app.recorded_answer(call, lambda: seal_key) is None
    # the key then answers a new request: the record's next version
    later = Answer(status=201, headers=[], body=b"later")
    with keys_app.deferred() as batch:
        new_account(keys_app, "two@example.com")
    keys_app.commit_answered(batch, call, later, seal_key, by="account:a", request={})
    assert keys_app.recorded_answer(call, lambda: seal_key) == later
    assert keys_app.repository.get(call.record_id).version == 2
