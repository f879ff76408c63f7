"""The console's usage views: a chart of the key's last 48 hours on its page, each key's requests
of the last 24 hours on its app's page."""

from __future__ import annotations

import re

import pytest
from freezegun import freeze_time


@pytest.fixture(autouse=True)
def _remove_counters(system):
    yield
    system.limiter.counters.shared.remove()


def verify(client, key: str, scope: str) -> str:
    return client.post("/v2/verify", json={"key": key, "scope": scope}).json["code"]


def test_the_key_page_charts_valid_answers_and_refusals_per_hour(browser_of, owner, owner_app, client, system):
    key = owner_app["default_key"]
    with freeze_time("2026-12-06T10:20:00Z") as clock:
        for _ in range(3):
            assert verify(client, key["key"], "Predict") == "VALID"
        system.usage.flush()
        clock.move_to("2026-12-06T11:05:00Z")
        assert verify(client, key["key"], "Predict") == "VALID"
        revoked = client.post("/v2/verify", json={"key": "ak_" + "0" * 38}).json["code"]  # no key: not counted
        assert revoked in ("MALFORMED", "NOT_FOUND")
        page = browser_of(owner).get(f"/console/keys/{key['id']}").get_data(as_text=True)
    assert "Usage in the last 48 hours" in page
    assert "4 valid answers and 0 refusals" in page
    svg = page[page.index('id="usage-chart"'):page.index("</svg>", page.index('id="usage-chart"'))]
    assert len(re.findall(r"<rect ", svg)) == 96  # two bars an hour
    assert "2026-12-06 10:00 UTC: 3 valid" in svg and "2026-12-06 11:00 UTC: 1 valid" in svg
    assert "<th scope=\"row\">2026-12-06 11:00</th><td>1</td><td>0</td>" in page


def test_the_key_page_lists_refusals_by_code(browser_of, owner, owner_app, client):
    key = owner_app["default_key"]
    restricted = owner.post("/v2/apps/vision/keys", json={"description": "ro", "scopes": ["Predict"]}).json
    with freeze_time("2026-12-06T10:20:00Z"):
        assert verify(client, restricted["key"], "Models:Add") == "INSUFFICIENT_SCOPE"
        page = browser_of(owner).get(f"/console/keys/{restricted['id']}").get_data(as_text=True)
    assert re.search(r"0 valid answers and 1 refusal\s", page)
    assert "<code>INSUFFICIENT_SCOPE</code> 1" in page
    assert key["id"] not in page


def test_the_app_page_shows_each_keys_requests_of_the_last_24_hours(browser_of, owner, owner_app, client, system):
    key = owner_app["default_key"]
    other = owner.post("/v2/apps/vision/keys", json={"description": "quiet", "scopes": ["Predict"]}).json
    with freeze_time("2026-12-05T09:00:00Z"):
        verify(client, key["key"], "Predict")  # 25 hours before: not counted in the column
    with freeze_time("2026-12-06T10:00:00Z"):
        for _ in range(4):
            verify(client, key["key"], "Predict")
        system.usage.flush()
        verify(client, key["key"], "Models:Nope")  # refused: a request all the same
        page = browser_of(owner).get("/console/apps/vision").get_data(as_text=True)
    assert "Requests (24 h)" in page
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r'key_id=|/console/keys/([0-9a-f-]{36})".*?data-label="Requests \(24 h\)">(\d+)<', page, re.S) if m.group(1)}
    assert rows == {key["id"]: "5", other["id"]: "0"}


def test_an_auditor_sees_the_chart_too(browser_of, auditor, owner_app):
    page = browser_of(auditor).get(f"/console/keys/{owner_app['default_key']['id']}").get_data(as_text=True)
    assert "Usage in the last 48 hours" in page


def test_the_restriction_form_shows_the_keys_patterns_not_a_method(browser_of, owner, owner_app):
    """``restriction.items`` in Jinja is the dict's method: the form read "<built-in method items …>"."""
    key = owner.post("/v2/apps/vision/keys", json={"description": "web", "scopes": ["Predict"],
                                                   "restrictions": {"browser": ["https://app.example.com"]}}).json
    page = browser_of(owner).get(f"/console/keys/{key['id']}").get_data(as_text=True)
    assert "built-in method" not in page
    assert re.search(r'id="restriction_items"[^>]*>https://app.example.com</textarea>', page, re.S)
