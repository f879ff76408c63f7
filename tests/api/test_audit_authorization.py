"""Who may read the audit trail: every audit endpoint × every caller, and an owner never sees
another owner's events — through any filter, export or cursor.

The world: ``owner`` owns ``vision`` (its default key and a read-only key, changed and
rolled); ``other_owner`` owns ``atlas`` (its default key, revoked). The admin signed a
checkpoint. Owners read their own apps' events and answers; auditors and admins everything;
API keys nothing (403); no credential, 401.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

CALLERS = ("admin", "auditor", "owner", "other_owner", "api_key", "anonymous")

# fmt: off
MATRIX = [
    # endpoint                                              admin auditor owner other_owner api_key anonymous
    ("/v2/audit/events",                                    200,  200,    200,  200,        403,    401),
    ("/v2/audit/events.jsonl",                              200,  200,    200,  200,        403,    401),
    ("/v2/audit/events.csv",                                200,  200,    200,  200,        403,    401),
    ("/v2/audit/integrity",                                 200,  200,    403,  403,        403,    401),
    ("/v2/audit/access?app_id=vision&scope=Predict",        200,  200,    200,  404,        403,    401),
    ("/v2/audit/public-key",                                200,  200,    200,  200,        403,    401),
]
# fmt: on

CASES = [pytest.param(path, caller, expected, id=f"{path} as {caller} -> {expected}")
         for path, *row in MATRIX for caller, expected in zip(CALLERS, row, strict=True)]
ERROR_CODES = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND"}


@pytest.fixture
def world(system, admin, auditor, owner, other_owner, anonymous, owner_app, read_only_key, api_key_caller):
    key_id = read_only_key["id"]
    assert owner.patch(f"/v2/keys/{key_id}", json={"scopes": ["Predict"]}).status_code == 200
    assert owner.post(f"/v2/keys/{key_id}/roll", json={"grace_seconds": 60}).status_code == 200
    atlas = other_owner.post("/v2/apps", json={"id": "atlas", "name": "Atlas"}).json
    assert other_owner.delete(f"/v2/keys/{atlas['default_key']['id']}").status_code == 204
    assert system.sign_checkpoint() is not None
    return SimpleNamespace(
        system=system, key_id=key_id, atlas_key_id=atlas["default_key"]["id"],
        callers={"admin": admin, "auditor": auditor, "owner": owner, "other_owner": other_owner,
                 "api_key": api_key_caller, "anonymous": anonymous})


def exported(response) -> list[dict]:
    if response.mimetype == "text/csv":
        lines = response.get_data(as_text=True).splitlines()
        header = lines[0].split(",")
        return [{"seq": int(line.split(",")[0]), "app_id": line.split(",")[header.index("app_id")]}
                for line in lines[1:]]
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


@pytest.mark.parametrize(("path", "caller_name", "expected"), CASES)
def test_audit_authorization(world, path, caller_name, expected):
    response = world.callers[caller_name].get(path)

    assert response.status_code == expected, response.get_data(as_text=True)
    if expected >= 400:
        assert response.mimetype == "application/json"
        assert response.json["error"]["code"] == ERROR_CODES[expected]
        return
    if path.startswith("/v2/audit/events"):
        events = response.json["events"] if path == "/v2/audit/events" else exported(response)
        apps = {e["app_id"] for e in events}
        if caller_name == "owner":
            assert apps == {"vision"}
        elif caller_name == "other_owner":
            assert apps == {"atlas"}
        else:
            assert {"vision", "atlas"} <= apps and len(events) == world.system.keys_app.last_position()


OWNER_QUERIES = [
    "", "?app_id=atlas", "?app_id=vision", "?key_id={atlas_key}", "?key_id={key}",
    "?actor=account:{other_owner}", "?actor=account:{owner}", "?actor=system", "?type=ApiKey.Revoked",
    "?type=App.Registered", "?type=AuditLedger.CheckpointSigned", "?since=2000-01-01T00:00:00Z",
    "?until=2100-01-01T00:00:00Z", "?limit=1",
]


def test_an_owner_never_sees_another_owner_s_events(world):
    owner, other = world.callers["owner"], world.callers["other_owner"]
    fill = {"atlas_key": world.atlas_key_id, "key": world.key_id, "other_owner": other.id, "owner": owner.id}
    for query in OWNER_QUERIES:
        query = query.format(**fill)
        for path in ("/v2/audit/events", "/v2/audit/events.jsonl", "/v2/audit/events.csv"):
            if "limit" in query and path != "/v2/audit/events":
                continue  # exports take the filters, not paging
            response = owner.get(path + query)
            assert response.status_code == 200, (path, query)
            events = response.json["events"] if path == "/v2/audit/events" else exported(response)
            assert {e["app_id"] for e in events} <= {"vision"}, (path, query)
    # Every page, followed by cursor from the start, and a cursor made from an auditor's page.
    seen, cursor = [], None
    while True:
        page = owner.get("/v2/audit/events?limit=1" + (f"&cursor={cursor}" if cursor else "")).json
        seen += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen and {e["app_id"] for e in seen} == {"vision"}
    auditor_page = world.callers["auditor"].get("/v2/audit/events?app_id=atlas&limit=1").json
    borrowed = owner.get(f"/v2/audit/events?cursor={auditor_page['next_cursor']}").json["events"]
    assert {e["app_id"] for e in borrowed} <= {"vision"}
    assert owner.get("/v2/audit/access?app_id=atlas&scope=Predict").status_code == 404
    assert owner.get(f"/v2/keys/{world.atlas_key_id}/history").status_code == 404
