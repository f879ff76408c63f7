"""A secret is shown once, in the response that creates it, and nowhere else.

The scenario issues every kind of secret over HTTP (a personal token, an app's default
key, a user key, a rolled key), then exercises every endpoint that does not create a
secret — reads, changes, revocations, errors, the OpenAPI document — and checks that no
response body or header, no SQLite file under the data dir and no log record holds any
secret issued during the test.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from service import credentials
from tests.conftest import ISSUED_SECRETS, Caller, secrets_in, secrets_in_files


def _headers_text(response) -> str:
    return "\n".join(f"{name}: {value}" for name, value in response.headers.items())


def _leaks(response, secrets: list[str]) -> list[str]:
    return secrets_in(response.get_data(), secrets) + secrets_in(_headers_text(response), secrets)


def test_no_secret_leaks_anywhere(system, settings, client, admin, owner, auditor, caplog) -> None:
    caplog.set_level(logging.INFO)
    issued_before = len(ISSUED_SECRETS)
    created: dict[str, tuple[str, object]] = {}  # name -> (secret, the response that created it)

    # -- issue a secret of every kind, each over HTTP ----------------------------------------------
    response = admin.post("/v2/accounts", json={"email": "dev@example.com", "name": "Dev", "role": "owner"})
    assert response.status_code == 201
    created["account token"] = (response.json["token"], response)
    dev = Caller(client, response.json["token"], id=response.json["id"], role="owner")

    response = dev.post("/v2/apps", json={"id": "leaky", "name": "Leaky"})
    assert response.status_code == 201
    created["default key"] = (response.json["default_key"]["key"], response)
    default_key_id = response.json["default_key"]["id"]

    response = dev.post("/v2/apps/leaky/keys", json={"description": "user key", "scopes": ["Predict"]})
    assert response.status_code == 201
    created["user key"] = (response.json["key"], response)
    key_id = response.json["id"]

    response = dev.post(f"/v2/keys/{key_id}/roll", json={"grace_seconds": 3600})
    assert response.status_code == 200
    created["rolled key"] = (response.json["key"], response)

    # Every secret this test issued: the fixtures' tokens and the four above.
    secrets = [admin.token, owner.token, auditor.token, *(s for s, _ in created.values())]
    assert set(secrets) <= set(ISSUED_SECRETS)
    secrets = sorted(set(secrets) | set(ISSUED_SECRETS[issued_before:]))
    assert all(s.startswith(("ak_", "pat_")) for s in secrets)

    # -- each creating response holds its own secret exactly once, and no other -------------------
    for name, (secret, response) in created.items():
        text = response.get_data(as_text=True)
        assert text.count(secret) == 1, f"the {name} should appear once in its creating response"
        others = [s for s in secrets if s != secret]
        assert not _leaks(response, others), f"the response creating the {name} leaks another secret"
        assert not secrets_in(_headers_text(response), [secret]), f"the {name} is in a header"

    # -- everything else, none of which may show a secret -------------------------------------------
    old_secret = created["user key"][0]  # still verifying during the grace period
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    truncated = created["rolled key"][0][:-2]
    responses = {}

    def record(name: str, response, status: int) -> None:
        assert response.status_code == status, f"{name}: {response.status_code} {response.get_data(as_text=True)}"
        responses[name] = response

    record("GET /v2/me", dev.get("/v2/me"), 200)
    record("GET /v2/me (admin)", admin.get("/v2/me"), 200)
    record("GET /v2/apps", dev.get("/v2/apps"), 200)
    record("GET /v2/apps (auditor)", auditor.get("/v2/apps"), 200)
    record("GET /v2/apps/leaky", dev.get("/v2/apps/leaky"), 200)
    record("GET /v2/apps/leaky/keys", dev.get("/v2/apps/leaky/keys"), 200)
    record("GET /v2/apps/leaky/keys (auditor)", auditor.get("/v2/apps/leaky/keys"), 200)
    record("GET /v2/keys/<id>", dev.get(f"/v2/keys/{key_id}"), 200)
    record("GET /v2/keys/<default>", dev.get(f"/v2/keys/{default_key_id}"), 200)
    record("GET /v2/keys/<id>?as_of", dev.get(f"/v2/keys/{key_id}?as_of={now}"), 200)
    record("GET /v2/keys/<id>/history", dev.get(f"/v2/keys/{key_id}/history"), 200)
    record("GET /v2/keys/<id>/history (auditor)", auditor.get(f"/v2/keys/{key_id}/history"), 200)
    record("PATCH /v2/keys/<id>", dev.patch(f"/v2/keys/{key_id}", json={"scopes": ["Predict", "Search"]}), 200)
    record("412 PATCH stale If-Match", dev.patch(f"/v2/keys/{key_id}", json={"description": "x"},
                                                 headers={"If-Match": '"1"'}), 412)
    record("400 SCOPE_UNKNOWN", dev.patch(f"/v2/keys/{key_id}", json={"scopes": ["Nope"]}), 400)
    record("409 app id taken", dev.post("/v2/apps", json={"id": "leaky", "name": "Again"}), 409)
    record("409 account e-mail taken",
           admin.post("/v2/accounts", json={"email": "dev@example.com", "name": "Dev", "role": "owner"}), 409)
    record("404 unknown key", dev.get("/v2/keys/00000000-0000-0000-0000-000000000000"), 404)
    record("404 another owner's key", owner.get(f"/v2/keys/{key_id}"), 404)
    record("403 auditor changes", auditor.patch(f"/v2/keys/{key_id}", json={"description": "x"}), 403)
    record("403 API key manages", client.get("/v2/apps", headers={"Authorization": f"Key {old_secret}"}), 403)
    record("401 MALFORMED", client.get("/v2/apps", headers={"Authorization": f"Key {truncated}"}), 401)
    record("401 unknown", client.get("/v2/apps", headers={
        "Authorization": f"Key {credentials.generate(credentials.API_KEY_PREFIX)}"}), 401)
    record("verify old secret (grace)", client.post("/v2/verify", json={"key": old_secret}), 200)
    record("verify new secret", client.post("/v2/verify", json={"key": created["rolled key"][0]}), 200)
    record("auth check", client.get("/v2/auth/check?scope=Predict",
                                    headers={"Authorization": f"Key {created['rolled key'][0]}"}), 200)
    record("DELETE /v2/keys/<id>", dev.delete(f"/v2/keys/{key_id}"), 204)
    record("DELETE /v2/keys/<id> again", dev.delete(f"/v2/keys/{key_id}"), 204)
    record("GET revoked key", dev.get(f"/v2/keys/{key_id}"), 200)
    record("409 PATCH revoked", dev.patch(f"/v2/keys/{key_id}", json={"description": "x"}), 409)
    record("409 roll revoked", dev.post(f"/v2/keys/{key_id}/roll", json={}), 409)
    record("history after revoke", dev.get(f"/v2/keys/{key_id}/history"), 200)
    record("401 REVOKED", client.get("/v2/apps", headers={"Authorization": f"Key {old_secret}"}), 401)
    record("verify revoked", client.post("/v2/verify", json={"key": created["rolled key"][0]}), 200)
    record("GET /v2/scopes", client.get("/v2/scopes"), 200)
    record("GET /openapi.json", client.get("/openapi.json"), 200)
    record("GET /healthz", client.get("/healthz"), 200)
    record("GET /readyz", client.get("/readyz"), 200)
    record("GET /docs", client.get("/docs"), 200)

    assert responses["verify old secret (grace)"].json["valid"] is True
    assert responses["401 REVOKED"].json["error"]["code"] == "REVOKED"
    assert [e["type"] for e in responses["history after revoke"].json["events"]] == [
        "ApiKey.Issued", "ApiKey.Rolled", "ApiKey.ScopesChanged", "ApiKey.Revoked"]

    leaks = {name: _leaks(response, secrets) for name, response in responses.items()}
    assert not {name: found for name, found in leaks.items() if found}, "secrets in responses"

    # -- nothing at rest ---------------------------------------------------------------------------
    system.after_command()
    assert secrets_in_files(settings.data_dir, secrets) == {}

    # -- nothing in the logs -----------------------------------------------------------------------
    records = caplog.get_records("setup") + caplog.get_records("call")
    assert records, "the access log should have recorded the requests"
    for rec in records:
        text = rec.getMessage() + repr(rec.args) + (rec.exc_text or "") + repr(rec.__dict__)
        assert not secrets_in(text, secrets), f"a secret was logged by {rec.name}: {rec.levelname}"
    assert not secrets_in(caplog.text, secrets)


def test_a_key_pasted_into_a_url_is_not_echoed_or_logged(owner, read_only_key, caplog):
    import logging

    caplog.set_level(logging.INFO)
    secret = read_only_key["key"]
    response = owner.get(f"/v2/keys/{secret}")
    assert response.status_code == 404
    assert secret not in response.get_data(as_text=True)
    assert "ak_…[redacted]" in response.json["error"]["message"]
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_no_client_secret_or_access_token_leaks_anywhere(system, settings, client, admin, owner, auditor,
                                                         caplog) -> None:
    """The legacy half: a client secret and access tokens appear in the responses that create
    them and nowhere else — not in events, views, logs, other responses or error bodies."""
    import base64

    from freezegun import freeze_time

    caplog.set_level(logging.INFO)
    issued_before = len(ISSUED_SECRETS)
    assert owner.post("/v2/apps", json={"id": "legacy", "name": "Legacy"}).status_code == 201
    with freeze_time("2017-06-23T10:00:00Z") as frozen:
        created = admin.post("/v2/apps/legacy/legacy-credentials")
        assert created.status_code == 201
        client_id, client_secret = created.json["client_id"], created.json["client_secret"]
        basic = {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()}
        form = client.post("/v2/token", data={"grant_type": "client_credentials"}, headers=basic)
        by_json = client.post("/v2/token", json={"grant_type": "client_credentials", "client_id": client_id,
                                                 "client_secret": client_secret})
        assert form.status_code == by_json.status_code == 200
        token, other_token = form.json["access_token"], by_json.json["access_token"]
        secrets = sorted(set(ISSUED_SECRETS[issued_before:]))
        assert {client_secret, token, other_token} <= set(secrets)
        for response, secret in ((created, client_secret), (form, token), (by_json, other_token)):
            assert response.get_data(as_text=True).count(secret) == 1
            assert not secrets_in(response.get_data(), [s for s in secrets if s != secret])

        responses = {
            "verify": client.post("/v2/verify", json={"key": token, "scope": "Predict"}),
            "auth check": client.get("/v2/auth/check", headers={"Authorization": f"Bearer {token}"}),
            "secret as a key": client.post("/v2/verify", json={"key": client_secret}),
            "secret in a path": owner.get(f"/v2/keys/{client_secret}"),
            "token in a path": owner.get(f"/v2/apps/{token}/keys"),
            "token as a personal token": client.get("/v2/apps", headers={"Authorization": f"Bearer {token}"}),
            "wrong secret": client.post("/v2/token", data={"grant_type": "client_credentials"}, headers={
                "Authorization": "Basic " + base64.b64encode(f"{client_id}:{client_secret[:-1]}x".encode()).decode()}),
            "secret in grant_type": client.post("/v2/token", data={"grant_type": client_secret}, headers=basic),
            "second credentials": admin.post("/v2/apps/legacy/legacy-credentials"),
            "usage": admin.get("/v2/legacy/usage"),
            "usage (auditor)": auditor.get("/v2/legacy/usage"),
        }
        frozen.tick(60 * 60 * 49)
        responses["expired verify"] = client.post("/v2/verify", json={"key": token})
        responses["expired check"] = client.get("/v2/auth/check", headers={"Authorization": f"Bearer {token}"})
        frozen.move_to("2018-01-01T00:00:01Z")
        responses["after the sunset"] = client.post("/v2/token", data={"grant_type": "client_credentials"},
                                                    headers=basic)
        responses["sunset verify"] = client.post("/v2/verify", json={"key": other_token})

    assert responses["verify"].json["valid"] is True
    assert responses["expired check"].json["status"]["details"] == "expired token"
    assert responses["after the sunset"].json["error"] == "unauthorized_client"
    leaks = {name: _leaks(response, secrets) for name, response in responses.items()}
    assert not {name: found for name, found in leaks.items() if found}, "secrets in responses"

    system.after_command()
    system.last_used.flush()
    assert secrets_in_files(settings.data_dir, secrets) == {}
    events = repr([vars(e) for _, e in system.keys_app.read_events(0, 100_000)])
    assert not secrets_in(events, secrets)
    records = caplog.get_records("call")
    assert any("/v2/token" in r.getMessage() for r in records)
    for rec in records:
        text = rec.getMessage() + repr(rec.args) + (rec.exc_text or "") + repr(rec.__dict__)
        assert not secrets_in(text, secrets), f"a secret was logged by {rec.name}: {rec.levelname}"
