"""A legacy token's use is recorded once per client per window, before the answer; a failed record is
retried after RETRY_RECORD_AFTER, and verification answers meanwhile.

The verifier is built from the system's own parts with a clock the test holds and a
``record_use`` that writes down its calls (and fails when told to), in place of the store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service import credentials
from service.domain.actors import NO_REQUEST, Actor, RequestInfo
from service.settings import Settings
from service.verification import RETRY_RECORD_AFTER, Verifier
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER

WINDOW = 3600.0
# The next window boundary after the tokens are issued (they live 48 hours).
START = datetime.fromtimestamp((datetime.now(UTC).timestamp() // WINDOW + 1) * WINDOW, UTC)


@pytest.fixture
def settings(data_dir) -> Settings:
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05,
                    legacy_sunset_at=datetime(2031, 1, 1, tzinfo=UTC))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.failing = False

    def __call__(self, client_id: bytes, display: str, at: float, request: RequestInfo) -> None:
        self.calls.append((client_id, display, at, request))
        if self.failing:
            raise OSError("the store is unavailable")


@pytest.fixture
def legacy(system):
    app = system.keys_app
    admin = Actor.system("test")
    owner, _ = app.register_account(email="o@example.com", name="O", role="owner", by=admin, request=NO_REQUEST)
    app.create_app(name="Vision", slug="vision", owner_id=owner["id"], by=admin, request=NO_REQUEST)
    client, secret = app.issue_legacy_credentials("vision", by=admin, request=NO_REQUEST)
    token, _, _ = app.issue_access_token(client["client_id"], secret, request=NO_REQUEST)
    system.after_command()
    now = [START]
    recorder = Recorder()
    verifier = Verifier(credentials.Digester(credentials.load_or_create_pepper(system.settings.data_dir,
                                                                               TEST_PEPPER)),
                        system.index, lambda: now[0], system.last_used, recorder, WINDOW)
    return verifier, token, now, recorder


def at(now: list, seconds: float) -> None:
    now[0] = START + timedelta(seconds=seconds)


def test_the_first_use_in_a_window_is_recorded_with_its_facts(legacy):
    verifier, token, now, recorder = legacy
    request = RequestInfo(id="r1", ip="203.0.113.7", user_agent="legacy-client/1.0")
    at(now, 10)
    code, kind, entry = verifier.verify(token, "Predict", None, lambda: request)
    assert (code, kind) == ("VALID", "access_token")
    assert recorder.calls == [(entry.id, credentials.display_hint(token), START.timestamp() + 10, request)]


def test_later_uses_in_the_same_window_are_not_recorded_again(legacy):
    verifier, token, now, recorder = legacy
    for seconds in (0, 1, 1800, WINDOW - 0.5):
        at(now, seconds)
        assert verifier.verify(token)[0] == "VALID"
    assert len(recorder.calls) == 1


def test_the_first_use_in_the_next_window_is_recorded(legacy):
    verifier, token, now, recorder = legacy
    at(now, WINDOW - 1)
    verifier.verify(token)
    at(now, WINDOW)
    verifier.verify(token)
    at(now, WINDOW + 1)
    verifier.verify(token)
    assert [call[2] - START.timestamp() for call in recorder.calls] == [WINDOW - 1, WINDOW]


def test_without_a_request_the_record_has_empty_request_facts(legacy):
    verifier, token, now, recorder = legacy
    verifier.verify(token)
    assert recorder.calls[0][3] == RequestInfo()


def test_a_failed_record_is_retried_after_a_pause_and_verification_answers_meanwhile(system, legacy, caplog):
    verifier, token, now, recorder = legacy
    recorder.failing = True
    at(now, 5)
    assert verifier.verify(token)[0] == "VALID"
    [warning] = [r for r in caplog.records if r.name == "keyledger.verification"]
    client_id = system.index.clients[recorder.calls[0][0]].client_id
    assert warning.getMessage() == f"could not record a legacy token use of client {client_id}; retrying in 1 s"
    assert warning.exc_info and warning.exc_info[0] is OSError and warning.levelname == "WARNING"
    at(now, 5 + RETRY_RECORD_AFTER - 0.01)
    assert verifier.verify(token)[0] == "VALID"
    assert len(recorder.calls) == 1  # not hammered
    recorder.failing = False
    at(now, 5 + RETRY_RECORD_AFTER)
    assert verifier.verify(token)[0] == "VALID"
    assert len(recorder.calls) == 2
    at(now, 5 + RETRY_RECORD_AFTER + 1)
    verifier.verify(token)
    assert len(recorder.calls) == 2  # recorded now: no more this window


def test_uses_are_counted_in_their_window(system, legacy):
    verifier, token, now, recorder = legacy
    for seconds in (1, 2, WINDOW + 3):
        at(now, seconds)
        verifier.verify(token)
    counted = {start: uses for (_, start), (uses, _) in system.last_used.legacy_pending.items()}
    assert counted == {START.timestamp(): 2, START.timestamp() + WINDOW: 1}
