"""Stopping and starting the server loses nothing: everything is read back from the event store."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from projections.audit import encode_cursor
from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e


def build_history(server: ServerProcess) -> dict[str, Any]:
    """Admin (CLI) → owner (API) → app → read-only key, changed and rolled; another key revoked."""
    admin = server.create_account("admin", "admin@example.com", "Ada Admin")
    created = server.post("/v2/accounts", {"email": "owner@example.com", "name": "Olga Owner",
                                           "role": "owner"}, token=admin["token"])
    assert created.status == 201, created
    owner = created.json
    token = owner["token"]

    app = server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=token)
    assert app.status == 201, app
    issued = server.post("/v2/apps/vision/keys", {"description": "dashboard (read only)",
                                                  "scopes": ["Predict", "Search"]}, token=token)
    assert issued.status == 201, issued
    key = issued.json

    changed = server.patch(f"/v2/keys/{key['id']}", {"scopes": ["Predict"]}, token=token,
                           headers={"If-Match": '"1"', "User-Agent": "e2e/restart"})
    assert changed.status == 200, changed
    assert changed.json["version"] == 2
    rolled = server.post(f"/v2/keys/{key['id']}/roll", {"grace_seconds": 3600}, token=token)
    assert rolled.status == 200, rolled

    doomed = server.post("/v2/apps/vision/keys", {"description": "ci (leaked)", "scopes": ["Search"]},
                         token=token)
    assert doomed.status == 201, doomed
    revoked = server.delete(f"/v2/keys/{doomed.json['id']}", token=token)
    assert revoked.status == 204, revoked
    return {
        "admin": admin, "owner": owner, "token": token, "app": app.json, "key_id": key["id"],
        "old_secret": key["key"], "new_secret": rolled.json["key"],
        "revoked_id": doomed.json["id"], "revoked_secret": doomed.json["key"],
        "default_id": app.json["default_key"]["id"],
    }


def snapshot(server: ServerProcess, world: dict[str, Any]) -> dict[str, Any]:
    """Every read answer that must survive a restart: status, body and ETag."""
    token = world["token"]
    paths = ["/v2/me", "/v2/apps", "/v2/apps/vision", "/v2/apps/vision/keys"]
    for key_id in (world["key_id"], world["revoked_id"], world["default_id"]):
        paths += [f"/v2/keys/{key_id}", f"/v2/keys/{key_id}/history"]
    answers = {}
    for path in paths:
        response = server.get(path, token=token)
        assert response.status == 200, (path, response)
        answers[path] = {"body": response.json, "etag": response.headers.get("ETag")}
    return answers


def assert_history_is_intact(server: ServerProcess, world: dict[str, Any],
                             answers: dict[str, Any]) -> None:
    key = answers[f"/v2/keys/{world['key_id']}"]
    assert key["body"]["status"] == "active"
    assert key["body"]["scopes"] == ["Predict"]
    assert key["body"]["version"] == 3
    assert key["etag"] == '"3"'
    events = answers[f"/v2/keys/{world['key_id']}/history"]["body"]["events"]
    assert [e["type"] for e in events] == ["ApiKey.Issued", "ApiKey.ScopesChanged", "ApiKey.Rolled"]
    # One global hash chain; these three events were written back to back.
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in pairwise(events))
    assert events[1]["request"]["user_agent"] == "e2e/restart"

    revoked = answers[f"/v2/keys/{world['revoked_id']}"]["body"]
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    assert [e["type"] for e in answers[f"/v2/keys/{world['revoked_id']}/history"]["body"]["events"]] \
        == ["ApiKey.Issued", "ApiKey.Revoked"]
    listed = {k["id"]: k["status"] for k in answers["/v2/apps/vision/keys"]["body"]["keys"]}
    assert listed == {world["default_id"]: "active", world["key_id"]: "active",
                      world["revoked_id"]: "revoked"}
    assert [a["id"] for a in answers["/v2/apps"]["body"]["apps"]] == ["vision"]


def assert_credentials_still_work(server: ServerProcess, world: dict[str, Any]) -> None:
    """The verification index rebuilt from the log: tokens authenticate, the revoked key is refused."""
    me = server.get("/v2/me", token=world["token"])
    assert me.status == 200, me
    assert me.json["id"] == world["owner"]["id"]
    admin_me = server.get("/v2/me", token=world["admin"]["token"])
    assert admin_me.status == 200, admin_me
    assert admin_me.json["role"] == "admin"

    refused = server.get("/v2/me", token=world["revoked_secret"])
    assert refused.status == 401, refused
    assert refused.json["error"]["code"] == "REVOKED"
    # The rolled key's new secret and (within its grace period) the old one are known
    # credentials: an API key is authenticated, then refused as not a person (403, not 401).
    for secret in (world["new_secret"], world["old_secret"]):
        answer = server.get("/v2/me", token=secret)
        assert answer.status == 403, answer
        assert answer.json["error"]["code"] == "FORBIDDEN"


def verify(server: ServerProcess, key: str, **extra: str) -> dict:
    answer = server.post("/v2/verify", {"key": key, **extra})
    assert answer.status == 200, answer
    return answer.json


def assert_verification_agrees(server: ServerProcess, world: dict[str, Any]) -> None:
    """What a gateway hears (POST /v2/verify). Verifying touches last_used_at, so this runs
    only after the snapshots have been compared."""
    revoked = verify(server, world["revoked_secret"])
    assert (revoked["valid"], revoked["code"], revoked["key_id"]) == (False, "REVOKED", world["revoked_id"])
    for secret in (world["new_secret"], world["old_secret"]):  # the old one is within its grace
        valid = verify(server, secret, scope="Predict", app_id="vision")
        assert (valid["valid"], valid["code"], valid["scopes"]) == (True, "VALID", ["Predict"]), valid
        assert verify(server, secret, scope="Search")["code"] == "INSUFFICIENT_SCOPE"
    personal = verify(server, world["token"])
    assert (personal["kind"], personal["code"]) == ("personal_token", "INSUFFICIENT_SCOPE")


def test_restarting_the_server_loses_nothing(start_server: StartServer) -> None:
    server = start_server()
    world = build_history(server)
    before = snapshot(server, world)
    assert_history_is_intact(server, world, before)
    assert_credentials_still_work(server, world)

    assert server.stop() == 0, server.log_tail()  # gunicorn exits 0 on SIGTERM
    server.start()

    after = snapshot(server, world)
    assert after == before
    assert_history_is_intact(server, world, after)
    assert_credentials_still_work(server, world)
    assert_verification_agrees(server, world)
    # Still writable after the restart, and the new event continues the same hash chain.
    changed = server.patch(f"/v2/keys/{world['key_id']}", {"description": "after restart"},
                           token=world["token"], headers={"If-Match": '"3"'})
    assert changed.status == 200, changed
    events = server.get(f"/v2/keys/{world['key_id']}/history", token=world["token"]).json["events"]
    assert events[:-1] == before[f"/v2/keys/{world['key_id']}/history"]["body"]["events"]
    # The audit chain is global: it runs on from the last event written before the restart,
    # through the checkpoint signed at start, to the new event; and it verifies.
    last_before = before[f"/v2/keys/{world['revoked_id']}/history"]["body"]["events"][-1]
    admin = world["admin"]["token"]
    trail = server.get(f"/v2/audit/events?cursor={encode_cursor(last_before['seq'] - 1)}",
                       token=admin).json["events"]
    assert trail[0] == last_before
    types = [e["type"] for e in trail[1:]]
    # The embedded scheduler may sign before the restart too (its first run comes at start), so
    # between the two writes there are checkpoint events only, at least the one signed at start.
    assert types[-1] == "ApiKey.DescriptionChanged", types
    assert "AuditLedger.CheckpointSigned" in types[:-1], types
    assert set(types[:-1]) <= {"AuditLedger.Opened", "AuditLedger.CheckpointSigned"}, types
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in pairwise(trail))
    assert trail[-1] == events[-1]
    assert server.get("/v2/audit/integrity", token=admin).json["ok"] is True


@pytest.mark.sqlite_only("reads the SQLite files of the data directory")
def test_events_are_in_sqlite_and_survive_a_kill(start_server: StartServer) -> None:
    server = start_server()
    events_file = server.data_dir / "events.sqlite"
    assert events_file.is_file() and events_file.stat().st_size > 0
    world = build_history(server)
    before = snapshot(server, world)
    # The last write is answered, then the server dies at once: no shutdown code runs.
    last = server.patch(f"/v2/keys/{world['key_id']}", {"description": "the last word"},
                        token=world["token"])
    assert last.status == 200, last
    server.kill()

    server.start()
    key_path = f"/v2/keys/{world['key_id']}"
    history_path = f"{key_path}/history"
    after = snapshot(server, world)
    assert after[key_path]["body"]["description"] == "the last word"
    assert after[key_path]["body"]["version"] == 4
    assert after[history_path]["body"]["events"][:-1] == before[history_path]["body"]["events"]
    assert after[history_path]["body"]["events"][-1]["type"] == "ApiKey.DescriptionChanged"
    unchanged = {p: a for p, a in after.items() if p not in (key_path, history_path, "/v2/apps/vision/keys")}
    assert unchanged == {p: a for p, a in before.items() if p in unchanged}
    assert_credentials_still_work(server, world)
    assert_verification_agrees(server, world)


def test_a_graceful_restart_keeps_last_used_at(start_server: StartServer) -> None:
    """last_used_at is kept outside the event log (flushed every minute); a graceful stop
    must not lose the uses noted since the last flush."""
    server = start_server()
    owner = server.create_account("owner", "owner@example.com", "Olga Owner")
    app = server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"])
    assert app.status == 201, app
    key = app.json["default_key"]
    assert verify(server, key["key"], scope="Predict")["code"] == "VALID"
    used = server.get(f"/v2/keys/{key['id']}", token=owner["token"]).json["last_used_at"]
    assert used is not None

    assert server.stop() == 0, server.log_tail()
    server.start()

    after = server.get(f"/v2/keys/{key['id']}", token=owner["token"]).json
    assert after["last_used_at"] == used, "the key's last use was lost by a graceful restart"


@pytest.mark.sqlite_only("removes the SQLite view store of the data directory")
def test_a_store_restored_from_its_log_alone_builds_its_views_in_two_processes(start_server: StartServer) -> None:
    """The views gone (a store restored from a backup of the event log alone): the first start builds
    them again, the audit trail and the webhooks view in a second process (any log is long enough
    here), and every answer, the audit chain included, is the one given before."""
    server = start_server(env={"KEYLEDGER_BULK_SECOND_PROCESS_FROM": "0"})
    world = build_history(server)
    before = snapshot(server, world)
    admin = world["admin"]["token"]
    trail = server.get("/v2/audit/events?limit=1000", token=admin).json["events"]
    assert server.stop() == 0, server.log_tail()
    for name in ("views.sqlite", "views.sqlite-wal", "views.sqlite-shm", "verification-index.snapshot"):
        (server.data_dir / name).unlink(missing_ok=True)

    server.start()
    assert "built in a second process" in server.log_path.read_text("utf-8", "replace"), server.log_tail()
    assert snapshot(server, world) == before
    assert server.get("/v2/audit/events?limit=1000", token=admin).json["events"][:len(trail)] == trail
    assert server.get("/v2/audit/integrity", token=admin).json["ok"] is True
    assert_credentials_still_work(server, world)
    assert not list(server.data_dir.glob("views.sqlite.side-*"))
