"""nginx auth_request in front of a dummy API, asking a real Keyledger server (scripts/gateway/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.conftest import REPO_ROOT, ServerProcess, StartServer, free_port, http

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


class EchoHandler(BaseHTTPRequestHandler):
    """The protected API: answers with the request headers it received (and, for 2017-era
    clients that list models when constructed, an empty page of models)."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items()),
                           "status": {"code": 10000, "description": "Ok"}, "models": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway_for(tmp_path_factory: pytest.TempPathFactory, upstream: str):
    """``gateway_for(server)`` → the URL of nginx, run from scripts/gateway/, in front of
    ``server`` and the dummy API (stopped after the module's last test)."""
    tmp_path = tmp_path_factory.mktemp("gateway")
    require("nginx", NGINX is not None, "install the Debian package nginx")
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", REPO_ROOT / "scripts/gateway/render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    processes = []

    def start(server: ServerProcess) -> str:
        port = free_port()
        prefix = tmp_path / f"nginx{len(processes)}"
        config = render.render(prefix, f"127.0.0.1:{port}", f"127.0.0.1:{server.port}", upstream)
        check = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                http("GET", url + "/v2/predict", timeout=1)
                return url
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def server(start_module_server: StartServer) -> ServerProcess:
    """One Keyledger behind one nginx for the module: the tests only read (each calls with its own
    key, and nothing changes a key)."""
    return start_module_server()


@pytest.fixture(scope="module")
def gateway(server: ServerProcess, gateway_for) -> str:
    return gateway_for(server)


@pytest.fixture(scope="module")
def keys(server: ServerProcess) -> dict:
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                        token=admin).json["token"]
    app = server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).json
    read_only = server.post("/v2/apps/vision/keys", {"description": "ro", "scopes": ["Predict", "Search"]},
                            token=owner).json
    revoked = server.post("/v2/apps/vision/keys", {"description": "gone", "scopes": ["All"]}, token=owner).json
    assert server.delete(f"/v2/keys/{revoked['id']}", token=owner).status == 204
    return {"all": app["default_key"], "read_only": read_only, "revoked": revoked}


def call(gateway: str, method: str, path: str, key: str | None):
    headers = {"Authorization": f"Key {key}"} if key else {}
    return http(method, gateway + path, headers=headers, json_body={} if method != "GET" else None)


def test_all_key_passes_and_the_upstream_learns_who_called(gateway, keys):
    response = call(gateway, "POST", "/v2/models", keys["all"]["key"])
    assert response.status == 200
    seen = response.json["headers"]
    assert seen["X-Keyledger-App-Id"] == "vision"
    assert seen["X-Keyledger-Key-Id"] == keys["all"]["id"]
    assert seen["X-Keyledger-Scopes"] == "All"
    assert "Authorization" not in seen  # the upstream never sees the key


def test_read_only_key_may_predict_but_not_add_models(gateway, keys):
    predict = call(gateway, "GET", "/v2/predict", keys["read_only"]["key"])
    assert predict.status == 200
    assert predict.json["headers"]["X-Keyledger-Scopes"] == "Predict Search"
    refused = call(gateway, "POST", "/v2/models", keys["read_only"]["key"])
    assert refused.status == 403
    assert refused.json["error"]["code"] == "FORBIDDEN"
    assert refused.json["error"]["details"] == {"reason": "INSUFFICIENT_SCOPE", "scope": "Models:Add"}


def test_revoked_key_is_refused_with_401(gateway, keys):
    response = call(gateway, "GET", "/v2/predict", keys["revoked"]["key"])
    assert response.status == 401
    assert response.json["error"]["code"] == "REVOKED"


def test_no_key_is_refused_with_401(gateway, keys):
    response = call(gateway, "GET", "/v2/search", None)
    assert response.status == 401
    assert response.json["error"]["code"] == "UNAUTHENTICATED"


