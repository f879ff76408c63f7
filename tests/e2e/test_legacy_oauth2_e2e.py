"""Legacy OAuth2 against real server processes: credentials, tokens (form and JSON), bearer
verification and forward-auth, expiry, the sunset, and bounded use records across processes."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from tests.backend import event_states
from tests.e2e.conftest import http


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def token_by_form(server, creds: dict):
    basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
    request_body = urlencode({"grant_type": "client_credentials"}).encode()
    import urllib.request

    request = urllib.request.Request(server.url + "/v2/token", data=request_body, method="POST", headers={
        "Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def use_windows(data_dir) -> list[str]:
    return [state["window_start"]["_data_"] for state in event_states(data_dir, "LegacyTokenUsed")]


def test_legacy_tokens_from_issue_to_sunset_on_real_servers(start_server, tmp_path):
    # 40 s leaves room for two servers' start and the phases below on a loaded 2-core machine (at
    # 28 s a load of 18 once brought the sunset into the hammer phase); the test sleeps until it.
    sunset = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=40)
    env = {"KEYLEDGER_LEGACY_SUNSET_AT": _stamp(sunset), "KEYLEDGER_ACCESS_TOKEN_TTL": "4s",
           "KEYLEDGER_LEGACY_USE_WINDOW": "3s"}
    first = start_server(env=env, workers=2, name="first")
    second = start_server(data_dir=first.data_dir, env=env, name="second")
    admin = first.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = first.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"}, token=admin).json
    assert first.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
    created = first.post("/v2/apps/vision/legacy-credentials", token=admin)
    assert created.status == 201
    creds = created.json
    first.remember(creds["client_secret"])

    status, form_token = token_by_form(first, creds)
    assert status == 200 and form_token["token_type"] == "Bearer" and form_token["expires_in"] == 4
    json_token = second.post("/v2/token", {"grant_type": "client_credentials", "client_id": creds["client_id"],
                                           "client_secret": creds["client_secret"]})
    assert json_token.status == 200 and json_token.headers["Cache-Control"] == "no-store"
    for token in (form_token["access_token"], json_token.json["access_token"]):
        first.remember(token)
        second.remember(token)

    token = form_token["access_token"]
    verified = second.post("/v2/verify", {"key": token, "scope": "Models:Add"})
    assert verified.json["valid"] and verified.json["kind"] == "access_token"
    assert verified.json["deprecation"]["sunset_at"] == _stamp(sunset)
    check = first.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Bearer {token}"})
    assert check.status == 200 and check.headers["X-Keyledger-App-Id"] == "vision"
    assert check.headers["Sunset"] == sunset.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert check.headers["Deprecation"].startswith("@") and 'rel="deprecation"' in check.headers["Link"]

    # Many uses through both processes for a while: one LegacyTokenUsed per window, no more.
    stop = time.monotonic() + 7.5
    counts = {"ok": 0, "other": 0}

    def hammer(server) -> None:
        while time.monotonic() < stop:
            status_, fresh = token_by_form(server, creds)
            server.remember(fresh.get("access_token", ""))
            for _ in range(10):
                answer = http("POST", server.url + "/v2/verify", json_body={"key": fresh["access_token"]})
                counts["ok" if answer.json["valid"] else "other"] += 1

    threads = [threading.Thread(target=hammer, args=(s,)) for s in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    windows = use_windows(first.data_dir)
    assert counts["ok"] > 100 and counts["other"] == 0, counts
    assert len(windows) == len(set(windows)), f"a window was recorded twice: {sorted(windows)}"
    assert 3 <= len(windows) <= 5, windows  # 7.5 s of use in 3-second windows (plus the first uses)

    # Expiry: 401 with the status old clients read as "fetch a new token".
    time.sleep(4.2)
    expired = first.get("/v2/auth/check", headers={"Authorization": f"Bearer {token}"})
    assert expired.status == 401 and expired.json["status"]["details"] == "expired token"
    assert second.post("/v2/verify", {"key": token}).json["code"] == "EXPIRED"

    # The sunset: every token refused, none issued, on both processes.
    status, fresh = token_by_form(first, creds)
    assert status == 200
    first.remember(fresh["access_token"])
    time.sleep(max(0.0, (sunset - datetime.now(UTC)).total_seconds()) + 0.2)
    for server in (first, second):
        assert server.post("/v2/verify", {"key": fresh["access_token"]}).json["code"] == "LEGACY_TOKEN_SUNSET"
        status, refused = token_by_form(server, creds)
        assert status == 400 and refused["error"] == "unauthorized_client"
    usage = first.get("/v2/legacy/usage", token=admin).json["apps"]
    # uses: this process flushes its own counts when asked; the others every minute
    assert usage[0]["windows"] == len(windows) and len(windows) <= usage[0]["uses"] <= counts["ok"] + 20
