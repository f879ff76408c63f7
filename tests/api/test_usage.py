"""Usage per key (GET /v2/keys/<id>/usage): valid answers and refusals by code, counted in memory
by the verifier, added to the view store by each flush, reported per UTC hour or day."""

from __future__ import annotations

import pytest
from freezegun import freeze_time

from projections.usage import Usage


@pytest.fixture(autouse=True)
def _remove_counters(system):
    yield
    system.limiter.counters.shared.remove()  # the rate limits' file and its semaphore (in /dev/shm)


def verify(client, key: str, **extra) -> str:
    response = client.post("/v2/verify", json={"key": key, **extra})
    assert response.status_code == 200, response.json
    return response.json["code"]


def new_key(owner, **fields) -> dict:
    response = owner.post("/v2/apps/vision/keys", json={"description": "web", "scopes": ["Predict"], **fields})
    assert response.status_code == 201, response.json
    return response.json


def usage(caller, key_id: str, **query):
    return caller.get(f"/v2/keys/{key_id}/usage", query_string=query)


def test_valid_answers_and_refusals_are_counted_by_code_per_hour(client, owner, owner_app, system):
    key = new_key(owner, restrictions={"browser": ["https://app.example.com"]},
                  limits=[{"limit": 3, "per": "1d"}])
    other = new_key(owner)
    with freeze_time("2026-12-06T10:15:00Z") as clock:
        assert verify(client, key["key"], scope="Predict", origin="https://app.example.com") == "VALID"
        assert verify(client, key["key"], scope="Models:Add", origin="https://app.example.com") \
            == "INSUFFICIENT_SCOPE"
        assert verify(client, key["key"], scope="Predict", origin="https://evil.example.net") \
            == "ORIGIN_NOT_ALLOWED"
        assert verify(client, other["key"], scope="Predict") == "VALID"  # another key: not in this one's counts
        system.usage.flush()
        clock.move_to("2026-12-06T11:59:59Z")
        assert verify(client, key["key"], scope="Predict", origin="https://app.example.com") == "VALID"
        assert verify(client, key["key"], scope="Predict", origin="https://app.example.com") == "VALID"
        assert verify(client, key["key"], scope="Predict", origin="https://app.example.com") == "RATE_LIMITED"
        clock.move_to("2026-12-06T12:00:00Z")  # a new hour, not flushed yet: read from memory
        assert verify(client, key["key"], scope="Predict") == "ORIGIN_NOT_ALLOWED"
        assert verify(client, "ak_" + "x" * 38) in ("MALFORMED", "NOT_FOUND")  # no key: not counted
        answer = usage(owner, key["id"], since="2026-12-06T10:00:00Z", until="2026-12-06T13:00:00Z")
        assert answer.status_code == 200, answer.json
        assert answer.json == {"key_id": key["id"], "granularity": "hour", "periods": [
            {"start": "2026-12-06T10:00:00Z", "valid": 1,
             "refused": {"INSUFFICIENT_SCOPE": 1, "ORIGIN_NOT_ALLOWED": 1}},
            {"start": "2026-12-06T11:00:00Z", "valid": 2, "refused": {"RATE_LIMITED": 1}},
            {"start": "2026-12-06T12:00:00Z", "valid": 0, "refused": {"ORIGIN_NOT_ALLOWED": 1}},
        ]}
        system.usage.flush()  # the same once written
        assert usage(owner, key["id"], since="2026-12-06T10:00:00Z", until="2026-12-06T13:00:00Z").json \
            == answer.json
        by_day = usage(owner, key["id"], since="2026-12-05T00:00:00Z", until="2026-12-06T13:00:00Z",
                       granularity="day").json
        assert by_day["granularity"] == "day"
        assert by_day["periods"] == [
            {"start": "2026-12-05T00:00:00Z", "valid": 0, "refused": {}},
            {"start": "2026-12-06T00:00:00Z", "valid": 3,
             "refused": {"INSUFFICIENT_SCOPE": 1, "ORIGIN_NOT_ALLOWED": 2, "RATE_LIMITED": 1}},
        ]
        # by default: the last 24 hours up to the current one, by the hour (every hour listed, zeros included)
        default = usage(owner, key["id"]).json
        assert len(default["periods"]) == 24
        assert default["periods"][-1]["start"] == "2026-12-06T12:00:00Z"
        assert sum(p["valid"] for p in default["periods"]) == 3


