"""Rate limits and quotas of keys and apps: set through the API, recorded as events, enforced by
every verification (POST /v2/verify and forward-auth)."""

from __future__ import annotations

import pytest
from freezegun import freeze_time

from tests.conftest import Caller


@pytest.fixture(autouse=True)
def _remove_counters(system):
    yield
    system.limiter.counters.shared.remove()  # the file and its semaphore (in /dev/shm)


def verify(client, key, **extra):
    response = client.post("/v2/verify", json={"key": key, **extra})
    assert response.status_code == 200, response.json
    return response


def limited_key(owner: Caller, limits: list, scopes=("Predict",)) -> dict:
    response = owner.post("/v2/apps/vision/keys", json={"description": "web", "scopes": list(scopes),
                                                        "limits": limits})
    assert response.status_code == 201, response.json
    return response.json


def test_a_key_is_created_with_limits_and_shows_them(owner, owner_app):
    key = limited_key(owner, [{"limit": 100000, "per": "1d"}, {"limit": 20, "per": "1s"}])
    assert key["limits"] == [{"limit": 20, "per": "1s"}, {"limit": 100000, "per": "1d"}]  # shortest first
    shown = owner.get(f"/v2/keys/{key['id']}").json
    assert shown["limits"] == key["limits"]
    listed = owner.get("/v2/apps/vision/keys").json["keys"]
    assert {k["id"]: k["limits"] for k in listed}[key["id"]] == key["limits"]
    assert owner_app["default_key"]["limits"] == []


def test_over_its_limit_a_key_is_rate_limited_with_retry_after_right_to_the_second(client, owner, owner_app):
    key = limited_key(owner, [{"limit": 3, "per": "10s"}])
    with freeze_time("2026-12-06T10:00:00Z") as clock:
        for _ in range(3):
            assert verify(client, key["key"], scope="Predict").json["code"] == "VALID"
        refused = verify(client, key["key"], scope="Predict")
        assert refused.json["valid"] is False and refused.json["code"] == "RATE_LIMITED"
        # one unit every 10/3 s: the next is admitted 3.33 s later, so retry after 4 s
        assert refused.json["retry_after"] == 4
        assert refused.headers["Retry-After"] == "4"
        assert refused.headers["RateLimit-Policy"] == '"key-10s";q=3;w=10'
        assert refused.headers["RateLimit"] == '"key-10s";r=0;t=4'
        clock.tick(3.3)
        assert verify(client, key["key"], scope="Predict").json["code"] == "RATE_LIMITED"
        clock.tick(0.04)
        assert verify(client, key["key"], scope="Predict").json["code"] == "VALID"


def test_a_refused_request_consumes_nothing(client, owner, owner_app):
    key = limited_key(owner, [{"limit": 2, "per": "1m"}], scopes=("Predict",))
    with freeze_time("2026-12-06T10:00:00Z"):
        for _ in range(5):  # insufficient scope: refused before the limits are asked
            assert verify(client, key["key"], scope="Models:Add").json["code"] == "INSUFFICIENT_SCOPE"
        assert [verify(client, key["key"], scope="Predict").json["code"] for _ in range(3)] == [
            "VALID", "VALID", "RATE_LIMITED"]


def test_an_app_limit_is_shared_by_all_its_keys(client, owner, owner_app):
    response = owner.patch("/v2/apps/vision", json={"limits": [{"limit": 4, "per": "1h"}]})
    assert response.status_code == 200, response.json
    assert response.json["limits"] == [{"limit": 4, "per": "1h"}]
    keys = [limited_key(owner, [])["key"] for _ in range(2)] + [owner_app["default_key"]["key"]]
    with freeze_time("2026-12-06T10:00:00Z"):
        codes = [verify(client, keys[i % 3]).json["code"] for i in range(6)]
    assert codes == ["VALID"] * 4 + ["RATE_LIMITED"] * 2
    assert owner.get("/v2/apps/vision").json["limits"] == [{"limit": 4, "per": "1h"}]
    assert owner.get("/v2/apps").json["apps"][0]["limits"] == [{"limit": 4, "per": "1h"}]


