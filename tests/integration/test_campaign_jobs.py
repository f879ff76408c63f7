"""The campaign's jobs as plain functions of ``now``, under freezegun, on a real SQLite store and a
real SMTP server (aiosmtpd on 127.0.0.1): who is mailed at which stage, exactly once; the sunset
at its instant; delivery through the outbox while the mail server is down."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from freezegun import freeze_time

from scheduler import jobs
from scheduler.transport import OutboxFolder, SmtpTransport
from service.composition import build_system
from service.domain.actors import NO_REQUEST
from service.domain.campaign import FINAL
from service.settings import Settings
from tests.backend import make_settings
from tests.campaign_support import FROZEN, LegacyWorld, SmtpServer, at, run_campaign
from tests.conftest import TEST_PEPPER, secrets_in_files

SUNSET = datetime(2018, 1, 1, tzinfo=UTC)



@pytest.fixture
def settings(data_dir, smtp) -> Settings:
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05, smtp_url=smtp.url,
                    legacy_sunset_at=SUNSET, mail_from="keyledger@example.com")


@pytest.fixture
def world(system) -> LegacyWorld:
    return LegacyWorld(system)


@pytest.fixture
def mailer(settings) -> jobs.Mailer:
    return jobs.Mailer(transport=SmtpTransport(settings.smtp_server), mail_from=settings.mail_from,
                       lookback=settings.legacy_lookback, first_retry=timedelta(seconds=10))


@pytest.fixture
def owners(world) -> dict:
    """Olga (app vision), Oscar (app atlas) and Nora (app idle, whose token is never used)."""
    with freeze_time("2017-06-23T09:00:00", **FROZEN):
        made = {name: world.owner(name) for name in ("olga", "oscar", "nora")}
        for name, app_id in (("olga", "vision"), ("oscar", "atlas"), ("nora", "idle")):
            world.app(made[name], app_id)
    return made


def stages_of(mailbox, address: str) -> list[str]:
    return [m["X-Keyledger-Stage"] for m in mailbox.to(address)]


def test_each_stage_mails_each_owner_on_tokens_once_and_never_one_who_is_not(system, world, mailer, smtp,
                                                                            owners):
    with freeze_time("2017-09-01", **FROZEN) as clock:
        for day in range(0, 122, 3):  # Olga's app uses a token every few days until the sunset
            clock.move_to(at("2017-09-01T10:00:00") + timedelta(days=day))
            world.use("vision", system.keys_app.now())
            for _rerun in range(2):  # every run twice: a rerun sends nothing again
                run_campaign(system, mailer)
        for moment in ("2017-12-31T00:00:00", "2017-12-31T23:59:59"):
            clock.move_to(moment)
            run_campaign(system, mailer)

    assert stages_of(smtp.mailbox, "olga@example.com") == ["90d", "30d", "7d", "1d"]
    assert smtp.mailbox.to("nora@example.com") == [] and smtp.mailbox.to("oscar@example.com") == []


def test_an_owner_who_stopped_using_tokens_is_not_mailed_at_later_stages(system, world, mailer, smtp, owners):
    with freeze_time("2017-10-01T12:00:00", **FROZEN) as clock:
        world.use("atlas", system.keys_app.now())  # last use ever
        world.use("vision", system.keys_app.now())
        for moment in ("2017-10-03T00:00:01", "2017-11-15T00:00:00", "2017-12-02T00:00:01"):
            clock.move_to(moment)
            if moment.startswith("2017-11"):
                world.use("vision", system.keys_app.now())
            run_campaign(system, mailer)

    assert stages_of(smtp.mailbox, "oscar@example.com") == ["90d"]  # 30d: no use for 60 days
    assert stages_of(smtp.mailbox, "olga@example.com") == ["90d", "30d"]


def test_after_downtime_only_the_latest_overdue_stage_is_mailed(system, world, mailer, smtp, owners):
    with freeze_time("2017-09-30T00:00:00", **FROZEN) as clock:
        world.use("vision", system.keys_app.now())
        run_campaign(system, mailer)  # before the first stage: nothing
        clock.move_to("2017-12-26T08:00:00")  # down through 90d, 30d and 7d
        world.use("vision", system.keys_app.now())
        run_campaign(system, mailer)
        run_campaign(system, mailer)

    assert stages_of(smtp.mailbox, "olga@example.com") == ["7d"]
    stages = {s["name"]: s for s in system.campaign.status(system.plan, [])["stages"]}
    assert stages["90d"]["ran_at"] is None and stages["30d"]["ran_at"] is None
    assert stages["7d"]["ran_at"] == at("2017-12-26T08:00:00") and stages["7d"]["owners_mailed"] == 1


def test_after_the_sunset_only_the_sunset_and_its_final_notice_happen(system, world, mailer, smtp, owners):
    with freeze_time("2017-12-20T00:00:00", **FROZEN) as clock:
        world.use("vision", system.keys_app.now())
        world.use("atlas", at("2017-11-01T00:00:00"))  # before the window
        clock.move_to("2018-01-02T09:00:00")  # the scheduler was down across the 7d and 1d stages and the sunset
        run_campaign(system, mailer)
        run_campaign(system, mailer)

    assert stages_of(smtp.mailbox, "olga@example.com") == [FINAL]
    assert smtp.mailbox.to("oscar@example.com") == []  # no token use in the 30 days before the sunset
    assert all(client["disabled_at"] is not None for client in system.legacy_usage.clients())
    status = system.campaign.status(system.plan, [])
    assert status["sunset_executed_at"] == at("2018-01-02T09:00:00")


def test_the_sunset_disables_tokens_at_its_instant_and_not_a_second_before(system, world, mailer, owners):
    with freeze_time("2017-12-31T23:00:00", **FROZEN) as clock:
        token, _, _ = system.keys_app.issue_access_token(world.clients["vision"], world.secrets["vision"],
                                                         request=NO_REQUEST)
        clock.move_to("2017-12-31T23:59:59")
        assert jobs.execute_sunset(system.keys_app, system.legacy_usage, system.plan, system.keys_app.now()) == 0
        system.after_command()
        assert [c["disabled_at"] for c in system.legacy_usage.clients()] == [None, None, None]
        assert system.verifier.verify(token)[0] == "VALID"
        assert not system.keys_app.sunset_recorded(SUNSET)

        clock.move_to("2018-01-01T00:00:00")
        assert jobs.execute_sunset(system.keys_app, system.legacy_usage, system.plan, system.keys_app.now()) == 3
        system.after_command()
        assert jobs.execute_sunset(system.keys_app, system.legacy_usage, system.plan, system.keys_app.now()) == 0
        assert system.verifier.verify(token)[0] == "LEGACY_TOKEN_SUNSET"

    assert [c["disabled_at"] for c in system.legacy_usage.clients()] == [SUNSET, SUNSET, SUNSET]
    assert system.keys_app.sunset_recorded(SUNSET)
    disabled = [e for e in system.audit.events(limit=None) if e["type"] == "LegacyClient.AccessDisabled"]
    assert len(disabled) == 3 and {e["actor"]["id"] for e in disabled} == {"scheduler"}


def test_a_reminder_not_delivered_before_the_sunset_is_withdrawn_not_sent_late(system, world, mailer, smtp, owners):
    with freeze_time("2017-12-31T12:00:00", **FROZEN) as clock:
        world.use("vision", system.keys_app.now())
        smtp.stop()
        run_campaign(system, mailer)  # 1d recorded, SMTP down
        smtp.start()
        clock.move_to("2018-01-01T00:00:30")
        run_campaign(system, mailer)
        run_campaign(system, mailer)

    assert stages_of(smtp.mailbox, "olga@example.com") == [FINAL]
    stages = {s["name"]: s for s in system.campaign.status(system.plan, [])["stages"]}
    assert stages["1d"]["withdrawn"] == 1 and stages["1d"]["delivery_attempts_failed"] == 1


def test_smtp_down_for_a_while_delays_mail_without_losing_or_duplicating_it(system, world, mailer, smtp, owners):
    with freeze_time("2017-12-02T06:00:00", **FROZEN) as clock:
        for app_id in ("vision", "atlas"):
            world.use(app_id, system.keys_app.now())
        smtp.stop()
        down_since = system.keys_app.now()
        for seconds in range(0, 600, 5):  # ten minutes of downtime, a run every five seconds
            clock.move_to(down_since + timedelta(seconds=seconds))
            run_campaign(system, mailer)
        status = system.campaign.status(system.plan, [])
        stage = next(s for s in status["stages"] if s["name"] == "30d")
        assert (stage["owners_mailed"], stage["deliveries_pending"]) == (0, 2)
        # backing off: 10 s, 20 s, 40 s … so far fewer attempts than runs
        assert 4 <= stage["delivery_attempts_failed"] <= 16
        assert all("ConnectionRefusedError" in u["last_error"] for u in status["undelivered"])

        smtp.start()
        for seconds in range(600, 600 + 16 * 60, 5):  # the longest back-off is 15 minutes
            clock.move_to(down_since + timedelta(seconds=seconds))
            run_campaign(system, mailer)

    assert stages_of(smtp.mailbox, "olga@example.com") == ["30d"]
    assert stages_of(smtp.mailbox, "oscar@example.com") == ["30d"]
    stage = next(s for s in system.campaign.status(system.plan, [])["stages"] if s["name"] == "30d")
    assert (stage["owners_mailed"], stage["deliveries_pending"], stage["deliveries_failed"]) == (2, 0, 0)


def test_the_email_says_what_the_owner_needs_to_act(system, world, mailer, smtp, owners):
    with freeze_time("2017-12-20T10:30:00", **FROZEN) as clock:
        world.app(owners["olga"], "prod", "Vision Prod")
        for hour in range(12):  # twelve windows of use
            world.use("prod", at("2017-12-23T20:15:00") + timedelta(hours=hour))
        world.use("vision", at("2017-12-20T00:00:00"))
        world.use_api_key("vision")
        clock.move_to("2017-12-25T10:30:00")
        run_campaign(system, mailer)

    [message] = smtp.wait_for(1)
    assert message["To"] == "Olga <olga@example.com>" and message["From"] == "keyledger@example.com"
    assert message["X-Keyledger-Stage"] == "7d"
    rid = system.campaign.reminders(SUNSET)[0]["id"]
    assert message["Message-ID"] == f"<reminder-{rid}@example.com>"
    assert message["Date"] == "Mon, 25 Dec 2017 10:30:00 +0000"
    assert "2018-01-01 00:00 UTC" in message["Subject"]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for body in (text, html):
        assert "Vision Prod" in body and "Vision" in body and world.clients["prod"] in body
        assert "2017-12-24 07:15 UTC" in body and "12" in body
        assert "2018-01-01 00:00 UTC" in body
        assert "POST /v2/keys/" in body and "/roll" in body and "Authorization: Key" in body
    assert "already uses API keys: no" in text and "already uses API keys: yes" in text


def test_a_second_scheduler_on_the_same_store_records_nothing_twice(system, settings, world, mailer, smtp, owners):
    other = build_system(settings, follow=False)
    try:
        with freeze_time("2017-12-02T06:00:00", **FROZEN):
            world.use("vision", system.keys_app.now())
            now = system.keys_app.now()
            first = jobs.send_due_reminders(system.keys_app, system.legacy_usage, system.campaign, system.plan, now)
            # The other process's view has not seen that record: the store's unique id refuses it.
            second = jobs.send_due_reminders(other.keys_app, other.legacy_usage, other.campaign, other.plan, now)
            system.after_command()
            jobs.deliver_pending_mail(system.keys_app, system.campaign, mailer, now)
    finally:
        other.close()
    assert (first, second) == (1, 0)
    assert len(smtp.mailbox.to("olga@example.com")) == 1


def test_a_message_the_server_refuses_for_good_is_not_retried(system, world, mailer, smtp, owners):
    async def refuse(server, session, envelope, address, rcpt_options):
        return "550 5.1.1 no such mailbox"

    smtp.mailbox.handle_RCPT = refuse
    with freeze_time("2017-12-02T06:00:00", **FROZEN) as clock:
        world.use("vision", system.keys_app.now())
        for minutes in range(0, 60, 5):
            clock.move_to(at("2017-12-02T06:00:00") + timedelta(minutes=minutes))
            run_campaign(system, mailer)
    stage = next(s for s in system.campaign.status(system.plan, [])["stages"] if s["name"] == "30d")
    assert (stage["deliveries_failed"], stage["delivery_attempts_failed"], stage["owners_mailed"]) == (1, 1, 0)


def test_smtp_login_comes_from_the_url_and_its_password_is_never_recorded(tmp_path, owners, world, system):
    server = SmtpServer(auth=("mailer", "pw-hunter2-never-shown")).start()
    try:
        good = jobs.Mailer(SmtpTransport(Settings(smtp_url=server.url).smtp_server), "k@example.com",
                           timedelta(days=30))
        wrong_url = server.url.replace("pw-hunter2-never-shown", "pw-wrong-never-shown")
        wrong = jobs.Mailer(SmtpTransport(Settings(smtp_url=wrong_url).smtp_server), "k@example.com",
                            timedelta(days=30))
        with freeze_time("2017-12-02T06:00:00", **FROZEN) as clock:
            world.use("vision", system.keys_app.now())
            jobs.send_due_reminders(system.keys_app, system.legacy_usage, system.campaign, system.plan, system.keys_app.now())
            system.after_command()
            jobs.deliver_pending_mail(system.keys_app, system.campaign, wrong, system.keys_app.now())
            system.after_command()
            clock.tick(60)
            jobs.deliver_pending_mail(system.keys_app, system.campaign, good, system.keys_app.now())
            system.after_command()
    finally:
        server.stop()
    assert server.logins == ["mailer"] and len(server.mailbox.messages) == 1
    [failure] = [e for e in system.audit.events(limit=None) if e["type"] == "Reminder.DeliveryFailed"]
    assert "535" in failure["data"]["error"] and "mailer@127.0.0.1" in failure["data"]["error"]
    system.close()
    assert secrets_in_files(system.settings.data_dir, ["pw-hunter2-never-shown", "pw-wrong-never-shown"]) == {}


def test_without_an_smtp_server_mail_is_written_to_the_outbox_folder(system, world, owners):
    outbox = system.settings.data_dir / "outbox"
    mailer = jobs.Mailer(OutboxFolder(outbox), "keyledger@example.com", timedelta(days=30))
    with freeze_time("2017-12-31T06:00:00", **FROZEN):
        world.use("vision", system.keys_app.now())
        run_campaign(system, mailer)
        run_campaign(system, mailer)

    [path] = list(outbox.iterdir())
    assert path.name.endswith(".eml") and "-1d-" in path.name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["X-Keyledger-Stage"] == "1d" and message["To"] == "Olga <olga@example.com>"
    assert message.get_body(("html",)) is not None and message.get_body(("plain",)) is not None
    [reminder] = system.campaign.reminders(SUNSET)
    assert reminder["state"] == "delivered"


def test_a_client_that_cannot_be_disabled_does_not_hold_up_the_others(system, world, owners):
    class UsageWithAGhost:  # the real view, plus a client whose app the store does not know
        def clients(self):
            return system.legacy_usage.clients() + [{"app_id": "ghost", "client_id": "c", "disabled_at": None}]

    with freeze_time("2018-01-01T00:00:05", **FROZEN):
        disabled = jobs.execute_sunset(system.keys_app, UsageWithAGhost(), system.plan, system.keys_app.now())
        system.after_command()
    assert disabled == 3
    assert all(c["disabled_at"] is not None for c in system.legacy_usage.clients())
    assert not system.keys_app.sunset_recorded(SUNSET)  # recorded once every client is disabled


def test_a_reminder_that_cannot_be_composed_is_given_up_and_does_not_block_the_others(system, world, mailer,
                                                                                    smtp, owners):
    with freeze_time("2017-12-02T06:00:00", **FROZEN):
        stage = system.plan.due_stage(system.keys_app.now())
        broken = {"app_id": "vision", "app_name": "Vision", "client_id": "c", "last_used_at": "not a time",
                  "uses": 1, "windows": 1, "uses_api_keys": False}
        system.keys_app.record_reminder(sunset_at=SUNSET, stage=stage, owner={
            "owner_id": owners["olga"]["id"], "owner_email": "olga@example.com", "owner_name": "Olga"},
            apps=[broken], by=jobs.SCHEDULER)
        world.use("atlas", system.keys_app.now())
        run_campaign(system, mailer)
        run_campaign(system, mailer)

    assert stages_of(smtp.mailbox, "oscar@example.com") == ["30d"] and smtp.mailbox.to("olga@example.com") == []
    [undelivered] = system.campaign.status(system.plan, [])["undelivered"]
    assert undelivered["state"] == "failed" and "could not be composed" in undelivered["last_error"]
