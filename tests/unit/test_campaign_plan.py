"""The campaign's plan: which stage is due when, and the settings that describe it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.composition import campaign_plan
from service.domain.campaign import FINAL, CampaignPlan, reminder_id, stage_id, sunset_id
from service.settings import Settings, SettingsError

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

SUNSET = datetime(2018, 1, 1, tzinfo=UTC)
PLAN = CampaignPlan.of(SUNSET, {"90d": timedelta(days=90), "30d": timedelta(days=30),
                                "7d": timedelta(days=7), "1d": timedelta(days=1)}, timedelta(days=30))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_no_stage_is_due_before_the_first_one():
    assert PLAN.due_stage(at("2017-10-02T23:59:59")) is None


def test_a_stage_is_due_from_its_exact_moment():
    assert PLAN.due_stage(at("2017-10-03T00:00:00")).name == "90d"
    assert PLAN.due_stage(at("2017-12-01T23:59:59")).name == "90d"
    assert PLAN.due_stage(at("2017-12-02T00:00:00")).name == "30d"


def test_after_downtime_only_the_latest_overdue_stage_is_due():
    # Down from before the 90d stage until after the 7d one: 7d, never 90d or 30d.
    assert PLAN.due_stage(at("2017-12-26T12:00:00")).name == "7d"


def test_no_reminder_is_due_once_the_sunset_has_come():
    assert PLAN.due_stage(SUNSET - timedelta(microseconds=1)).name == "1d"
    assert PLAN.due_stage(SUNSET) is None
    assert PLAN.due_stage(at("2018-01-02T00:00:00")) is None


def test_the_sunset_is_due_at_its_instant_and_not_a_moment_before():
    assert not PLAN.sunset_due(SUNSET - timedelta(microseconds=1))
    assert PLAN.sunset_due(SUNSET)


def test_the_look_back_window_stops_at_the_sunset():
    assert PLAN.usage_since(at("2017-12-20T00:00:00")) == at("2017-11-20T00:00:00")
    assert PLAN.usage_since(at("2018-03-01T00:00:00")) == at("2017-12-02T00:00:00")


def test_stages_come_in_time_order_whatever_the_setting_order():
    plan = CampaignPlan.of(SUNSET, {"1d": timedelta(days=1), "90d": timedelta(days=90)}, timedelta(days=30))
    assert [s.name for s in plan.stages] == ["90d", "1d"]
    assert plan.final_stage.name == FINAL and plan.final_stage.due_at == SUNSET


def test_record_ids_are_deterministic_and_distinct_per_owner_stage_and_campaign():
    assert reminder_id(SUNSET, "o1", "30d") == reminder_id(SUNSET, "o1", "30d")
    ids = {reminder_id(SUNSET, "o1", "30d"), reminder_id(SUNSET, "o2", "30d"), reminder_id(SUNSET, "o1", "7d"),
           reminder_id(SUNSET + timedelta(days=1), "o1", "30d")}
    assert len(ids) == 4
    assert stage_id(SUNSET, "30d") != sunset_id(SUNSET)


def test_the_plan_comes_from_the_settings():
    settings = Settings.from_env({"KEYLEDGER_LEGACY_SUNSET_AT": "2018-01-01T00:00:00Z",
                                  "KEYLEDGER_REMINDERS": "30d,36h,90m", "KEYLEDGER_LEGACY_LOOKBACK": "14d"})
    plan = campaign_plan(settings)
    assert [s.name for s in plan.stages] == ["30d", "36h", "90m"]
    assert plan.stages[1].due_at == at("2017-12-30T12:00:00")
    assert plan.lookback == timedelta(days=14)


def test_the_default_look_back_is_thirty_days():
    assert Settings.from_env({}).legacy_lookback == timedelta(days=30)


@pytest.mark.parametrize("name, value", [
    ("KEYLEDGER_LEGACY_LOOKBACK", "a month"),
    ("KEYLEDGER_LEGACY_LOOKBACK", "0d"),
    ("KEYLEDGER_REMINDERS", "30d,30d"),
    ("KEYLEDGER_REMINDERS", "30d,720h"),
    ("KEYLEDGER_SCHEDULER_INTERVAL", "often"),
    ("KEYLEDGER_SCHEDULER_INTERVAL", "0"),
    ("KEYLEDGER_MAIL_RETRY", "soon"),
    ("KEYLEDGER_SMTP_URL", "http://mail.example.com"),
    ("KEYLEDGER_SMTP_URL", "smtp://"),
    ("KEYLEDGER_SMTP_URL", "smtp://mail.example.com:port"),
])
def test_a_bad_campaign_setting_is_refused_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_a_bad_smtp_url_error_never_shows_its_password():
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"KEYLEDGER_SMTP_URL": "http://mailer:hunter2-secret@mail.example.com"})
    assert "hunter2-secret" not in str(refused.value)


def test_smtp_urls_are_understood_and_their_password_never_shown():
    settings = Settings.from_env({"KEYLEDGER_SMTP_URL": "smtp+starttls://mailer:p%40ss-word@mail.example.com"})
    server = settings.smtp_server
    assert (server.scheme, server.host, server.port, server.username, server.password) == (
        "smtp+starttls", "mail.example.com", 587, "mailer", "p@ss-word")
    assert server.display == "smtp+starttls://mailer@mail.example.com:587"
    assert "p@ss" not in repr(server) and "p%40ss" not in repr(settings)
    assert Settings.from_env({"KEYLEDGER_SMTP_URL": "smtps://mail.example.com"}).smtp_server.port == 465
    separate = Settings.from_env({"KEYLEDGER_SMTP_URL": "smtp://mailer@127.0.0.1:2525",
                                  "KEYLEDGER_SMTP_PASSWORD": "from-a-secret-store"})
    assert separate.smtp_server.password == "from-a-secret-store"
    assert "from-a-secret-store" not in repr(separate)


def test_a_reminder_s_subject_agrees_with_its_count_of_apps():
    from datetime import UTC, datetime

    from scheduler.messages import subject

    sunset = datetime(2018, 1, 1, tzinfo=UTC)
    one = {"apps": [{}], "sunset_at": sunset, "stage": "7d"}
    two = {"apps": [{}, {}], "sunset_at": sunset, "stage": "7d"}
    assert subject(one).endswith("(1 app still uses them)")
    assert subject(two).endswith("(2 apps still use them)")
    assert subject({**one, "stage": "final"}).endswith("switch 1 app to API keys")
