"""Plain ``gunicorn 'service.api:create_app()'``, started in the repository's root (so gunicorn
reads ./gunicorn.conf.py by itself), writes the same JSON access log as ``keyledger serve``, and
gunicorn's own lines are JSON too."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import REPO_ROOT, base_environment, free_port, http

GUNICORN = Path(sys.executable).parent / "gunicorn"


def test_plain_gunicorn_writes_the_json_access_log(tmp_path: Path, server) -> None:
    port = free_port()
    log_path = tmp_path / "plain.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(GUNICORN), "-w", "1", "-b", f"127.0.0.1:{port}", "service.api:create_app()"],
                                   env=base_environment(tmp_path / "plain-var"), cwd=REPO_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http("GET", f"http://127.0.0.1:{port}/healthz", headers={"X-Request-Id": "plain-1"}).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.2)
        assert http("GET", f"http://127.0.0.1:{port}/v2/auth/check", headers={"X-Request-Id": "plain-2"}).status == 401
        assert server.get("/healthz", headers={"X-Request-Id": "serve-1"}).status == 200
        time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(15)

    def access(path: Path) -> dict[str, dict]:
        lines = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.startswith("{")]
        return {e["request_id"]: e for e in lines if e["logger"] == "keyledger.access"}

    lines = [line for line in log_path.read_text("utf-8").splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's included, is JSON
    assert any(e["logger"] == "gunicorn.error" and "BufferingWorker" in e["msg"] for e in entries)
    plain, served = access(log_path), access(server.log_path)
    assert plain["plain-1"].keys() == served["serve-1"].keys()
    assert {k: v for k, v in plain["plain-1"].items() if k not in ("ts", "duration_ms", "request_id")} == \
           {k: v for k, v in served["serve-1"].items() if k not in ("ts", "duration_ms", "request_id")}
    assert plain["plain-2"]["route"] == "/v2/auth/check" and plain["plain-2"]["status"] == 401
