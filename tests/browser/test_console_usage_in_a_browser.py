"""The key page's usage chart and the app page's requests column in Debian's Chromium; screenshots
at both sizes into docs/screenshots/ (the PostgreSQL pass: its own folder), with the
accessibility check."""

from __future__ import annotations

import time

from tests import backend
from tests.browser.test_console_in_a_browser import SCREENSHOTS, SIZES, Pages, shown, sign_in
from tests.e2e.conftest import ServerProcess, StartServer


def test_the_usage_chart_in_chromium(chromium, start_server: StartServer, tmp_path):
    server: ServerProcess = start_server(env={"KEYLEDGER_LAST_USED_INTERVAL": "0.2"}, workers=2)
    owner = server.create_account("owner", "olive@example.com", "Olive Owner")
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
    key = server.post("/v2/apps/vision/keys", {"description": "Web page", "scopes": ["Predict"]},
                      token=owner["token"]).json
    server.remember(key["key"])
    for i in range(40):
        scope = "Models:Add" if i % 8 == 0 else "Predict"
        assert server.post("/v2/verify", {"key": key["key"], "scope": scope}).status == 200
    deadline = time.monotonic() + 10
    while sum(p["valid"] for p in server.get(f"/v2/keys/{key['id']}/usage",
                                             token=owner["token"]).json["periods"]) < 35:
        assert time.monotonic() < deadline, "the usage counts never reached the views"
        time.sleep(0.1)
    pages = Pages(tmp_path / "screenshots" if backend.ON_POSTGRES else SCREENSHOTS)
    context = chromium.new_context(viewport=SIZES["desktop"])
    page = sign_in(context, server, owner["token"])
    page.goto(server.url + f"/console/keys/{key['id']}")
    assert shown(page.get_by_role("heading", name="Usage in the last 48 hours"))
    chart = page.get_by_role("img", name="Valid answers and refusals of this key per hour, over the last 48 hours")
    assert shown(chart)
    assert page.locator("#usage-chart rect").count() == 96
    assert "35 valid answers and 5 refusals" in page.locator("#usage-h + p").inner_text()
    pages.check(page, "key-usage")
    page.get_by_text("The chart's numbers, hour by hour").click()
    assert shown(page.get_by_text("INSUFFICIENT_SCOPE 5"))

    page.goto(server.url + "/console/apps/vision")
    cell = page.locator("td[data-label='Requests (24 h)']")
    assert cell.count() == 2 and sorted(cell.all_inner_texts()) == ["0", "40"]
    pages.check(page, "app-usage")
    context.close()
    assert not pages.violations, pages.violations
    assert not pages.too_wide, pages.too_wide
