"""Caddy's forward_auth in front of a dummy API, asking a real Keyledger server
(scripts/gateway/Caddyfile.template): the second tested gateway. Caddy hands a non-2xx answer of
forward-auth to the client as it is, so a 429 needs no mapping."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.conftest import REPO_ROOT, ServerProcess, free_port, http
from tests.e2e.test_nginx_gateway import upstream  # noqa: F401 - the dummy API, a fixture

CADDY = shutil.which("caddy") or ("/usr/bin/caddy" if Path("/usr/bin/caddy").exists() else None)


@pytest.fixture
def caddy_gateway(tmp_path: Path, upstream: str, server: ServerProcess):  # noqa: F811
    require("caddy", CADDY is not None, "install the Debian package caddy")
    spec = importlib.util.spec_from_file_location("render", REPO_ROOT / "scripts/gateway/render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    port = free_port()
    prefix = tmp_path / "caddy"
    config = render.render_caddy(prefix, f"127.0.0.1:{port}", f"127.0.0.1:{server.port}", upstream)
    env = {**os.environ, "HOME": str(prefix), "XDG_DATA_HOME": str(prefix / "data"),
           "XDG_CONFIG_HOME": str(prefix / "config")}
    with (prefix / "caddy.log").open("ab") as log:  # our own process: never a system caddy service
        process = subprocess.Popen([CADDY, "run", "--adapter", "caddyfile", "--config", str(config)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                http("GET", url + "/v2/predict", timeout=1)
                break
            except OSError:
                assert process.poll() is None, (prefix / "caddy.log").read_text()
                assert time.monotonic() < deadline, "caddy did not start listening"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def owner(server: ServerProcess) -> str:
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                        token=admin).json["token"]
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).status == 201
    return owner


def call(gateway: str, path: str, key: str | None, headers: dict | None = None):
    sent = {"Authorization": f"Key {key}"} if key else {}
    return http("GET", gateway + path, headers={**sent, **(headers or {})})


def test_a_valid_key_passes_caddy_and_the_upstream_learns_who_called(server, caddy_gateway, owner):
    key = server.post("/v2/apps/vision/keys", {"description": "ro", "scopes": ["Predict"]}, token=owner).json
    answer = call(caddy_gateway, "/v2/predict", key["key"], {"X-Keyledger-App-Id": "forged"})
    assert answer.status == 200, answer
    seen = answer.json["headers"]
    assert seen["X-Keyledger-App-Id"] == "vision" and seen["X-Keyledger-Key-Id"] == key["id"]
    assert "Authorization" not in seen
    refused = call(caddy_gateway, "/v2/search", key["key"])
    assert refused.status == 403 and refused.json["error"]["details"]["reason"] == "INSUFFICIENT_SCOPE"
    assert call(caddy_gateway, "/v2/predict", None).status == 401


def test_a_limited_key_gets_429_with_retry_after_through_caddy_and_recovers(server, caddy_gateway, owner):
    key = server.post("/v2/apps/vision/keys", {"description": "web", "scopes": ["Predict"],
                                                "limits": [{"limit": 2, "per": "2s"}]}, token=owner).json
    statuses = [call(caddy_gateway, "/v2/predict", key["key"]) for _ in range(3)]
    assert [s.status for s in statuses[:2]] == [200, 200]
    refused = statuses[2]
    assert refused.status == 429, refused
    assert refused.json["error"]["code"] == "RATE_LIMITED"
    headers = {name.lower(): value for name, value in refused.headers.items()}  # Go writes Ratelimit-Policy
    wait = int(headers["retry-after"])
    assert 1 <= wait <= 2
    assert headers["ratelimit-policy"] == '"key-2s";q=2;w=2'
    assert headers["ratelimit"].startswith('"key-2s";r=0;t=')
    time.sleep(wait)
    assert call(caddy_gateway, "/v2/predict", key["key"]).status == 200
