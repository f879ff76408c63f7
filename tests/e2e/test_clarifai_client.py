"""The genuine 2017-era Python client (clarifai 2.x from PyPI) against Keyledger behind the
tested nginx configuration: with app_id/app_secret it fetches a token from POST /v2/token and
lists models through forward-auth until the sunset, and fails cleanly after it; with an API
key it keeps working. It runs in its own virtual environment, so its old dependencies never
touch the project's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.conftest import REPO_ROOT
from tests.e2e.test_nginx_gateway import gateway_for, upstream  # noqa: F401  (fixtures)

CLIENT_VENV = REPO_ROOT / ".venv-clarifai"
CLIENT_VERSION = "clarifai==2.2.3"

PROBE = r"""
import json, os, sys
from clarifai.rest import ClarifaiApp
from clarifai.rest.client import TokenError
try:
    if os.environ.get("PROBE_API_KEY"):
        app = ClarifaiApp(api_key=os.environ["PROBE_API_KEY"], base_url=os.environ["PROBE_BASE"])
    else:
        app = ClarifaiApp(app_id=os.environ["PROBE_ID"], app_secret=os.environ["PROBE_SECRET"],
                          base_url=os.environ["PROBE_BASE"])
    models = app.api.get_models(1, 20)
    print(json.dumps({"ok": True, "bearer": bool(app.api.token), "models": models["models"]}))
except TokenError as error:
    print(json.dumps({"ok": False, "error": "TokenError", "message": str(error)}))
"""


@pytest.fixture(scope="session")
def clarifai_python() -> Path:
    python = CLIENT_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", "import clarifai.rest"],
                                             capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CLIENT_VENV)], check=True)
        done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               CLIENT_VERSION], capture_output=True, text=True, timeout=300)
        require("the clarifai 2.x client", done.returncode == 0,
                f"pip install {CLIENT_VERSION} failed (no package index?): {done.stderr[-500:]}")
    return python


def run_client(python: Path, base: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KEYLEDGER_", "CLARIFAI_"))}
    environment.update({"PROBE_BASE": base, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
                        "HOME": str(CLIENT_VENV)}, **env)
    done = subprocess.run([python, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_2017_client_works_until_the_sunset_and_api_keys_after(start_server, gateway_for, clarifai_python):  # noqa: F811
    sunset = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=25)
    keyledger = start_server(env={"KEYLEDGER_LEGACY_SUNSET_AT": sunset.strftime("%Y-%m-%dT%H:%M:%SZ")})
    gateway_url = gateway_for(keyledger)
    admin = keyledger.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = keyledger.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                           token=admin).json["token"]
    app = keyledger.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).json
    creds = keyledger.post("/v2/apps/vision/legacy-credentials", token=admin).json
    keyledger.remember(creds["client_secret"])

    before = run_client(clarifai_python, gateway_url, PROBE_ID=creds["client_id"],
                        PROBE_SECRET=creds["client_secret"])
    assert before == {"ok": True, "bearer": True, "models": []}, before
    usage = keyledger.get("/v2/legacy/usage", token=admin).json["apps"][0]
    assert usage["tokens_issued"] == 1 and usage["windows"] == 1

    time.sleep(max(0.0, (sunset - datetime.now(UTC)).total_seconds()) + 0.5)
    after = run_client(clarifai_python, gateway_url, PROBE_ID=creds["client_id"],
                       PROBE_SECRET=creds["client_secret"])
    assert after["ok"] is False and after["error"] == "TokenError"
    assert "unauthorized_client" in after["message"] and "API key" in after["message"]
    assert creds["client_secret"] not in after["message"]

    with_key = run_client(clarifai_python, gateway_url, PROBE_API_KEY=app["default_key"]["key"])
    assert with_key == {"ok": True, "bearer": False, "models": []}, with_key

