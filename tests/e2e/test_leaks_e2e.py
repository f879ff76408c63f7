"""GitHub's secret scanning against real server processes: signed reports, revocation on every
instance, history, feedback, refusals that change nothing, and no foreign string at rest."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service import credentials
from service.github_scanning import sign
from tests import backend
from tests.conftest import secrets_in_files
from tests.e2e.conftest import StartServer

KEY_ID = "local-test-key"


@pytest.fixture
def github_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    path = tmp_path / "github-keys.json"
    path.write_text(json.dumps({"public_keys": [{"key_identifier": KEY_ID, "key": pem, "is_current": True}]}))
    return private, path


def _post(url: str, raw: bytes, identifier: str, signature: str):
    import urllib.error
    import urllib.request

    from tests.e2e.conftest import Response

    request = urllib.request.Request(url, data=raw, method="POST", headers={
        "Content-Type": "application/json", "Github-Public-Key-Identifier": identifier,
        "Github-Public-Key-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return Response(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers.items()), error.read())


def item(token: str, url: str = "https://github.com/octo/app/blob/4e1c/config.py") -> dict:
    return {"token": token, "type": "keyledger_api_key", "url": url, "source": "content"}


def auth_check(server, secret: str) -> int:
    return server.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {secret}"}).status


@pytest.mark.timing_sensitive  # wall-clock bound
def test_signed_reports_revoke_on_every_instance_and_leave_foreign_strings_nowhere(
        start_server: StartServer, github_key, tmp_path: Path):
    private, keys_file = github_key
    env = {"KEYLEDGER_GITHUB_SCANNING_KEYS": str(keys_file)}
    first = start_server(name="first", env=env)
    second = start_server(first.data_dir, name="second", env=env)
    admin = first.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = first.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                       token=admin).json["token"]
    assert first.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).status == 201
    keys = [first.post("/v2/apps/vision/keys", {"description": f"k{i}", "scopes": ["Predict"]}, token=owner).json
            for i in range(25)]
    for key in keys:
        first.remember(key["key"])
    deadline = time.monotonic() + 5
    while auth_check(second, keys[-1]["key"]) != 200:
        assert time.monotonic() < deadline

    # Refusals change nothing: unknown identifier, bad signature, altered body, tampered token.
    target = keys[0]
    body = json.dumps([item(target["key"])]).encode()
    good = sign(private, body)
    other = ec.generate_private_key(ec.SECP256R1())
    refused = [
        _post(first.url + "/v2/leaks/github", body, "unknown", good),
        _post(first.url + "/v2/leaks/github", body, KEY_ID, sign(other, body)),
        _post(first.url + "/v2/leaks/github", body.replace(b"octo", b"evil"), KEY_ID, good),
        _post(first.url + "/v2/leaks/github", body.replace(target["key"][-2:].encode(), b"zz"), KEY_ID, good),
    ]
    assert [r.status for r in refused] == [401] * 4, refused
    assert auth_check(first, target["key"]) == 200
    assert first.get(f"/v2/keys/{target['id']}", token=owner).json["status"] == "active"

    # A batch: a live key, a foreign well-formed key, a random string. Labels in order.
    foreign = credentials.generate(credentials.API_KEY_PREFIX)
    junk = "ghp_notours_" + "q" * 30
    answer = _post(first.url + "/v2/leaks/github",
                   raw := json.dumps([item(target["key"]), item(foreign), item(junk)]).encode(), KEY_ID,
                   sign(private, raw))
    assert answer.status == 200, answer
    assert [f["label"] for f in answer.json] == ["true_positive", "false_positive", "false_positive"]
    assert auth_check(first, target["key"]) == 401
    history = first.get(f"/v2/keys/{target['id']}/history", token=owner).json["events"]
    assert [e["type"] for e in history][-2:] == ["ApiKey.Leaked", "ApiKey.Revoked"]
    assert history[-2]["data"]["url"] == "https://github.com/octo/app/blob/4e1c/config.py"

    # Report -> refused by forward-auth on the other instance, one key per report, timed from just
    # before the report is sent until the other instance refuses it: p99 <= 1 s over 24 reports (a
    # correctness bound: a revocation reaches every instance within a second; not a speed figure).
    delays = []
    for key in keys[1:]:
        raw = json.dumps([item(key["key"])]).encode()
        signature = sign(private, raw)
        reported = time.monotonic()
        assert _post(first.url + "/v2/leaks/github", raw, KEY_ID, signature).status == 200
        while auth_check(second, key["key"]) != 401:
            assert time.monotonic() - reported < 10.0, "the other instance still accepts a leaked key after 10 s"
        delays.append(time.monotonic() - reported)
    p99 = statistics.quantiles(delays, n=100, method="inclusive")[98]
    print(f"\nreport -> refused on the other instance ({'postgresql' if backend.ON_POSTGRES else 'sqlite'}): "
          f"median {statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms, n={len(delays)}")
    assert len(delays) >= 20
    assert p99 <= 1.0, f"p99 {p99:.3f} s from report to refusal on the other instance: {sorted(delays)}"

    # The foreign strings are nowhere: not in the audit trail (every event, either store) …
    export = first.get("/v2/audit/events.jsonl", token=admin)
    assert export.status == 200 and b"ApiKey.Leaked" in export.body
    assert foreign.encode() not in export.body and junk.encode() not in export.body
    # … nor at rest: data directories and both servers' logs.
    first.stop()
    second.stop()
    leaked = secrets_in_files(tmp_path, [foreign, junk])
    assert not leaked, leaked
