"""Who may register, see and manage webhook endpoints; what each endpoint is sent."""

from __future__ import annotations

import pytest

from service.webhooks.delivery import Deliverer
from tests.conftest import Caller, make_account
from tests.webhooks.receiver import (
    Receiver,
    webhook_system,  # noqa: F401 - the fixture `system`
)
from tests.webhooks.test_delivery import admin, client, owner  # noqa: F401 - fixtures


@pytest.fixture
def other(system, client) -> Caller:  # noqa: F811
    a = make_account(system, "owner", "other@example.com", "Other")
    return Caller(client, a["token"], id=a["id"], role="owner")


@pytest.fixture
def auditor(system, client) -> Caller:  # noqa: F811
    a = make_account(system, "auditor", "auditor@example.com", "Auditor")
    return Caller(client, a["token"], id=a["id"], role="auditor")


def test_an_owner_cannot_register_for_another_owners_app(owner, other):  # noqa: F811
    assert owner.post("/v2/apps", json={"id": "vision", "name": "Vision"}).status_code == 201
    response = other.post("/v2/webhooks", json={"url": "https://hooks.example.com/x", "event_types": ["key.revoked"],
                                                "app_ids": ["vision"]})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "UNKNOWN_APP"
    assert "app_ids" in response.json["error"]["details"]
    unknown = other.post("/v2/webhooks", json={"url": "https://hooks.example.com/x", "event_types": ["key.revoked"],
                                               "app_ids": ["nope"]})
    assert unknown.json["error"]["code"] == "UNKNOWN_APP"


def test_an_unknown_event_type_is_refused_naming_the_field(owner):  # noqa: F811
    response = owner.post("/v2/webhooks", json={"url": "https://hooks.example.com/x",
                                                "event_types": ["key.revoked", "key.exploded"]})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "UNKNOWN_EVENT_TYPE"
    assert "key.exploded" in response.json["error"]["details"]["event_types"][0]
    empty = owner.post("/v2/webhooks", json={"url": "https://hooks.example.com/x", "event_types": []})
    assert empty.json["error"]["code"] == "UNKNOWN_EVENT_TYPE"


def test_an_owner_sees_and_manages_only_their_own_endpoints(admin, owner, other, auditor):  # noqa: F811
    mine = owner.post("/v2/webhooks", json={"url": "https://hooks.example.com/a", "event_types": ["key.revoked"]})
    assert mine.status_code == 201, mine.json
    hook = mine.json["id"]
    assert [w["id"] for w in owner.get("/v2/webhooks").json["webhooks"]] == [hook]
    assert other.get("/v2/webhooks").json["webhooks"] == []
    for response in (other.get(f"/v2/webhooks/{hook}"), other.get(f"/v2/webhooks/{hook}/deliveries"),
                     other.patch(f"/v2/webhooks/{hook}", json={"status": "disabled"}),
                     other.post(f"/v2/webhooks/{hook}/rotate-secret", json={}),
                     other.post(f"/v2/webhooks/{hook}/replay", json={"since": "2020-01-01T00:00:00Z"}),
                     other.delete(f"/v2/webhooks/{hook}")):
        assert response.status_code == 404, response.json
    assert "secret" not in owner.get(f"/v2/webhooks/{hook}").json
    assert [w["id"] for w in admin.get("/v2/webhooks").json["webhooks"]] == [hook]
    assert auditor.get(f"/v2/webhooks/{hook}").status_code == 200
    assert auditor.patch(f"/v2/webhooks/{hook}", json={"status": "disabled"}).status_code == 403
    assert auditor.post("/v2/webhooks", json={"url": "https://h.example.com/", "event_types": ["key.revoked"]}
                        ).status_code == 403
    changed = admin.patch(f"/v2/webhooks/{hook}", json={"status": "disabled", "description": "paused"})
    assert changed.status_code == 200 and changed.json["status"] == "disabled"
    assert owner.delete(f"/v2/webhooks/{hook}").status_code == 204
    assert owner.get(f"/v2/webhooks/{hook}").status_code == 404
    assert owner.get("/v2/webhooks").json["webhooks"] == []


def test_an_owners_endpoint_gets_only_their_apps_events(system, admin, owner, other):  # noqa: F811
    with Receiver() as mine, Receiver() as theirs, Receiver() as everything:
        secrets = {}
        for caller, receiver in ((owner, mine), (other, theirs), (admin, everything)):
            response = caller.post("/v2/webhooks", json={"url": receiver.url, "event_types": ["app.created",
                                                                                                "campaign.sunset"]})
            assert response.status_code == 201, response.json
            receiver.secret = secrets[caller.id] = response.json["secret"]
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        other.post("/v2/apps", json={"id": "speech", "name": "Speech"})
        Deliverer(system.keys_app, system.webhooks, allow_private=True, timeout=5).deliver_due()
        assert [r["payload"]["data"]["app_id"] for r in mine.delivered()] == ["vision"]
        assert [r["payload"]["data"]["app_id"] for r in theirs.delivered()] == ["speech"]
        assert [r["payload"]["data"]["app_id"] for r in everything.delivered()] == ["vision", "speech"]


def test_an_api_key_cannot_manage_webhooks(client, owner):  # noqa: F811
    app = owner.post("/v2/apps", json={"id": "vision", "name": "Vision"}).json
    key = Caller(client, app["default_key"]["key"])
    response = key.post("/v2/webhooks", json={"url": "https://hooks.example.com/a", "event_types": ["key.revoked"]})
    assert response.status_code in (401, 403)
