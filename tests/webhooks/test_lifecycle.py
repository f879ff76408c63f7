"""An endpoint's life beyond delivery: disabled with an email after failing too long, a rebuild
of the views that queues nothing twice, secrets nowhere in the audit trail."""

from __future__ import annotations

import email
import time
from datetime import timedelta

import pytest

from projections.audit import AuditFilter
from scheduler.main import campaign_runs
from service.webhooks.delivery import Deliverer
from tests.webhooks.receiver import (
    Receiver,
    webhook_system,  # noqa: F401 - the fixture `system`
)
from tests.webhooks.test_delivery import admin, client, owner, register  # noqa: F401 - fixtures


def test_an_endpoint_failing_too_long_is_disabled_and_its_registrant_gets_an_email(system, admin, owner):  # noqa: F811
    with Receiver(answer=lambda n: 503) as receiver:
        hook = register(admin, receiver.url, ["app.created"])
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        worker = Deliverer(system.keys_app, system.webhooks, allow_private=True, timeout=2,
                           backoff=(0.01, 0.01, 0.01), give_up_after=timedelta(0))
        # Four attempts 0.01 s apart, then the delivery has failed and the endpoint is disabled. Until a
        # deadline, not a count of rounds: on a loaded machine twenty rounds once saw only two attempts.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            worker.deliver_due()
            if admin.get(f"/v2/webhooks/{hook['id']}").json["status"] == "disabled":
                break
            time.sleep(0.02)
    system.after_command()
    assert admin.get(f"/v2/webhooks/{hook['id']}").json["status"] == "disabled"
    assert len(receiver.requests) == 4
    delivery = admin.get(f"/v2/webhooks/{hook['id']}/deliveries").json["deliveries"][0]
    assert delivery["status"] == "failed" and delivery["attempts"] == 4
    assert [a["status_code"] for a in delivery["attempt_log"]] == [503] * 4
    disabled = system.audit.page(AuditFilter(type="WebhookEndpoint.Disabled"))
    assert len(disabled) == 1 and disabled[0]["actor"] == {"kind": "system", "id": "webhooks"}

    assert campaign_runs(system).mail() == 1  # the existing mail outbox sends it
    (sent,) = (system.settings.outbox_path).glob("*.eml")
    message = email.message_from_bytes(sent.read_bytes())
    assert message["To"] == "Admin <admin@example.com>"
    assert "was disabled" in message["Subject"]
    text = message.get_payload(decode=True).decode()
    assert hook["id"] in text and "HTTP 503" in text and hook["secret"] not in text
    # enabled again, it is delivered to; nothing was queued for it while it was disabled
    assert admin.patch(f"/v2/webhooks/{hook['id']}", json={"status": "enabled"}).json["status"] == "enabled"


@pytest.mark.parametrize("aside", [False, True], ids=["in one process", "audit and webhooks aside"])
def test_a_rebuild_of_the_views_queues_nothing_twice(system, admin, owner, aside):  # noqa: F811
    with Receiver() as receiver:
        hook = register(admin, receiver.url, ["app.created", "key.created"])
        receiver.secret = hook["secret"]
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        worker = Deliverer(system.keys_app, system.webhooks, allow_private=True, timeout=2)
        assert worker.deliver_due() == 2
        queued = system.webhooks.deliveries(hook["id"])
        if aside and not system.settings.uses_postgres:  # built in a second process (SQLite), adopted
            system.follower.side_from = 0
        system.follower.rebuild()
        assert system.follower.side_builds == (1 if aside and not system.settings.uses_postgres else 0)
        assert system.webhooks.endpoint(hook["id"])["status"] == "enabled"
        assert system.webhooks.deliveries(hook["id"]) == queued  # the outbox as it was: sent, not again
        assert worker.deliver_due() == 0
        system.follower.rebuild(["webhooks"])  # alone (`keyledger projections rebuild webhooks`): read from the audit view
        assert system.webhooks.endpoint(hook["id"])["status"] == "enabled"
        assert worker.deliver_due() == 0
        owner.post("/v2/apps", json={"id": "speech", "name": "Speech"})
        assert worker.deliver_due() == 2
    assert len(receiver.requests) == 4 and all(r["verified"] for r in receiver.requests)


def test_a_rebuild_aside_queues_the_deliveries_of_a_lost_outbox(system, admin, owner):  # noqa: F811
    """The outbox lost (a store restored from the log alone): a bulk pass that built the webhooks
    view in a second process queues its deliveries again, as one built here does."""
    hook = register(admin, "https://hooks.example.invalid/x", ["app.created", "key.created"])
    owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
    queued = system.webhooks.deliveries(hook["id"])
    assert len(queued) == 2
    with system.views.write() as db:
        db.execute("DELETE FROM webhook_deliveries")
    if not system.settings.uses_postgres:
        system.follower.side_from = 0
    system.follower.rebuild()
    assert system.follower.side_builds == (0 if system.settings.uses_postgres else 1)
    assert system.webhooks.deliveries(hook["id"]) == queued


def test_no_secret_and_no_sealed_secret_in_the_audit_trail(system, admin):  # noqa: F811
    hook = register(admin, "https://hooks.example.invalid/x", ["key.revoked"])
    rotated = admin.post(f"/v2/webhooks/{hook['id']}/rotate-secret", json={}).json
    events = system.audit.page(AuditFilter(key_id=None), limit=1000)
    text = repr(events)
    for secret in (hook["secret"], rotated["secret"]):
        assert secret not in text and secret.removeprefix("whsec_") not in text
    types = [e["type"] for e in events if e["type"].startswith("WebhookEndpoint.")]
    assert types == ["WebhookEndpoint.Registered", "WebhookEndpoint.SecretRotated"]
    assert all("sealed_secret" not in e["data"] and "previous_sealed_secret" not in e["data"] for e in events)
    exported = admin.get("/v2/audit/events.jsonl").get_data(as_text=True)
    assert hook["secret"] not in exported and "sealed" not in exported
