"""Slow clients cannot starve the service: 50 connections trickling their headers or bodies, while
other clients' /healthz and forward-auth keep answering (their p99 is printed), with no worker
timeout; bodies that never arrive whole, or are not chunked encoding, are refused in the JSON
envelope (the console: its HTML error page), quoting nothing of the request in the log."""

from __future__ import annotations

import json
import socket
import time

import pytest

from service import buffering
from tests.e2e.conftest import ServerProcess, StartServer
from tests.e2e.slow_clients import Tricklers, probe

MARK = "slow-marker-Zq9"  # request bytes that must reach neither the answer nor the log


@pytest.fixture(params=("keyledger serve", "gunicorn -c gunicorn.conf.py"))
def two_workers(request: pytest.FixtureRequest, start_server: StartServer) -> ServerProcess:
    return start_server(workers=2, plain_gunicorn=request.param != "keyledger serve")


@pytest.fixture(scope="module")
def server(start_module_server: StartServer) -> ServerProcess:
    """One server (one worker) for the module's one-request tests: each reads back only its own
    exchange and that nothing of its marker reached the log."""
    return start_module_server()


def _key(server: ServerProcess) -> str:
    admin = server.create_account("admin", "admin@example.com", "Admin")
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                        token=admin["token"]).json
    created = server.post("/v2/apps", {"id": "slow", "name": "Slow"}, token=owner["token"])
    assert created.status == 201, created
    return created.json["default_key"]["key"]


@pytest.mark.timing_sensitive  # wall-clock bound
def test_fifty_slow_clients_do_not_starve_the_others(two_workers: ServerProcess) -> None:
    server = two_workers
    key = _key(server)
    requests = [("/healthz", {}), ("/v2/auth/check?scope=Predict", {"Authorization": f"Key {key}"})]
    with Tricklers(server.port, 50, interval=1.0) as slow:
        result = probe(server.port, requests, seconds=12)
        assert server.running
    summaries = {path: result.summary(path) for path, _ in requests}
    print(f"\nwhile 50 connections trickled (headers, bodies, a huge chunk; {slow.opened} opened): "
          + "; ".join(f"{path.split('?')[0]} p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
                      f"max {s['max_ms']:.1f} ms (n={s['n']})" for path, s in summaries.items()))
    failed = {k: n for k, n in result.statuses.items() if k[1] != 200}
    assert not failed, f"probe requests that did not answer 200: {failed}"
    for path, summary in summaries.items():
        assert summary["n"] >= 50, (path, summary)  # answered all along, not once at the end
        assert summary["max_ms"] < 2000, (path, summary)  # a contract bound, not a speed test
    log = server.log_path.read_text("utf-8", "replace")
    assert "WORKER TIMEOUT" not in log and "SIGKILL" not in log
    assert slow.closed_by_server > 0  # refused (the huge chunk) or timed out, then reopened


def _exchange(server: ServerProcess, data: bytes, *, then_wait: float = 0.0, timeout: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


MALFORMED_CHUNKED = (b"POST /v2/verify?m=" + MARK.encode() + b" HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\n" + MARK.encode() + b"\r\n0\r\n\r\n")


@pytest.mark.parametrize("path", ["/v2/verify", "/v2/token", "/v2/keys/x"])
def test_a_malformed_chunked_body_is_a_json_400_quoting_nothing(server: ServerProcess, path: str) -> None:
    answer = _exchange(server, MALFORMED_CHUNKED.replace(b"/v2/verify", path.encode()))
    status, headers, body = _parse(answer)
    assert status == 400 and headers["content-type"] == "application/json", answer[:300]
    assert json.loads(body)["error"]["code"] == "INVALID_REQUEST"
    assert MARK.encode() not in answer and b"<html" not in answer.lower()
    assert server.get("/healthz").status == 200
    log = server.log_path.read_text("utf-8", "replace")
    assert MARK not in log and "Traceback" not in log and '"level": "ERROR"' not in log


def test_a_chunked_body_is_decoded_before_the_app(server: ServerProcess) -> None:
    body = json.dumps({"key": "ak_" + "x" * 38, "scope": "Predict"}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    answer = _exchange(server, b"POST /v2/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    status, _, answered = _parse(answer)
    assert status == 200 and json.loads(answered)["valid"] is False, answer[:300]


def test_a_huge_chunk_is_refused_at_once(server: ServerProcess) -> None:
    started = time.monotonic()
    answer = _exchange(server, b"POST /v2/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\nffffffffff\r\n{")
    status, headers, body = _parse(answer)
    assert status == 413 and headers["content-type"] == "application/json", answer[:300]
    assert json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert time.monotonic() - started < buffering.READ_TIMEOUT  # not left to time out


def test_a_stuck_body_is_a_json_400_after_the_read_timeout(server: ServerProcess) -> None:
    started = time.monotonic()
    answer = _exchange(server, b"POST /v2/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 20\r\n\r\n{")  # 1 byte of 20, then nothing
    waited = time.monotonic() - started
    status, headers, body = _parse(answer)
    assert status == 400 and headers["content-type"] == "application/json", answer[:300]
    assert json.loads(body)["error"]["code"] == "INVALID_REQUEST"
    assert buffering.READ_TIMEOUT - 1 <= waited < buffering.READ_TIMEOUT + 5
    assert server.get("/healthz").status == 200


def test_the_console_answers_a_bad_body_with_its_html_error_page(server: ServerProcess) -> None:
    for data in (
        b"POST /console/sign-in HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + MARK.encode() + b"\r\n0\r\n\r\n",
        b"POST /console/sign-in HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 20\r\nCookie: x=1\r\n\r\ntoken=",
    ):
        answer = _exchange(server, data)
        status, headers, body = _parse(answer)
        assert status == 400, answer[:300]
        assert headers["content-type"].startswith("text/html"), answer[:300]
        assert MARK.encode() not in answer
    log = server.log_path.read_text("utf-8", "replace")
    assert MARK not in log and "Traceback" not in log
