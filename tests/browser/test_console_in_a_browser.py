"""The web console in a real browser (Debian's Chromium under Playwright) against a real server.

An owner signs in, creates a read-only key, copies its secret, sees it verify, revokes it and
sees it refused; an auditor finds the key's events in the trail; another owner cannot see or
touch it, even by typing its URL; a form posted without its CSRF token is refused; axe-core finds
no serious or critical accessibility violation on any page. Every page is photographed at
1280×800 and 390×844 into docs/screenshots/ (the secret masked out) — by the SQLite pass; the
PostgreSQL pass, which scripts/test runs alongside it, shoots the same pages into its own folder.
"""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import backend
from tests.e2e.conftest import REPO_ROOT, ServerProcess, StartServer

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
SERIOUS = ("serious", "critical")


class Pages:
    """Screenshots at both sizes, and the accessibility and small-screen checks of each page."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.axe_source = AXE.read_text("utf-8")
        self.violations: list[str] = []
        self.too_wide: list[str] = []
        self.shot: list[str] = []

    def check(self, page, name: str, *, mask: list | None = None) -> None:
        for size, viewport in SIZES.items():
            page.set_viewport_size(viewport)
            page.screenshot(path=str(self.folder / f"{name}-{size}.png"), full_page=True, mask=mask or [],
                            animations="disabled")
            if size == "phone":
                width = page.evaluate("document.documentElement.scrollWidth")
                if width > viewport["width"]:
                    self.too_wide.append(f"{name}: {width}px wide at {viewport['width']}px")
        page.set_viewport_size(SIZES["desktop"])
        self.shot.append(name)
        # axe in the page's own context, evaluated over DevTools: the page's CSP (no inline
        # script) does not apply to it, and nothing is added to the page's HTML.
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            page.evaluate(self.axe_source)
        result = page.evaluate("""async () => (await axe.run(document, {
            runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}
        })).violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                  nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))""")
        for violation in result:
            if violation["impact"] in SERIOUS:
                self.violations.append(f"{name}: {violation['id']} ({violation['impact']}) {violation['help']} "
                                       f"at {violation['nodes']}")


def pages_for(tmp_path: Path) -> Pages:
    """Screenshots into docs/screenshots/ from the SQLite pass; the PostgreSQL pass (which runs
    alongside) writes its own into the test's folder, so the two never write one file at once."""
    return Pages(tmp_path / "screenshots" if backend.ON_POSTGRES else SCREENSHOTS)


def shown(locator, timeout: float = 10_000) -> bool:
    """Wait for the element (after a click, the next page may still be loading)."""
    locator.first.wait_for(state="visible", timeout=timeout)
    return True


