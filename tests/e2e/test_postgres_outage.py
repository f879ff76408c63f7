"""PostgreSQL stops mid-run: commands answer 503 UNAVAILABLE with Retry-After, verification keeps
answering from the in-memory index (and says so), /readyz fails; when PostgreSQL is back,
everything resumes without restarting Keyledger, and nothing accepted before is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.conftest import StartServer
from tests.e2e.many_instances import Cluster, cluster_env

pytestmark = pytest.mark.postgres_only


def _cluster_command(action: str) -> None:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action,
                    *(["-m", "fast"] if action == "stop" else [])], check=True, capture_output=True, timeout=60)


def _wait(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_an_outage_is_survived_without_a_restart(tmp_path, start_server: StartServer):
    require("pg_ctlcluster (as root)", shutil.which("pg_ctlcluster") is not None and os.geteuid() == 0
            and Path("/etc/postgresql").is_dir(), "the test stops and starts the local PostgreSQL cluster")
    cluster = Cluster(cluster_env("o_" + uuid.uuid4().hex[:16]), tmp_path, start_server)
    cluster.cli("db", "init")
    (server,) = cluster.start(1)
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                        token=admin).json["token"]
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).status == 201
    before = server.post("/v2/apps/vision/keys", {"description": "before", "scopes": ["Predict"]}, token=owner).json

    _cluster_command("stop")
    try:
        started = time.monotonic()
        refused = server.post("/v2/apps/vision/keys", {"description": "during", "scopes": ["Predict"]},
                              token=owner)
        took = time.monotonic() - started
        assert refused.status == 503, refused
        assert refused.json["error"]["code"] == "UNAVAILABLE" and refused.headers.get("Retry-After"), refused
        listing = server.get("/v2/apps/vision/keys", token=owner)
        assert listing.status == 503 and listing.json["error"]["code"] == "UNAVAILABLE", listing

        # Verification answers from memory, and once the index may be stale it says so.
        verdict = server.post("/v2/verify", {"key": before["key"], "scope": "Predict"})
        assert verdict.status == 200 and verdict.json["code"] == "VALID", verdict
        _wait(lambda: "X-Keyledger-Index-Stale" in server.post("/v2/verify", {"key": before["key"]}).headers,
              5, "verdicts say they come from a stale index")
        check = server.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {before['key']}"})
        assert check.status == 200 and "X-Keyledger-Index-Stale" in check.headers, check
        ready = server.get("/readyz")
        assert ready.status == 503, ready
        metrics = server.get("/metrics").body.decode()
        assert "keyledger_event_subscription_connected 0.0" in metrics
    finally:
        _cluster_command("start")

    recovery = _wait(lambda: server.get("/readyz").status == 200, 30, "/readyz answers 200 again")
    after = server.post("/v2/apps/vision/keys", {"description": "after", "scopes": ["Predict"]}, token=owner)
    assert after.status == 201, after
    assert server.delete(f"/v2/keys/{before['id']}", token=owner).status == 204
    assert server.post("/v2/verify", {"key": before["key"]}).json["code"] == "REVOKED"
    assert "X-Keyledger-Index-Stale" not in server.post("/v2/verify", {"key": after.json["key"]}).headers
    keys = {k["description"] for k in server.get("/v2/apps/vision/keys", token=owner).json["keys"]}
    assert {"before", "after"} <= keys and "during" not in keys
    history = server.get(f"/v2/keys/{before['id']}/history", token=owner).json["events"]
    assert [e["type"] for e in history] == ["ApiKey.Issued", "ApiKey.Revoked"]
    print(f"\na command during the outage answered 503 in {took:.2f} s; ready again {recovery:.1f} s "
          "after PostgreSQL started")
