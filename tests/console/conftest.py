"""The web console through Flask's test client: one browser-like client (its own cookies) per person."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Caller

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A test client that keeps its cookies and sends the page's CSRF token with each form."""

    def __init__(self, flask_app, *, https: bool = False) -> None:
        self.client = flask_app.test_client()
        self.base_url = "https://localhost" if https else "http://localhost"
        self.csrf: str | None = None

    def get(self, path: str, **kw):
        response = self.client.get(path, base_url=self.base_url, **kw)
        if found := CSRF.search(response.get_data(as_text=True)):
            self.csrf = found[1]
        return response

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kw):
        form = dict(data or {})
        if csrf and "csrf_token" not in form:
            form["csrf_token"] = self.csrf or ""
        response = self.client.post(path, data=form, base_url=self.base_url, **kw)
        if found := CSRF.search(response.get_data(as_text=True)):
            self.csrf = found[1]
        return response

    def sign_in(self, token: str):
        self.get("/console/sign-in")
        response = self.post("/console/sign-in", {"token": token})
        assert response.status_code == 303, response.get_data(as_text=True)
        self.get("/console/")  # the signed-in session's CSRF token
        return response


@pytest.fixture
def browser_of(flask_app):
    def make(caller: Caller | None = None, *, https: bool = False) -> Browser:
        browser = Browser(flask_app, https=https)
        if caller is not None:
            browser.sign_in(caller.token)
        return browser

    return make


def problems(html: str) -> dict[str, str]:
    """The sentences shown next to each field: ``{field: text}``."""
    return {m[0]: m[1] for m in re.findall(r'<p class="problem" id="([\w-]+)-problem">([^<]*)</p>', html)}
