"""A full data disk costs writes only: a real ``keyledger serve`` whose data directory is on a
small filesystem of the test's own (a tmpfs), filled to the last byte and freed again.

Wanted (issue 15): writes answer 503 ``UNAVAILABLE`` with ``Retry-After`` (never a 500), verification
keeps answering from memory, no worker dies (the metrics' memory-mapped files are not on that
filesystem), the background flushes retry later, and once space returns the service is whole
again without a restart. Also: the data directory is 0700 and every file in it 0600.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProcess, StartServer
from tests.e2e.small_fs import fill, small_filesystem

pytestmark = [pytest.mark.e2e, pytest.mark.sqlite_only]  # the SQLite store is the data directory


def _world(server: ServerProcess) -> dict:
    admin = server.create_account("admin", "admin@example.com", "Ada Admin")["token"]
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "Olga", "role": "owner"},
                        token=admin)
    assert owner.status == 201, owner
    token = owner.json["token"]
    app = server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=token)
    assert app.status == 201, app
    return {"token": token, "key": app.json["default_key"]["key"], "key_id": app.json["default_key"]["id"]}


def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def _log_lines(server: ServerProcess) -> list[dict]:
    lines = []
    for line in server.log_path.read_text("utf-8", "replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_a_full_disk_costs_writes_only_and_heals_without_a_restart(start_server: StartServer, tmp_path) -> None:
    with small_filesystem(tmp_path / "disk", "24m") as disk:
        server = start_server(disk / "var", workers=2, env={"KEYLEDGER_LAST_USED_INTERVAL": "0.2",
                                                            "KEYLEDGER_SCHEDULER_INTERVAL": "0.3"})
        world = _world(server)
        master = server.process.pid
        assert server.post("/v2/verify", {"key": world["key"], "scope": "Predict"}).status == 200
        used_before = time.time()

        ballast = fill(disk)
        started = time.monotonic()
        refused = []
        for number in range(6):  # both workers, a new app and a new key
            answer = server.post("/v2/apps", {"id": f"full{number}", "name": "Full"}, token=world["token"])
            refused.append(answer)
            issued = server.post("/v2/apps/vision/keys", {"description": "x", "scopes": ["Predict"]},
                                 token=world["token"])
            refused.append(issued)
        for answer in refused:
            assert answer.status == 503, answer
            assert answer.json["error"]["code"] == "UNAVAILABLE" and answer.headers.get("Retry-After"), answer
        for _ in range(40):  # verification answers from memory, on every worker
            assert server.post("/v2/verify", {"key": world["key"], "scope": "Predict"}).status == 200
            assert server.get("/v2/auth/check?scope=Predict", token=world["key"]).status == 200
            assert server.get("/healthz").status == 200
        assert server.get("/v2/apps/vision", token=world["token"]).status == 200  # reads still work

        # A worker that dies meanwhile is replaced, and the new one boots and answers.
        victim = _workers(master)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(workers := _workers(master)) < 2 or victim in workers:
            assert time.monotonic() < deadline, f"no replacement for worker {victim}:\n{server.log_tail()}"
            time.sleep(0.1)
        # The key's last-used time must reach this second, later than its use before the disk filled.
        while int(time.time()) <= int(used_before):
            time.sleep(0.05)
        used_while_full = int(time.time())
        for _ in range(40):
            assert server.post("/v2/verify", {"key": world["key"], "scope": "Predict"}).status == 200
        time.sleep(1.5)  # last-used flushes and the scheduler's rounds fail meanwhile, and retry
        assert server.running and server.process.pid == master
        assert time.monotonic() - started < 30

        ballast.unlink()  # space returns
        deadline = time.monotonic() + 10
        while (created := server.post("/v2/apps", {"id": "after", "name": "After"},
                                      token=world["token"])).status != 201:
            assert created.status == 503 and time.monotonic() < deadline, created
            time.sleep(0.2)
        new_key = created.json["default_key"]["key"]
        assert server.post("/v2/verify", {"key": new_key, "scope": "Predict"}).status == 200
        assert server.get("/v2/auth/check?scope=Predict", token=new_key).status == 200
        listed = server.get("/v2/apps", token=world["token"]).json
        assert {"vision", "after"} <= {a["id"] for a in listed["apps"]}, listed
        # The last-used times of the uses while the disk was full are written. A flush on the full disk
        # failed (kept in memory, said once, written again once space returned) or, when SQLite had room
        # left in its WAL file to reuse, went through: either way the key's last use is on record.
        deadline = time.monotonic() + 5
        while True:
            text = server.log_path.read_text("utf-8", "replace")
            last_used = server.get(f"/v2/keys/{world['key_id']}", token=world["token"]).json["last_used_at"]
            written = last_used and datetime.fromisoformat(last_used.replace("Z", "+00:00")).timestamp() >= used_while_full
            # A worker whose flush failed says so again once it has written; the killed one cannot.
            failed = {int(pid) for pid in re.findall(r"writing last-used times failed in process (\d+)", text)}
            recovered = {int(pid) for pid in re.findall(r"last-used times written again in process (\d+)", text)}
            if written and (failed & set(_workers(master))) <= recovered:
                break
            assert time.monotonic() < deadline, (
                f"the last-used flush did not come back: {last_used} (used at {used_while_full}), "
                f"failed in {failed}, written again in {recovered}, workers {_workers(master)}")
            time.sleep(0.2)
        assert server.process.pid == master and server.starts == 1  # never restarted

        log = _log_lines(server)
        text = server.log_path.read_text("utf-8", "replace")
        assert "SIGBUS" not in text and "Worker exiting" not in text
        assert text.count("Booting worker") == 3  # two, and the one that replaced the killed one
        assert not [line for line in log if line.get("status", 0) >= 500 and line.get("status") != 503]
        assert "Traceback" not in text, "a full disk is expected, not an error with a traceback"
        assert sum(1 for line in log if line["level"] in ("ERROR", "CRITICAL")) <= 5
        server.stop()


@pytest.mark.parametrize("before", ["none", "made 0755 by an earlier version"])
def test_the_data_directory_and_its_files_are_owner_only(start_server: StartServer, tmp_path, before) -> None:
    if before != "none":
        (tmp_path / "fresh" / "var").mkdir(parents=True, mode=0o755)
        os.chmod(tmp_path / "fresh" / "var", 0o755)
    server = start_server(tmp_path / "fresh" / "var", workers=2, env={"KEYLEDGER_LAST_USED_INTERVAL": "0.2"})
    world = _world(server)
    assert server.post("/v2/verify", {"key": world["key"], "scope": "Predict"}).status == 200
    time.sleep(0.5)  # a last-used flush
    loose = []
    root = server.data_dir
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = 0o700 if path.is_dir() else 0o600
        if mode != wanted:
            loose.append(f"{path.relative_to(root.parent)} {mode:o}")
    assert not loose, loose
    assert not (root / "metrics").exists()  # the metrics are elsewhere (off the data disk)
    shm = [p for p in os.listdir("/dev/shm") if p.startswith(f"keyledger-metrics-{server.process.pid}-")]
    assert len(shm) == 1 and stat.S_IMODE(os.stat(f"/dev/shm/{shm[0]}").st_mode) == 0o700
    server.stop()
    assert not os.path.exists(f"/dev/shm/{shm[0]}")  # the run's folder goes with it


def test_a_start_on_a_full_disk_says_so_in_one_line(tmp_path) -> None:
    """SQLite cannot open its store without room for its -wal and -shm files: a start (or a
    command) on a full disk is one line naming the data directory, not a traceback."""
    from tests.e2e.conftest import base_environment, run_cli

    with small_filesystem(tmp_path / "disk", "16m") as disk:
        env = base_environment(disk / "var")
        assert run_cli(["db", "init"], env).returncode == 0
        fill(disk)
        for command in (["serve", "--port", "1"], ["audit", "verify"]):
            done = run_cli(command, env, timeout=30)
            problems = [line for line in done.stderr.strip().splitlines()
                        if not line.startswith("keyledger: data directory ")]
            assert done.returncode == 1, (command, done.stderr)
            assert len(problems) == 1 and "KEYLEDGER_DATA_DIR" in problems[0] and "disk" in problems[0], done.stderr
            assert "Traceback" not in done.stderr
