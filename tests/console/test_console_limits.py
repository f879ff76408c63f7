"""The console's rate-limit forms: a key's and an app's, the same use cases as the API's PATCH."""

from __future__ import annotations

import pytest

from tests.console.conftest import problems


@pytest.fixture(autouse=True)
def _remove_counters(system):
    yield
    system.limiter.counters.shared.remove()


def test_an_owner_sets_a_keys_limits_and_sees_them_in_the_history(browser_of, owner, owner_app, client):
    browser = browser_of(owner)
    key = owner_app["default_key"]
    page = browser.get(f"/console/keys/{key['id']}").get_data(as_text=True)
    assert "Rate limits" in page and 'name="limit"' in page
    assert 'name="csrf_token" value=""' not in page  # every form carries the session's token
    response = browser.post(f"/console/keys/{key['id']}/limits", {
        "version": str(key["version"]), "limit": ["20", "100000", "", "", ""], "per": ["1s", "1d", "", "", ""]})
    assert response.status_code == 303, response.get_data(as_text=True)
    assert owner.get(f"/v2/keys/{key['id']}").json["limits"] == [{"limit": 20, "per": "1s"},
                                                                 {"limit": 100000, "per": "1d"}]
    page = browser.get(f"/console/keys/{key['id']}?done=limits").get_data(as_text=True)
    assert "Saved: the rate limits are as shown." in page
    assert "Rate limits changed" in page and "100,000 per 1d" in page


def test_a_bad_limit_is_shown_beside_its_field_and_changes_nothing(browser_of, owner, owner_app):
    browser = browser_of(owner)
    key = owner_app["default_key"]
    browser.get(f"/console/keys/{key['id']}")
    response = browser.post(f"/console/keys/{key['id']}/limits", {
        "version": str(key["version"]), "limit": ["", "ten", "5"], "per": ["", "1s", "1w"]})
    assert response.status_code == 400
    shown = problems(response.get_data(as_text=True))
    assert "whole number" in shown["limit-1"] and "Not a period" in shown["per-2"]
    assert 'value="ten"' in response.get_data(as_text=True)  # the form keeps what was typed
    assert owner.get(f"/v2/keys/{key['id']}").json["limits"] == []


def test_an_owner_sets_the_apps_shared_limits(browser_of, owner, owner_app):
    browser = browser_of(owner)
    page = browser.get("/console/apps/vision").get_data(as_text=True)
    assert "s rate limits</h2>" in page  # The app's (escaped)
    response = browser.post("/console/apps/vision/limits", {"limit": ["1000"], "per": ["1m"]})
    assert response.status_code == 303
    assert owner.get("/v2/apps/vision").json["limits"] == [{"limit": 1000, "per": "1m"}]
    assert "1,000 per 1m" in browser.get("/console/apps/vision").get_data(as_text=True)


def test_an_auditor_sees_limits_but_no_form(browser_of, owner, auditor, owner_app):
    owner.patch("/v2/apps/vision", json={"limits": [{"limit": 5, "per": "1s"}]})
    page = browser_of(auditor).get("/console/apps/vision").get_data(as_text=True)
    assert "5 per 1s" in page and 'name="limit"' not in page
    response = browser_of(auditor).post("/console/apps/vision/limits", {"limit": ["1"], "per": ["1s"]})
    assert response.status_code in (400, 403)
