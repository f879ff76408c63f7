"""Leak reports over HTTP: GitHub's signed partner endpoint and POST /v2/leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service import credentials
from service.github_scanning import sign
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, secrets_in_files

KEY_ID = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"


@pytest.fixture
def github_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def settings(data_dir: Path, tmp_path: Path, github_key):
    pem = github_key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    keys = tmp_path / "github-keys.json"
    keys.write_text(json.dumps({"public_keys": [{"key_identifier": KEY_ID, "key": pem, "is_current": True}]}))
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05, github_scanning_keys=keys)


def _post(client, items, key, *, identifier=KEY_ID, body: bytes | None = None, signature: str | None = None):
    raw = body if body is not None else json.dumps(items).encode()
    return client.post("/v2/leaks/github", data=raw, content_type="application/json", headers={
        "Github-Public-Key-Identifier": identifier,
        "Github-Public-Key-Signature": signature if signature is not None else sign(key, raw)})


def _report(token: str, url: str = "https://github.com/octo/repo/blob/abc/app.py") -> dict:
    return {"token": token, "type": "keyledger_api_key", "url": url, "source": "content"}


def test_a_live_key_is_revoked_and_labelled_true(client, owner, read_only_key, github_key, system):
    foreign = credentials.generate(credentials.API_KEY_PREFIX)  # well-formed, never issued
    response = _post(client, [_report(read_only_key["key"]), _report(foreign), _report("not-a-key-at-all")],
                     github_key)
    assert response.status_code == 200, response.json
    assert [f["label"] for f in response.json] == ["true_positive", "false_positive", "false_positive"]
    assert response.json[0] == {"token_raw": read_only_key["key"], "token_type": "keyledger_api_key",
                                "label": "true_positive"}
    key = owner.get(f"/v2/keys/{read_only_key['id']}").json
    assert key["status"] == "revoked"
    assert key["leak"] == {"url": "https://github.com/octo/repo/blob/abc/app.py", "source": "content"}
    assert key["leaked_at"] is not None
    refused = client.get("/v2/auth/check", headers={"Authorization": f"Key {read_only_key['key']}"})
    assert refused.status_code == 401
    history = owner.get(f"/v2/keys/{read_only_key['id']}/history").json["events"]
    types = [e["type"] for e in history]
    assert types[-2:] == ["ApiKey.Leaked", "ApiKey.Revoked"]
    assert history[-2]["data"]["url"] == "https://github.com/octo/repo/blob/abc/app.py"
    assert history[-2]["data"]["reporter"] == "github"
    # the foreign strings are stored nowhere
    system.after_command()
    assert not secrets_in_files(system.settings.data_dir, [foreign, "not-a-key-at-all"])


def test_the_same_report_twice_and_a_revoked_key_change_nothing_more(client, owner, read_only_key, github_key):
    key_id = read_only_key["id"]
    first = _post(client, [_report(read_only_key["key"])], github_key)
    assert first.status_code == 200
    version = owner.get(f"/v2/keys/{key_id}").json["version"]
    again = _post(client, [_report(read_only_key["key"]), _report(read_only_key["key"])], github_key)
    assert again.status_code == 200 and [f["label"] for f in again.json] == ["true_positive"] * 2
    assert owner.get(f"/v2/keys/{key_id}").json["version"] == version
    elsewhere = _post(client, [_report(read_only_key["key"], url="https://github.com/other/x")], github_key)
    assert elsewhere.status_code == 200
    history = owner.get(f"/v2/keys/{key_id}/history").json["events"]
    assert [e["type"] for e in history].count("ApiKey.Leaked") == 2
    assert [e["type"] for e in history].count("ApiKey.Revoked") == 1
    assert history[-1]["data"]["action"] == "reported"


@pytest.mark.parametrize("case", ["unknown identifier", "bad signature", "altered body", "tampered token",
                                  "no headers", "garbage signature"])
def test_unsigned_or_altered_reports_are_401_and_change_nothing(case, client, owner, read_only_key, github_key):
    body = json.dumps([_report(read_only_key["key"])]).encode()
    signature = sign(github_key, body)
    other = ec.generate_private_key(ec.SECP256R1())
    if case == "unknown identifier":
        response = _post(client, None, github_key, identifier="nope", body=body, signature=signature)
    elif case == "bad signature":
        response = _post(client, None, github_key, body=body, signature=sign(other, body))
    elif case == "altered body":
        response = _post(client, None, github_key, body=body.replace(b"octo", b"octa"), signature=signature)
    elif case == "tampered token":
        last = read_only_key["key"][-1]
        other_char = b"Y" if last == "X" else b"X"  # never the same character: the body must change
        tampered = body.replace(last.encode() + b'"', other_char + b'"')
        assert tampered != body
        response = _post(client, None, github_key, body=tampered, signature=signature)
    elif case == "no headers":
        response = client.post("/v2/leaks/github", data=body, content_type="application/json")
    else:
        response = _post(client, None, github_key, body=body, signature="%%%not base64")
    assert response.status_code == 401
    assert response.json["error"]["code"] == "UNAUTHENTICATED"
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["status"] == "active"


def test_replayed_malformed_and_oversized_bodies(client, owner, read_only_key, github_key):
    body = json.dumps([_report(credentials.generate(credentials.API_KEY_PREFIX))]).encode()
    assert _post(client, None, github_key, body=body).status_code == 200
    replay = _post(client, None, github_key, body=body)
    assert replay.status_code == 401 and "received before" in replay.json["error"]["message"]
    for bad in (b"{}", b"[]", b"[1]", b'[{"token": 1}]', b"not json"):
        response = _post(client, None, github_key, body=bad)
        assert response.status_code == 400, bad
        assert response.json["error"]["code"] == "INVALID_REQUEST"
    huge = json.dumps([_report("x" * 400, url="https://github.com/" + "y" * 2000)] * 200).encode()
    response = _post(client, None, github_key, body=huge)
    assert response.status_code == 413
    assert response.json["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["status"] == "active"


def test_a_leaked_personal_token_is_always_revoked(client, admin, owner, github_key):
    response = _post(client, [{"token": owner.token, "type": "keyledger_personal_token",
                               "url": "https://github.com/o/r", "source": "commit"}], github_key)
    assert response.json[0]["label"] == "true_positive"
    assert owner.get("/v2/apps").status_code == 401


def test_post_leaks_is_for_admins_and_auditors(client, admin, auditor, owner, read_only_key):
    report = [{"credential": read_only_key["key"], "url": "https://paste.example/1", "source": "scanner"}]
    assert owner.post("/v2/leaks", json=report).status_code == 403
    assert client.post("/v2/leaks", json=report).status_code == 401
    response = auditor.post("/v2/leaks", json=report + [{"credential": "ak_nothing", "url": "u", "source": "s"}])
    assert response.status_code == 200, response.json
    assert response.json["reports"][0] == {"label": "true_positive", "key_id": read_only_key["id"],
                                           "action": "revoked"}
    assert response.json["reports"][1] == {"label": "false_positive", "action": "none"}
    assert admin.post("/v2/leaks", json=report).json["reports"][0]["action"] == "none"


def test_an_app_may_choose_report_only(client, owner, other_owner, auditor, read_only_key, github_key):
    assert owner.get("/v2/apps/vision").json["leak_policy"] is None
    assert other_owner.patch("/v2/apps/vision", json={"leak_policy": "report"}).status_code == 404
    assert auditor.patch("/v2/apps/vision", json={"leak_policy": "report"}).status_code == 403
    assert owner.patch("/v2/apps/vision", json={"leak_policy": "never"}).status_code == 400
    changed = owner.patch("/v2/apps/vision", json={"leak_policy": "report"})
    assert changed.status_code == 200 and changed.json["leak_policy"] == "report"
    response = _post(client, [_report(read_only_key["key"])], github_key)
    assert response.json[0]["label"] == "true_positive"
    key = owner.get(f"/v2/keys/{read_only_key['id']}").json
    assert key["status"] == "active" and key["leaked_at"] is not None
    history = owner.get(f"/v2/keys/{read_only_key['id']}/history").json["events"]
    assert history[-1]["type"] == "ApiKey.Leaked" and history[-1]["data"]["action"] == "reported"


def test_limits_and_leak_policy_change_together_in_one_patch_or_not_at_all(owner, auditor, owner_app):
    both = {"limits": [{"limit": 5, "per": "1m"}], "leak_policy": "report"}
    changed = owner.patch("/v2/apps/vision", json=both)
    assert changed.status_code == 200, changed.json
    assert changed.json["limits"] == both["limits"] and changed.json["leak_policy"] == "report"
    events = auditor.get("/v2/audit/events?app_id=vision").json["events"]
    assert [e["type"] for e in events][-2:] == ["App.LimitsChanged", "App.LeakPolicyChanged"]
    assert owner.patch("/v2/apps/vision", json=both).status_code == 200  # the same again: nothing new
    assert len(auditor.get("/v2/audit/events?app_id=vision").json["events"]) == len(events)

    refused = owner.patch("/v2/apps/vision", json={"limits": [{"limit": 0, "per": "1m"}], "leak_policy": "revoke"})
    assert refused.status_code == 400 and "limits[0].limit" in refused.json["error"]["details"]
    assert owner.get("/v2/apps/vision").json["leak_policy"] == "report"  # nothing of a refused PATCH applies


def test_the_deployment_may_choose_report_only(system, client, owner, read_only_key, github_key):
    system.keys_app.leak_policy = "report"
    _post(client, [_report(read_only_key["key"])], github_key)
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["status"] == "active"
    # a personal token is revoked whatever the policy
    _post(client, [{"token": owner.token, "type": "t", "url": "u", "source": "s"}], github_key)
    assert owner.get("/v2/apps").status_code == 401


def test_the_owner_is_mailed_once_through_the_outbox_with_no_secret(system, client, owner, read_only_key,
                                                                      github_key):
    from datetime import timedelta

    from scheduler import jobs
    from scheduler.transport import SmtpTransport
    from service.settings import Settings
    from tests.campaign_support import SmtpServer

    server = SmtpServer()
    server.start()
    try:
        mailer = jobs.Mailer(SmtpTransport(Settings(smtp_url=server.url).smtp_server), "keyledger@example.com",
                             timedelta(days=30))
        _post(client, [_report(read_only_key["key"])], github_key)
        _post(client, [_report(read_only_key["key"]), _report(read_only_key["key"])], github_key)  # no new notice
        now = system.keys_app.now()
        assert jobs.deliver_pending_mail(system.keys_app, system.campaign, mailer, now) == 1
        assert jobs.deliver_pending_mail(system.keys_app, system.campaign, mailer, now) == 0
        [message] = server.mailbox.to("owner@example.com")
        text = message.get_body(("plain",)).get_content()
        assert "found in public" in message["Subject"] and read_only_key["display"] in message["Subject"]
        assert "https://github.com/octo/repo/blob/abc/app.py" in text and "read only" in text
        assert "revoked at once" in text and f"/v2/audit/events?key_id={read_only_key['id']}" in text
        assert read_only_key["key"] not in message.as_string()
    finally:
        server.stop()
