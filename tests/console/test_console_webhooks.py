"""The console's webhook pages: register (the secret shown once), manage, the delivery log with
"send again" and "replay since"; owners for their own apps, admins for all."""

from __future__ import annotations

import re

from service.webhooks.delivery import Deliverer
from tests.console.conftest import problems

URL = "https://hooks.example.invalid/keyledger"  # never resolves: every attempt fails, and is logged


def register(browser, **form) -> str:
    browser.get("/console/webhooks")
    response = browser.post("/console/webhooks", {"url": URL, "event_type": ["app.created", "key.revoked"], **form})
    assert response.status_code == 200, response.get_data(as_text=True)
    page = response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    secret = re.search(r'value="(whsec_[^"]+)"', page)[1]
    return secret


def test_an_owner_registers_an_endpoint_for_their_app_and_sees_its_secret_once(browser_of, owner, owner_app, system):
    browser = browser_of(owner)
    secret = register(browser, app_id=["vision"])
    hooks = owner.get("/v2/webhooks").json["webhooks"]
    assert [h["app_ids"] for h in hooks] == [["vision"]]
    page = browser.get(f"/console/webhooks/{hooks[0]['id']}").get_data(as_text=True)
    assert URL in page and secret not in page
    assert secret not in browser.get("/console/webhooks").get_data(as_text=True)


def test_a_bad_url_and_no_event_type_are_shown_beside_their_fields(browser_of, owner):
    browser = browser_of(owner)
    browser.get("/console/webhooks")
    response = browser.post("/console/webhooks", {"url": "http://127.0.0.1/x", "event_type": ["key.revoked"]})
    assert response.status_code == 400
    assert "https" in problems(response.get_data(as_text=True))["url"]
    response = browser.post("/console/webhooks", {"url": URL})
    assert response.status_code == 400 and "event_types" in problems(response.get_data(as_text=True))
    assert owner.get("/v2/webhooks").json["webhooks"] == []


def test_an_owner_cannot_open_another_owners_endpoint_or_pick_their_app(browser_of, owner, other_owner, owner_app):
    register(browser_of(owner))
    hook = owner.get("/v2/webhooks").json["webhooks"][0]["id"]
    theirs = browser_of(other_owner)
    assert theirs.get(f"/console/webhooks/{hook}").status_code == 404
    assert theirs.post(f"/console/webhooks/{hook}/delete").status_code == 404
    assert 'value="vision"' not in theirs.get("/console/webhooks").get_data(as_text=True)
    response = theirs.post("/console/webhooks", {"url": URL, "event_type": ["key.revoked"], "app_id": ["vision"]})
    assert response.status_code == 400 and "app_ids" in problems(response.get_data(as_text=True))


def test_the_delivery_log_shows_failed_attempts_and_send_again_and_replay_queue_them(
        browser_of, admin, owner, owner_app, system):
    browser = browser_of(admin)
    register(browser)
    hook = admin.get("/v2/webhooks").json["webhooks"][0]["id"]
    owner.post("/v2/apps", json={"id": "speech", "name": "Speech"})
    Deliverer(system.keys_app, system.webhooks, timeout=2).deliver_due()
    page = browser.get(f"/console/webhooks/{hook}").get_data(as_text=True)
    assert "app.created" in page and "cannot resolve" in page and "Send again" in page
    delivery = admin.get(f"/v2/webhooks/{hook}/deliveries").json["deliveries"][0]
    assert delivery["attempts"] == 1 and delivery["next_attempt_at"] > delivery["attempt_log"][0]["at"]
    response = browser.post(f"/console/webhooks/{hook}/deliveries/{delivery['id']}/retry")
    assert response.status_code == 303
    again = admin.get(f"/v2/webhooks/{hook}/deliveries/{delivery['id']}").json
    assert again["next_attempt_at"] <= delivery["next_attempt_at"]
    assert "queued to be sent again" in browser.get(response.headers["Location"]).get_data(as_text=True)
    response = browser.post(f"/console/webhooks/{hook}/replay", {"since": "2000-01-01T00:00"})
    assert response.status_code == 303
    bad = browser.post(f"/console/webhooks/{hook}/replay", {"since": "yesterday"})
    assert bad.status_code == 400 and "since" in problems(bad.get_data(as_text=True))


def test_disable_rotate_and_delete_from_the_console(browser_of, admin):
    browser = browser_of(admin)
    first = register(browser)
    hook = admin.get("/v2/webhooks").json["webhooks"][0]["id"]
    assert browser.post(f"/console/webhooks/{hook}/change", {"status": "disabled"}).status_code == 303
    assert admin.get(f"/v2/webhooks/{hook}").json["status"] == "disabled"
    rotated = browser.post(f"/console/webhooks/{hook}/rotate", {"overlap_hours": "1"})
    assert rotated.status_code == 200
    second = re.search(r'value="(whsec_[^"]+)"', rotated.get_data(as_text=True))[1]
    assert second != first
    assert browser.post(f"/console/webhooks/{hook}/delete").status_code == 303
    assert admin.get("/v2/webhooks").json["webhooks"] == []


def test_a_form_without_the_sessions_token_changes_nothing(browser_of, admin):
    browser = browser_of(admin)
    browser.get("/console/webhooks")
    response = browser.post("/console/webhooks", {"url": URL, "event_type": ["key.revoked"]}, csrf=False)
    assert response.status_code == 403
    assert admin.get("/v2/webhooks").json["webhooks"] == []
