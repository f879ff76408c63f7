"""Reminders before keys expire (issue 18, item 4) as plain functions of ``now`` under freezegun,
on the suite's store and a real SMTP server (aiosmtpd on 127.0.0.1): each owner mailed once per
stage, in one mail per day listing every key due; nobody mailed for a key rolled, revoked or
unused; a key revoked between the record and the delivery left out; the trail shows it all."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import pytest
from freezegun import freeze_time

from projections.audit import AuditFilter
from scheduler import expiry, jobs
from scheduler.transport import SmtpTransport
from service.credentials import display_hint
from service.domain.actors import NO_REQUEST, Actor
from service.domain.expiry import EXPIRY_NOTICE
from service.domain.keys import ApiKey
from service.settings import Settings
from tests.backend import make_settings
from tests.campaign_support import FROZEN, at
from tests.conftest import TEST_PEPPER

ADMIN = Actor.system("test")



@pytest.fixture
def settings(data_dir, smtp) -> Settings:
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05, smtp_url=smtp.url,
                         mail_from="keyledger@example.com")


@pytest.fixture
def mailer(settings) -> jobs.Mailer:
    return jobs.Mailer(transport=SmtpTransport(settings.smtp_server), mail_from=settings.mail_from,
                       lookback=settings.legacy_lookback, first_retry=timedelta(seconds=10))


class World:
    """Owners, apps and keys made with the real use cases; keys used through the real verifier."""

    def __init__(self, system) -> None:
        self.system = system
        self.secrets: dict[str, str] = {}  # key id → secret

    def owner(self, name: str) -> dict:
        account, _ = self.system.keys_app.register_account(email=f"{name}@example.com", name=name.title(),
                                                           role="owner", by=ADMIN, request=NO_REQUEST)
        self.system.after_command()
        return account

    def app(self, owner: dict, slug: str) -> None:
        self.system.keys_app.create_app(name=slug.title(), slug=slug, owner_id=owner["id"], by=ADMIN,
                                        request=NO_REQUEST)
        self.system.after_command()

    def key(self, app: str, description: str, expires_at: datetime) -> str:
        key, secret = self.system.keys_app.issue_key(app, description=description, scopes=["Predict"],
                                                     expires_at=expires_at, by=ADMIN, request=NO_REQUEST)
        self.system.after_command()
        self.secrets[key["id"]] = secret
        return key["id"]

    def use(self, key_id: str) -> None:
        code, _, _ = self.system.verifier.verify(self.secrets[key_id])
        assert code == "VALID", code
        self.system.last_used.flush()


def run(system, mailer) -> None:
    """One pass of the expiry job and the outbox, as the scheduler makes it, at the clock's now."""
    keys_app = system.keys_app
    expiry.send_expiry_reminders(keys_app, system.expiring, system.last_used, system.expiry_plan, keys_app.now())
    system.after_command()
    jobs.deliver_pending_mail(keys_app, system.campaign, mailer, keys_app.now())
    system.after_command()


def listed(message) -> list[str]:
    """The key ids a mail lists, with their stage: ``["<id>:7d", …]``."""
    return sorted(part.strip() for part in message["X-Keyledger-Keys"].split(","))


def test_owners_are_mailed_once_per_stage_one_mail_a_day_never_for_a_key_rolled_revoked_or_unused(
        system, mailer, smtp):
    world = World(system)
    with freeze_time("2026-03-01T09:00:00", **FROZEN) as clock:
        olga, oscar = world.owner("olga"), world.owner("oscar")
        world.app(olga, "vision")
        world.app(oscar, "atlas")
        first = world.key("vision", "billing worker", at("2026-03-11T12:00:00"))
        second = world.key("vision", "nightly export", at("2026-03-11T18:00:00"))  # same days: same mails
        rolled = world.key("vision", "rolled one", at("2026-03-11T12:00:00"))
        revoked = world.key("vision", "revoked one", at("2026-03-11T12:00:00"))
        unused = world.key("vision", "never used", at("2026-03-11T12:00:00"))
        later = world.key("atlas", "atlas ingest", at("2026-03-13T12:00:00"))
        stale = world.key("atlas", "used long ago", at("2026-04-20T12:00:00"))
        for key_id in (first, second, rolled, revoked, later, stale):
            world.use(key_id)
        run(system, mailer)  # nothing is due yet
        clock.move_to("2026-03-03T18:00:00")  # before their first reminder: rolled, revoked
        system.keys_app.roll_key(rolled, by=ADMIN, request=NO_REQUEST)
        system.keys_app.revoke_key(revoked, by=ADMIN, request=NO_REQUEST)
        system.after_command()

        moment = at("2026-03-02T00:00:00")
        # Every 6 hours, twice: a rerun records nothing new. "used long ago" was last used on 03-01,
        # more than 30 days before its stages (04-13, 04-19).
        while moment < at("2026-04-25T00:00:00"):
            clock.move_to(moment)
            for _rerun in range(2):
                run(system, mailer)
            moment += timedelta(hours=6)

    olga_mail, oscar_mail = smtp.mailbox.to("olga@example.com"), smtp.mailbox.to("oscar@example.com")
    assert [listed(m) for m in olga_mail] == [sorted([f"{first}:7d", f"{second}:7d"]),
                                              sorted([f"{first}:1d", f"{second}:1d"])]
    assert [listed(m) for m in oscar_mail] == [[f"{later}:7d"], [f"{later}:1d"]]
    assert len(smtp.mailbox.received) == 4
    # Sent on the day the stage falls due (at its first run), never after the stage's time.
    assert [m["Date"].datetime for m in olga_mail] == [at("2026-03-04T00:00:00"), at("2026-03-10T00:00:00")]
    assert [m["Date"].datetime for m in oscar_mail] == [at("2026-03-06T00:00:00"), at("2026-03-12T00:00:00")]
    text = olga_mail[0].get_body(("plain",)).get_content()
    assert "billing worker" in text and "nightly export" in text and "2026-03-11 12:00 UTC" in text
    assert "Vision" in text and display_hint(world.secrets[first]) in text
    assert all(m["X-Keyledger-Stage"] == EXPIRY_NOTICE for m in smtp.mailbox.messages)
    raw = b"".join(content for _, _, content in smtp.mailbox.received)
    for secret in world.secrets.values():
        assert secret.encode() not in raw
    for absent in (b"rolled one", b"revoked one", b"never used", b"used long ago"):
        assert absent not in raw
    assert not {rolled, revoked, unused, stale} & {item.split(":")[0] for m in smtp.mailbox.messages
                                                   for item in listed(m)}

    # The trail: each key's ApiKey.Expiring per stage (in its history), the mail's record and delivery.
    expiring = system.audit.page(AuditFilter(type="ApiKey.Expiring"), limit=100)
    assert sorted((e["key_id"], e["data"]["stage"]) for e in expiring) == sorted(
        (k, s) for k in (first, second, later) for s in ("7d", "1d"))
    assert {e["app_id"] for e in expiring} == {"vision", "atlas"}
    history = [e["type"] for e in system.audit.events(key_id=first, limit=None)]
    assert history.count("ApiKey.Expiring") == 2
    delivered = system.audit.page(AuditFilter(type="Reminder.Delivered"), limit=100)
    assert len(delivered) == 4
    # The key's version moved with each reminder, in the listing as in the key itself.
    listing = {k["id"]: k["version"] for k in system.directory.keys("vision", system.keys_app.now())}
    assert listing[first] == system.keys_app.key_view(system.keys_app._find(ApiKey, UUID(first)),
                                                      system.keys_app.now())["version"]


