"""``POST /v2/introspect`` asked by a real OAuth client library (authlib's RFC 7662
``introspect_token``, authenticating with ``client_secret_basic``: the introspector account's id and
personal token) against a real server process.
"""

from __future__ import annotations

import base64

import pytest
from authlib.integrations.requests_client import OAuth2Session

from tests.e2e.conftest import ServerProcess, StartServer


@pytest.fixture
def server(start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on 127.0.0.1 in a test
    return start_server(env={"KEYLEDGER_LEGACY_SUNSET_AT": "2099-01-01T00:00:00Z"})


def resource_server(server: ServerProcess) -> OAuth2Session:
    """What a resource server holds: an introspector account made with the command line."""
    account = server.create_account("introspector", "gateway@example.com", "Gateway")
    session = OAuth2Session(client_id=account["id"], client_secret=account["token"])  # client_secret_basic
    session.trust_env = False  # no proxy between the test and 127.0.0.1
    return session


def test_authlib_sees_a_live_key_active_with_its_scopes_and_a_revoked_one_inactive(server: ServerProcess):
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    app_id = server.post("/v2/apps", {"name": "Vision"}, token=admin).json["id"]
    key = server.post(f"/v2/apps/{app_id}/keys", {"description": "search", "scopes": ["Search", "Predict"]},
                      token=admin).json
    client = resource_server(server)

    answer = client.introspect_token(server.url + "/v2/introspect", token=key["key"], token_type_hint="access_token")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["active"] is True
    assert body["scope"] == "Predict Search"
    assert (body["client_id"], body["sub"], body["app_id"], body["token_type"]) == (key["id"], app_id, app_id, "Key")
    assert isinstance(body["iat"], int) and "exp" not in body

    assert server.delete(f"/v2/keys/{key['id']}", token=admin).status == 204
    answer = client.introspect_token(server.url + "/v2/introspect", token=key["key"])
    assert answer.status_code == 200 and answer.json() == {"active": False}
    assert answer.content == b'{"active":false}'


def test_authlib_introspects_a_legacy_access_token(server: ServerProcess):
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    app_id = server.post("/v2/apps", {"name": "Legacy"}, token=admin).json["id"]
    credentials = server.post(f"/v2/apps/{app_id}/legacy-credentials", token=admin).json
    basic = base64.b64encode(f"{credentials['client_id']}:{credentials['client_secret']}".encode()).decode()
    issued = server.request("POST", "/v2/token", json_body={"grant_type": "client_credentials"},
                            headers={"Authorization": f"Basic {basic}"}).json
    client = resource_server(server)

    body = client.introspect_token(server.url + "/v2/introspect", token=issued["access_token"]).json()
    assert body["active"] is True and body["scope"] == "All" and body["token_type"] == "Bearer"
    assert body["client_id"] == credentials["client_id"] and body["app_id"] == app_id
    assert body["exp"] - body["iat"] == issued["expires_in"]


def test_authlib_with_a_wrong_secret_is_refused_with_a_bearer_challenge(server: ServerProcess):
    account = server.create_account("introspector", "gateway@example.com", "Gateway")
    client = OAuth2Session(client_id=account["id"], client_secret="pat_" + "0" * 38)
    client.trust_env = False
    answer = client.introspect_token(server.url + "/v2/introspect", token="ak_" + "0" * 38)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="keyledger", error="invalid_token"'


def test_an_owner_may_not_introspect(server: ServerProcess):
    owner = server.create_account("owner", "owner@example.com", "Owner")
    client = OAuth2Session(client_id=owner["id"], client_secret=owner["token"])
    client.trust_env = False
    answer = client.introspect_token(server.url + "/v2/introspect", token="ak_" + "0" * 38)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "FORBIDDEN"
