"""The README's five-minute tour, run exactly as printed against a real server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, StartServer, base_environment

pytestmark = pytest.mark.e2e

README = REPO_ROOT / "README.md"
TOUR = re.compile(r"<!-- tour:begin -->\s*```bash\n(?P<script>.*?)```\s*<!-- tour:end -->", re.DOTALL)
PERSONAL_TOKEN = re.compile(r"pat_[0-9A-Za-z]{38}")
AUDIT_EXAMPLES = re.compile(r"<!-- audit-examples:begin -->\s*```bash\n(?P<script>.*?)```\s*<!-- audit-examples:end -->",
                            re.DOTALL)
MARK = "--- the audit examples"


def tour_script() -> str:
    match = TOUR.search(README.read_text("utf-8"))
    assert match, "README.md has no ```bash block between <!-- tour:begin --> and <!-- tour:end -->"
    return match.group("script")


def test_the_readme_tour_runs_as_printed(start_server: StartServer, tmp_path: Path) -> None:
    script = tour_script()
    venv_keyledger = REPO_ROOT / ".venv" / "bin" / "keyledger"
    if not venv_keyledger.exists():
        pytest.fail(f"the tour calls .venv/bin/keyledger, but {venv_keyledger} does not exist; "
                    "create it with the README's setup command (./scripts/serve or ./scripts/test)")
    # Two workers, as ./scripts/serve runs; polling slowed to 5 s so that only read-your-writes
    # across processes (the change beacon) can make each step see the one before it.
    server = start_server(workers=2, env={"KEYLEDGER_FOLLOW_INTERVAL": "5"})
    env = base_environment(server.data_dir)
    env.pop("KEYLEDGER_FOLLOW_INTERVAL")  # the tour's own shell sets only what the README implies
    env["KL"] = server.url
    # Then the audit trail's examples, in the same shell (they use the tour's variables; their
    # CSV goes to a folder of the test's).
    examples = AUDIT_EXAMPLES.search(README.read_text("utf-8"))
    assert examples, "README.md has no ```bash block between <!-- audit-examples:begin --> and :end -->"
    (tmp_path / "out").mkdir()
    script += f'\necho "{MARK}"\ncd "{tmp_path / "out"}"\n' + examples.group("script")
    tour_file = tmp_path / "tour.sh"
    tour_file.write_text(script, "utf-8")

    done = subprocess.run(["bash", "-euo", "pipefail", str(tour_file)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    server.remember(done.stdout + done.stderr)  # the keys it printed must not be at rest anywhere
    refused = [line.split(" keyledger.access ", 1)[1] for line in server.log_tail(10_000).splitlines()
               if re.search(r" keyledger\.access \S+ \S+ [45]\d\d ", line)]
    report = (f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n"
              f"--- requests the server refused\n" + "\n".join(refused) +
              f"\n--- server log: {server.log_path}")

    assert done.returncode == 0, report
    tour_out, audit_out = done.stdout.split(MARK + "\n")
    lines = tour_out.splitlines()
    assert lines[-2:] == ["revoked", "active"], report
    import json

    on_app, of_key, revocations, access = (json.loads(line) for line in audit_out.splitlines() if line)
    assert len(on_app["events"]) >= 4 and len(of_key["events"]) == 4, report  # issued, changed, rolled, revoked
    assert [e["type"] for e in revocations["events"]] == ["ApiKey.Revoked"], report
    assert access["credentials"], report  # the app's All key could, before the revocation
    assert (tmp_path / "out" / "audit.csv").read_text("utf-8").startswith("seq,"), report
    assert not PERSONAL_TOKEN.findall(done.stdout + done.stderr), (
        "the tour printed a personal token; it should only capture them in variables\n" + report)
