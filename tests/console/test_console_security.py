"""The console's sign-in, session cookie, CSRF refusals, security headers and authorization."""

from __future__ import annotations

import re

import pytest

from service.domain.actors import NO_REQUEST, Actor
from tests.console.conftest import Browser

SECRET = re.compile(r"\b(?:ak|pat)_[0-9A-Za-z]{38}\b")


def cookie_header(response) -> str:
    return next(v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith("keyledger_console="))


def test_a_page_asks_to_sign_in_first(browser_of):
    response = browser_of().get("/console/apps/vision")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/console/sign-in?next=/console/apps/vision")


def test_signing_in_sets_an_http_only_same_site_strict_cookie_without_the_token(browser_of, owner):
    browser = browser_of()
    browser.get("/console/sign-in")
    response = browser.post("/console/sign-in", {"token": owner.token})
    assert response.status_code == 303
    cookie = cookie_header(response)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert owner.token not in cookie and owner.token[4:] not in cookie
    assert browser.get("/console/").status_code == 200


def test_the_cookie_is_secure_over_https(browser_of, owner):
    browser = browser_of(https=True)
    browser.get("/console/sign-in")
    response = browser.post("/console/sign-in", {"token": owner.token})
    assert "Secure" in cookie_header(response)


@pytest.mark.parametrize("token, sentence", [
    ("", "Paste your personal token"),
    ("pat_short", "is not a personal token"),
    ("ak_" + "a" * 38, "not an API key"),
    ("pat_" + "0" * 38, "not a personal token"),
])
def test_a_bad_token_is_refused_with_a_sentence_next_to_the_field(browser_of, token, sentence):
    browser = browser_of()
    browser.get("/console/sign-in")
    response = browser.post("/console/sign-in", {"token": token})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'id="token-problem"' in html and sentence in html
    assert 'aria-invalid="true"' in html
    if token:
        assert token not in html  # never echoed back


def test_an_unknown_well_formed_token_is_refused(browser_of, owner):
    browser = browser_of()
    browser.get("/console/sign-in")
    unknown = owner.token[:-7] + ("A" if owner.token[-7] != "A" else "B") + owner.token[-6:]
    response = browser.post("/console/sign-in", {"token": unknown})
    assert response.status_code == 400


def test_a_post_without_its_csrf_token_is_refused_with_a_page_and_changes_nothing(browser_of, owner, read_only_key):
    browser = browser_of(owner)
    response = browser.post(f"/console/keys/{read_only_key['id']}/revoke", csrf=False)
    assert response.status_code == 403
    assert response.mimetype == "text/html"
    assert "nothing was changed" in response.get_data(as_text=True)
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["status"] == "active"


def test_a_post_with_another_session_s_csrf_token_is_refused(browser_of, owner, read_only_key):
    mine, theirs = browser_of(owner), browser_of(owner)
    response = mine.post(f"/console/keys/{read_only_key['id']}/revoke", {"csrf_token": theirs.csrf})
    assert response.status_code == 403
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["status"] == "active"


def test_signing_in_without_the_form_s_csrf_token_is_refused(browser_of, owner):
    browser = browser_of()
    response = browser.post("/console/sign-in", {"token": owner.token}, csrf=False)
    assert response.status_code == 403
    assert browser.get("/console/").status_code == 302  # still signed out


def test_pages_carry_a_strict_content_security_policy_and_no_inline_script(browser_of, owner, owner_app):
    browser = browser_of(owner)
    for path in ("/console/sign-in", "/console/", "/console/apps/vision", "/console/apps/vision/keys/new",
                 f"/console/keys/{owner_app['default_key']['id']}", "/console/audit", "/console/nowhere"):
        response = browser.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        html = response.get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # every script is a file
        assert not re.search(r"\son[a-z]+=", html), path  # no inline event handlers
        assert not re.search(r"\sstyle=", html), path  # no inline style
    script = browser.get("/console/static/console.js")
    assert script.status_code == 200 and "clipboard" in script.get_data(as_text=True)
    assert browser.get("/console/static/console.css").status_code == 200


def test_signing_out_ends_the_session(browser_of, owner):
    browser = browser_of(owner)
    old_csrf = browser.csrf
    response = browser.post("/console/sign-out")
    assert response.status_code == 303
    assert browser.get("/console/").status_code == 302
    assert browser.post("/console/sign-out", {"csrf_token": old_csrf}).status_code == 403


def test_a_replaced_personal_token_ends_its_console_sessions(browser_of, owner, system):
    browser = browser_of(owner)
    system.keys_app.replace_personal_token("owner@example.com", by=Actor.system("test"), request=NO_REQUEST)
    system.after_command()
    assert browser.get("/console/").status_code == 302


def test_an_altered_cookie_is_no_session(browser_of, owner):
    browser = browser_of(owner)
    cookie = browser.client.get_cookie("keyledger_console", path="/console")
    body, signature = cookie.value.split(".")
    browser.client.set_cookie("keyledger_console", body + "." + signature[:-2] + "AA", path="/console")
    assert browser.get("/console/").status_code == 302


