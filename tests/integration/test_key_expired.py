"""A key's expiry recorded as an event (``ApiKey.Expired``, the webhook type ``key.expired``) by the
scheduler's job, as a plain function of ``now`` under freezegun, on the suite's store: once per key
however often the job runs (and by a second scheduler), none for a key revoked before its expiry or
that never expires; verification says EXPIRED from ``expires_at`` on, recorded or not; the trail
lists it with its public facts; a webhook endpoint subscribed to ``key.expired`` receives it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from freezegun import freeze_time

from projections.audit import AuditFilter
from scheduler import expiry
from scheduler.main import campaign_runs
from service.api import create_app
from service.domain.actors import NO_REQUEST, Actor
from service.domain.keys import ApiKey
from service.webhooks.delivery import Deliverer
from tests.campaign_support import at
from tests.conftest import Caller, make_account
from tests.webhooks.receiver import Receiver, webhook_system  # noqa: F401 - the fixture `system`

ADMIN = Actor.system("test")


def issue(system, app: str, description: str, expires_at: datetime | None) -> tuple[str, str]:
    key, secret = system.keys_app.issue_key(app, description=description, scopes=["Predict"],
                                            expires_at=expires_at, by=ADMIN, request=NO_REQUEST)
    system.after_command()
    return key["id"], secret


def run(system) -> int:
    """One pass of the job, as the scheduler makes it (``CampaignRuns.expired``), at the clock's now."""
    count = expiry.record_expiries(system.keys_app, system.expiring, system.keys_app.now())
    system.after_command()
    return count


def verdict(system, secret: str) -> str:
    return system.verifier.verify(secret)[0]


def expired_events(system) -> list[dict]:
    return system.audit.page(AuditFilter(type="ApiKey.Expired"), limit=100)


def test_a_key_s_expiry_is_recorded_once_after_it_passes_never_for_a_key_revoked_before(system):
    with freeze_time("2026-03-01T09:00:00") as clock:
        owner = make_account(system, "owner", "olga@example.com", "Olga")
        system.keys_app.create_app(name="Vision", slug="vision", owner_id=owner["id"], by=ADMIN, request=NO_REQUEST)
        system.after_command()
        ages, ages_secret = issue(system, "vision", "three days", at("2026-03-04T09:00:00"))
        revoked, _ = issue(system, "vision", "revoked first", at("2026-03-04T09:00:00"))
        forever, _ = issue(system, "vision", "never expires", None)
        later, _ = issue(system, "vision", "ten days", at("2026-03-11T09:00:00"))
        clock.move_to("2026-03-02T09:00:00")
        system.keys_app.revoke_key(revoked, by=ADMIN, request=NO_REQUEST)
        system.after_command()
        assert [run(system) for _ in range(3)] == [0, 0, 0]

        clock.move_to("2026-03-04T09:00:00")  # the expiry: expired at once, before anything is recorded
        assert verdict(system, ages_secret) == "EXPIRED"
        clock.move_to("2026-03-04T09:00:05")
        assert [run(system) for _ in range(5)] == [1, 0, 0, 0, 0]
        assert verdict(system, ages_secret) == "EXPIRED"  # the event changes nothing verification says
        # A second scheduler whose views lag (it still lists the key) records nothing: the store decides.
        assert expiry.record_expiries(system.keys_app, StaleView([ages, revoked, forever]), system.keys_app.now()) == 0
        for _half_day in range(16):  # twice a day, twice each, until after the later key's expiry
            clock.tick(43200)
            run(system)
            run(system)

    events = expired_events(system)
    assert [(e["key_id"], e["data"]) for e in events] == [
        (ages, {"expires_at": "2026-03-04T09:00:00Z"}), (later, {"expires_at": "2026-03-11T09:00:00Z"})]
    first = events[0]
    assert first["occurred_at"] == "2026-03-04T09:00:05Z"
    assert first["actor"] == {"kind": "system", "id": "scheduler"} and first["app_id"] == "vision"
    history = [e["type"] for e in system.audit.events(key_id=ages, limit=None)]
    assert history == ["ApiKey.Issued", "ApiKey.Expired"]
    assert "ApiKey.Expired" not in [e["type"] for e in system.audit.events(key_id=revoked, limit=None)]
    assert "ApiKey.Expired" not in [e["type"] for e in system.audit.events(key_id=forever, limit=None)]
    # The listing: status expired as before, the version moved with the event like the key's own.
    now = system.keys_app.now()
    listing = {k["id"]: k for k in system.directory.keys("vision", now)}
    key = system.keys_app._find(ApiKey, UUID(ages))
    assert listing[ages]["status"] == "expired" and listing[ages]["version"] == key.version == 2
    assert listing[revoked]["status"] == "revoked"


class StaleView:
    def __init__(self, key_ids: list[str]) -> None:
        self.key_ids = key_ids

    def expired_unrecorded(self, now: datetime, limit: int = 500) -> list[str]:
        return self.key_ids[:limit]


def test_a_webhook_endpoint_subscribed_to_key_expired_receives_it(system):
    client = create_app(system=system).test_client()
    with Receiver() as receiver:
        with freeze_time("2026-04-01T12:00:00") as clock:
            a = make_account(system, "admin", "admin@example.com", "Admin")
            admin = Caller(client, a["token"], id=a["id"], role="admin")
            response = admin.post("/v2/webhooks", json={"url": receiver.url, "event_types": ["key.expired"]})
            assert response.status_code == 201, response.json
            receiver.secret = response.json["secret"]
            owner = make_account(system, "owner", "oscar@example.com", "Oscar")
            system.keys_app.create_app(name="Atlas", slug="atlas", owner_id=owner["id"], by=ADMIN,
                                       request=NO_REQUEST)
            system.after_command()
            key_id, secret = issue(system, "atlas", "short lived", at("2026-04-04T12:00:00"))
            clock.move_to("2026-04-04T13:00:00")
            runs = campaign_runs(system)  # the scheduler's own job, as build_scheduler registers it
            assert runs.expired() == 1 and runs.expired() == 0 and run(system) == 0
        assert Deliverer(system.keys_app, system.webhooks, allow_private=True, timeout=5).deliver_due() == 1
        [delivered] = receiver.delivered()
        assert receiver.requests[0]["verified"] is True
        assert receiver.types() == ["key.expired"]
        data = delivered["payload"]["data"]
        assert (data["type"], data["key_id"], data["app_id"]) == ("ApiKey.Expired", key_id, "atlas")
        assert data["data"] == {"expires_at": "2026-04-04T12:00:00Z"}
        body = receiver.requests[0]["body"].decode()
        assert secret not in body and "digest" not in body
