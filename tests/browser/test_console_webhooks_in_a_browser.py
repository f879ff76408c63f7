"""Webhook pages in Debian's Chromium against a real ``keyledger serve`` (its embedded scheduler
delivers): register an endpoint through the form, copy the secret shown once, see the delivery
arrive in the log; screenshots at both sizes (docs/screenshots/ on SQLite), the accessibility and
small-screen checks."""

from __future__ import annotations

from tests import backend
from tests.browser.test_console_in_a_browser import SCREENSHOTS, SIZES, Pages, shown, sign_in
from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, StartServer
from tests.webhooks.receiver import Receiver


def test_register_an_endpoint_and_watch_its_delivery_log_in_chromium(chromium, start_server: StartServer, tmp_path):
    server: ServerProcess = start_server(env={"KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE": "1",
                                              "KEYLEDGER_SCHEDULER_INTERVAL": "0.5"})
    admin = server.create_account("admin", "ada@example.com", "Ada Admin")
    owner = server.create_account("owner", "olive@example.com", "Olive Owner")
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
    pages = Pages(tmp_path / "screenshots" if backend.ON_POSTGRES else SCREENSHOTS)
    with Receiver() as receiver:
        context = chromium.new_context(viewport=SIZES["desktop"])
        page = sign_in(context, server, admin["token"])
        page.get_by_role("link", name="Webhooks").click()
        assert shown(page.get_by_role("heading", name="Register an endpoint"))
        page.get_by_label("URL (https)").fill(receiver.url)
        page.get_by_label("Description (optional)").fill("Billing")
        page.get_by_label("key.revoked").check()
        page.get_by_label("app.created").check()
        pages.check(page, "webhooks")
        page.get_by_role("button", name="Register").click()
        assert shown(page.get_by_role("heading", name="Copy the signing secret now"))
        secret = page.get_by_label(f"Signing secret of {receiver.url}").input_value()
        assert secret.startswith("whsec_")
        server.remember(secret)
        receiver.secret = secret
        pages.check(page, "webhook-secret", mask=[page.locator("#secret")])
        page.get_by_role("link", name="I have copied it: show the endpoint").click()

        assert server.post("/v2/apps", {"id": "speech", "name": "Speech"}, token=owner["token"]).status == 201
        assert wait_until(lambda: len(receiver.requests) == 1, timeout=15)
        assert receiver.requests[0]["verified"]
        row = page.get_by_role("row").filter(has_text="app.created")

        def delivered() -> bool:  # the deliverer records the answer after the receiver has the request
            page.reload()
            return shown(row) and "delivered" in row.inner_text()

        assert wait_until(delivered, timeout=15)
        pages.check(page, "webhook")
        page.get_by_role("button", name="Send again").click()
        assert shown(page.get_by_text("The delivery is queued to be sent again."))
        assert wait_until(lambda: len(receiver.requests) == 2, timeout=15)
        assert receiver.requests[1]["headers"]["webhook-id"] == receiver.requests[0]["headers"]["webhook-id"]
        context.close()
    assert not pages.violations, pages.violations
    assert not pages.too_wide, pages.too_wide
