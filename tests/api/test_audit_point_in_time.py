"""Point-in-time answers under a frozen clock: ``GET /v2/keys/<id>?as_of=`` and
``GET /v2/audit/access`` give the scopes, secrets and status of that moment, replayed from
events — not guessed from the key as it is now (revoked)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time


@pytest.fixture
def timeline(owner, auditor):
    """10:00 app (its default ``All`` key revoked at 10:01); 10:10 key [Predict]; 11:00 widened
    to [Predict, Models:Add]; 12:00 narrowed to [Models:Add]; 13:00 rolled with an hour's
    grace; 14:30 revoked. Queried afterwards, at 16:00."""
    with freeze_time("2017-06-01T10:00:00Z") as frozen:
        app = owner.post("/v2/apps", json={"id": "atlas", "name": "Atlas"}).json
        frozen.tick(timedelta(minutes=1))
        assert owner.delete(f"/v2/keys/{app['default_key']['id']}").status_code == 204
        frozen.tick(timedelta(minutes=9))
        key = owner.post("/v2/apps/atlas/keys", json={"description": "ci", "scopes": ["Predict"]}).json
        frozen.tick(timedelta(minutes=50))
        owner.patch(f"/v2/keys/{key['id']}", json={"scopes": ["Predict", "Models:Add"]})
        frozen.tick(timedelta(hours=1))
        owner.patch(f"/v2/keys/{key['id']}", json={"scopes": ["Models:Add"]})
        frozen.tick(timedelta(hours=1))
        rolled = owner.post(f"/v2/keys/{key['id']}/roll", json={"grace_seconds": 3600}).json
        frozen.tick(timedelta(hours=1, minutes=30))
        assert owner.delete(f"/v2/keys/{key['id']}").status_code == 204
        frozen.tick(timedelta(hours=1, minutes=30))
        yield {"key": key, "rolled": rolled, "default_key": app["default_key"], "owner": owner,
               "auditor": auditor}


def access(caller, scope: str, at: str) -> list[dict]:
    response = caller.get(f"/v2/audit/access?app_id=atlas&scope={scope}&at={at}")
    assert response.status_code == 200, response.json
    assert (response.json["app_id"], response.json["scope"], response.json["at"]) == ("atlas", scope, at)
    return response.json["credentials"]


def scopes_by_key(credentials: list[dict]) -> dict[str, list[str]]:
    assert all(c["kind"] == "api_key" for c in credentials)
    return {c["key_id"]: c["scopes"] for c in credentials}


CASES = [
    # moment,                 scopes then (as_of),        Models:Add may act?   Predict may act?
    ("2017-06-01T10:30:00Z", ["Predict"], False, True),
    ("2017-06-01T11:30:00Z", ["Predict", "Models:Add"], True, True),
    ("2017-06-01T12:30:00Z", ["Models:Add"], True, False),
    ("2017-06-01T13:30:00Z", ["Models:Add"], True, False),
]


@pytest.mark.parametrize(("moment", "scopes", "models_add", "predict"), CASES)
def test_as_of_and_access_give_the_scopes_of_that_moment(timeline, moment, scopes, models_add, predict):
    key_id = timeline["key"]["id"]
    for caller in (timeline["owner"], timeline["auditor"]):
        then = caller.get(f"/v2/keys/{key_id}?as_of={moment}").json
        assert (then["scopes"], then["status"]) == (scopes, "active")

        assert scopes_by_key(access(caller, "Models:Add", moment)) == ({key_id: scopes} if models_add else {})
        assert scopes_by_key(access(caller, "Predict", moment)) == ({key_id: scopes} if predict else {})


def test_after_the_revocation_the_key_could_do_nothing(timeline):
    key_id = timeline["key"]["id"]
    owner = timeline["owner"]
    then = owner.get(f"/v2/keys/{key_id}?as_of=2017-06-01T15:00:00Z").json
    assert (then["status"], then["revoked_at"]) == ("revoked", "2017-06-01T14:30:00Z")
    assert access(owner, "Models:Add", "2017-06-01T15:00:00Z") == []
    assert owner.get(f"/v2/keys/{key_id}").json["status"] == "revoked"  # and so it is now


def test_a_rolled_secret_counts_while_its_grace_period_lasts(timeline):
    owner = timeline["owner"]
    new_display = timeline["rolled"]["display"]
    old_display = timeline["key"]["display"]

    during = access(owner, "Models:Add", "2017-06-01T13:30:00Z")[0]["secrets"]
    after = access(owner, "Models:Add", "2017-06-01T14:15:00Z")[0]["secrets"]

    assert during == [{"display": new_display, "valid_until": None},
                      {"display": old_display, "valid_until": "2017-06-01T14:00:00Z"}]
    assert after == [{"display": new_display, "valid_until": None}]


def test_the_default_key_counts_only_until_its_revocation(timeline):
    owner = timeline["owner"]
    default_id = timeline["default_key"]["id"]
    assert scopes_by_key(access(owner, "Workflows:Delete", "2017-06-01T10:00:30Z")) == {default_id: ["All"]}
    assert access(owner, "Workflows:Delete", "2017-06-01T10:05:00Z") == []
    assert access(owner, "Predict", "2017-06-01T09:00:00Z") == []  # before the app existed


def test_access_refuses_an_unknown_scope_and_a_bad_time(timeline):
    owner = timeline["owner"]
    unknown = owner.get("/v2/audit/access?app_id=atlas&scope=Fly")
    assert unknown.status_code == 400 and unknown.json["error"]["code"] == "SCOPE_UNKNOWN"
    bad_time = owner.get("/v2/audit/access?app_id=atlas&scope=Predict&at=yesterday")
    assert bad_time.status_code == 400 and "at" in bad_time.json["error"]["details"]
    for edge in ("0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00"):
        out_of_range = owner.get(f"/v2/audit/access?app_id=atlas&scope=Predict&at={edge}")
        assert out_of_range.status_code == 400 and "at" in out_of_range.json["error"]["details"]
    missing = owner.get("/v2/audit/access?scope=Predict")
    assert missing.status_code == 400 and "app_id" in missing.json["error"]["details"]