def test_forward_auth_answers_429_with_the_rate_limit_headers(client, owner, owner_app):
    key = limited_key(owner, [{"limit": 1, "per": "1m"}])
    with freeze_time("2026-12-06T10:00:00Z"):
        admitted = client.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {key['key']}"})
        assert admitted.status_code == 200
        assert admitted.headers["RateLimit"] == '"key-1m";r=0;t=60'
        refused = client.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {key['key']}"})
        assert refused.status_code == 429
        assert refused.json["error"]["code"] == "RATE_LIMITED"
        assert refused.headers["Retry-After"] == "60"
        assert refused.headers["X-Keyledger-Code"] == "RATE_LIMITED"
        assert refused.headers["RateLimit-Policy"] == '"key-1m";q=1;w=60'
        for_nginx = client.get("/v2/auth/check?scope=Predict", headers={
            "Authorization": f"Key {key['key']}", "X-Keyledger-Limited-Status": "403"})
        assert for_nginx.status_code == 403 and for_nginx.headers["X-Keyledger-Code"] == "RATE_LIMITED"
        assert for_nginx.headers["Retry-After"] == "60"


def test_changing_limits_is_guarded_by_if_match_and_in_the_history(client, owner, owner_app):
    key = limited_key(owner, [])
    stale = owner.patch(f"/v2/keys/{key['id']}", json={"limits": [{"limit": 5, "per": "1s"}]},
                        headers={"If-Match": '"0"'})
    assert stale.status_code == 412
    changed = owner.patch(f"/v2/keys/{key['id']}", json={"limits": [{"limit": 5, "per": "1s"}]},
                          headers={"If-Match": f'"{key["version"]}"'})
    assert changed.status_code == 200 and changed.json["limits"] == [{"limit": 5, "per": "1s"}]
    history = owner.get(f"/v2/keys/{key['id']}/history").json["events"]
    assert history[-1]["type"] == "ApiKey.LimitsChanged"
    assert history[-1]["data"]["limits"] == [{"limit": 5, "per": "1s"}]
    assert history[-1]["data"]["previous_limits"] == []
    as_of = owner.get(f"/v2/keys/{key['id']}", query_string={"as_of": history[-2]["occurred_at"]}).json
    assert as_of["limits"] == []
    removed = owner.patch(f"/v2/keys/{key['id']}", json={"limits": []})
    assert removed.json["limits"] == []
    with freeze_time("2026-12-06T10:00:00Z"):
        assert all(verify(client, key["key"]).json["code"] == "VALID" for _ in range(10))


def test_an_unlimited_key_is_not_counted(client, owner, owner_app, system):
    limited_key(owner, [{"limit": 1, "per": "1h"}])  # limits exist, but not on this key or its app
    secret = owner_app["default_key"]["key"]
    assert all(verify(client, secret).json["code"] == "VALID" for _ in range(5))
    assert "RateLimit" not in verify(client, secret).headers


