"""A real ``keyledger scheduler`` process (real clock, the suite's store, aiosmtpd on 127.0.0.1)
killed with SIGKILL between recording an owner's expiry mail and delivering it: the restarted
scheduler delivers it once, and records nothing twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from service.domain.expiry import mail_id
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER
from tests.e2e.conftest import base_environment
from tests.integration.test_campaign_processes import SchedulerProcess

ADMIN = Actor.system("test")


@pytest.fixture
def scheduler(tmp_path, smtp):
    started: list[SchedulerProcess] = []
    data_dir = tmp_path / "var"

    def start() -> SchedulerProcess:
        env = base_environment(data_dir, {
            "KEYLEDGER_SMTP_URL": smtp.url, "KEYLEDGER_EXPIRY_REMINDERS": "1h",
            "KEYLEDGER_SCHEDULER_INTERVAL": "0.2", "KEYLEDGER_MAIL_RETRY": "1s"})
        process = SchedulerProcess(data_dir, tmp_path / f"scheduler{len(started) + 1}.log", env).start()
        started.append(process)
        return process

    yield start, data_dir
    for process in started:
        process.kill()


def arrange(data_dir: Path, keys: dict[str, int]) -> dict[str, tuple[str, list[str]]]:
    """Owners with ``n`` keys each that expire in 1 h 30 s (their "1h" stage comes in 30 s) and
    were used just now; returns owner name → (owner id, key ids)."""
    system = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER), follow=False)
    made = {}
    try:
        keys_app = system.keys_app
        expires_at = datetime.now(UTC) + timedelta(hours=1, seconds=30)
        for name, count in keys.items():
            owner, _ = keys_app.register_account(email=f"{name}@example.com", name=name.title(), role="owner",
                                                 by=ADMIN, request=NO_REQUEST)
            keys_app.create_app(name=f"{name} app", slug=f"{name}-app", owner_id=owner["id"], by=ADMIN,
                                request=NO_REQUEST)
            ids = []
            for n in range(count):
                key, secret = keys_app.issue_key(f"{name}-app", description=f"{name} key {n}", scopes=["Predict"],
                                                 expires_at=expires_at, by=ADMIN, request=NO_REQUEST)
                system.after_command()
                code, _, _ = system.verifier.verify(secret)
                assert code == "VALID", code
                ids.append(key["id"])
            made[name] = (owner["id"], ids)
        system.after_command()
        system.last_used.flush()
    finally:
        system.close()
    return made


def mail_state(data_dir: Path, owner_id: str) -> dict:
    system = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER), follow=False)
    try:
        return system.keys_app.reminder(mail_id(owner_id, datetime.now(UTC).date()))
    finally:
        system.close()


def test_killed_between_recording_and_delivering_the_expiry_mail_goes_out_once_on_restart(scheduler, smtp):
    if datetime.now(UTC).time() >= datetime.strptime("23:58", "%H:%M").time():
        time.sleep(180)  # the stage would fall due tomorrow (UTC): run on the new day instead
    start, data_dir = scheduler
    made = arrange(data_dir, {"ada": 3, "ben": 1})
    smtp.mailbox.hang = True  # the server takes the connection, then never answers RCPT

    first = start()
    assert smtp.mailbox.hanging.wait(30), first.log()
    states = {name: mail_state(data_dir, owner_id) for name, (owner_id, _) in made.items()}
    assert all(s["open"] and s["delivered_at"] is None for s in states.values()), first.log()
    assert smtp.mailbox.received == []
    first.kill()  # kill -9 mid-delivery: recorded, not delivered

    smtp.mailbox.hang = False
    second = start()
    smtp.wait_for(2, timeout=30)
    time.sleep(2.0)  # ten more runs of every job: nothing is recorded or sent again
    ada, ben = smtp.mailbox.to("ada@example.com"), smtp.mailbox.to("ben@example.com")
    assert len(ada) == 1 and len(ben) == 1, second.log()
    assert sorted(part.strip() for part in ada[0]["X-Keyledger-Keys"].split(",")) == sorted(
        f"{key_id}:1h" for key_id in made["ada"][1])
    assert ben[0]["X-Keyledger-Keys"] == f"{made['ben'][1][0]}:1h"
    for name, (owner_id, _) in made.items():
        state = mail_state(data_dir, owner_id)
        assert state["delivered_at"] is not None and not state["open"], name
    assert second.stop() == 0
    assert "Traceback" not in first.log() + second.log()
