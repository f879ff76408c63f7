"""GET /v2/campaign: how the deprecation campaign stands, for admins and auditors only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from scheduler import jobs
from scheduler.transport import OutboxFolder
from tests.campaign_support import LegacyWorld


@pytest.mark.parametrize("caller, expected", [
    ("admin", 200), ("auditor", 200), ("owner", 403), ("api_key_caller", 403), ("anonymous", 401),
])
def test_only_admins_and_auditors_read_the_campaign(request, caller, expected):
    response = request.getfixturevalue(caller).get("/v2/campaign")
    assert response.status_code == expected, response.json
    if expected != 200:
        assert response.json["error"]["code"] == {401: "UNAUTHENTICATED", 403: "FORBIDDEN"}[expected]


def test_the_campaign_shows_its_stages_deliveries_and_owners_on_tokens(system, admin, owner):
    world = LegacyWorld(system)
    mailer = jobs.Mailer(OutboxFolder(system.settings.outbox_path), "k@example.com", timedelta(days=30))
    with freeze_time("2017-12-02T06:00:00", ignore=["asyncio"]):
        world.app({"id": owner.id}, "vision", "Vision")
        world.use("vision", datetime(2017, 12, 1, 9, tzinfo=UTC))
        now = system.keys_app.now()
        jobs.send_due_reminders(system.keys_app, system.legacy_usage, system.campaign, system.plan, now)
        system.after_command()
        jobs.deliver_pending_mail(system.keys_app, system.campaign, mailer, now)
        system.after_command()
        response = admin.get("/v2/campaign")

    assert response.status_code == 200
    body = response.json
    assert body["sunset_at"] == "2018-01-01T00:00:00Z" and body["sunset_executed_at"] is None
    assert [s["name"] for s in body["stages"]] == ["90d", "30d", "7d", "1d", "final"]
    thirty = body["stages"][1]
    assert thirty == {"name": "30d", "due_at": "2017-12-02T00:00:00Z", "ran_at": "2017-12-02T06:00:00Z",
                      "owners_mailed": 1, "deliveries_pending": 0, "deliveries_failed": 0,
                      "delivery_attempts_failed": 0, "withdrawn": 0}
    assert body["stages"][0]["ran_at"] is None
    [on_tokens] = body["owners_on_tokens"]
    assert on_tokens["owner_id"] == owner.id and on_tokens["stages_recorded"] == ["30d"]
    assert on_tokens["apps"][0] == {"app_id": "vision", "app_name": "Vision", "client_id": world.clients["vision"],
                                    "last_used_at": "2017-12-01T09:00:00Z", "uses": 1, "windows": 1,
                                    "uses_api_keys": False}
    assert body["undelivered"] == []
