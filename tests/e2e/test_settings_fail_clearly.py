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
    ("KEYLEDGER_EXPIRY_REMINDERS", "7d,7 days"),
    ("KEYLEDGER_ACCESS_TOKEN_TTL", "-5h"),
    ("KEYLEDGER_PEPPER", "short"),
    ("KEYLEDGER_PROXY_HOPS", "many"),
    ("KEYLEDGER_TRUSTED_PROXIES", "10.0.0.1/8"),
    ("KEYLEDGER_TRUSTED_PROXIES", "gateway.internal"),
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


@pytest.mark.parametrize(("variable", "value"), [
    ("KEYLEDGER_LEGACY_USE_WINDOW", "0s"),  # once the divisor of every legacy verification
    ("KEYLEDGER_ACCESS_TOKEN_TTL", "0s"),
    ("KEYLEDGER_REMINDERS", ","),
    ("KEYLEDGER_MAIL_FROM", "keyledger@example.com\nBcc: everyone@example.com"),
    ("KEYLEDGER_MAIL_FROM", "keyledger"),
    ("KEYLEDGER_MAIL_FROM", "Keyledger <not an address>"),
])
def test_values_that_broke_later_are_refused_at_start(tmp_path, variable, value):
    done = run_cli(["serve", "--port", "1"], base_environment(tmp_path / "var", {variable: value}), timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in done.stderr
    assert "Bcc" not in done.stderr  # a line break is named, not echoed into the log
    assert not (tmp_path / "var").exists()


@pytest.mark.store_independent
@pytest.mark.parametrize("value", ["keyledger@example.com", "Keyledger <keyledger@example.com>"])
def test_a_sender_address_is_accepted(value):
    from service.settings import Settings

    assert Settings.from_env({"KEYLEDGER_MAIL_FROM": value}).mail_from == value


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["db", "init"]])
def test_a_bad_data_directory_is_named_by_its_variable(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = run_cli(command, base_environment(blocker / "var"), timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "KEYLEDGER_DATA_DIR" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.sqlite_only
def test_a_read_only_data_directory_gives_one_line(tmp_path):
    from tests.e2e.small_fs import remount_read_only, small_filesystem

    with small_filesystem(tmp_path / "disk", "16m") as disk:
        env = base_environment(disk / "var")
        made = run_cli(["db", "init"], env, timeout=60)
        assert made.returncode == 0, made.stderr
        remount_read_only(disk)
        for command in (["serve", "--port", "1"], ["audit", "verify"], ["projections", "rebuild"]):
            done = run_cli(command, env, timeout=30)
            problems = [line for line in done.stderr.strip().splitlines()
                        if not line.startswith("keyledger: data directory ")]  # where the command looks
            assert done.returncode == 2, (command, done.stderr)
            assert len(problems) == 1 and "KEYLEDGER_DATA_DIR" in problems[0], (command, done.stderr)
            assert "read-only" in problems[0] and "Traceback" not in done.stderr


def test_audit_export_offers_no_init_and_refuses_a_missing_store(tmp_path):
    env = base_environment(tmp_path / "none")
    shown = run_cli(["audit", "export", "--help"], env)
    assert shown.returncode == 0 and "--format" in shown.stdout and "--init" not in shown.stdout
    refused = run_cli(["audit", "export"], env)
    assert refused.returncode == 2 and "no Keyledger store" in refused.stderr and "--init" not in refused.stderr
    assert not (tmp_path / "none").exists()
    assert run_cli(["audit", "export", "--init"], env).returncode == 2  # not an option of export


def test_plain_gunicorn_names_a_bad_data_directory_in_one_line(tmp_path):
    import subprocess

    from tests.e2e.conftest import GUNICORN, REPO_ROOT, free_port

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = base_environment(blocker / "var", {"KEYLEDGER_PORT": str(free_port())})
    done = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "service.api:create_app()"], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    plain = [line for line in done.stderr.strip().splitlines() if not line.startswith("{")]  # gunicorn's JSON
    assert done.returncode == 2, done.stderr
    assert len(plain) == 1 and "KEYLEDGER_DATA_DIR" in plain[0] and "Traceback" not in done.stderr