def test_revoked_and_expired_refusals_are_counted(client, owner, owner_app, system):
    key = new_key(owner)
    with freeze_time("2026-12-06T10:00:00Z"):
        assert verify(client, key["key"], scope="Predict") == "VALID"
        assert owner.delete(f"/v2/keys/{key['id']}", headers={"If-Match": f'"{key["version"]}"'}).status_code == 204
        assert verify(client, key["key"], scope="Predict") == "REVOKED"
        periods = usage(owner, key["id"], since="2026-12-06T10:00:00Z", until="2026-12-06T11:00:00Z").json["periods"]
    assert periods == [{"start": "2026-12-06T10:00:00Z", "valid": 1, "refused": {"REVOKED": 1}}]


def test_flushes_add_to_what_other_processes_wrote(client, owner, owner_app, system):
    """Each worker or instance flushes its own counts: they are added, never overwritten."""
    key = new_key(owner)
    key_id = bytes.fromhex(key["id"].replace("-", ""))
    others = [Usage(system.views), Usage(system.views)]  # two more processes on the same store
    with freeze_time("2026-12-06T10:30:00Z"):
        for _ in range(4):
            verify(client, key["key"], scope="Predict")
        for n, other in enumerate(others, start=1):
            for _ in range(10 * n):
                other.valid(key_id, 1796553000.0)  # 2026-12-06T10:30:00Z
            other.refused(key_id, "RATE_LIMITED", 1796553000.0)
            assert other.flush() == 2
            assert other.flush() == 0  # nothing counted twice
        system.usage.flush()
        periods = usage(owner, key["id"], since="2026-12-06T10:00:00Z", until="2026-12-06T11:00:00Z").json["periods"]
    assert periods == [{"start": "2026-12-06T10:00:00Z", "valid": 34, "refused": {"RATE_LIMITED": 2}}]


def test_the_app_pages_list_totals_of_the_last_24_hours(client, owner, owner_app, system):
    key = new_key(owner)
    with freeze_time("2026-12-05T09:00:00Z"):
        verify(client, key["key"], scope="Predict")  # more than 24 hours before: not in the total
    with freeze_time("2026-12-06T10:00:00Z"):
        verify(client, key["key"], scope="Predict")
        system.usage.flush()
        verify(client, key["key"], scope="Models:Add")
        totals = system.usage.totals([key["id"], owner_app["default_key"]["id"]], 1796551200 - 23 * 3600)
    assert totals == {key["id"]: 2}


def test_who_may_read_a_keys_usage(client, owner, owner_app, other_owner, admin, auditor, anonymous):
    key_id = owner_app["default_key"]["id"]
    for caller in (owner, admin, auditor):
        assert usage(caller, key_id).status_code == 200
    for caller in (other_owner, anonymous):
        assert usage(caller, key_id).status_code == caller.get(f"/v2/keys/{key_id}").status_code
        assert usage(caller, key_id).status_code in (401, 403, 404)
    assert usage(other_owner, key_id).json["error"]["code"] == other_owner.get(f"/v2/keys/{key_id}").json["error"]["code"]
    unknown = usage(owner, "00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 404


@pytest.mark.parametrize(("query", "field"), [
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01T00:00:00Z"}, "until"),
    ({"since": "2026-12-06T10:00:00Z", "until": "2026-12-06T09:00:00Z"}, "since"),
    ({"granularity": "minute"}, "granularity"),
    ({"granularity": ""}, "granularity"),
    ({"since": "2026-10-01T00:00:00Z", "until": "2026-12-06T00:00:00Z"}, "since"),  # 66 days by the hour
    ({"since": "2020-01-01T00:00:00Z", "until": "2026-12-06T00:00:00Z", "granularity": "day"}, "since"),
    ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ({"since": "2020-01-01T00:00:00Z"}, "since"),  # up to now: too long by the hour
    ({"since": "2999-01-01T00:00:00Z", "granularity": "day"}, "since"),  # after now
    ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
])
def test_bad_parameters_are_400_naming_the_parameter(owner, owner_app, query, field):
    answer = usage(owner, owner_app["default_key"]["id"], **query)
    assert answer.status_code == 400, answer.json
    assert answer.json["error"]["code"] == "INVALID_REQUEST"
    assert field in answer.json["error"]["message"], answer.json
    assert field in answer.json["error"]["details"], answer.json


def test_the_longest_spans_are_answered(owner, owner_app):
    key_id = owner_app["default_key"]["id"]
    hours = usage(owner, key_id, since="2026-11-05T00:00:00Z", until="2026-12-06T00:00:00Z")
    assert hours.status_code == 200 and len(hours.json["periods"]) == 31 * 24
    days = usage(owner, key_id, since="2024-12-05T00:00:00Z", until="2026-12-06T00:00:00Z", granularity="day")
    assert days.status_code == 200 and len(days.json["periods"]) == 731
