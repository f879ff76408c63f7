"""Legacy access tokens in the console: the owner sees an app still uses them and how to migrate;
the security team sees the campaign's chart and stages."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.settings import Settings
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER


@pytest.fixture
def settings(data_dir) -> Settings:
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05,
                    legacy_sunset_at=datetime.now(UTC).replace(microsecond=0) + timedelta(days=60))


@pytest.fixture
def token_in_use(admin, owner_app, client, system) -> str:
    credentials = admin.post("/v2/apps/vision/legacy-credentials").json
    basic = base64.b64encode(f"{credentials['client_id']}:{credentials['client_secret']}".encode()).decode()
    token = client.post("/v2/token", data={"grant_type": "client_credentials"},
                        headers={"Authorization": f"Basic {basic}"})
    assert token.status_code == 200, token.json
    assert client.post("/v2/verify", json={"key": token.json["access_token"]}).json["valid"]
    system.after_command()  # the views have the LegacyTokenUsed event (the follower may lag a little)
    return token.json["access_token"]


def test_an_app_still_on_legacy_tokens_says_so_and_links_the_migration_guide(browser_of, owner, token_in_use):
    html = browser_of(owner).get("/console/apps/vision").get_data(as_text=True)
    assert "still uses legacy access tokens" in html and 'href="/docs/migration"' in html
    assert "Still in use" in browser_of(owner).get("/console/").get_data(as_text=True)


def test_the_campaign_page_charts_legacy_use_against_api_key_use(browser_of, auditor, token_in_use, owner_app,
                                                                 client, system):
    assert client.post("/v2/verify", json={"key": owner_app["default_key"]["key"]}).json["valid"]
    system.last_used.flush()
    system.after_command()  # the audit view has the LegacyTokenUsed event (the follower may lag a little)
    response = browser_of(auditor).get("/console/campaign")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<svg" in html and 'role="img"' in html
    today = datetime.now(UTC).date().isoformat()
    assert f"{today}: 1 apps used legacy tokens" in html
    assert f"{today}: 1 apps used API keys" in html
    # Every day a key is used counts, not only the latest: two days ago, too.
    key_id = owner_app["default_key"]["id"]
    system.last_used.touch(uuid.UUID(key_id).bytes, (datetime.now(UTC) - timedelta(days=2)).timestamp())
    system.last_used.flush()
    system.last_used.touch(uuid.UUID(key_id).bytes, datetime.now(UTC).timestamp())
    days = system.last_used.apps_per_day(datetime.now(UTC).date() - timedelta(days=3))
    assert {d: apps for d, apps in days.items()} == {
        datetime.now(UTC).date() - timedelta(days=2): {"vision"}, datetime.now(UTC).date(): {"vision"}}
    html = browser_of(auditor).get("/console/campaign").get_data(as_text=True)
    two_days_ago = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    assert f"{two_days_ago}: 1 apps used API keys" in html and f"{today}: 1 apps used API keys" in html
    assert "Reminders by stage" in html and "Owners mailed" in html
    assert "owner@example.com" in html
