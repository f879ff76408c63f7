"""The expiry reminders' rules (service.domain.expiry) and their setting (KEYLEDGER_EXPIRY_REMINDERS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.expiry import ExpiryPlan, end_of_day, mail_id, stage_name
from service.settings import Settings, SettingsError

PLAN = ExpiryPlan.of([timedelta(days=1), timedelta(days=7)])
EXPIRES = datetime(2026, 3, 11, 12, 0, tzinfo=UTC)
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def due(now: str, *, reminded=(), created=CREATED, rolled=None, expires=EXPIRES) -> str | None:
    return PLAN.due_stage(expires_at=expires, created_at=created, rolled_at=rolled, reminded=reminded, now=at(now))


def test_stages_are_named_by_lead_longest_first():
    assert PLAN.stages == (("7d", timedelta(days=7)), ("1d", timedelta(days=1)))
    assert [stage_name(timedelta(seconds=s)) for s in (90, 3600, 5400, 86400 * 2)] == ["90s", "1h", "90m", "2d"]


def test_a_stage_is_due_from_the_start_of_its_day_never_after_and_never_twice():
    assert due("2026-03-03T23:59:59") is None  # the 7d stage falls due on 03-04 12:00
    assert due("2026-03-04T00:00:00") == "7d"  # from the start of that day (UTC)
    assert due("2026-03-04T13:00:00", reminded=["7d"]) is None
    assert due("2026-03-10T00:00:00", reminded=["7d"]) == "1d"
    assert due("2026-03-10T00:00:00", reminded=["7d", "1d"]) is None
    assert due("2026-03-11T12:00:00") is None  # expired


def test_only_the_latest_stage_due_is_sent_and_a_later_one_recorded_blocks_an_earlier_one():
    assert due("2026-03-10T08:00:00") == "1d"  # down across the 7d stage: only 1d
    assert due("2026-03-10T08:00:00", reminded=["1d"]) is None
    assert due("2026-03-10T08:00:00", reminded=["3d"]) == "1d"  # a stage no longer configured


def test_a_stage_before_the_key_was_issued_or_a_roll_in_the_reminder_period_means_no_reminder():
    assert due("2026-03-06T10:00:00", created=at("2026-03-06T09:00:00")) is None  # 5 days to live: no 7d
    assert due("2026-03-10T00:00:00", created=at("2026-03-06T09:00:00")) == "1d"
    assert due("2026-03-04T00:00:00", rolled=at("2026-03-03T18:00:00")) is None  # within 8 days of expiry
    assert due("2026-03-04T00:00:00", rolled=at("2026-02-20T18:00:00")) == "7d"  # long before: reminded


def test_one_mail_per_owner_and_day():
    assert mail_id("o1", at("2026-03-04T00:00:00").date()) == mail_id("o1", at("2026-03-04T23:59:00").date())
    assert mail_id("o1", at("2026-03-04T00:00:00").date()) != mail_id("o1", at("2026-03-05T00:00:00").date())
    assert mail_id("o1", at("2026-03-04T00:00:00").date()) != mail_id("o2", at("2026-03-04T00:00:00").date())
    assert end_of_day(at("2026-03-04T23:59:59")) == at("2026-03-05T00:00:00")


def test_the_setting_defaults_to_7d_and_1d_and_reads_a_list_or_none():
    assert Settings().expiry_reminders == (timedelta(days=7), timedelta(days=1))
    assert Settings.from_env({"KEYLEDGER_EXPIRY_REMINDERS": "1d, 14d,36h"}).expiry_reminders == (
        timedelta(days=14), timedelta(hours=36), timedelta(days=1))
    assert Settings.from_env({"KEYLEDGER_EXPIRY_REMINDERS": "none"}).expiry_reminders == ()
    assert ExpiryPlan.of(()).due_stage(expires_at=EXPIRES, created_at=CREATED, rolled_at=None, reminded=(),
                                       now=at("2026-03-10T00:00:00")) is None


@pytest.mark.parametrize(("value", "says"), [
    ("7 days", "not a duration"), ("7d,,1d", "empty item"), ("7d,168h", "given twice"), ("0s", "outside"),
    ("400d", "outside"), ("7d;1d", "not a duration"), ("-1d", "not a duration"),
])
def test_a_bad_value_is_refused_with_a_clear_error_naming_the_setting(value, says):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"KEYLEDGER_EXPIRY_REMINDERS": value})
    assert "KEYLEDGER_EXPIRY_REMINDERS" in str(refused.value) and says in str(refused.value)
    assert "e.g. 7d,1d" in str(refused.value)
