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
from tests.e2e.test_nginx_gateway import (
    call_from,
    upstream,  # noqa: F401 - the dummy API, a fixture
)

CADDY = shutil.which("caddy") or ("/usr/bin/caddy" if Path("/usr/bin/caddy").exists() else None)


@pytest.fixture
def caddy_for(tmp_path: Path, upstream: str):  # noqa: F811
    """``caddy_for(server)`` → the URL of a Caddy (our own process, never a system caddy service)
    running the shipped Caddyfile in front of the dummy API, asking ``server``. Stopped at teardown."""
    require("caddy", CADDY is not None, "install the Debian package caddy")
    spec = importlib.util.spec_from_file_location("render", REPO_ROOT / "scripts/gateway/render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    processes: list[subprocess.Popen] = []

    def start(server: ServerProcess) -> str:
        port = free_port()
        prefix = tmp_path / f"caddy-{len(processes)}"
        config = render.render_caddy(prefix, f"127.0.0.1:{port}", f"127.0.0.1:{server.port}", upstream)
        env = {**os.environ, "HOME": str(prefix), "XDG_DATA_HOME": str(prefix / "data"),
               "XDG_CONFIG_HOME": str(prefix / "config")}
        with (prefix / "caddy.log").open("ab") as log:
            process = subprocess.Popen([CADDY, "run", "--adapter", "caddyfile", "--config", str(config)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                http("GET", url + "/v2/predict", timeout=1)
                return url
            except OSError:
                assert process.poll() is None, (prefix / "caddy.log").read_text()
                assert time.monotonic() < deadline, "caddy did not start listening"
                time.sleep(0.05)

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture
def caddy_gateway(caddy_for, server: ServerProcess) -> str:
    return caddy_for(server)


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


# -- client restrictions through Caddy: forward_auth passes the request's headers on, and Caddy
# (which trusts no proxy by default) sets X-Forwarded-For to the address it sees itself.

@pytest.fixture
def restricted(start_server, caddy_for) -> dict:
    """A Keyledger that trusts only Caddy's address (127.0.0.1), Caddy in front of it, and two
    restricted keys: a browser key for https://app.example.com and a server key for 127.0.0.2."""
    server = start_server(env={"KEYLEDGER_TRUSTED_PROXIES": "127.0.0.1/32"})
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=admin).status == 201

    def key(restrictions: dict) -> str:
        created = server.post("/v2/apps/vision/keys", {"description": "restricted", "scopes": ["Predict"],
                                                       "restrictions": restrictions}, token=admin)
        assert created.status == 201, created.json
        return created.json["key"]

    return {"gateway": caddy_for(server), "browser": key({"browser": ["https://app.example.com"]}),
            "server": key({"server": ["127.0.0.2/32"]})}


def test_browser_key_through_caddy_answers_from_its_origin_only(restricted):
    allowed = call_from(restricted["gateway"], "/v2/predict", restricted["browser"],
                        headers={"Origin": "https://app.example.com"})
    assert allowed.status == 200, allowed
    refused = call_from(restricted["gateway"], "/v2/predict", restricted["browser"],
                        headers={"Origin": "https://evil.example.net"})
    assert refused.status == 403, refused
    assert refused.json["error"]["code"] == "ORIGIN_NOT_ALLOWED"
    assert refused.headers.get("X-Keyledger-Code") == "ORIGIN_NOT_ALLOWED"


def test_server_key_through_caddy_answers_from_its_cidr_only_even_with_a_forged_forwarded_for(restricted):
    gateway, key = restricted["gateway"], restricted["server"]
    assert call_from(gateway, "/v2/predict", key, source="127.0.0.2").status == 200
    other = call_from(gateway, "/v2/predict", key, source="127.0.0.3")
    assert other.status == 403 and other.json["error"]["code"] == "IP_NOT_ALLOWED", other
    # A client outside the allowed block writes the allowed address itself: Caddy replaces the
    # header with the address it sees, and Keyledger believes only its trusted proxy.
    forged = call_from(gateway, "/v2/predict", key, source="127.0.0.3",
                       headers={"X-Forwarded-For": "127.0.0.2", "Forwarded": "for=127.0.0.2"})
    assert forged.status == 403 and forged.json["error"]["code"] == "IP_NOT_ALLOWED", forged
