"""scripts/demo: a compressed deprecation campaign against a live server, run as the README says
(on a shorter timeline than its default two minutes)."""

from __future__ import annotations

import re
import subprocess

from tests.e2e.conftest import REPO_ROOT, base_environment


def test_the_demo_shows_reminders_arriving_and_the_token_refused_after_the_sunset(tmp_path):
    env = base_environment(tmp_path / "unused", {
        "DEMO_DATA_DIR": str(tmp_path / "demo"), "DEMO_SUNSET_IN": "40", "DEMO_REMINDERS": "25s,12s",
        "BOOTSTRAP_EXTRAS": "test"})  # the test environment's .venv, as ./scripts/test made it
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "demo")], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    report = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, report
    assert re.findall(r"X-Keyledger-Stage: (\S+)", done.stdout) == ["25s", "12s", "final"], report
    assert "reminder stages 25s,12s before it" in done.stdout, report  # announced as shown
    subjects = re.findall(r"Subject: (.*)", done.stdout)
    assert len(subjects) == 3 and all(s.endswith(("still uses them)", "to API keys")) for s in subjects), report
    after = done.stdout.split("After the sunset", 1)[1]
    assert "LEGACY_TOKEN_SUNSET" in after and "unauthorized_client" in after, report
    assert "Legacy OAuth2 access tokens stopped working" in after, report
    trail = after.split("The audit trail of it all", 1)[1]
    for kind in ("CampaignStage.Began", "Reminder.Recorded", "Reminder.Delivered", "LegacyClient.AccessDisabled",
                 "Sunset.Executed"):
        assert f"system:scheduler   {kind}" in trail, report
    assert "integrity: ok=True" in trail, report
    emails = sorted((tmp_path / "demo" / "outbox").glob("*.eml"))
    assert [e.name.split("-")[1] for e in emails] == ["25s", "12s", "final"]
