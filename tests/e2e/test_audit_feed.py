"""The live audit feed against a real server: ``keyledger audit export --follow`` and
``GET /v2/audit/events.jsonl?follow=1``, stopped mid-stream and resumed with ``--since-seq`` /
``since_seq``: what the pieces say together is exactly what a one-shot export says.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import KEYLEDGER, REPO_ROOT, ServerProcess, StartServer, run_cli

FEED = "/v2/audit/events.jsonl"


def make_events(server: ServerProcess, token: str, app_id: str, count: int) -> None:
    """``count`` keys created (an ApiKey.Issued event each)."""
    for n in range(count):
        created = server.post(f"/v2/apps/{app_id}/keys", {"description": f"feed {n}", "scopes": ["Predict"]},
                              token=token)
        assert created.status == 201, created


def last_seq(server: ServerProcess, token: str) -> int:
    lines = server.get(FEED, token=token).body.decode().splitlines()
    return json.loads(lines[-1])["seq"]


def one_shot(server: ServerProcess) -> str:
    done = run_cli(["audit", "export"], server.env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for_seq(path: Path, seq: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in path.read_text("utf-8").splitlines() if line.endswith("}")]
        if lines and json.loads(lines[-1])["seq"] >= seq:
            return
        time.sleep(0.05)
    raise AssertionError(f"the follower did not write seq {seq} within {timeout} s: {path.read_text()[-500:]!r}")


def follow_command(server: ServerProcess, out: Path, since: int) -> subprocess.Popen:
    return subprocess.Popen([str(KEYLEDGER), "audit", "export", "--follow", "--since-seq", str(since)],
                            env=server.env, cwd=REPO_ROOT, stdout=out.open("wb"), stderr=subprocess.DEVNULL)


def whole_lines(text: str) -> list[str]:
    """What a shipper keeps of a piece: its whole lines (a line cut by a kill -9 has no newline)."""
    return text[:text.rfind("\n") + 1].splitlines(keepends=True) if "\n" in text else []


def test_the_command_killed_and_resumed_writes_exactly_the_one_shot_export(start_server: StartServer, tmp_path: Path):
    server = start_server()
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    app_id = server.post("/v2/apps", {"name": "Feed"}, token=admin).json["id"]

    pieces = []
    since = 0
    for round_number, stop in enumerate((signal.SIGKILL, signal.SIGKILL, signal.SIGTERM)):
        out = tmp_path / f"piece{round_number}.jsonl"
        follower = follow_command(server, out, since)
        try:
            make_events(server, admin, app_id, 5)
            wait_for_seq(out, last_seq(server, admin))
            make_events(server, admin, app_id, 3)  # some of these may be cut off by the kill
            time.sleep(0.05)
            follower.send_signal(stop)
            assert follower.wait(10) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        finally:
            if follower.poll() is None:
                follower.kill()
        piece = whole_lines(out.read_text("utf-8"))
        assert piece, f"round {round_number}: nothing written"
        pieces.append("".join(piece))
        since = json.loads(piece[-1])["seq"]
        make_events(server, admin, app_id, 2)  # written while no follower runs

    out = tmp_path / "last.jsonl"
    follower = follow_command(server, out, since)
    try:
        wait_for_seq(out, last_seq(server, admin))
    finally:
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(10) == 0
    pieces.append(out.read_text("utf-8"))
    assert out.read_text("utf-8").endswith("\n")

    assert "".join(pieces) == one_shot(server)


class FeedReader:
    """A shipper's HTTP client: reads the follow stream line by line in a thread, keeps the events
    (and counts the heartbeats), and can be cut off at any moment."""

    def __init__(self, server: ServerProcess, token: str, since: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        started = time.monotonic()
        self.connection.request("GET", f"{FEED}?follow=1&since_seq={since}",
                                headers={"Authorization": f"Key {token}"})
        self.response = self.connection.getresponse()
        self.answered_in = time.monotonic() - started
        self.lines: list[str] = []
        self.heartbeats = 0
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                line = self.response.readline()
                if not line:
                    return
                text = line.decode("utf-8")
                if text == "\n":
                    self.heartbeats += 1
                elif text.endswith("\n"):
                    self.lines.append(text)
        except (OSError, ValueError, http.client.HTTPException):
            return
        finally:
            self.ended.set()

    def last_seq(self) -> int:
        return json.loads(self.lines[-1])["seq"] if self.lines else 0

    def wait_for(self, seq: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.last_seq() < seq:
            assert time.monotonic() < deadline, f"the stream did not reach seq {seq}: at {self.last_seq()}"
            time.sleep(0.02)

    def cut(self) -> list[str]:
        """Drop the connection now (a shipper killed): the reading thread wakes at once."""
        sock = self.connection.sock or getattr(self.response.fp, "raw", None) and self.response.fp.raw._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.connection.close()
        self.thread.join(5)
        return list(self.lines)


def test_the_http_stream_cut_and_resumed_says_exactly_the_one_shot_export(start_server: StartServer):
    server = start_server(env={"KEYLEDGER_AUDIT_HEARTBEAT": "1s"})
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    auditor = server.create_account("auditor", "auditor@example.com", "Auditor")["token"]
    app_id = server.post("/v2/apps", {"name": "Feed"}, token=admin).json["id"]

    pieces: list[str] = []
    since = 0
    for _ in range(3):
        reader = FeedReader(server, auditor, since)
        assert reader.response.status == 200
        assert reader.response.getheader("Content-Type").startswith("application/x-ndjson")
        make_events(server, admin, app_id, 4)
        reader.wait_for(last_seq(server, admin))
        make_events(server, admin, app_id, 2)  # perhaps read, perhaps cut off
        pieces.extend(reader.cut())
        since = json.loads(pieces[-1])["seq"]
        make_events(server, admin, app_id, 2)  # while nobody listens

    reader = FeedReader(server, auditor, since)
    reader.wait_for(last_seq(server, admin))
    pieces.extend(reader.cut())
    whole = server.get(FEED, token=auditor)
    assert "".join(pieces) == whole.body.decode()
    assert json.loads(pieces[0])["seq"] == 1


@pytest.mark.timing_sensitive  # wall-clock bound
def test_verification_keeps_answering_while_follow_streams_are_open(start_server: StartServer):
    """One worker, two open follow streams, a heartbeat a second: forward-auth, /v2/verify and a
    management request are answered at once all the while, and the streams see the new events."""
    server = start_server(workers=1, env={"KEYLEDGER_AUDIT_HEARTBEAT": "1s"})
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    app_id = server.post("/v2/apps", {"name": "Feed"}, token=admin).json["id"]
    created = server.post(f"/v2/apps/{app_id}/keys", {"description": "gw", "scopes": ["Predict"]}, token=admin).json
    key = created["key"]
    head = last_seq(server, admin)
    readers = [FeedReader(server, admin, head) for _ in range(2)]
    try:
        for reader in readers:
            assert reader.response.status == 200
            assert reader.answered_in < 1.0, "the headers waited for the first event"
        slowest = 0.0
        deadline = time.monotonic() + 2.5  # long enough for heartbeats on both streams
        while time.monotonic() < deadline:
            started = time.monotonic()
            check = server.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {key}"})
            verdict = server.post("/v2/verify", {"key": key, "scope": "Predict"})
            me = server.get("/v2/me", token=admin)
            slowest = max(slowest, time.monotonic() - started)
            assert (check.status, verdict.json["valid"], me.status) == (200, True, 200)
        assert slowest < 1.0, f"a round of three requests took {slowest:.3f} s while streams were open"
        assert server.delete(f"/v2/keys/{created['id']}", token=admin).status == 204
        for reader in readers:
            reader.wait_for(head + 1)
            assert reader.heartbeats >= 1
            assert not reader.ended.is_set()
    finally:
        for reader in readers:
            reader.cut()


def test_a_stream_ends_by_itself_after_its_limit(start_server: StartServer):
    server = start_server(env={"KEYLEDGER_AUDIT_FOLLOW_LIMIT": "2s", "KEYLEDGER_AUDIT_HEARTBEAT": "1s"})
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    reader = FeedReader(server, admin, 0)
    assert reader.ended.wait(10), "the stream did not end"
    assert reader.lines and json.loads(reader.lines[0])["seq"] == 1
    reader.cut()


def test_only_auditors_and_admins_follow(start_server: StartServer):
    server = start_server()
    owner = server.create_account("owner", "owner@example.com", "Owner")["token"]
    assert server.get(f"{FEED}?follow=1", token=owner).status == 403
    assert server.get(FEED, token=owner).status == 200  # the one-shot export of their own apps' events
    assert server.get(f"{FEED}?follow=1").status == 401
    assert server.get(f"{FEED}?follow=1&since_seq=-1", token=owner).status == 400
