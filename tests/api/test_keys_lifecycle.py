"""The key lifecycle over HTTP: create, change, roll, revoke, history, as_of."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from freezegun import freeze_time


def test_app_is_born_with_an_all_key_shown_once(owner, owner_app):
    default = owner_app["default_key"]
    assert default["scopes"] == ["All"]
    assert default["origin"] == "auto"
    assert default["key"].startswith("ak_") and len(default["key"]) == 41
    listed = owner.get("/v2/apps/vision/keys").json["keys"]
    assert [k["id"] for k in listed] == [default["id"]]
    assert "key" not in listed[0]
    assert "key" not in owner.get(f"/v2/keys/{default['id']}").json


def test_patch_changes_scopes_and_bumps_version_and_etag(owner, read_only_key):
    key_id = read_only_key["id"]
    response = owner.patch(f"/v2/keys/{key_id}", json={"scopes": ["Models:Add", "Models:Patch"]},
                           headers={"If-Match": '"1"'})
    assert response.status_code == 200
    assert response.json["scopes"] == ["Models:Add", "Models:Patch"]
    assert response.json["version"] == 2
    assert response.headers["ETag"] == '"2"'
    assert owner.get(f"/v2/keys/{key_id}").json["scopes"] == ["Models:Add", "Models:Patch"]


def test_if_match_accepts_bare_versions(owner, read_only_key):
    response = owner.patch(f"/v2/keys/{read_only_key['id']}", json={"description": "x"},
                           headers={"If-Match": "1"})
    assert response.status_code == 200


def test_stale_if_match_is_412_and_changes_nothing(owner, read_only_key):
    key_id = read_only_key["id"]
    owner.patch(f"/v2/keys/{key_id}", json={"description": "first"})
    response = owner.patch(f"/v2/keys/{key_id}", json={"description": "second"}, headers={"If-Match": '"1"'})
    assert response.status_code == 412
    assert response.json["error"]["code"] == "PRECONDITION_FAILED"
    assert owner.get(f"/v2/keys/{key_id}").json["description"] == "first"


def test_roll_returns_a_new_secret_and_keeps_the_key(owner, read_only_key):
    key_id = read_only_key["id"]
    response = owner.post(f"/v2/keys/{key_id}/roll", json={"grace_seconds": 3600})
    assert response.status_code == 200
    assert response.json["id"] == key_id
    assert response.json["key"] != read_only_key["key"]
    assert response.json["display"] == "ak_…" + response.json["key"][-4:]


def test_delete_revokes_and_is_idempotent(owner, read_only_key):
    key_id = read_only_key["id"]
    assert owner.delete(f"/v2/keys/{key_id}").status_code == 204
    assert owner.delete(f"/v2/keys/{key_id}").status_code == 204
    key = owner.get(f"/v2/keys/{key_id}").json
    assert key["status"] == "revoked"
    assert key["revoked_at"] is not None
    history = owner.get(f"/v2/keys/{key_id}/history").json["events"]
    assert [e["type"] for e in history] == ["ApiKey.Issued", "ApiKey.Revoked"]


def test_history_records_who_and_from_where(owner, read_only_key):
    key_id = read_only_key["id"]
    owner.patch(f"/v2/keys/{key_id}", json={"scopes": ["Predict"]},
                headers={"X-Request-Id": "req-abc", "User-Agent": "tour/1.0"})
    events = owner.get(f"/v2/keys/{key_id}/history").json["events"]
    change = events[-1]
    assert change["type"] == "ApiKey.ScopesChanged"
    assert change["actor"] == {"kind": "account", "id": owner.id}
    assert change["request"] == {"id": "req-abc", "ip": "127.0.0.1", "user_agent": "tour/1.0"}
    assert change["data"]["scopes"] == ["Predict"]
    assert change["data"]["previous_scopes"] == ["Predict", "Search"]
    assert change["prev_hash"] == events[-2]["hash"]


def test_as_of_shows_the_key_before_its_revocation(owner, owner_app):
    with freeze_time("2017-06-01T10:00:00Z") as frozen:
        created = owner.post("/v2/apps/vision/keys", json={"description": "ro", "scopes": ["Predict"]}).json
        frozen.tick(timedelta(hours=1))
        owner.patch(f"/v2/keys/{created['id']}", json={"scopes": ["Predict", "Search"]})
        frozen.tick(timedelta(hours=1))
        owner.delete(f"/v2/keys/{created['id']}")

        before_change = owner.get(f"/v2/keys/{created['id']}?as_of=2017-06-01T10:30:00Z").json
        before_revoke = owner.get(f"/v2/keys/{created['id']}?as_of=2017-06-01T11:30:00Z").json
        too_early = owner.get(f"/v2/keys/{created['id']}?as_of=2017-06-01T09:00:00Z")
        now = owner.get(f"/v2/keys/{created['id']}").json

    assert before_change["scopes"] == ["Predict"] and before_change["status"] == "active"
    assert before_revoke["scopes"] == ["Predict", "Search"] and before_revoke["status"] == "active"
    assert before_revoke["revoked_at"] is None
    assert too_early.status_code == 404
    assert now["status"] == "revoked"
    assert now["revoked_at"] == "2017-06-01T12:00:00Z"


def test_key_with_expiry_reads_expired_once_it_passes(owner, owner_app):
    with freeze_time("2017-06-01T10:00:00Z") as frozen:
        created = owner.post("/v2/apps/vision/keys", json={
            "description": "short", "scopes": ["Search"], "expires_at": "2017-06-02T10:00:00Z"}).json
        assert created["status"] == "active"
        assert created["expires_at"] == "2017-06-02T10:00:00Z"
        frozen.move_to(datetime(2017, 6, 3, tzinfo=UTC))
        assert owner.get(f"/v2/keys/{created['id']}").json["status"] == "expired"
        listed = owner.get("/v2/apps/vision/keys").json["keys"]
        assert {k["id"]: k["status"] for k in listed}[created["id"]] == "expired"


def test_scopes_catalogue_lists_presets(anonymous):
    body = anonymous.get("/v2/scopes").json
    names = [s["name"] for s in body["scopes"]]
    assert "Models:Train" in names and "All" in names and "Workflows:Delete" in names
    assert body["presets"]["read_only"] == ["Predict", "Search"]


def test_every_response_carries_a_request_id(anonymous):
    assert anonymous.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    assert len(anonymous.get("/healthz").headers["X-Request-Id"]) == 32


def test_roll_answers_with_the_key_s_last_use(client, owner, read_only_key):
    assert client.post("/v2/verify", json={"key": read_only_key["key"]}).json["valid"]
    rolled = owner.post(f"/v2/keys/{read_only_key['id']}/roll", json={})
    assert rolled.status_code == 200 and rolled.json["last_used_at"] is not None


def test_a_repeated_query_parameter_is_refused_not_guessed(owner, read_only_key):
    response = owner.get(f"/v2/keys/{read_only_key['id']}?as_of=2017-01-01T00:00:00Z&as_of=2030-01-01T00:00:00Z")
    assert response.status_code == 400 and response.json["error"]["code"] == "INVALID_REQUEST"
    assert "as_of" in response.json["error"]["details"]
