"""Requests the HTTP server itself refuses, sent raw over a socket to ``keyledger serve`` and to
plain ``gunicorn -c gunicorn.conf.py 'service.api:create_app()'`` (the production configuration):
every answer is the contract's JSON envelope, echoes nothing of the request, and the key in the
path reaches no log."""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.conftest import ServerProcess, StartServer

KEY = "ak_" + "Zq9" * 12 + "Q7"  # key-shaped (prefix and 38 base62 characters)
MARK = "hostile-marker"  # must never come back, nor reach the log


def raw(server: ServerProcess, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as conn:
        conn.sendall(data)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


SERVERS = ("keyledger serve", "gunicorn -c gunicorn.conf.py")


@pytest.fixture(scope="module", params=SERVERS)
def any_server(request: pytest.FixtureRequest, start_module_server: StartServer) -> ServerProcess:
    """Each way of serving the app in production, one worker, a fresh data directory; shared by the
    module's tests (each reads back only its own request: its request id, its marker in the log)."""
    return start_module_server(plain_gunicorn=request.param != "keyledger serve")


PATH = f"/v2/keys/{KEY}/{MARK}"
HOSTILE = {
    "request line over 4 KB": (f"GET {PATH}/{'x' * 5000} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 414),
    "header over 8 KB": (f"GET {PATH} HTTP/1.1\r\nHost: a\r\nX-Big: {'y' * 9000}\r\n\r\n".encode(), 431),
    "more than 100 headers": (
        (f"GET {PATH} HTTP/1.1\r\nHost: a\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(120))
         + "\r\n").encode(), 431),
    "NUL in a header": (f"GET {PATH} HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n".encode(), 400),
    "bare CR in a header": (f"GET {PATH} HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n".encode(), 400),
    "non-UTF-8 bytes in the path": (f"GET {PATH}/".encode() + b"\xff\xfe\xc3(" + b" HTTP/1.1\r\nHost: a\r\n\r\n",
                                    400),
    "Content-Length with Transfer-Encoding": (
        f"POST {PATH} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n".encode(), 400),
    "garbage request line": (f"\x01GARBAGE {KEY} {MARK}\r\n\r\n".encode(), 400),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_request_the_server_refuses_is_answered_in_the_envelope_without_echo(any_server: ServerProcess,
                                                                               name: str) -> None:
    server = any_server
    server.remember(KEY)  # the harness scans the log and the data directory for it at teardown
    data, expected = HOSTILE[name]
    answer = raw(server, data)
    assert answer, f"{name}: the connection was closed without an answer"  # we choose to answer
    status, headers, body = parse(answer)
    assert status == expected, answer[:400]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    parsed = json.loads(body)
    assert parsed["error"]["code"] == "INVALID_REQUEST"
    assert set(parsed) == {"error", "request_id"} and set(parsed["error"]) == {"code", "message", "details"}
    assert headers["x-request-id"] == parsed["request_id"]
    for echo in (KEY.encode(), MARK.encode(), b"Zq9Zq9", b"<html", b"GARBAGE", b"yyyy"):
        assert echo not in answer, f"{name}: the answer echoes {echo!r}"
    assert server.get("/healthz").status == 200  # the worker lives on
    log = server.log_path.read_text("utf-8", "replace")
    assert KEY not in log and MARK not in log and "Zq9Zq9" not in log
    refusals = [json.loads(line) for line in log.splitlines()
                if line.startswith("{") and '"keyledger.http"' in line]
    assert any(r["request_id"] == parsed["request_id"] and r["status"] == expected for r in refusals)


def test_every_log_line_is_one_json_object_and_a_newline_in_a_url_forges_none(any_server: ServerProcess) -> None:
    server = any_server
    forged = '{"level": "CRITICAL", "logger": "keyledger.access", "msg": "forged"}'
    from urllib.parse import quote

    server.remember(KEY)
    assert server.get("/healthz%0A" + quote(forged)).status == 404
    assert server.get(f"/v2/keys/{KEY}%0D%0Aforged", token=None).status == 401
    lines = [line for line in server.log_path.read_text("utf-8").splitlines()
             if not line.startswith("=== ")]  # the harness's own lines
    entries = [json.loads(line) for line in lines]  # every other line is a JSON object
    assert not [e for e in entries if e.get("msg") == "forged"]
    access = [e for e in entries if e["logger"] == "keyledger.access" and "forged" in e["path"]]
    assert len(access) == 2
    assert access[0]["path"] == "/healthz\n" + forged and access[0]["status"] == 404
    assert access[1]["path"] == "/v2/keys/ak_…[redacted]\r\nforged"
    for entry in access:
        assert {"request_id", "route", "status", "duration_ms", "actor", "method"} <= entry.keys()
