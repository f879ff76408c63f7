"""``keyledger serve`` at its edges: it listens where KEYLEDGER_HOST/PORT say and with
KEYLEDGER_WORKERS workers unless options say otherwise; a taken port is one line and exit 2 at
once; plain gunicorn with an unreachable database is one line, not a traceback."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    GUNICORN,
    KEYLEDGER,
    REPO_ROOT,
    ServerProcess,
    base_environment,
    free_port,
    http,
    run_cli,
)


def _serve(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(KEYLEDGER), "serve", "--no-scheduler", *args], env=env, cwd=REPO_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200:
                return
        except OSError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _wait_workers(log: Path, count: int) -> None:
    """Until the log shows ``count`` workers booted, then 0.3 s more for any surplus one to show (a
    fixed second from the first answer was too short under load and too long otherwise)."""
    deadline = time.monotonic() + 30
    while log.read_text().count("Booting worker") < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_serve_listens_where_the_environment_says_and_options_win(tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    env = base_environment(tmp_path / "var", {"KEYLEDGER_HOST": "127.0.0.1", "KEYLEDGER_PORT": str(port),
                                              "KEYLEDGER_WORKERS": "3"})
    log = tmp_path / "env.log"
    process = _serve(env, log)
    try:
        _wait_healthy(port, process, log)
        _wait_workers(log, 3)
        assert log.read_text().count("Booting worker") == 3
        assert f"listening on http://127.0.0.1:{port}" in log.read_text()
    finally:
        _stop(process)
    log = tmp_path / "options.log"
    process = _serve(env, log, "--port", str(other), "--workers", "1")
    try:
        _wait_healthy(other, process, log)
        _wait_workers(log, 1)
        assert log.read_text().count("Booting worker") == 1
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        _stop(process)


@pytest.mark.parametrize(("variable", "value"), [("KEYLEDGER_PORT", "http"), ("KEYLEDGER_PORT", "70000"),
                                                 ("KEYLEDGER_HOST", "a b")])
def test_a_bad_listening_variable_is_one_line_and_exit_2(tmp_path: Path, variable: str, value: str) -> None:
    done = run_cli(["serve"], base_environment(tmp_path / "var", {variable: value}), timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and variable in lines[0], done.stderr


def test_a_second_serve_on_a_taken_port_is_one_line_and_exit_2(tmp_path: Path, server: ServerProcess) -> None:
    started = time.monotonic()
    done = run_cli(["serve", "--port", str(server.port)], base_environment(tmp_path / "other"), timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "already in use" in lines[0] and str(server.port) in lines[0], done.stderr
    assert time.monotonic() - started < 5
    assert not list((tmp_path / "other").glob("*.sqlite"))  # refused before a store was made
    assert server.get("/healthz").status == 200


def test_plain_gunicorn_with_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    env = base_environment(tmp_path / "var", {
        "KEYLEDGER_DATABASE_URL": f"postgresql://keyledger@127.0.0.1:{closed}/keyledger",
        "KEYLEDGER_PORT": str(free_port())})
    done = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "service.api:create_app()"], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "KEYLEDGER_DATABASE_URL" in lines[0] and "Traceback" not in done.stderr, done.stderr
