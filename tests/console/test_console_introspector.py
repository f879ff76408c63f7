"""An introspector account is a resource server's: the console shows it nothing to manage, and
never an error page of the server's own."""

from __future__ import annotations

from tests.conftest import Caller, make_account


def test_an_introspector_signed_in_sees_refusals_not_errors(system, client, browser_of):
    account = make_account(system, "introspector", "gateway@example.com", "Gateway")
    browser = browser_of(Caller(client, account["token"], id=account["id"], role="introspector"))
    for path in ("/console/", "/console/apps", "/console/audit"):
        page = browser.get(path)
        assert page.status_code in (200, 303, 403, 404), (path, page.status_code)
        assert "Traceback" not in page.get_data(as_text=True)
