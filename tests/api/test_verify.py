"""Verification for gateways: POST /v2/verify and GET /v2/auth/check."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time


def verify(client, key, **extra):
    response = client.post("/v2/verify", json={"key": key, **extra})
    assert response.status_code == 200, response.json
    return response.json


def test_all_key_passes_any_scope_even_one_added_later(client, owner_app):
    secret = owner_app["default_key"]["key"]
    for scope in ("Predict", "Models:Train", "Datasets:Export-not-in-catalogue-yet"):
        result = verify(client, secret, scope=scope)
        assert result["valid"] is True and result["code"] == "VALID", scope
    assert result["kind"] == "api_key"
    assert result["key_id"] == owner_app["default_key"]["id"]
    assert result["app_id"] == "vision"
    assert result["scopes"] == ["All"]


def test_read_only_key_may_predict_but_not_add_models(client, read_only_key):
    assert verify(client, read_only_key["key"], scope="Predict")["code"] == "VALID"
    refused = verify(client, read_only_key["key"], scope="Models:Add")
    assert refused == {**refused, "valid": False, "code": "INSUFFICIENT_SCOPE", "kind": "api_key",
                       "key_id": read_only_key["id"]}


def test_key_for_another_app_is_app_mismatch(client, read_only_key):
    assert verify(client, read_only_key["key"], scope="Predict", app_id="other")["code"] == "APP_MISMATCH"
    assert verify(client, read_only_key["key"], scope="Predict", app_id="vision")["code"] == "VALID"


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1],
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),
    lambda k: k + "x",
    lambda k: "ak_" + "0" * 38,
], ids=["truncated", "wrong-checksum", "too-long", "zeros"])
def test_mangled_key_is_malformed(client, read_only_key, mangle):
    result = verify(client, mangle(read_only_key["key"]))
    assert result["code"] == "MALFORMED" and result["valid"] is False


def test_unknown_well_formed_key_is_not_found(client, system):
    from service import credentials
    result = verify(client, credentials.generate("ak_"))
    assert result["code"] == "NOT_FOUND" and result["kind"] == "api_key"
    assert verify(client, "some-legacy-token")["code"] == "NOT_FOUND"


def test_revoked_key_is_refused_before_delete_returns(client, owner, read_only_key):
    assert verify(client, read_only_key["key"])["code"] == "VALID"
    assert owner.delete(f"/v2/keys/{read_only_key['id']}").status_code == 204
    assert verify(client, read_only_key["key"])["code"] == "REVOKED"


def test_scope_change_applies_on_the_next_verification(client, owner, read_only_key):
    owner.patch(f"/v2/keys/{read_only_key['id']}", json={"scopes": ["Models:Add"]})
    assert verify(client, read_only_key["key"], scope="Predict")["code"] == "INSUFFICIENT_SCOPE"
    assert verify(client, read_only_key["key"], scope="Models:Add")["code"] == "VALID"


def test_rolled_secret_verifies_until_the_grace_period_ends(client, owner, owner_app):
    with freeze_time("2017-06-01T10:00:00Z") as frozen:
        key = owner.post("/v2/apps/vision/keys", json={"description": "r", "scopes": ["Search"]}).json
        rolled = owner.post(f"/v2/keys/{key['id']}/roll", json={"grace_seconds": 600}).json
        assert verify(client, key["key"], scope="Search")["code"] == "VALID"
        assert verify(client, rolled["key"], scope="Search")["code"] == "VALID"
        frozen.tick(timedelta(seconds=599))
        assert verify(client, key["key"])["code"] == "VALID"
        frozen.tick(timedelta(seconds=2))
        assert verify(client, key["key"])["code"] == "REVOKED"
        assert verify(client, rolled["key"])["code"] == "VALID"


def test_roll_without_grace_retires_the_old_secret_at_once(client, owner, read_only_key):
    rolled = owner.post(f"/v2/keys/{read_only_key['id']}/roll", json={}).json
    assert verify(client, read_only_key["key"])["code"] == "REVOKED"
    assert verify(client, rolled["key"])["code"] == "VALID"


def test_expired_key_is_refused(client, owner, owner_app):
    with freeze_time("2017-06-01T10:00:00Z") as frozen:
        key = owner.post("/v2/apps/vision/keys", json={
            "description": "e", "scopes": ["Search"], "expires_at": "2017-06-01T11:00:00Z"}).json
        assert verify(client, key["key"])["expires_at"] == "2017-06-01T11:00:00Z"
        frozen.tick(timedelta(hours=2))
        assert verify(client, key["key"])["code"] == "EXPIRED"


def test_personal_token_carries_no_api_scopes(client, owner):
    result = verify(client, owner.token)
    assert result["kind"] == "personal_token"
    assert result["valid"] is False and result["code"] == "INSUFFICIENT_SCOPE"
    assert verify(client, owner.token, scope="Predict")["code"] == "INSUFFICIENT_SCOPE"


@pytest.mark.parametrize("body", [{}, {"key": 5}, {"key": ""}, {"key": "x", "scope": 1}, {"key": "x", "extra": 1}])
def test_verify_rejects_a_malformed_request(client, body):
    response = client.post("/v2/verify", json=body)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "INVALID_REQUEST"


def test_verify_rejects_a_non_json_body(client):
    response = client.post("/v2/verify", data="key=ak_x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400 and response.json["error"]["code"] == "INVALID_REQUEST"


def test_verification_notes_last_used_without_an_event(client, owner, read_only_key, system):
    before = system.keys_app.last_position()
    verify(client, read_only_key["key"], scope="Predict")
    assert system.keys_app.last_position() == before
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["last_used_at"] is not None
    system.last_used.flush()
    system.last_used.pending.clear()
    listed = owner.get("/v2/apps/vision/keys").json["keys"]
    assert {k["id"]: k["last_used_at"] for k in listed}[read_only_key["id"]] is not None


# -- forward auth -------------------------------------------------------------------------------

def test_auth_check_passes_with_identity_headers(client, read_only_key):
    response = client.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {read_only_key['key']}"})
    assert response.status_code == 200
    assert response.headers["X-Keyledger-App-Id"] == "vision"
    assert response.headers["X-Keyledger-Key-Id"] == read_only_key["id"]
    assert response.headers["X-Keyledger-Scopes"] == "Predict Search"


def test_auth_check_reads_the_scope_from_a_header(client, read_only_key):
    response = client.get("/v2/auth/check", headers={"Authorization": f"Key {read_only_key['key']}",
                                                      "X-Required-Scope": "Models:Add"})
    assert response.status_code == 403
    assert response.json["error"]["code"] == "FORBIDDEN"
    assert response.json["error"]["details"]["reason"] == "INSUFFICIENT_SCOPE"


@pytest.mark.parametrize("authorization, code", [
    (None, "UNAUTHENTICATED"),
    ("Key ak_short", "MALFORMED"),
    ("Basic dXNlcjpwYXNz", "UNAUTHENTICATED"),
    ("Key nope-not-a-key", "UNAUTHENTICATED"),
])
def test_auth_check_refuses_bad_credentials_with_401(client, authorization, code):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/v2/auth/check?scope=Predict", headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == code


def test_auth_check_refuses_a_revoked_key(client, owner, read_only_key):
    owner.delete(f"/v2/keys/{read_only_key['id']}")
    response = client.get("/v2/auth/check", headers={"Authorization": f"Key {read_only_key['key']}"})
    assert response.status_code == 401 and response.json["error"]["code"] == "REVOKED"


@pytest.mark.parametrize("body", [
    b'\xef\xbb\xbf{"key": "ak_x"}',  # a UTF-8 byte-order mark
    '{"key": "ak_x"}'.encode("utf-16"),
    '{"key": "ak_x"}'.encode("utf-32"),
    b'{"key": "\\ud800"}',  # an escaped lone surrogate
])
@pytest.mark.parametrize("path", ["/v2/verify", "/v2/apps"])
def test_one_json_decoding_rule_for_every_endpoint(owner, path, body):
    response = owner.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json["error"]["code"] == "INVALID_REQUEST"
