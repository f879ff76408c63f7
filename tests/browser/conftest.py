"""Browser tests: Playwright driving Debian's Chromium against a real ``keyledger serve``.

The server harness is the end-to-end one (tests/e2e/conftest.py): real processes, real sockets,
and a scan of their logs and data for every secret they handed out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.conftest import start_server  # noqa: F401 (the harness's fixture, reused here)

CHROMIUM = Path(os.environ.get("KEYLEDGER_CHROMIUM", "/usr/bin/chromium"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium under Playwright (no browser is ever downloaded: never `playwright install`)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require("playwright", sync_playwright is not None, "pip install playwright (in the test extra)")
    require("chromium", CHROMIUM.exists(), f"install the Debian package chromium ({CHROMIUM} is missing)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()