def sign_in(context, server: ServerProcess, token: str):
    page = context.new_page()
    page.goto(server.url + "/console")
    assert "/console/sign-in" in page.url
    page.get_by_label("Personal token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/console/?$"))
    return page


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    sunset = (datetime.now(UTC) + timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return start_server(env={"KEYLEDGER_LEGACY_SUNSET_AT": sunset})


def test_the_console_end_to_end_in_chromium(chromium, server: ServerProcess, tmp_path: Path):
    admin = server.create_account("admin", "admin@example.com", "Ada Admin")
    owner = server.create_account("owner", "olive@example.com", "Olive Owner")
    other = server.create_account("owner", "oscar@example.com", "Oscar Other")
    auditor = server.create_account("auditor", "audrey@example.com", "Audrey Auditor")
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
    # The app still uses a legacy access token (the campaign's chart and the migration hint show it).
    credentials = server.post("/v2/apps/vision/legacy-credentials", token=admin["token"]).json
    basic = base64.b64encode(f"{credentials['client_id']}:{credentials['client_secret']}".encode()).decode()
    token = server.request("POST", "/v2/token", json_body={"grant_type": "client_credentials"},
                           headers={"Authorization": f"Basic {basic}"})
    assert token.status == 200, token
    assert server.post("/v2/verify", {"key": token.json["access_token"]}).json["valid"]
    deadline = time.monotonic() + 5
    while not server.get("/v2/legacy/usage", token=admin["token"]).json["apps"][0]["last_used_at"]:
        assert time.monotonic() < deadline, "the legacy use never reached the views"
        time.sleep(0.05)
    pages = pages_for(tmp_path)

    # -- the owner: sign in, create a read-only key, copy its secret ---------------------------------
    owner_context = chromium.new_context(viewport=SIZES["desktop"])
    owner_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    signin = owner_context.new_page()
    signin.goto(server.url + "/console")
    pages.check(signin, "sign-in")
    signin.close()
    page = sign_in(owner_context, server, owner["token"])
    assert shown(page.get_by_role("heading", name="Apps"))
    pages.check(page, "apps")
    page.get_by_role("link", name="Vision").click()
    assert shown(page.get_by_text("still uses legacy access tokens"))
    assert page.get_by_role("link", name="Read the migration guide").get_attribute("href") == "/docs/migration"
    pages.check(page, "app")
    page.get_by_role("link", name="Create New API Key").click()
    # Refusals are sentences next to the fields that caused them.
    page.get_by_label("Description").fill("ak_" + "x" * 38)
    page.get_by_label("Choose scopes below").check()
    page.get_by_role("button", name="Create key").click()
    assert shown(page.locator("#scopes-problem"))
    assert "Must not be empty." in page.locator("#scopes-problem").inner_text()
    pages.check(page, "new-key-refused")
    # The form as a new user first sees it (not the refused one with a preset ticked over its
    # "Give at least one scope": that screenshot would contradict itself).
    page.goto(server.url + "/console/apps/vision/keys/new")
    assert page.locator("#scopes-problem").count() == 0 and page.get_by_text("Give at least one scope").count() == 0
    page.get_by_label("Description").fill("Gateway, read-only")
    page.get_by_label("Read-only: Predict and Search").check()
    assert page.get_by_label("Predict", exact=False).first.is_checked()  # the preset ticked its scopes
    pages.check(page, "new-key")
    page.get_by_role("button", name="Create key").click()
    assert shown(page.get_by_text("You will not see this again."))
    secret_field = page.get_by_label(re.compile("Secret of the key"))
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied to the clipboard.").wait_for()
    secret = page.evaluate("navigator.clipboard.readText()")
    assert re.fullmatch(r"ak_[0-9A-Za-z]{38}", secret), "the clipboard does not hold a key"
    assert secret == secret_field.input_value()
    server.remember(secret)  # the harness scans the server's log and data for it at the end
    pages.check(page, "secret", mask=[secret_field])
    assert secret not in page.url

    verdict = server.post("/v2/verify", {"key": secret, "scope": "Predict"}).json
    assert verdict["code"] == "VALID" and verdict["scopes"] == ["Predict", "Search"]
    key_id = verdict["key_id"]

    # -- the key's page, then revoke it (with a confirmation naming it) -------------------------------
    page.get_by_role("link", name="I have copied it: show the key").click()
    assert shown(page.get_by_role("heading", name=re.compile("Gateway, read-only")))
    assert secret not in page.content()
    pages.check(page, "key")
    page.get_by_role("link", name="Revoke this key…").click()
    assert shown(page.get_by_role("heading", name=re.compile("Revoke the key “Gateway, read-only”")))
    pages.check(page, "revoke")
    page.get_by_role("button", name="Revoke this key").click()
    assert shown(page.get_by_text("Revoked: the key no longer verifies."))
    assert server.post("/v2/verify", {"key": secret}).json["code"] == "REVOKED"
    pages.check(page, "key-revoked")

    # -- a form posted without its CSRF token is refused --------------------------------------------
    page.goto(server.url + "/console/apps/vision/keys/new")
    page.get_by_label("Description").fill("no token")
    page.get_by_label("All scopes, including future ones").check()
    page.evaluate("document.querySelector('form.stack input[name=csrf_token]').remove()")
    page.get_by_role("button", name="Create key").click()
    assert shown(page.get_by_role("heading", name="This form cannot be accepted"))
    assert "nothing was changed" in page.content()
    pages.check(page, "csrf-refused")
    keys = server.get("/v2/apps/vision/keys", token=owner["token"]).json["keys"]
    assert [k["description"] for k in keys] == ["Default key (auto-generated)", "Gateway, read-only"]
    owner_context.close()

    # -- the auditor: the key's events in the trail; integrity; who could; the campaign ------------------
    auditor_context = chromium.new_context(viewport=SIZES["desktop"])
    page = sign_in(auditor_context, server, auditor["token"])
    page.get_by_role("link", name="Audit trail").click()
    page.get_by_label("Key id").fill(key_id)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"key_id="))
    rows = page.locator("table.events tbody tr")
    types = [rows.nth(n).locator("td").nth(2).inner_text().split("\n")[0] for n in range(rows.count())]
    assert types == ["ApiKey.Issued", "ApiKey.Revoked"], types
    pages.check(page, "audit")
    page.get_by_role("link", name="Integrity").click()
    assert shown(page.get_by_text("Intact."))
    pages.check(page, "integrity")
    page.get_by_role("link", name="Who could?").click()
    page.get_by_label("App").select_option("vision")
    page.get_by_label("Scope").select_option("Predict")
    page.get_by_role("button", name="Ask").click()
    assert shown(page.get_by_role("heading", name=re.compile("scope Predict")))
    pages.check(page, "access")
    page.get_by_role("link", name="Campaign").click()
    assert shown(page.locator("svg[role=img]"))
    pages.check(page, "campaign")
    page.get_by_role("link", name="Leaks").click()
    assert shown(page.get_by_role("heading", name="Leak reports"))
    assert shown(page.get_by_text("No leak reports in this period."))
    pages.check(page, "leaks")
    auditor_context.close()

    # -- another owner: not even by typing the URL ----------------------------------------------------
    other_context = chromium.new_context(viewport=SIZES["desktop"])
    page = sign_in(other_context, server, other["token"])
    assert "Vision" not in page.content()
    for path in (f"/console/keys/{key_id}", f"/console/keys/{key_id}/revoke", "/console/apps/vision"):
        answer = page.goto(server.url + path)
        assert answer.status == 404, path
        assert "Gateway, read-only" not in page.content()
    pages.check(page, "not-found")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    touched = page.request.post(server.url + f"/console/keys/{key_id}/roll",
                                form={"csrf_token": csrf, "grace_seconds": "0"})
    assert touched.status == 404 and not re.search(r"ak_[0-9A-Za-z]{38}", touched.text())
    other_context.close()

    assert server.get(f"/v2/keys/{key_id}", token=owner["token"]).json["version"] == 2  # issued, revoked
    assert pages.violations == [], "\n".join(pages.violations)
    assert pages.too_wide == [], "\n".join(pages.too_wide)


