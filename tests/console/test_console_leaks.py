"""The console shows leaked keys: a badge on the app's key list and the key page, a banner on the app."""

from __future__ import annotations


def test_a_leaked_key_has_a_badge_and_its_app_a_banner(browser_of, owner, auditor, admin, read_only_key):
    browser = browser_of(owner)
    before = browser.get("/console/apps/vision").get_data(as_text=True)
    assert "badge-leaked" not in before and "found in public" not in before
    response = admin.post("/v2/leaks", json=[{"credential": read_only_key["key"],
                                              "url": "https://github.com/octo/app/blob/1/ci.yml", "source": "commit"}])
    assert response.json["reports"][0]["action"] == "revoked"
    app = browser.get("/console/apps/vision").get_data(as_text=True)
    assert "Keys of this app were found in public" in app and "https://github.com/octo/app/blob/1/ci.yml" in app
    assert "revoked at once" in app and app.count("badge-leaked") == 1
    assert read_only_key["key"] not in app
    key = browser.get(f"/console/keys/{read_only_key['id']}").get_data(as_text=True)
    assert "badge-leaked" in key and "Leak report" in key and "Reported leaked" in key
    assert read_only_key["key"] not in key


def _report(admin, secret: str, url: str, source: str = "commit") -> dict:
    response = admin.post("/v2/leaks", json=[{"credential": secret, "url": url, "source": source}])
    assert response.status_code == 200, response.json
    return response.json["reports"][0]


def test_the_security_team_lists_leak_reports_in_a_period_and_an_owner_only_their_own(
        browser_of, system, owner, other_owner, auditor, admin, read_only_key):
    from freezegun import freeze_time

    assert other_owner.post("/v2/apps", json={"id": "atlas", "name": "Atlas"}).status_code == 201
    theirs = other_owner.post("/v2/apps/atlas/keys", json={"description": "atlas ci", "scopes": ["Predict"]}).json
    with freeze_time("2026-11-02T10:00:00", ignore=["asyncio"]):
        _report(admin, read_only_key["key"], "https://github.com/octo/app/blob/1/ci.yml")
    with freeze_time("2026-11-20T10:00:00", ignore=["asyncio"]):
        _report(admin, theirs["key"], "https://gist.github.com/other/42", source="gist")
        _report(admin, "ak_not_ours_" + "x" * 30, "https://example.com/dropped")  # not a credential: dropped
    system.after_command()

    period = "/console/leaks?since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"
    html = browser_of(auditor).get(period).get_data(as_text=True)
    assert "https://github.com/octo/app/blob/1/ci.yml" in html and "https://gist.github.com/other/42" in html
    assert "read only" in html and "atlas ci" in html and "gist" in html and "revoked" in html
    assert read_only_key["key"] not in html and theirs["key"] not in html and "example.com/dropped" not in html
    assert html.index("gist.github.com") < html.index("octo/app")  # newest first
    assert f"account:{admin.id}" in html  # the reporter is named (an admin here; GitHub for its reports)

    narrow = browser_of(auditor).get("/console/leaks?since=2026-11-10T00:00:00Z&until=2026-12-01T00:00:00Z")
    text = narrow.get_data(as_text=True)
    assert "gist.github.com/other/42" in text and "octo/app" not in text

    # An owner sees the leaks of their own apps, never another owner's.
    mine = browser_of(owner).get(period).get_data(as_text=True)
    assert "octo/app/blob/1/ci.yml" in mine and "gist.github.com" not in mine and "atlas ci" not in mine
    others = browser_of(other_owner).get(period).get_data(as_text=True)
    assert "gist.github.com/other/42" in others and "octo/app" not in others

    # The period is checked like the audit trail's filters: a bad time is a 400 naming the field.
    bad = browser_of(auditor).get("/console/leaks?since=yesterday")
    assert bad.status_code == 400 and "since" in bad.get_data(as_text=True)

    # The API query for the same list: the audit trail's type and period filters.
    api = auditor.get("/v2/audit/events?type=ApiKey.Leaked&since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z")
    assert api.status_code == 200
    assert [e["data"]["url"] for e in api.json["events"]] == ["https://github.com/octo/app/blob/1/ci.yml",
                                                             "https://gist.github.com/other/42"]
    own = owner.get("/v2/audit/events?type=ApiKey.Leaked&since=2026-11-01T00:00:00Z").json["events"]
    assert [e["data"]["url"] for e in own] == ["https://github.com/octo/app/blob/1/ci.yml"]