def test_an_owner_with_forty_keys_expiring_gets_one_mail_listing_them_all(system, mailer, smtp):
    world = World(system)
    with freeze_time("2026-05-01T09:00:00", **FROZEN) as clock:
        nina = world.owner("nina")
        world.app(nina, "fleet")
        world.app(nina, "radar")
        keys = [world.key("fleet" if n % 2 else "radar", f"device {n:02d}", at("2026-05-20T00:00:00")
                          + timedelta(minutes=17 * n)) for n in range(40)]
        for key_id in keys:
            world.use(key_id)
        for moment in ("2026-05-12T23:00:00", "2026-05-13T00:00:00", "2026-05-13T11:00:00", "2026-05-13T23:59:00"):
            clock.move_to(moment)
            run(system, mailer)
    [mail] = smtp.mailbox.to("nina@example.com")
    assert listed(mail) == sorted(f"{k}:7d" for k in keys)
    assert mail["Subject"].startswith("40 of your API keys expire soon")
    text = mail.get_body(("plain",)).get_content()
    assert all(f"device {n:02d}" in text for n in range(40)) and "Fleet" in text and "Radar" in text


def test_a_key_revoked_after_its_reminder_was_recorded_is_left_out_of_the_mail(system, mailer, smtp):
    world = World(system)
    with freeze_time("2026-06-01T09:00:00", **FROZEN) as clock:
        ulla = world.owner("ulla")
        world.app(ulla, "kiosk")
        kept = world.key("kiosk", "kept", at("2026-06-20T12:00:00"))
        dropped = world.key("kiosk", "dropped", at("2026-06-20T12:00:00"))
        alone = world.owner("alone")
        world.app(alone, "solo")
        only = world.key("solo", "only key", at("2026-06-20T12:00:00"))
        for key_id in (kept, dropped, only):
            world.use(key_id)
        clock.move_to("2026-06-13T00:00:00")
        smtp.stop()  # the mail server is down: recorded, not delivered
        run(system, mailer)
        assert smtp.mailbox.received == []
        system.keys_app.revoke_key(dropped, by=ADMIN, request=NO_REQUEST)
        system.keys_app.revoke_key(only, by=ADMIN, request=NO_REQUEST)
        system.after_command()
        smtp.start()
        clock.move_to("2026-06-13T01:00:00")  # past the retry time
        run(system, mailer)
        run(system, mailer)
    [mail] = smtp.mailbox.to("ulla@example.com")
    assert listed(mail) == [f"{kept}:7d"]
    assert smtp.mailbox.to("alone@example.com") == []
    withdrawn = system.audit.page(AuditFilter(type="Reminder.Withdrawn"), limit=10)
    assert len(withdrawn) == 1 and "revoked, rolled or expired" in withdrawn[0]["data"]["reason"]


def test_a_scheduler_down_across_the_first_stage_sends_only_the_latest(system, mailer, smtp):
    world = World(system)
    with freeze_time("2026-07-01T09:00:00", **FROZEN) as clock:
        vera = world.owner("vera")
        world.app(vera, "vault")
        key = world.key("vault", "vault sync", at("2026-07-20T12:00:00"))
        world.use(key)
        clock.move_to("2026-07-19T08:00:00")  # down from before the 7d stage until after the 1d one
        run(system, mailer)
        clock.move_to("2026-07-19T20:00:00")
        run(system, mailer)
    assert [listed(m) for m in smtp.mailbox.to("vera@example.com")] == [[f"{key}:1d"]]
