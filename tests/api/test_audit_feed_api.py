"""GET /v2/audit/events.jsonl with since_seq and follow, through the Flask test client (which
writes a stream itself, so a follow stream here lasts its limit: two seconds in these tests)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from service.api import create_app
from service.audit_feed import Streams
from service.composition import build_system
from service.settings import Settings, SettingsError
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, Caller, make_account


@pytest.fixture
def feed_client(data_dir):
    system = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05,
                                        audit_follow_limit=timedelta(seconds=2),
                                        audit_heartbeat=timedelta(seconds=1)))
    flask_app = create_app(system=system)
    yield system, flask_app
    system.close()


def lines(response) -> list[str]:
    return response.get_data(as_text=True).split("\n")


def test_since_seq_exports_the_events_after_that_position(feed_client):
    system, flask_app = feed_client
    admin = make_account(system, "admin", "admin@example.com")
    for n in range(4):
        make_account(system, "owner", f"o{n}@example.com")
    caller = Caller(flask_app.test_client(), admin["token"])
    everything = caller.get("/v2/audit/events.jsonl").get_data(as_text=True)
    after_two = caller.get("/v2/audit/events.jsonl?since_seq=2").get_data(as_text=True)
    assert everything.splitlines(keepends=True)[2:] == after_two.splitlines(keepends=True)
    assert [json.loads(line)["seq"] for line in after_two.splitlines()][0] == 3


def test_follow_streams_then_ends_at_its_limit_with_heartbeats(feed_client):
    system, flask_app = feed_client
    admin = make_account(system, "admin", "admin@example.com")
    caller = Caller(flask_app.test_client(), admin["token"])
    started = time.monotonic()
    answer = caller.get("/v2/audit/events.jsonl?follow=1")
    body = lines(answer)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Accel-Buffering"] == "no"
    assert json.loads(body[0])["seq"] == 1
    assert "" in body[1:-1]  # a heartbeat: a blank line
    assert 1.9 < time.monotonic() - started < 10


def test_owners_may_export_but_not_follow(feed_client):
    system, flask_app = feed_client
    owner = Caller(flask_app.test_client(), make_account(system, "owner", "owner@example.com")["token"])
    assert owner.get("/v2/audit/events.jsonl").status_code == 200
    refused = owner.get("/v2/audit/events.jsonl?follow=1")
    assert refused.status_code == 403 and refused.json["error"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize("query", ["since_seq=-1", "since_seq=x", "follow=maybe", "since_seq=1&since_seq=2"])
def test_bad_feed_parameters_are_400(feed_client, query):
    system, flask_app = feed_client
    admin = Caller(flask_app.test_client(), make_account(system, "admin", "admin@example.com")["token"])
    answer = admin.get(f"/v2/audit/events.jsonl?{query}")
    assert answer.status_code == 400 and answer.json["error"]["code"] == "INVALID_REQUEST"


def test_a_process_streaming_its_most_feeds_says_503_retry_later(feed_client):
    system, flask_app = feed_client
    flask_app.extensions["keyledger_audit_streams"] = Streams(1)
    flask_app.extensions["keyledger_audit_streams"].take()  # the one slot is taken
    admin = Caller(flask_app.test_client(), make_account(system, "admin", "admin@example.com")["token"])
    answer = admin.get("/v2/audit/events.jsonl?follow=1")
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert admin.get("/v2/audit/events.jsonl").status_code == 200  # the one-shot export is not a stream


@pytest.mark.store_independent
@pytest.mark.parametrize("variable", ["KEYLEDGER_AUDIT_HEARTBEAT", "KEYLEDGER_AUDIT_FOLLOW_LIMIT"])
def test_feed_settings_are_durations_above_zero(variable):
    assert Settings.from_env({variable: "2m"}) is not None
    for bad in ("0s", "soon", "-1s"):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({variable: bad})


@pytest.mark.timing_sensitive  # wall-clock bound
def test_head_of_a_follow_stream_answers_at_once(feed_client):
    system, flask_app = feed_client
    admin = make_account(system, "admin", "admin@example.com")
    started = time.monotonic()
    answer = flask_app.test_client().head("/v2/audit/events.jsonl?follow=1",
                                          headers={"Authorization": f"Key {admin['token']}"})
    assert answer.status_code == 200 and answer.get_data() == b""
    assert time.monotonic() - started < 1.5
