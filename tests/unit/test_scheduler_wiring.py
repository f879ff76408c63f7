"""The wiring: jobs registered on APScheduler as the field notes require, and one scheduler per store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scheduler.lock import SchedulerLock
from scheduler.main import CampaignScheduler, build_scheduler
from service.settings import Settings
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, make_account, wait_until


@pytest.fixture
def settings(data_dir) -> Settings:
    sunset = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, legacy_sunset_at=sunset, scheduler_interval=0.1)


def test_jobs_repeat_with_explicit_ids_coalesce_one_instance_and_no_misfire_limit(system):
    scheduler = build_scheduler(system)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"campaign-reminders", "campaign-sunset", "campaign-mail",
                         "campaign-reminders-at-7d", "campaign-reminders-at-1d", "campaign-sunset-at",
                         "audit-checkpoint", "expiry-reminders", "key-expiries"}
    for job in jobs.values():
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, None)
    assert jobs["campaign-sunset-at"].trigger.run_date == system.plan.sunset_at
    assert jobs["campaign-reminders"].trigger.interval == timedelta(seconds=0.1)
    assert jobs["audit-checkpoint"].trigger.interval == timedelta(hours=1)
    assert jobs["expiry-reminders"].trigger.interval == timedelta(seconds=0.1)
    assert jobs["key-expiries"].trigger.interval == timedelta(seconds=0.1)


def test_the_scheduler_signs_an_audit_checkpoint_when_it_starts(system):
    make_account(system, "owner", "olga@example.com")  # something for the checkpoint to vouch for
    campaign = CampaignScheduler(system).start()
    try:
        assert wait_until(lambda: len(system.mirror.read()) == 1, 10)
    finally:
        campaign.stop()
    assert system.check_integrity()["ok"]


def test_the_scheduler_lock_is_held_by_one_at_a_time(tmp_path):
    first, second = SchedulerLock(tmp_path / "scheduler.lock"), SchedulerLock(tmp_path / "scheduler.lock")
    assert first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


def test_a_second_scheduler_stands_by_and_takes_over_when_the_first_stops(system, caplog):
    first = CampaignScheduler(system, standby_interval=0.05).start()
    assert first.active.wait(5)
    second = CampaignScheduler(system, standby_interval=0.05).start()
    try:
        assert wait_until(lambda: "standing by" in caplog.text, 5)
        assert not second.active.is_set() and second.scheduler is None
        # Standing by is how it is meant to work (every worker of `serve` offers): no warning.
        standing = [r for r in caplog.records if "standing by" in r.getMessage()]
        assert [r.levelname for r in standing] == ["INFO"]
        first.stop()
        assert second.active.wait(5)
        assert "took over" in caplog.text
    finally:
        first.stop()
        second.stop()