def test_a_limited_key_gets_429_with_retry_after_through_nginx_and_recovers(server, gateway, keys):
    owner = server.post("/v2/accounts", {"email": "l@example.com", "name": "L", "role": "owner"},
                        token=server.create_account("admin", "a2@example.com", "A2")["token"]).json["token"]
    assert server.post("/v2/apps", {"id": "limited", "name": "Limited"}, token=owner).status == 201
    key = server.post("/v2/apps/limited/keys", {"description": "web", "scopes": ["Predict"],
                                                 "limits": [{"limit": 2, "per": "2s"}]}, token=owner).json
    first = call(gateway, "GET", "/v2/predict", key["key"])
    assert first.status == 200
    assert first.headers["RateLimit-Policy"] == '"key-2s";q=2;w=2'
    codes = [call(gateway, "GET", "/v2/predict", key["key"]) for _ in range(3)]
    refused = codes[-1]
    assert refused.status == 429, (refused.status, refused.body)
    assert refused.json["error"]["code"] == "RATE_LIMITED"
    assert refused.headers["X-Keyledger-Code"] == "RATE_LIMITED"
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 2
    assert refused.json["error"]["details"]["retry_after"] == wait
    assert refused.headers["RateLimit-Policy"] == '"key-2s";q=2;w=2'
    assert refused.headers["RateLimit"].startswith('"key-2s";r=0;t=')
    time.sleep(wait)
    assert call(gateway, "GET", "/v2/predict", key["key"]).status == 200  # recovered
    other = call(gateway, "POST", "/v2/models", keys["read_only"]["key"])  # another refusal: no rate headers
    assert other.status == 403 and "Retry-After" not in other.headers


# -- client restrictions through nginx: the origin and the client's address are forwarded ---------

def call_from(gateway: str, path: str, key: str, *, source: str = "127.0.0.1",
              headers: dict | None = None):
    """GET through nginx from the loopback address ``source`` (127.0.0.2 is another client than
    nginx's own 127.0.0.1)."""
    import http.client
    from urllib.parse import urlsplit

    from tests.e2e.conftest import Response

    target = urlsplit(gateway)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10,
                                            source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"Authorization": f"Key {key}", **(headers or {})})
        answer = connection.getresponse()
        return Response(answer.status, dict(answer.getheaders()), answer.read())
    finally:
        connection.close()


@pytest.fixture
def restricted(start_server, gateway_for) -> dict:
    """A Keyledger that trusts only nginx's address (127.0.0.1), nginx in front of it, and two
    restricted keys: a browser key for https://app.example.com and a server key for 127.0.0.2."""
    server = start_server(env={"KEYLEDGER_TRUSTED_PROXIES": "127.0.0.1/32"})
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=admin)

    def key(restrictions: dict) -> str:
        created = server.post("/v2/apps/vision/keys", {"description": "restricted", "scopes": ["Predict"],
                                                       "restrictions": restrictions}, token=admin)
        assert created.status == 201, created.json
        return created.json["key"]

    return {"gateway": gateway_for(server), "browser": key({"browser": ["https://app.example.com"]}),
            "server": key({"server": ["127.0.0.2/32"]})}


def test_browser_key_answers_from_its_origin_and_is_refused_from_another(restricted):
    allowed = call_from(restricted["gateway"], "/v2/predict", restricted["browser"],
                        headers={"Origin": "https://app.example.com"})
    assert allowed.status == 200
    assert allowed.json["headers"]["Origin"] == "https://app.example.com"  # the API sees the request
    refused = call_from(restricted["gateway"], "/v2/predict", restricted["browser"],
                        headers={"Origin": "https://evil.example.net"})
    assert refused.status == 403
    assert refused.json["error"]["code"] == "ORIGIN_NOT_ALLOWED"
    assert "web pages its owner allowed" in refused.json["error"]["message"]
    no_origin = call_from(restricted["gateway"], "/v2/predict", restricted["browser"])
    assert no_origin.status == 403 and no_origin.json["error"]["code"] == "ORIGIN_NOT_ALLOWED"


def test_server_key_answers_from_its_cidr_only_even_with_a_forged_forwarded_for(restricted):
    gateway, key = restricted["gateway"], restricted["server"]
    assert call_from(gateway, "/v2/predict", key, source="127.0.0.2").status == 200
    other = call_from(gateway, "/v2/predict", key, source="127.0.0.3")
    assert other.status == 403 and other.json["error"]["code"] == "IP_NOT_ALLOWED"
    # A client outside the trusted proxies writes the allowed address into X-Forwarded-For itself:
    # nginx appends the address it sees, and Keyledger takes the right-most untrusted one.
    forged = call_from(gateway, "/v2/predict", key, source="127.0.0.3",
                       headers={"X-Forwarded-For": "127.0.0.2"})
    assert forged.status == 403 and forged.json["error"]["code"] == "IP_NOT_ALLOWED"
    forged = call_from(gateway, "/v2/predict", key, source="127.0.0.3",
                       headers={"Forwarded": "for=127.0.0.2", "X-Real-IP": "127.0.0.2"})
    assert forged.status == 403
