"""Every bad setting or option stops the command at once: exit status 2, one line naming it."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import base_environment, run_cli


@pytest.mark.parametrize(("variable", "value"), [
    ("KEYLEDGER_WORKERS", "abc"),
    ("KEYLEDGER_WORKERS", "0"),
    ("KEYLEDGER_LOG_LEVEL", "LOUD"),
    ("KEYLEDGER_FOLLOW_INTERVAL", "-1"),
    ("KEYLEDGER_FOLLOW_INTERVAL", "nan"),
    ("KEYLEDGER_LEGACY_SUNSET_AT", "next tuesday"),
    ("KEYLEDGER_REMINDERS", "90 days"),
    ("KEYLEDGER_ACCESS_TOKEN_TTL", "-5h"),
    ("KEYLEDGER_PEPPER", "short"),
    ("KEYLEDGER_PROXY_HOPS", "many"),
])
def test_a_bad_setting_exits_2_with_one_line(tmp_path, variable, value):
    done = run_cli(["serve", "--port", "1"], base_environment(tmp_path / "var", {variable: value}), timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "var").exists()


def test_a_data_directory_that_cannot_be_made_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = run_cli(["serve"], base_environment(blocker / "var"), timeout=30)
    assert done.returncode == 2 and "data directory" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("option", [["--port", "99999"], ["--port", "http"], ["--workers", "0"]])
def test_a_bad_option_exits_2(tmp_path, option):
    done = run_cli(["serve", *option], base_environment(tmp_path / "var"), timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr and option[0] in done.stderr


def test_serve_help_shows_each_default(tmp_path):
    done = run_cli(["serve", "--help"], base_environment(tmp_path / "var"))
    assert done.returncode == 0
    help_text = " ".join(done.stdout.split())
    assert "KEYLEDGER_HOST, else 127.0.0.1)" in help_text and "KEYLEDGER_PORT, else 8080)" in help_text
    assert "KEYLEDGER_WORKERS, else 2" in " ".join(done.stdout.split())


def test_commands_refuse_to_make_a_store_by_accident(tmp_path):
    env = base_environment(tmp_path / "elsewhere")
    done = run_cli(["accounts", "create", "--email", "a@example.com", "--name", "A", "--role", "admin"], env)
    assert done.returncode == 2 and "no Keyledger store" in done.stderr and "--init" in done.stderr
    assert not (tmp_path / "elsewhere").exists()
    made = run_cli(["accounts", "create", "--init", "--email", "a@example.com", "--name", "A", "--role", "admin",
                    "--json"], env)
    assert made.returncode == 0 and str(tmp_path / "elsewhere") in made.stderr


@pytest.mark.parametrize(("variable", "value"), [
    ("KEYLEDGER_WORKERS", "abc"),
    ("KEYLEDGER_LOG_LEVEL", "LOUD"),
    ("KEYLEDGER_PORT", "99999"),
    ("KEYLEDGER_HOST", "http://x/"),
])
def test_plain_gunicorn_with_the_production_config_exits_2_on_a_bad_setting(tmp_path, variable, value):
    import subprocess

    from tests.e2e.conftest import GUNICORN, REPO_ROOT

    done = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "service.api:create_app()"],
                          env=base_environment(tmp_path / "var", {variable: value}), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "var").exists()
