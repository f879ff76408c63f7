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
