"""The whole campaign under freezegun, 2017-06-23 → 2018-01-02, with a real aiosmtpd server.

Four owners, each with one app holding legacy client credentials:

* Ada's app fetches a token and uses it every day, all along;
* Ben's app uses tokens until 2017-10-15, then switches to its API key (migrated);
* Cleo's app has client credentials but never uses a token;
* Dan's app starts using tokens on 2017-12-20 (during the 30d stage).

Tokens are fetched from ``POST /v2/token`` and used at ``POST /v2/verify`` (which records each
use window), the jobs run once a day and at each stage's exact moment, as the scheduler would.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from scheduler import jobs
from scheduler.transport import SmtpTransport
from service.domain.campaign import FINAL
from service.settings import Settings
from tests.backend import make_settings
from tests.campaign_support import FROZEN, LegacyWorld, run_campaign
from tests.conftest import TEST_PEPPER

SUNSET = datetime(2018, 1, 1, tzinfo=UTC)


@pytest.fixture
def settings(data_dir, smtp) -> Settings:
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05, smtp_url=smtp.url,
                    legacy_sunset_at=SUNSET)


def fetch_token(client, world: LegacyWorld, app_id: str):
    basic = base64.b64encode(f"{world.clients[app_id]}:{world.secrets[app_id]}".encode()).decode()
    return client.post("/v2/token", data={"grant_type": "client_credentials"},
                       headers={"Authorization": f"Basic {basic}"})


def verdict(client, credential: str) -> str:
    response = client.post("/v2/verify", json={"key": credential})
    assert response.status_code == 200, response.json
    return response.json["code"]


def moments() -> list[datetime]:
    """Every day at 09:00, each stage's exact moment, a second before the sunset, and the sunset."""
    days = [datetime(2017, 6, 23, 9, tzinfo=UTC) + timedelta(days=n) for n in range(194)]
    exact = [SUNSET - timedelta(days=d) for d in (90, 30, 7, 1)] + [SUNSET - timedelta(seconds=1), SUNSET]
    return sorted(set(days + exact))


def test_the_campaign_from_june_2017_to_the_sunset_and_after(system, client, smtp, settings):
    world = LegacyWorld(system)
    mailer = jobs.Mailer(SmtpTransport(settings.smtp_server), settings.mail_from, settings.legacy_lookback)
    tokens: dict[str, str] = {}
    refused_after_sunset = []
    with freeze_time("2017-06-23T08:00:00", **FROZEN) as clock:
        for name in ("ada", "ben", "cleo", "dan"):
            world.app(world.owner(name), f"{name}-app", f"{name.title()}'s App")

        for moment in moments():
            clock.move_to(moment)
            daily = moment.hour == 9
            users = ["ada-app"] + (["ben-app"] if moment < datetime(2017, 10, 15, tzinfo=UTC) else []) \
                + (["dan-app"] if moment >= datetime(2017, 12, 20, tzinfo=UTC) else [])
            for app_id in users if daily else []:
                answer = fetch_token(client, world, app_id)
                if moment < SUNSET:
                    assert answer.status_code == 200, answer.json
                    tokens[app_id] = answer.json["access_token"]
                    assert verdict(client, tokens[app_id]) == "VALID"
                else:
                    assert answer.status_code == 400 and answer.json["error"] == "unauthorized_client"
                    refused_after_sunset.append(verdict(client, tokens[app_id]))
            if daily and moment >= datetime(2017, 10, 15, tzinfo=UTC):
                assert verdict(client, world.api_keys["ben-app"]) == "VALID"  # Ben migrated

            if moment == SUNSET - timedelta(seconds=1):
                run_campaign(system, mailer)
                assert verdict(client, tokens["ada-app"]) == "VALID"  # not a second before
                assert all(c["disabled_at"] is None for c in system.legacy_usage.clients())
            elif moment == SUNSET:
                assert verdict(client, tokens["ada-app"]) == "LEGACY_TOKEN_SUNSET"
                run_campaign(system, mailer)
                assert [c["disabled_at"] for c in system.legacy_usage.clients()] == [SUNSET] * 4
            else:
                run_campaign(system, mailer)
                run_campaign(system, mailer)  # a rerun sends nothing again

    def stages(name: str) -> list[str]:
        return [m["X-Keyledger-Stage"] for m in smtp.mailbox.to(f"{name}@example.com")]

    assert stages("ada") == ["90d", "30d", "7d", "1d", FINAL]
    assert stages("ben") == ["90d"]  # migrated on 2017-10-15: no token use in the 30 days before 30d
    assert stages("cleo") == []  # never used a token
    # On tokens since 2017-12-20, during the 30d stage: that stage's reminder reaches Dan that day
    # (a stage mails every owner found on tokens while it is the current stage), then 7d and 1d.
    assert stages("dan") == ["30d", "7d", "1d", FINAL]
    assert [m["Date"] for m in smtp.mailbox.to("dan@example.com")][0] == "Wed, 20 Dec 2017 09:00:00 +0000"
    ids = [m["Message-ID"] for m in smtp.mailbox.messages]
    assert len(ids) == len(set(ids)) == 10
    assert set(refused_after_sunset) == {"LEGACY_TOKEN_SUNSET"} and len(refused_after_sunset) == 4

    status = system.campaign.status(system.plan, [])
    assert status["sunset_executed_at"] == SUNSET
    ran = {s["name"]: (s["ran_at"], s["owners_mailed"]) for s in status["stages"]}
    assert ran == {"90d": (SUNSET - timedelta(days=90), 2), "30d": (SUNSET - timedelta(days=30), 2),
                   "7d": (SUNSET - timedelta(days=7), 2), "1d": (SUNSET - timedelta(days=1), 2),
                   FINAL: (SUNSET, 2)}