MALFORMED_LIMITS = [
    ("not a list", "limits"),
    ({"limit": 1, "per": "1s"}, "limits"),
    (None, "limits"),
    (5, "limits"),
    ([{"limit": i + 1, "per": f"{i + 1}s"} for i in range(6)], "limits"),
    (["1/s"], "limits[0]"),
    ([None], "limits[0]"),
    ([[20, "1s"]], "limits[0]"),
    ([{}], "limits[0].limit"),
    ([{"per": "1s"}], "limits[0].limit"),
    ([{"limit": 20}], "limits[0].per"),
    ([{"limit": 0, "per": "1s"}], "limits[0].limit"),
    ([{"limit": -5, "per": "1s"}], "limits[0].limit"),
    ([{"limit": 1.5, "per": "1s"}], "limits[0].limit"),
    ([{"limit": "20", "per": "1s"}], "limits[0].limit"),
    ([{"limit": True, "per": "1s"}], "limits[0].limit"),
    ([{"limit": None, "per": "1s"}], "limits[0].limit"),
    ([{"limit": 10**12, "per": "1s"}], "limits[0].limit"),
    ([{"limit": 20, "per": "1"}], "limits[0].per"),
    ([{"limit": 20, "per": "s"}], "limits[0].per"),
    ([{"limit": 20, "per": "0s"}], "limits[0].per"),
    ([{"limit": 20, "per": "1w"}], "limits[0].per"),
    ([{"limit": 20, "per": "1 s"}], "limits[0].per"),
    ([{"limit": 20, "per": "01s"}], "limits[0].per"),
    ([{"limit": 20, "per": "-1s"}], "limits[0].per"),
    ([{"limit": 20, "per": "1S"}], "limits[0].per"),
    ([{"limit": 20, "per": "1.5m"}], "limits[0].per"),
    ([{"limit": 20, "per": 1}], "limits[0].per"),
    ([{"limit": 20, "per": None}], "limits[0].per"),
    ([{"limit": 20, "per": "366d"}], "limits[0].per"),
    ([{"limit": 20, "per": "1s\n"}], "limits[0].per"),
    ([{"limit": 20, "per": "999999999s"}], "limits[0].per"),
    ([{"limit": 20, "per": "1s", "burst": 5}], "limits[0].burst"),
    ([{"limit": 20, "per": "1m"}, {"limit": 30, "per": "60s"}], "limits[1].per"),
    ([{"limit": 20, "per": "1s"}, {"limit": 0, "per": "1d"}], "limits[1].limit"),
]


@pytest.mark.parametrize(("limits", "field"), MALFORMED_LIMITS)
@pytest.mark.parametrize("where", ["create", "change", "app"])
def test_every_malformed_limit_is_400_naming_the_field(owner, owner_app, limits, field, where):
    if where == "create":
        response = owner.post("/v2/apps/vision/keys", json={"description": "x", "scopes": ["Predict"],
                                                            "limits": limits})
    elif where == "change":
        response = owner.patch(f"/v2/keys/{owner_app['default_key']['id']}", json={"limits": limits})
    else:
        response = owner.patch("/v2/apps/vision", json={"limits": limits})
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert field in error["details"], error
    assert field in error["message"] or "limits" in error["message"]


def test_bad_limits_change_nothing(owner, owner_app):
    key_id = owner_app["default_key"]["id"]
    owner.patch(f"/v2/keys/{key_id}", json={"limits": [{"limit": 0, "per": "1s"}]})
    assert owner.get(f"/v2/keys/{key_id}").json["version"] == owner_app["default_key"]["version"]


def test_an_auditor_cannot_change_an_apps_limits(auditor, owner_app):
    response = auditor.patch("/v2/apps/vision", json={"limits": [{"limit": 5, "per": "1s"}]})
    assert response.status_code == 403


def test_limit_changes_are_in_the_audit_trail_and_its_export(owner, auditor, owner_app):
    key_id = owner_app["default_key"]["id"]
    assert owner.patch(f"/v2/keys/{key_id}", json={"limits": [{"limit": 7, "per": "1m"}]}).status_code == 200
    assert owner.patch("/v2/apps/vision", json={"limits": [{"limit": 70, "per": "1h"}]}).status_code == 200
    events = auditor.get("/v2/audit/events", query_string={"app_id": "vision"}).json["events"]
    by_type = {e["type"]: e for e in events}
    assert by_type["ApiKey.LimitsChanged"]["key_id"] == key_id
    assert by_type["ApiKey.LimitsChanged"]["data"]["limits"] == [{"limit": 7, "per": "1m"}]
    assert by_type["App.LimitsChanged"]["app_id"] == "vision"
    assert by_type["App.LimitsChanged"]["data"]["limits"] == [{"limit": 70, "per": "1h"}]
    exported = auditor.get("/v2/audit/events.jsonl", query_string={"type": "App.LimitsChanged"}).get_data(as_text=True)
    assert '"limits": [{"limit": 70, "per": "1h"}]' in exported or '"limits":[{"limit":70,"per":"1h"}]' in exported
