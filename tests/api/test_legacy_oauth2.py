"""Legacy OAuth2 until the sunset: client credentials, POST /v2/token, bearer tokens at the
verification endpoints, their expiry, the sunset, and the record of every use."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
from freezegun import freeze_time

from service.domain.actors import NO_REQUEST, Actor
from service.settings import Settings
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER

SUNSET = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)


@pytest.fixture
def settings(data_dir) -> Settings:
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05, legacy_sunset_at=SUNSET)


@pytest.fixture
def credentials(admin, owner_app) -> dict:
    response = admin.post("/v2/apps/vision/legacy-credentials")
    assert response.status_code == 201, response.json
    return response.json


def basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def get_token(client, credentials: dict, **kw):
    return client.post("/v2/token", data={"grant_type": "client_credentials"},
                       headers=basic(credentials["client_id"], credentials["client_secret"]), **kw)


@pytest.fixture
def access_token(client, credentials) -> str:
    response = get_token(client, credentials)
    assert response.status_code == 200, response.json
    return response.json["access_token"]


def verify(client, key: str, **fields):
    response = client.post("/v2/verify", json={"key": key, **fields})
    assert response.status_code == 200, response.json
    return response


def use_events(system) -> list:
    return [e for _, e in system.keys_app.read_events(0, 100_000)
            if type(e).__qualname__ == "LegacyUseWindow.LegacyTokenUsed"]


# -- client credentials ----------------------------------------------------------------------

def test_admin_issues_client_credentials_once_per_app(admin, credentials):
    assert set(credentials) == {"app_id", "client_id", "client_secret", "created_at"}
    assert credentials["app_id"] == "vision" and len(credentials["client_secret"]) == 40
    again = admin.post("/v2/apps/vision/legacy-credentials")
    assert again.status_code == 409 and again.json["error"]["code"] == "CONFLICT"


@pytest.mark.parametrize("who", ["owner", "auditor"])
def test_only_admins_issue_client_credentials(request, who, owner_app):
    response = request.getfixturevalue(who).post("/v2/apps/vision/legacy-credentials")
    assert response.status_code in (403, 404) and response.json["error"]["code"] in ("FORBIDDEN", "NOT_FOUND")


def test_credentials_for_a_missing_app_are_404(admin):
    assert admin.post("/v2/apps/nope/legacy-credentials").status_code == 404


# -- POST /v2/token --------------------------------------------------------------------------

def test_basic_auth_and_a_form_body_get_a_bearer_token(client, credentials):
    response = get_token(client, credentials)
    body = response.json
    assert response.status_code == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 48 * 3600
    assert body["scope"] == "api_access_write api_access api_access_read"
    assert body["status"] == {"code": 10000, "description": "Ok"}
    assert len(body["access_token"]) == 30 and "_" not in body["access_token"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Sunset"] and response.headers["Deprecation"].startswith("@")


def test_json_body_with_credentials_in_it_gets_a_token(client, credentials):
    response = client.post("/v2/token", json={"grant_type": "client_credentials",
                                              "client_id": credentials["client_id"],
                                              "client_secret": credentials["client_secret"]})
    assert response.status_code == 200 and response.json["access_token"]


def test_form_body_with_credentials_in_it_gets_a_token(client, credentials):
    response = client.post("/v2/token", data={"grant_type": "client_credentials",
                                              "client_id": credentials["client_id"],
                                              "client_secret": credentials["client_secret"]})
    assert response.status_code == 200 and response.json["access_token"]


def test_each_token_request_gets_a_new_token(client, credentials):
    first, second = get_token(client, credentials).json, get_token(client, credentials).json
    assert first["access_token"] != second["access_token"]


@pytest.mark.parametrize("secret", ["wrong-secret", ""])
def test_wrong_secret_is_invalid_client_with_basic_challenge(client, credentials, secret):
    response = client.post("/v2/token", data={"grant_type": "client_credentials"},
                           headers=basic(credentials["client_id"], secret))
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client" and response.json["status"]["code"] == 11002
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert credentials["client_secret"] not in response.get_data(as_text=True)


def test_unknown_client_is_invalid_client(client):
    response = client.post("/v2/token", data={"grant_type": "client_credentials"}, headers=basic("x", "y" * 40))
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_no_credentials_at_all_is_invalid_client(client):
    response = client.post("/v2/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


@pytest.mark.parametrize(("body", "content_type", "error"), [
    ({}, None, "invalid_request"),  # no grant_type
    ({"grant_type": "password"}, None, "unsupported_grant_type"),
    ({"grant_type": "authorization_code"}, None, "unsupported_grant_type"),
    ("grant_type=client_credentials&grant_type=client_credentials", "application/x-www-form-urlencoded",
     "invalid_request"),
    ("grant_type=client_credentials", "text/plain", "invalid_request"),
    ("{not json", "application/json", "invalid_request"),
    ('["grant_type"]', "application/json", "invalid_request"),
    ('{"grant_type": 1}', "application/json", "invalid_request"),
])
def test_malformed_token_requests_get_rfc6749_json_errors(client, credentials, body, content_type, error):
    headers = basic(credentials["client_id"], credentials["client_secret"])
    if content_type:
        response = client.post("/v2/token", data=body, headers={**headers, "Content-Type": content_type})
    else:
        response = client.post("/v2/token", data=body, headers=headers)
    assert response.status_code == 400, response.data
    assert response.mimetype == "application/json"
    assert response.json["error"] == error and response.json["error_description"]
    assert set(response.json["status"]) >= {"code", "description"}


def test_credentials_in_header_and_body_at_once_are_refused(client, credentials):
    response = client.post("/v2/token", data={"grant_type": "client_credentials",
                                              "client_secret": credentials["client_secret"]},
                           headers=basic(credentials["client_id"], credentials["client_secret"]))
    assert response.status_code == 400 and response.json["error"] == "invalid_request"


@pytest.mark.parametrize("header", ["Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
                                    "Basic " + base64.b64encode(b"\xff\xfe:x").decode()])
def test_broken_basic_headers_are_a_failed_client_authentication(client, header):
    response = client.post("/v2/token", data={"grant_type": "client_credentials"}, headers={"Authorization": header})
    assert response.status_code == 401 and response.json["error"] == "invalid_client"  # RFC 6749 §5.2
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_other_authorization_schemes_are_invalid_client(client, credentials):
    response = client.post("/v2/token", data={"grant_type": "client_credentials"},
                           headers={"Authorization": "Bearer abc"})
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_basic_credentials_are_form_urlencoded_per_rfc6749(client, admin, system, owner):
    owner.post("/v2/apps", json={"id": "odd", "name": "Odd"})
    record = {"app_id": "odd2", "app_name": "Odd", "owner_email": "odd@example.com", "owner_name": "Odd",
              "client_id": "odd.client", "client_secret": "s3cret:with+plus and space"}
    assert system.keys_app.import_legacy_app(record, by=Actor.system("test")) == "created"
    system.after_command()
    encoded = "odd.client:" + "s3cret%3Awith%2Bplus+and+space"
    response = client.post("/v2/token", data={"grant_type": "client_credentials"},
                           headers={"Authorization": "Basic " + base64.b64encode(encoded.encode()).decode()})
    assert response.status_code == 200, response.json


# -- bearer tokens at verification -----------------------------------------------------------

def test_access_token_verifies_as_all_scopes_with_deprecation(client, credentials, access_token):
    response = verify(client, access_token, scope="Models:Add")
    body = response.json
    assert body["valid"] is True and body["code"] == "VALID" and body["kind"] == "access_token"
    assert body["app_id"] == "vision" and body["scopes"] == ["All"] and body["key_id"] is None
    assert body["client_id"] == credentials["client_id"]
    assert body["deprecation"]["sunset_at"] == SUNSET.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parsedate_to_datetime(response.headers["Sunset"]) == SUNSET
    deprecated = int(response.headers["Deprecation"].removeprefix("@"))
    assert deprecated == int((SUNSET - timedelta(days=90)).timestamp())
    assert response.headers["Link"] == '</docs/migration>; rel="deprecation"; type="text/markdown"'


def test_access_token_is_refused_for_another_app(client, access_token):
    assert verify(client, access_token, app_id="other").json["code"] == "APP_MISMATCH"


def test_forward_auth_accepts_a_bearer_token_with_deprecation_headers(client, credentials, access_token):
    response = client.get("/v2/auth/check?scope=Models:Patch", headers={"Authorization": f"Bearer {access_token}"})
    assert response.status_code == 200
    assert response.headers["X-Keyledger-App-Id"] == "vision"
    assert response.headers["X-Keyledger-Client-Id"] == credentials["client_id"]
    assert response.headers["X-Keyledger-Scopes"] == "All"
    assert {"Deprecation", "Sunset", "Link"} <= set(response.headers.keys())


def test_migration_guide_is_served_where_the_link_points(client):
    response = client.get("/docs/migration")
    assert response.status_code == 200 and b"Authorization: Key" in response.data


def test_expired_token_answers_401_with_the_expired_token_status(client, credentials):
    with freeze_time(datetime.now(UTC)) as frozen:
        token = get_token(client, credentials).json["access_token"]
        frozen.tick(timedelta(hours=47, minutes=59))
        assert verify(client, token).json["code"] == "VALID"
        frozen.tick(timedelta(minutes=2))
        refused = verify(client, token).json
        assert refused["code"] == "EXPIRED" and refused["status"]["details"] == "expired token"
        response = client.get("/v2/auth/check", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.json["error"]["code"] == "EXPIRED"
        assert response.json["status"] == {"code": 11001, "description": "Invalid authentication token",
                                           "details": "expired token"}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_after_the_sunset_tokens_are_refused_and_none_are_issued(client, credentials):
    with freeze_time(datetime.now(UTC)) as frozen:
        token = get_token(client, credentials).json["access_token"]
        frozen.move_to(SUNSET - timedelta(seconds=1))
        assert verify(client, token).json["code"] in ("VALID", "EXPIRED")
        frozen.move_to(SUNSET)
        assert verify(client, token).json["code"] == "LEGACY_TOKEN_SUNSET"
        check = client.get("/v2/auth/check", headers={"Authorization": f"Bearer {token}"})
        assert check.status_code == 401 and check.json["error"]["code"] == "LEGACY_TOKEN_SUNSET"
        issued = get_token(client, credentials)
        assert issued.status_code == 400 and issued.json["error"] == "unauthorized_client"
        assert "API key" in issued.json["error_description"]


def test_a_disabled_client_stops_at_once_everywhere(client, system, credentials, access_token):
    assert system.keys_app.disable_legacy_access("vision", by=Actor.system("test"), request=NO_REQUEST)
    system.after_command()
    assert verify(client, access_token).json["code"] == "LEGACY_TOKEN_SUNSET"
    assert get_token(client, credentials).json["error"] == "unauthorized_client"
    assert not system.keys_app.disable_legacy_access("vision", by=Actor.system("test"), request=NO_REQUEST)


def test_management_api_does_not_accept_access_tokens(client, access_token):
    response = client.get("/v2/apps", headers={"Authorization": f"Bearer {access_token}"})
    assert response.status_code == 401


def test_client_secret_is_not_an_access_token(client, credentials):
    assert verify(client, credentials["client_secret"]).json["code"] == "NOT_FOUND"


# -- every use on record, bounded --------------------------------------------------------------

def test_uses_are_recorded_once_per_window(client, system, access_token):
    with freeze_time(datetime.now(UTC).replace(minute=0, second=0, microsecond=0)) as frozen:
        for _ in range(25):
            assert verify(client, access_token).json["valid"]
        assert client.get("/v2/auth/check", headers={"Authorization": f"Bearer {access_token}"}).status_code == 200
        assert len(use_events(system)) == 1
        frozen.tick(timedelta(minutes=59))
        verify(client, access_token)
        assert len(use_events(system)) == 1
        frozen.tick(timedelta(minutes=2))
        verify(client, access_token)
        events = use_events(system)
    assert len(events) == 2
    assert events[1].window_start - events[0].window_start == timedelta(hours=1)
    assert events[0].client_id and events[0].app_id == "vision"
    assert events[0].token_display == "…" + access_token[-4:]


def test_a_refused_token_records_no_use(client, system, credentials):
    with freeze_time(datetime.now(UTC)) as frozen:
        token = get_token(client, credentials).json["access_token"]
        frozen.tick(timedelta(hours=49))
        verify(client, token)
    assert use_events(system) == []


def test_legacy_usage_lists_each_app_for_admins_and_auditors(client, system, admin, auditor, owner,
                                                            credentials, access_token, owner_app):
    for _ in range(3):
        verify(client, access_token)
    body = admin.get("/v2/legacy/usage").json
    assert auditor.get("/v2/legacy/usage").json["apps"] == body["apps"]
    (app,) = body["apps"]
    assert app["app_id"] == "vision" and app["owner_id"] == owner.id
    assert app["client_id"] == credentials["client_id"]
    assert app["uses"] == 3 and app["windows"] == 1 and app["tokens_issued"] == 1
    assert app["last_used_at"] is not None and app["uses_api_keys"] is False
    verify(client, owner_app["default_key"]["key"])
    assert admin.get("/v2/legacy/usage").json["apps"][0]["uses_api_keys"] is True


@pytest.mark.parametrize("who", ["owner", "api_key_caller", "anonymous"])
def test_legacy_usage_is_not_for_owners_keys_or_strangers(request, who):
    response = request.getfixturevalue(who).get("/v2/legacy/usage")
    assert response.status_code in (401, 403)


def test_events_and_views_hold_no_secret_or_token(system, credentials, access_token, client):
    verify(client, access_token)
    system.last_used.flush()
    text = repr([e.__dict__ for _, e in system.keys_app.read_events(0, 10_000)])
    assert credentials["client_secret"] not in text and access_token not in text
    # the system fixture also scans every file of the data directory for every secret issued


# -- found by probing a running server ------------------------------------------------------------

@pytest.mark.parametrize("client_id", ["\ud800", "a\u0000b", "x" * 5000, "ümlaut", " "])
def test_odd_client_ids_are_invalid_client_not_500(client, client_id):
    response = client.post("/v2/token", json={"grant_type": "client_credentials", "client_id": client_id,
                                              "client_secret": "xxxxxxxx"})
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_a_chunked_body_cannot_get_past_the_size_limit(client, credentials):
    big = "grant_type=client_credentials&pad=" + "x" * 20_000
    import io

    response = client.post("/v2/token", input_stream=io.BytesIO(big.encode()), headers={
        **basic(credentials["client_id"], credentials["client_secret"]),
        "Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})  # as gunicorn marks a chunked body
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    assert "larger than" in response.json["error_description"]


def test_many_token_requests_at_once_for_one_client_all_succeed(flask_app, credentials):
    import threading

    statuses = []

    def ask() -> None:
        with flask_app.test_client() as own:
            for _ in range(5):
                statuses.append(get_token(own, credentials).status_code)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 30


def test_no_token_outlives_the_sunset(client, credentials):
    with freeze_time(SUNSET - timedelta(hours=1)):
        body = get_token(client, credentials).json
        assert body["expires_in"] == 3600
        assert verify(client, body["access_token"]).json["expires_at"] == SUNSET.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_client_ids_are_shown_not_redacted(admin, credentials):
    again = admin.post("/v2/apps/vision/legacy-credentials")
    assert credentials["client_id"] in again.json["error"]["message"]
    assert credentials["client_id"].islower() or credentials["client_id"].isdigit()


@pytest.mark.parametrize(("path", "field", "body"), [
    ("/v2/apps", "name", lambda s: {"name": f"copy of {s}"}),
    ("/v2/apps/vision/keys", "description", lambda s: {"description": f"prod {s}", "scopes": ["Predict"]}),
])
def test_a_pasted_secret_never_becomes_an_event(owner, owner_app, system, credentials, path, field, body):
    before = system.keys_app.last_position()
    for secret in (credentials["client_secret"], owner_app["default_key"]["key"], owner.token):
        response = owner.post(path, json=body(secret))
        assert response.status_code == 400, response.json
        assert response.json["error"]["code"] == "INVALID_REQUEST" and field in response.json["error"]["details"]
        assert secret not in response.get_data(as_text=True)
    assert system.keys_app.last_position() == before


def test_audit_knows_legacy_clients_and_their_events(client, system, admin, auditor, credentials, access_token):
    verify(client, access_token)
    system.after_command()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    access = auditor.get(f"/v2/audit/access?app_id=vision&scope=Models:Add&at={now}").json
    kinds = {c["kind"]: c for c in access["credentials"]}
    assert kinds["access_token"]["client_id"] == credentials["client_id"]
    assert kinds["access_token"]["scopes"] == ["All"] and "api_key" in kinds
    types = [e["type"] for e in auditor.get("/v2/audit/events?app_id=vision&limit=1000").json["events"]]
    assert {"App.LegacyClientAttached", "LegacyClient.CredentialsIssued", "LegacyClient.AccessTokenIssued",
            "LegacyUseWindow.LegacyTokenUsed"} <= set(types)
    issued = auditor.get("/v2/audit/events?type=LegacyClient.CredentialsIssued").json["events"][0]
    assert "secret_digest" not in issued["data"] and issued["data"]["client_id"] == credentials["client_id"]
    assert system.keys_app.disable_legacy_access("vision", by=Actor.system("test"), request=NO_REQUEST)
    system.after_command()
    later = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    after = auditor.get(f"/v2/audit/access?app_id=vision&scope=Models:Add&at={later}").json
    assert "access_token" not in {c["kind"] for c in after["credentials"]}
    before = auditor.get(f"/v2/audit/access?app_id=vision&scope=Models:Add&at={now}").json
    assert "access_token" in {c["kind"] for c in before["credentials"]}


def token_with(client, headers: dict):
    return client.post("/v2/token", data={"grant_type": "client_credentials"}, headers=headers)


def test_a_token_request_retried_with_its_idempotency_key_gets_the_same_token(client, credentials):
    first = token_with(client, headers={**basic(credentials["client_id"], credentials["client_secret"]),
                                                    "Idempotency-Key": "token-1"})
    again = token_with(client, headers={**basic(credentials["client_id"], credentials["client_secret"]),
                                                    "Idempotency-Key": "token-1"})
    assert first.status_code == again.status_code == 200
    assert again.json["access_token"] == first.json["access_token"]
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["Sunset"] == first.headers["Sunset"]
    assert verify(client, again.json["access_token"]).json["code"] == "VALID"
    fresh = get_token(client, credentials)  # no key: a new token
    assert fresh.json["access_token"] != first.json["access_token"]


def test_a_token_idempotency_key_is_scoped_to_the_credentials_sent(client, credentials):
    headers = {**basic(credentials["client_id"], credentials["client_secret"]), "Idempotency-Key": "shared"}
    first = token_with(client, headers=headers)
    wrong = token_with(client, headers={**basic(credentials["client_id"], "not-the-secret"),
                                                    "Idempotency-Key": "shared"})
    assert first.status_code == 200
    assert wrong.status_code == 401 and "access_token" not in wrong.json  # never someone else's answer


def test_a_bad_idempotency_key_on_the_token_endpoint_is_an_oauth2_error(client, credentials):
    response = token_with(client, headers={**basic(credentials["client_id"], credentials["client_secret"]),
                                                       "Idempotency-Key": "x" * 256})
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request" and "Idempotency-Key" in response.json["error_description"]
