"""POST /v2/introspect (RFC 7662) through the Flask test client: who may ask, what the answer says."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import freezegun
import pytest

from service.domain.actors import NO_REQUEST, Actor
from tests.conftest import Caller, make_account

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def introspector(system, client) -> Caller:
    account = make_account(system, "introspector", "gateway@example.com", "Gateway")
    return Caller(client, account["token"], id=account["id"], role="introspector")


def introspect(client, token: str | None, authorization: str | None, **extra: str):
    form = {**({"token": token} if token is not None else {}), **extra}
    headers = {"Authorization": authorization} if authorization else {}
    return client.post("/v2/introspect", data=form, headers=headers, content_type=FORM)


def test_a_live_key_is_active_with_its_scopes_app_and_times(client, introspector, owner, owner_app):
    created = owner.post(f"/v2/apps/{owner_app['id']}/keys", json={
        "description": "search", "scopes": ["Search", "Predict"],
        "expires_at": "2099-01-01T00:00:00Z"}).json
    answer = introspect(client, created["key"], f"Bearer {introspector.token}")
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json
    assert body == {"active": True, "scope": "Predict Search", "client_id": created["id"],
                    "exp": int(datetime(2099, 1, 1, tzinfo=UTC).timestamp()),
                    "iat": body["iat"], "sub": owner_app["id"], "token_type": "Key", "app_id": owner_app["id"]}
    created_at = datetime.fromisoformat(created["created_at"].replace("Z", "+00:00"))
    assert body["iat"] == int(created_at.timestamp())


def test_a_key_that_never_expires_has_no_exp(client, introspector, owner_app):
    body = introspect(client, owner_app["default_key"]["key"], f"Key {introspector.token}").json
    assert body["active"] is True and body["scope"] == "All" and "exp" not in body


@pytest.mark.parametrize("token", ["ak_" + "0" * 38, "ak_short", "not-a-token-at-all", "x" * 5000, "pat_",
                                   "ak_" + "é" * 38])
def test_unknown_or_malformed_tokens_are_exactly_inactive(client, introspector, token):
    answer = introspect(client, token, f"Key {introspector.token}")
    assert answer.status_code == 200
    assert answer.get_data() == b'{"active":false}'


def test_a_revoked_key_is_exactly_inactive(client, introspector, owner, owner_app):
    key = owner_app["default_key"]
    owner.delete(f"/v2/keys/{key['id']}")
    assert introspect(client, key["key"], f"Key {introspector.token}").json == {"active": False}


def test_an_expired_key_is_exactly_inactive(client, introspector, owner, owner_app):
    soon = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    created = owner.post(f"/v2/apps/{owner_app['id']}/keys", json={
        "description": "brief", "scopes": ["Search"], "expires_at": soon}).json
    with freezegun.freeze_time(datetime.now(UTC) + timedelta(hours=2)):
        assert introspect(client, created["key"], f"Key {introspector.token}").json == {"active": False}


def test_a_personal_token_is_inactive(client, introspector, owner):
    assert introspect(client, owner.token, f"Key {introspector.token}").json == {"active": False}


def test_an_admin_may_introspect(client, admin, owner_app):
    assert introspect(client, owner_app["default_key"]["key"], f"Key {admin.token}").json["active"] is True


def test_http_basic_with_the_account_id_and_token(client, introspector, owner_app):
    basic = base64.b64encode(f"{introspector.id}:{introspector.token}".encode()).decode()
    assert introspect(client, owner_app["default_key"]["key"], f"Basic {basic}").json["active"] is True
    wrong = base64.b64encode(f"someone-else:{introspector.token}".encode()).decode()
    assert introspect(client, owner_app["default_key"]["key"], f"Basic {wrong}").status_code == 401


def test_no_credential_is_401_with_a_bearer_challenge(client, owner_app):
    answer = introspect(client, owner_app["default_key"]["key"], None)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="keyledger"'
    assert answer.json["error"]["code"] == "UNAUTHENTICATED"


def test_an_unknown_credential_is_401_invalid_token(client, owner_app):
    answer = introspect(client, owner_app["default_key"]["key"], "Bearer pat_" + "0" * 38)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="keyledger", error="invalid_token"'


@pytest.mark.parametrize("who", ["owner", "auditor"])
def test_other_roles_are_403_insufficient_scope(request, client, owner_app, who):
    caller = request.getfixturevalue(who)
    answer = introspect(client, owner_app["default_key"]["key"], f"Key {caller.token}")
    assert answer.status_code == 403
    assert answer.json["error"]["code"] == "FORBIDDEN"
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]


def test_an_api_key_may_not_introspect(client, owner_app):
    key = owner_app["default_key"]["key"]
    assert introspect(client, key, f"Key {key}").status_code == 403


def test_a_missing_token_is_400(client, introspector):
    answer = introspect(client, None, f"Key {introspector.token}")
    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "INVALID_REQUEST" and "token" in answer.json["error"]["details"]


def test_json_is_not_a_form(client, introspector, owner_app):
    answer = client.post("/v2/introspect", json={"token": owner_app["default_key"]["key"]},
                         headers={"Authorization": f"Key {introspector.token}"})
    assert answer.status_code == 400 and "body" in answer.json["error"]["details"]


def test_the_hint_is_accepted_and_ignored(client, introspector, owner_app):
    answer = introspect(client, owner_app["default_key"]["key"], f"Key {introspector.token}",
                        token_type_hint="refresh_token")
    assert answer.json["active"] is True


def test_an_introspector_manages_nothing_and_reads_no_audit(introspector, owner_app):
    key_id = owner_app["default_key"]["id"]
    for path in (f"/v2/apps/{owner_app['id']}", f"/v2/apps/{owner_app['id']}/keys", f"/v2/keys/{key_id}",
                 f"/v2/keys/{key_id}/history", f"/v2/keys/{key_id}/usage", "/v2/legacy/usage", "/v2/campaign"):
        assert introspector.get(path).status_code in (403, 404), path
    assert introspector.patch(f"/v2/keys/{key_id}", json={"description": "x"}).status_code in (403, 404)
    assert introspector.delete(f"/v2/keys/{key_id}").status_code in (403, 404)
    assert introspector.get(f"/v2/keys/{key_id}").status_code != 200
    assert introspector.get("/v2/apps").status_code == 403
    assert introspector.post("/v2/apps", json={"name": "Nope"}).status_code == 403
    assert introspector.get("/v2/audit/events").status_code == 403
    assert introspector.get("/v2/me").json["role"] == "introspector"


def test_an_admin_grants_the_introspector_role(admin):
    created = admin.post("/v2/accounts", json={"email": "kong@example.com", "name": "Kong", "role": "introspector"})
    assert created.status_code == 201 and created.json["role"] == "introspector"


def test_an_idempotency_key_is_ignored_the_verdict_is_fresh(client, introspector, owner, owner_app):
    key = owner_app["default_key"]
    headers = {"Authorization": f"Key {introspector.token}", "Idempotency-Key": "same"}
    first = client.post("/v2/introspect", data={"token": key["key"]}, headers=headers, content_type=FORM)
    owner.delete(f"/v2/keys/{key['id']}")
    again = client.post("/v2/introspect", data={"token": key["key"]}, headers=headers, content_type=FORM)
    assert first.json["active"] is True and again.json == {"active": False}
    assert "Idempotent-Replayed" not in again.headers


def test_a_replaced_token_stops_introspecting_at_once_though_it_worked_before(system, client, introspector, owner_app):
    key = owner_app["default_key"]["key"]
    for scheme in ("Key", "Bearer"):
        assert introspect(client, key, f"{scheme} {introspector.token}").json["active"] is True
    basic = base64.b64encode(f"{introspector.id}:{introspector.token}".encode()).decode()
    assert introspect(client, key, f"Basic {basic}").json["active"] is True
    system.keys_app.replace_personal_token("gateway@example.com", by=Actor.system("test"), request=NO_REQUEST)
    system.after_command()
    for authorization in (f"Key {introspector.token}", f"Bearer {introspector.token}", f"Basic {basic}"):
        answer = introspect(client, key, authorization)
        assert answer.status_code == 401 and answer.json["error"]["code"] == "REVOKED", authorization


def test_a_basic_user_name_that_is_not_the_account_is_refused_every_time(client, introspector, owner_app):
    other = introspector.id[:-1] + ("1" if introspector.id.endswith("0") else "0")  # a valid id, not theirs
    wrong = base64.b64encode(f"{other}:{introspector.token}".encode()).decode()
    for _ in range(2):  # the second time from the remembered header
        assert introspect(client, owner_app["default_key"]["key"], f"Basic {wrong}").status_code == 401


def test_a_changed_key_gets_a_fresh_answer(client, introspector, owner, owner_app):
    key = owner_app["default_key"]
    assert introspect(client, key["key"], f"Key {introspector.token}").json["scope"] == "All"
    assert owner.patch(f"/v2/keys/{key['id']}", json={"scopes": ["Search"]}).status_code == 200
    assert introspect(client, key["key"], f"Key {introspector.token}").json["scope"] == "Search"