def test_every_control_is_reachable_with_the_keyboard(chromium, server: ServerProcess):
    owner = server.create_account("owner", "kim@example.com", "Kim Keys")
    app = server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).json
    context = chromium.new_context(viewport=SIZES["desktop"])
    page = sign_in(context, server, owner["token"])
    for path in ("/console/apps/vision/keys/new", f"/console/keys/{app['default_key']['id']}"):
        page.goto(server.url + path)
        wanted = page.evaluate("""() => Array.from(document.querySelectorAll(
            'a[href], button, input:not([type=hidden]), select, textarea')).filter(e => !e.disabled)
            .map(e => e.id || e.name + '=' + (e.value || e.textContent.trim()))""")
        reached = set()
        for _ in range(len(wanted) * 2 + 5):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("""() => { const e = document.activeElement;
                return e.id || e.name + '=' + (e.value || e.textContent.trim()); }"""))
        # Radio buttons of one group take one tab stop (arrows move within it): a group is reached
        # when one of its buttons is.
        groups = {r.partition("=")[0] for r in reached if r.startswith(("preset=", "restriction_kind="))}
        missing = [w for w in wanted if w not in reached and w.partition("=")[0] not in groups]
        assert missing == [], f"{path}: not reachable with Tab: {missing}"
        first = page.evaluate("() => { document.activeElement.blur(); return null; }")
        assert first is None
    page.goto(server.url + "/console/apps/vision")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    context.close()


def test_the_accessibility_check_can_fail(chromium):
    """axe-core as injected above does find a serious violation (an input without a label)."""
    page = chromium.new_page()
    page.set_content("<!doctype html><html lang='en'><title>t</title><main><input type='text'></main></html>")
    page.evaluate(AXE.read_text("utf-8"))
    impacts = page.evaluate("async () => (await axe.run()).violations.map(v => v.id + ':' + v.impact)")
    page.close()
    assert "label:critical" in impacts, impacts


def test_a_browser_key_is_created_with_its_restriction_in_chromium(chromium, server: ServerProcess, tmp_path):
    owner = server.create_account("owner", "olive@example.com", "Olive Owner")
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
    pages = pages_for(tmp_path)
    context = chromium.new_context(viewport=SIZES["desktop"])
    page = sign_in(context, server, owner["token"])
    page.goto(server.url + "/console/apps/vision/keys/new")
    # A pattern that would match every site is refused next to the field, with the reason.
    page.get_by_label("Description").fill("Web shop, browser")
    page.get_by_label("Read-only: Predict and Search").check()
    page.get_by_label(re.compile("Web pages")).check()
    page.get_by_label("Allowed, one per line").fill("https://*")
    page.get_by_role("button", name="Create key").click()
    assert shown(page.locator("#restrictions-problem"))
    assert "would match every site" in page.locator("#restrictions-problem").inner_text()
    # The form as a new user fills it (not the refused one, whose sentence would contradict it).
    page.goto(server.url + "/console/apps/vision/keys/new")
    page.get_by_label("Description").fill("Web shop, browser")
    page.get_by_label("Read-only: Predict and Search").check()
    page.get_by_label(re.compile("Web pages")).check()
    page.get_by_label("Allowed, one per line").fill("https://shop.example.com\nhttps://*.example.com/*")
    pages.check(page, "new-key-restricted")
    page.get_by_role("button", name="Create key").click()
    assert shown(page.get_by_text("You will not see this again."))
    key_id = re.search(r"/console/keys/([0-9a-f-]{36})", page.content())[1]
    key = server.get(f"/v2/keys/{key_id}", token=owner["token"]).json
    assert key["restrictions"] == {"browser": ["https://shop.example.com", "https://*.example.com/*"]}
    context.close()
    assert pages.violations == [] and pages.too_wide == []