def test_another_owner_gets_404_for_a_key_even_by_typing_its_url(browser_of, owner, other_owner, read_only_key):
    key_id = read_only_key["id"]
    browser = browser_of(other_owner)
    for path in ("/console/apps/vision", "/console/apps/vision/keys/new", f"/console/keys/{key_id}",
                 f"/console/keys/{key_id}/revoke"):
        response = browser.get(path)
        assert response.status_code == 404, path
        assert "read only" not in response.get_data(as_text=True)
    for path, form in ((f"/console/keys/{key_id}/revoke", {}), (f"/console/keys/{key_id}/roll", {"grace_seconds": "0"}),
                       (f"/console/keys/{key_id}/change", {"preset": "all", "description": "mine"}),
                       ("/console/apps/vision/keys/new", {"preset": "all", "description": "mine"})):
        response = browser.post(path, form)
        assert response.status_code == 404, path
        assert not SECRET.search(response.get_data(as_text=True))
    key = owner.get(f"/v2/keys/{key_id}").json
    assert key["status"] == "active" and key["version"] == read_only_key["version"]
    assert [k["id"] for k in owner.get("/v2/apps/vision/keys").json["keys"]] == [
        owner.get("/v2/apps/vision/keys").json["keys"][0]["id"], key_id]
    assert "vision" not in browser.get("/console/").get_data(as_text=True)


def test_an_auditor_reads_keys_but_cannot_change_them(browser_of, auditor, read_only_key, owner):
    browser = browser_of(auditor)
    page = browser.get(f"/console/keys/{read_only_key['id']}")
    assert page.status_code == 200 and "Roll the secret" not in page.get_data(as_text=True)
    assert browser.post(f"/console/keys/{read_only_key['id']}/revoke").status_code == 403
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["status"] == "active"


def test_the_security_pages_are_for_auditors_and_admins(browser_of, owner, auditor, admin):
    for path in ("/console/audit/integrity", "/console/audit/access", "/console/campaign"):
        assert browser_of(owner).get(path).status_code == 403, path
        assert browser_of(auditor).get(path).status_code == 200, path
        assert browser_of(admin).get(path).status_code == 200, path


def test_the_console_is_not_in_the_api_document(client):
    assert not [path for path in client.get("/openapi.json").json["paths"] if path.startswith("/console")]


def test_a_page_that_does_not_exist_is_an_html_404(browser_of, owner):
    response = browser_of(owner).get("/console/no/such/page")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_the_next_page_after_sign_in_is_only_ever_a_console_page(browser_of, owner):
    for target, expected in (("/console/audit", "/console/audit"), ("https://evil.example/", "/console/"),
                             ("//evil.example/console", "/console/"), ("/console/../v2/apps", "/console/")):
        browser = browser_of()
        browser.get("/console/sign-in")
        response = browser.post("/console/sign-in", {"token": owner.token, "next": target})
        assert response.headers["Location"] == expected, target


def test_browser_can_be_made_without_signing_in(flask_app):
    assert Browser(flask_app).get("/console/sign-in").status_code == 200


def test_a_visit_without_the_session_cookie_never_overwrites_it(browser_of, owner):
    anonymous = browser_of()
    response = anonymous.get("/console/keys/whatever")
    written = [v for k, v in response.headers.items() if k == "Set-Cookie"]
    assert written and all(v.startswith("keyledger_console_pre=") for v in written)
    page = anonymous.get("/console/sign-in?next=/console/audit", headers={"Sec-Fetch-Site": "cross-site"})
    assert 'href="/console/audit">continue to the console</a>' in page.get_data(as_text=True)


def test_signing_in_drops_the_anonymous_cookie(browser_of, owner):
    browser = browser_of()
    browser.get("/console/sign-in")
    response = browser.post("/console/sign-in", {"token": owner.token})
    written = [v for k, v in response.headers.items() if k == "Set-Cookie"]
    assert any(v.startswith("keyledger_console_pre=;") and "Max-Age=0" in v for v in written), written


def test_signing_out_ends_every_copy_of_the_cookie_on_every_instance(browser_of, owner, settings):
    """The cookie is signed, not stored: signing out must still end it on the server side, so a
    copy (another tab, a proxy's log) stops working at once — on this instance and on another
    one sharing the store."""
    from service.api import create_app
    from service.composition import build_system
    from tests.console.conftest import Browser

    browser = browser_of(owner)
    cookie = browser.client.get_cookie("keyledger_console", path="/console").value
    here = Browser(browser.client.application)
    here.client.set_cookie("keyledger_console", cookie, path="/console")
    other_system = build_system(settings)
    try:
        there = Browser(create_app(system=other_system))
        there.client.set_cookie("keyledger_console", cookie, path="/console")
        assert here.get("/console/").status_code == 200 and there.get("/console/").status_code == 200

        assert browser.post("/console/sign-out").status_code == 303
        for copy in (here, there):
            response = copy.get("/console/")
            assert response.status_code == 302 and "/console/sign-in" in response.headers["Location"]
            gone = copy.client.get_cookie("keyledger_console", path="/console")
            assert gone is None or not gone.value  # and the copy is told to forget it
            copy.client.set_cookie("keyledger_console", cookie, path="/console")  # sent again anyway
            assert copy.get("/console/apps/vision").status_code == 302
            assert copy.post("/console/sign-out", {"csrf_token": browser.csrf}).status_code == 403
        again = browser_of(owner)  # signing in again opens a new session, which works
        assert again.get("/console/").status_code == 200
    finally:
        other_system.close()


def test_a_signed_out_session_is_recorded_by_a_digest_not_the_cookie(browser_of, owner, system):
    browser = browser_of(owner)
    cookie = browser.client.get_cookie("keyledger_console", path="/console").value
    assert browser.post("/console/sign-out").status_code == 303
    with system.views.read() as db:
        rows = [tuple(r) for r in db.execute("SELECT session_id, expires_at FROM console_sessions_ended")]
    assert len(rows) == 1
    session_id, _expires = rows[0]
    body = cookie.split(".")[0]
    assert session_id not in cookie and body not in session_id
