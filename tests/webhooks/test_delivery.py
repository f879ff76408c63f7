"""Webhooks delivered to a real receiver that verifies them with ``standardwebhooks``."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.api import create_app
from service.webhooks.delivery import Deliverer
from tests.conftest import Caller, make_account, secrets_in_files
from tests.webhooks.receiver import Receiver, webhook_system  # noqa: F401 - the fixture `system`


@pytest.fixture
def client(system):
    return create_app(system=system).test_client()


@pytest.fixture
def admin(system, client) -> Caller:
    a = make_account(system, "admin", "admin@example.com", "Admin")
    return Caller(client, a["token"], id=a["id"], role="admin")


@pytest.fixture
def owner(system, client) -> Caller:
    a = make_account(system, "owner", "owner@example.com", "Owner")
    return Caller(client, a["token"], id=a["id"], role="owner")


def deliverer(system, **kw) -> Deliverer:
    return Deliverer(system.keys_app, system.webhooks, allow_private=True, timeout=5, **kw)


def register(caller: Caller, url: str, types: list[str], **extra) -> dict:
    response = caller.post("/v2/webhooks", json={"url": url, "event_types": types, **extra})
    assert response.status_code == 201, response.json
    assert response.json["secret"].startswith("whsec_")
    return response.json


def test_a_revocation_reaches_a_receiver_that_verifies_it_with_standardwebhooks(system, admin, owner, data_dir):
    with Receiver() as receiver:
        hook = register(admin, receiver.url, ["key.created", "key.revoked", "app.created"])
        receiver.secret = hook["secret"]
        app = owner.post("/v2/apps", json={"id": "vision", "name": "Vision"}).json
        key = owner.post("/v2/apps/vision/keys", json={"description": "ci", "scopes": ["Predict"]}).json
        assert owner.delete(f"/v2/keys/{key['id']}").status_code == 204

        assert deliverer(system).deliver_due() == 4  # the app, its default key, the new key, the revocation

        assert [r["verified"] for r in receiver.requests] == [True] * 4, receiver.requests
        assert receiver.types() == ["app.created", "key.created", "key.created", "key.revoked"]
        revoked = receiver.delivered()[-1]
        assert revoked["payload"]["data"]["key_id"] == key["id"]
        assert revoked["payload"]["data"]["type"] == "ApiKey.Revoked"
        assert revoked["headers"]["webhook-id"] == revoked["payload"]["data"]["id"]
        assert revoked["payload"]["timestamp"] == revoked["payload"]["data"]["occurred_at"]
        for request in receiver.requests:  # never a secret, never a digest
            body = request["body"].decode()
            assert key["key"] not in body and app["default_key"]["key"] not in body
            assert "digest" not in body
    assert not secrets_in_files(data_dir, [hook["secret"]])


def test_a_tampered_payload_fails_verification(system, admin, owner):
    with Receiver() as receiver:
        hook = register(admin, receiver.url, ["app.created"])
        receiver.secret = hook["secret"]
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        deliverer(system).deliver_due()
        sent = receiver.requests[0]
    Webhook(hook["secret"]).verify(sent["body"], sent["headers"])  # as sent: verifies
    tampered = sent["body"].replace(b"vision", b"visiom")
    with pytest.raises(WebhookVerificationError):
        Webhook(hook["secret"]).verify(tampered, sent["headers"])
    with pytest.raises(WebhookVerificationError):  # and another endpoint's secret does not verify it
        Webhook("whsec_" + "A" * 43 + "=").verify(sent["body"], sent["headers"])


def test_a_receiver_failing_for_a_while_gets_every_event_and_duplicates_only_with_the_same_id(
        system, admin, owner):
    with Receiver(answer=lambda n: 500 if n <= 6 else 200) as receiver:
        hook = register(admin, receiver.url, ["key.created", "key.revoked", "app.created"])
        receiver.secret = hook["secret"]
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        for i in range(5):
            key = owner.post("/v2/apps/vision/keys", json={"description": f"k{i}", "scopes": ["Predict"]}).json
            owner.delete(f"/v2/keys/{key['id']}")
        worker = deliverer(system, backoff=(0.05,) * 20).start()
        try:
            from tests.conftest import wait_until
            expected = 2 + 10  # the app and its default key, five keys created and revoked
            assert wait_until(lambda: len({r["headers"]["webhook-id"] for r in receiver.delivered()}) == expected,
                              timeout=60), receiver.types()  # generous: a loaded machine
        finally:
            worker.stop()
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert all(r["verified"] for r in receiver.requests)
    assert len(set(ids)) == expected
    bodies = {}
    for r in receiver.requests:  # a retry is the same event: same id, same body
        assert bodies.setdefault(r["headers"]["webhook-id"], r["body"]) == r["body"]
    log = admin.get(f"/v2/webhooks/{hook['id']}/deliveries?limit=100").json["deliveries"]
    assert {d["status"] for d in log} == {"delivered"}
    retried = [d for d in log if d["attempts"] > 1]
    assert retried and all(d["attempt_log"][0]["status_code"] == 500 for d in retried)
    assert all(d["attempt_log"][-1]["response_head"].startswith('{"ok": true') for d in log)


def test_rotation_signs_with_both_secrets_during_the_overlap(system, admin, owner):
    with Receiver() as receiver:
        hook = register(admin, receiver.url, ["app.created"])
        rotated = admin.post(f"/v2/webhooks/{hook['id']}/rotate-secret", json={"overlap_seconds": 3600})
        assert rotated.status_code == 200, rotated.json
        new_secret = rotated.json["secret"]
        assert new_secret != hook["secret"]
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        deliverer(system).deliver_due()
        sent = receiver.requests[0]
    assert len(sent["headers"]["webhook-signature"].split(" ")) == 2
    Webhook(hook["secret"]).verify(sent["body"], sent["headers"])
    Webhook(new_secret).verify(sent["body"], sent["headers"])
    assert json.loads(sent["body"])["type"] == "app.created"


def metric(client, name: str, **labels: str) -> float:
    """One sample's value in ``/metrics`` (0 when absent)."""
    text = client.get("/metrics").get_data(as_text=True)
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_each_attempt_by_outcome_and_show_the_backlog(system, client, admin, owner):
    with Receiver(answer=lambda n: 500 if n == 1 else 200) as receiver:
        hook = register(admin, receiver.url, ["key.created", "app.created"])
        receiver.secret = hook["secret"]
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})  # the app and its default key
        assert metric(client, "keyledger_webhook_backlog") == 2
        assert metric(client, "keyledger_webhook_attempts_total") == 0

        assert deliverer(system, backoff=(0,)).deliver_due() == 0  # the first answer is a 500: tried again
        assert metric(client, "keyledger_webhook_attempts_total", outcome="retry") == 1
        assert deliverer(system, backoff=(0,)).deliver_due() == 2

        assert metric(client, "keyledger_webhook_attempts_total", outcome="delivered") == 2
        assert metric(client, "keyledger_webhook_attempts_total", outcome="retry") == 1
        assert metric(client, "keyledger_webhook_attempts_total", outcome="failed") == 0
        assert metric(client, "keyledger_webhook_attempt_duration_seconds_count") == 3
        assert metric(client, "keyledger_webhook_backlog") == 0


def test_an_attempt_with_the_schedule_spent_is_counted_failed(system, client, admin, owner):
    with Receiver(answer=lambda n: 503) as receiver:
        register(admin, receiver.url, ["app.created"])
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        deliverer(system, backoff=()).deliver_due()
    assert metric(client, "keyledger_webhook_attempts_total", outcome="failed") == 1
    assert metric(client, "keyledger_webhook_backlog") == 0
