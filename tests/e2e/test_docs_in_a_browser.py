"""/docs in a real (headless) Chromium: Swagger UI renders every operation without any CDN."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import require
from tests.e2e.conftest import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered_dom(url: str, tmp_path) -> str:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_docs_render_the_operations_offline(server: ServerProcess, tmp_path):
    require("chromium", CHROMIUM is not None, "install the Debian package chromium")
    dom = rendered_dom(server.url + "/docs", tmp_path)
    assert "swagger-ui" in dom
    assert 'class="opblock-summary-path"' in dom or "opblock-summary-path" in dom, dom[:2000]
    for path in ("/v2/apps/{app_id}/keys", "/v2/keys/{key_id}/roll", "/v2/verify", "/v2/auth/check"):
        assert path in dom, f"{path} not rendered"
    assert "Keyledger" in dom
