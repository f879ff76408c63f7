"""The console's rate-limit forms in Debian's Chromium: a key's limits and its app's, a refusal shown
beside its field; screenshots at both sizes into docs/screenshots/, with the accessibility check."""

from __future__ import annotations

from tests import backend
from tests.browser.test_console_in_a_browser import SCREENSHOTS, SIZES, Pages, shown, sign_in
from tests.e2e.conftest import ServerProcess, StartServer


def test_the_rate_limit_forms_in_chromium(chromium, start_server: StartServer, tmp_path):
    server: ServerProcess = start_server()
    owner = server.create_account("owner", "olive@example.com", "Olive Owner")
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
    key = server.post("/v2/apps/vision/keys", {"description": "Web page", "scopes": ["Predict"]},
                      token=owner["token"]).json
    pages = Pages(tmp_path / "screenshots" if backend.ON_POSTGRES else SCREENSHOTS)
    context = chromium.new_context(viewport=SIZES["desktop"])
    page = sign_in(context, server, owner["token"])
    page.goto(server.url + f"/console/keys/{key['id']}")
    assert shown(page.get_by_role("heading", name="Rate limits"))

    # A refusal: the sentence beside the field that caused it, what was typed kept
    page.get_by_label("Requests, limit 1").fill("20")
    page.get_by_label("Period, limit 1").fill("1 sec")
    page.get_by_role("button", name="Save limits").click()
    page.wait_for_load_state()
    assert page.locator("#per-0-problem").count() == 1, page.content()[-3000:]
    assert "Not a period" in page.locator("#per-0-problem").inner_text()
    pages.check(page, "key-limits-refused")

    page.get_by_label("Period, limit 1").fill("1s")
    page.get_by_label("Requests, limit 2").fill("100000")
    page.get_by_label("Period, limit 2").fill("1d")
    page.get_by_role("button", name="Save limits").click()
    assert shown(page.get_by_text("Saved: the rate limits are as shown."))
    assert shown(page.get_by_text("Rate limits changed"))
    pages.check(page, "key-limits")
    assert server.get(f"/v2/keys/{key['id']}", token=owner["token"]).json["limits"] == [
        {"limit": 20, "per": "1s"}, {"limit": 100000, "per": "1d"}]

    page.goto(server.url + "/console/apps/vision")
    page.get_by_label("Requests, limit 1").fill("1000")
    page.get_by_label("Period, limit 1").fill("1m")
    page.get_by_role("button", name="Save limits").click()
    assert shown(page.get_by_text("Saved: the rate limits are as shown."))
    pages.check(page, "app-limits")
    assert server.get("/v2/apps/vision", token=owner["token"]).json["limits"] == [{"limit": 1000, "per": "1m"}]
    context.close()
    assert not pages.violations, pages.violations
    assert not pages.too_wide, pages.too_wide
