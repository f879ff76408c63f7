"""Every line ``keyledger serve`` writes on standard error is one JSON object, the lines saying
where it listens and which audit checkpoint it signed at start included (README, "Logs")."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.e2e


def test_a_start_that_signs_a_checkpoint_writes_json_lines_only(start_server: StartServer) -> None:
    server = start_server(workers=2)  # one scheduler runs, the other stands by: as intended, no warning
    server.create_account("admin", "admin@example.com", "Ada Admin")  # something new to sign
    server.restart()
    lines = [line for line in server.log_path.read_text("utf-8").splitlines()
             if not line.startswith("=== ")]  # the test harness's own lines
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    messages = [e["msg"] for e in entries]
    assert sum(m.startswith("Keyledger listening on http://127.0.0.1:") for m in messages) == 2
    assert any(m.startswith("audit checkpoint ") and " signed at seq " in m for m in messages), messages
    assert not [e for e in entries if e["level"] in ("WARNING", "ERROR", "CRITICAL")], entries
