"""Owners manage keys through the console's forms: the same use cases (and refusals) as the API."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tests.console.conftest import problems

SECRET = re.compile(r"\bak_[0-9A-Za-z]{38}\b")
KEY_ID = re.compile(r"/console/keys/([0-9a-f-]{36})")


def create_key(browser, **form):
    browser.get("/console/apps/vision/keys/new")
    return browser.post("/console/apps/vision/keys/new", {"description": "ci", "preset": "read_only", **form})


def test_an_owner_sees_their_apps_and_an_app_s_keys(browser_of, owner, read_only_key):
    browser = browser_of(owner)
    home = browser.get("/console/").get_data(as_text=True)
    assert "Vision" in home and "/console/apps/vision" in home
    app = browser.get("/console/apps/vision").get_data(as_text=True)
    assert "read only" in app and read_only_key["display"] in app and "Create New API Key" in app
    assert "Default key (auto-generated)" in app
    assert not SECRET.search(app)


def test_a_created_key_s_secret_is_shown_once_and_never_cached(browser_of, owner, owner_app, client):
    browser = browser_of(owner)
    response = create_key(browser, description="phone app")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    secrets = SECRET.findall(html)
    assert len(set(secrets)) == 1 and "You will not see this again" in html
    key_id = KEY_ID.search(html)[1]
    verdict = client.post("/v2/verify", json={"key": secrets[0], "scope": "Predict"}).json
    assert verdict["code"] == "VALID" and verdict["scopes"] == ["Predict", "Search"]
    assert secrets[0] not in browser.get(f"/console/keys/{key_id}").get_data(as_text=True)
    assert secrets[0] not in browser.get("/console/apps/vision").get_data(as_text=True)


def test_presets_and_ticked_scopes_make_the_key_s_scopes(browser_of, owner, owner_app):
    browser = browser_of(owner)
    everything = create_key(browser, preset="all").get_data(as_text=True)
    assert owner.get(f"/v2/keys/{KEY_ID.search(everything)[1]}").json["scopes"] == ["All"]
    chosen = create_key(browser, preset="custom", scope=["Models:Get", "Inputs:Add"]).get_data(as_text=True)
    assert owner.get(f"/v2/keys/{KEY_ID.search(chosen)[1]}").json["scopes"] == ["Models:Get", "Inputs:Add"]


def test_an_expiry_is_kept_and_a_past_one_is_refused_next_to_its_field(browser_of, owner, owner_app):
    browser = browser_of(owner)
    year = datetime.now(UTC).year + 2
    created = create_key(browser, expires_at=f"{year}-01-31T12:00").get_data(as_text=True)
    assert owner.get(f"/v2/keys/{KEY_ID.search(created)[1]}").json["expires_at"] == f"{year}-01-31T12:00:00Z"
    refused = create_key(browser, expires_at="2001-01-31T12:00")
    assert refused.status_code == 400
    assert problems(refused.get_data(as_text=True))["expires_at"] == "Must be later than now."


@pytest.mark.parametrize("form, field, sentence", [
    ({"preset": "custom"}, "scopes", "Must not be empty."),
    ({"preset": "custom", "scope": ["Models:Fly"]}, "scopes", "Unknown scope(s): Models:Fly"),
    ({"description": "x" * 201}, "description", "At most 200 characters."),
    ({"description": "tab\there"}, "description", "control character"),
    ({"description": "ak_" + "A" * 38}, "description", "Looks like a credential"),
    ({"expires_at": "tomorrow"}, "expires_at", "Give a date and time"),
    ({"expires_at": "9999-12-31T23:59"}, "expires_at", "Too far in the future."),
])
def test_bad_input_is_a_sentence_next_to_the_field_never_a_500(browser_of, owner, owner_app, form, field, sentence):
    response = create_key(browser_of(owner), **form)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert sentence in problems(html).get(field, ""), problems(html)
    assert 'role="alert"' in html
    assert len(owner.get("/v2/apps/vision/keys").json["keys"]) == 1  # only the default key


def test_scopes_and_description_change_guarded_by_the_version(browser_of, owner, read_only_key):
    browser = browser_of(owner)
    path = f"/console/keys/{read_only_key['id']}"
    browser.get(path)
    changed = browser.post(path + "/change", {"preset": "custom", "scope": ["Models:Get"], "description": "models",
                                              "version": str(read_only_key["version"])})
    assert changed.status_code == 303 and changed.headers["Location"].endswith("?done=scopes")
    key = owner.get(path.replace("/console", "/v2")).json
    assert key["scopes"] == ["Models:Get"] and key["description"] == "models"
    stale = browser.post(path + "/change", {"preset": "all", "description": "x",
                                            "version": str(read_only_key["version"])})
    assert stale.status_code == 400
    assert "read it again" in stale.get_data(as_text=True)
    assert owner.get(path.replace("/console", "/v2")).json["scopes"] == ["Models:Get"]


def test_rolling_shows_the_new_secret_once_and_keeps_the_old_one_for_the_grace(browser_of, owner, read_only_key,
                                                                                 client):
    browser = browser_of(owner)
    browser.get(f"/console/keys/{read_only_key['id']}")
    response = browser.post(f"/console/keys/{read_only_key['id']}/roll", {"grace_seconds": "3600"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    new = SECRET.search(response.get_data(as_text=True))[0]
    assert new != read_only_key["key"]
    assert client.post("/v2/verify", json={"key": new}).json["code"] == "VALID"
    assert client.post("/v2/verify", json={"key": read_only_key["key"]}).json["code"] == "VALID"


@pytest.mark.parametrize("grace", ["-1", "604801", "soon", "9" * 30])
def test_a_bad_grace_period_is_refused_next_to_its_field(browser_of, owner, read_only_key, grace):
    browser = browser_of(owner)
    browser.get(f"/console/keys/{read_only_key['id']}")
    response = browser.post(f"/console/keys/{read_only_key['id']}/roll", {"grace_seconds": grace})
    assert response.status_code == 400
    assert "grace_seconds" in problems(response.get_data(as_text=True))


def test_revoking_asks_naming_the_key_then_the_key_stops_verifying(browser_of, owner, read_only_key, client):
    browser = browser_of(owner)
    confirm = browser.get(f"/console/keys/{read_only_key['id']}/revoke").get_data(as_text=True)
    assert "read only" in confirm and read_only_key["display"] in confirm
    done = browser.post(f"/console/keys/{read_only_key['id']}/revoke")
    assert done.status_code == 303 and SECRET.search(done.headers["Location"]) is None
    assert client.post("/v2/verify", json={"key": read_only_key["key"]}).json["code"] == "REVOKED"
    page = browser.get(done.headers["Location"]).get_data(as_text=True)
    assert "Revoked: the key no longer verifies." in page and "Roll the secret" not in page


def test_a_key_s_history_is_a_timeline_oldest_first(browser_of, owner, read_only_key):
    owner.delete(f"/v2/keys/{read_only_key['id']}")
    html = browser_of(owner).get(f"/console/keys/{read_only_key['id']}").get_data(as_text=True)
    timeline = html[html.index('class="timeline"'):]
    assert timeline.index("Created") < timeline.index("Revoked")
    assert "Owner &lt;owner@example.com&gt; (owner)" in timeline


@pytest.mark.parametrize("path", [
    "/console/keys/not-a-uuid", "/console/keys/00000000-0000-0000-0000-000000000000",
    "/console/apps/NOPE", "/console/apps/%00", "/console/keys/x/revoke", "/console/apps/" + "a" * 5000,
    "/console/audit?since=yesterday", "/console/audit?limit=5000", "/console/audit?cursor=%%%",
    "/console/audit?actor=nobody", "/console/audit?bogus=1", "/console/audit?limit=1&limit=2",
    "/console/audit?type=%0a", "/console/keys/%ff%fe",
])
def test_odd_urls_are_answered_with_pages_never_a_500(browser_of, owner, owner_app, path):
    response = browser_of(owner).get(path)
    assert response.status_code in (200, 400, 404), (path, response.status_code)
    assert response.mimetype == "text/html"


def test_odd_forms_are_answered_with_pages_never_a_500(browser_of, owner, read_only_key):
    browser = browser_of(owner)
    key = f"/console/keys/{read_only_key['id']}"
    for path, form in ((key + "/change", {"preset": "weird", "version": "x" * 40}),
                       (key + "/roll", {}), ("/console/apps/vision/keys/new", {"preset": ["all", "custom"]}),
                       ("/console/sign-in", {"token": "pat_" + "\u0000" * 38})):
        response = browser.post(path, form)
        assert response.status_code < 500, (path, form, response.status_code)
    raw = f"csrf_token={browser.csrf}&preset=custom&scope=%ED%A0%80&description=%FF%FE".encode()  # not UTF-8
    response = browser.client.post(key + "/change", data=raw, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    big = browser.post("/console/apps/vision/keys/new", {"description": "x" * 100_000})
    assert big.status_code == 413 and big.mimetype == "text/html"
    for method in (browser.client.put, browser.client.patch, browser.client.delete):
        response = method(key)
        assert response.status_code == 405 and response.mimetype == "text/html"



def test_an_owner_sees_other_people_in_a_key_s_history_by_account_id_only(browser_of, owner, admin, auditor,
                                                                       read_only_key):
    admin.delete(f"/v2/keys/{read_only_key['id']}")
    mine = browser_of(owner).get(f"/console/keys/{read_only_key['id']}").get_data(as_text=True)
    assert "admin@example.com" not in mine and f"account {admin.id}" in mine
    theirs = browser_of(auditor).get(f"/console/keys/{read_only_key['id']}").get_data(as_text=True)
    assert "Admin &lt;admin@example.com&gt; (admin)" in theirs


def test_a_secret_pasted_into_a_field_is_not_echoed_back(browser_of, owner, read_only_key):
    browser = browser_of(owner)
    create_key(browser)  # a read-only key, so the page has a CSRF token
    refused = create_key(browser, description=f"oops {read_only_key['key']}")
    assert refused.status_code == 400 and read_only_key["key"] not in refused.get_data(as_text=True)
    browser.get(f"/console/keys/{read_only_key['id']}")
    changed = browser.post(f"/console/keys/{read_only_key['id']}/change",
                           {"preset": "all", "description": read_only_key["key"]})
    assert changed.status_code == 400 and read_only_key["key"] not in changed.get_data(as_text=True)
    assert "Looks like a credential" in problems(changed.get_data(as_text=True))["description"]


def test_the_create_form_offers_each_restriction_kind_with_a_line_saying_what_it_is_for(browser_of, owner,
                                                                                        owner_app):
    html = browser_of(owner).get("/console/apps/vision/keys/new").get_data(as_text=True)
    for kind, line in (("browser", "for a web page: the sites that may use it"),
                       ("server", "for a server: the client addresses"), ("android", "for an Android app"),
                       ("ios", "for an iOS app"), ("none", "anyone holding the key")):
        assert f'value="{kind}"' in html and line in html


def test_a_key_created_with_a_restriction_verifies_only_from_where_it_allows(browser_of, owner, owner_app, client):
    response = create_key(browser_of(owner), restriction_kind="browser",
                          restriction_items="https://app.example.com\r\nhttp://localhost:*\r\n")
    assert response.status_code == 200, problems(response)
    secret = SECRET.search(response.get_data(as_text=True))[0]
    key_id = KEY_ID.search(response.get_data(as_text=True))[1]
    assert owner.get(f"/v2/keys/{key_id}").json["restrictions"] == {
        "browser": ["https://app.example.com", "http://localhost:*"]}
    assert client.post("/v2/verify", json={"key": secret, "origin": "https://evil.com"}).json["code"] \
        == "ORIGIN_NOT_ALLOWED"
    android = create_key(browser_of(owner), restriction_kind="android",
                         restriction_items="com.example.app " + "AB" * 32)
    assert android.status_code == 200, problems(android)


@pytest.mark.parametrize("kind,items,sentence", [
    ("browser", "https://*", "would match every site"),
    ("server", "10.0.0.1/24", "did you mean 10.0.0.0/24"),
    ("android", "com.example.app", "SHA-256 fingerprint"),
    ("ios", "", "non-empty list"),
])
def test_a_bad_restriction_is_a_sentence_next_to_its_field(browser_of, owner, owner_app, kind, items, sentence):
    response = create_key(browser_of(owner), restriction_kind=kind, restriction_items=items)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'id="restrictions-problem"' in html and sentence in html
    assert items.splitlines()[0] in html if items else True  # what was typed comes back for correction


def test_the_key_page_shows_and_changes_who_may_use_the_key(browser_of, owner, read_only_key, client):
    browser = browser_of(owner)
    page = browser.get(f"/console/keys/{read_only_key['id']}").get_data(as_text=True)
    assert "Anyone holding the key" in page and "Change who may use it" in page
    version = owner.get(f"/v2/keys/{read_only_key['id']}").json["version"]
    refused = browser.post(f"/console/keys/{read_only_key['id']}/restrictions",
                           {"version": str(version), "restriction_kind": "server", "restriction_items": "10.0.0.1/24"})
    assert refused.status_code == 400 and "did you mean 10.0.0.0/24" in refused.get_data(as_text=True)
    saved = browser.post(f"/console/keys/{read_only_key['id']}/restrictions",
                         {"version": str(version), "restriction_kind": "server",
                          "restriction_items": "10.0.0.0/24\n2001:db8::/32"})
    assert saved.status_code == 303
    page = browser.get(saved.headers["Location"]).get_data(as_text=True)
    assert "Servers:" in page and "10.0.0.0/24" in page and "Restriction changed" in page
    assert client.post("/v2/verify", json={"key": read_only_key["key"], "ip": "10.0.0.9"}).json["code"] == "VALID"
    assert client.post("/v2/verify", json={"key": read_only_key["key"]}).json["code"] == "IP_NOT_ALLOWED"
    stale = browser.post(f"/console/keys/{read_only_key['id']}/restrictions",
                         {"version": str(version), "restriction_kind": "none", "restriction_items": ""})
    assert stale.status_code == 400  # an old version: the change is not made
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["restrictions"] == {
        "server": ["10.0.0.0/24", "2001:db8::/32"]}
