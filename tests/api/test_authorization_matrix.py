"""Who may do what: one test per (endpoint × caller), from the table below.

The world: ``owner`` owns the app ``vision`` (with its default key and a read-only key);
``other_owner`` owns the app ``atlas``. Key endpoints act on vision's read-only key. The
``api_key`` caller sends that read-only key itself as ``Authorization: Key ak_…``: API keys
cannot manage anything, so every management endpoint answers it 403.

Refusals carry the contract's error envelope and code (401 UNAUTHENTICATED, 403 FORBIDDEN,
404 NOT_FOUND: another owner's app or key does not exist for them) and write nothing.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from tests.conftest import Caller

CALLERS = ("admin", "auditor", "owner", "other_owner", "api_key", "anonymous")

# fmt: off
MATRIX = [
    # endpoint                              admin auditor owner other_owner api_key anonymous
    ("POST /v2/accounts",                   201,  403,    403,  403,        403,    401),
    ("GET /v2/me",                          200,  200,    200,  200,        403,    401),
    ("POST /v2/apps",                       201,  403,    201,  201,        403,    401),
    ("GET /v2/apps",                        200,  200,    200,  200,        403,    401),
    ("GET /v2/apps/vision",                 200,  200,    200,  404,        403,    401),
    ("POST /v2/apps/vision/keys",           201,  403,    201,  404,        403,    401),
    ("GET /v2/apps/vision/keys",            200,  200,    200,  404,        403,    401),
    ("GET /v2/keys/{key}",                  200,  200,    200,  404,        403,    401),
    ("PATCH /v2/keys/{key}",                200,  403,    200,  404,        403,    401),
    ("DELETE /v2/keys/{key}",               204,  403,    204,  404,        403,    401),
    ("POST /v2/keys/{key}/roll",            200,  403,    200,  404,        403,    401),
    ("GET /v2/keys/{key}/history",          200,  200,    200,  404,        403,    401),
    ("GET /v2/scopes",                      200,  200,    200,  200,        200,    200),
]
# fmt: on

# Which apps each caller sees in GET /v2/apps (and must not see).
VISIBLE_APPS = {
    "admin": {"vision", "atlas"},
    "auditor": {"vision", "atlas"},
    "owner": {"vision"},
    "other_owner": {"atlas"},
}
ALL_APPS = {"vision", "atlas"}

BODIES = {
    "POST /v2/accounts": {"email": "new.person@example.com", "name": "New Person", "role": "owner"},
    "POST /v2/apps": {"name": "Matrix App"},
    "POST /v2/apps/vision/keys": {"description": "from the matrix", "scopes": ["Predict"]},
    "PATCH /v2/keys/{key}": {"description": "changed by the matrix"},
    "POST /v2/keys/{key}/roll": {"grace_seconds": 60},
}

ERROR_CODES = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND"}

CASES = [
    pytest.param(endpoint, caller, expected,
                 id=f"{endpoint.replace('{key}', 'KEY')} as {caller} -> {expected}")
    for endpoint, *row in MATRIX
    for caller, expected in zip(CALLERS, row, strict=True)
]


def test_the_matrix_covers_every_caller_on_every_endpoint() -> None:
    assert all(len(row) == 1 + len(CALLERS) for row in MATRIX)
    assert len(CASES) == len(MATRIX) * len(CALLERS)


@pytest.fixture
def world(system, client, admin, auditor, owner, other_owner, anonymous, owner_app, read_only_key,
          api_key_caller):
    atlas = other_owner.post("/v2/apps", json={"id": "atlas", "name": "Atlas"})
    assert atlas.status_code == 201
    return SimpleNamespace(
        system=system,
        callers={"admin": admin, "auditor": auditor, "owner": owner, "other_owner": other_owner,
                 "api_key": api_key_caller, "anonymous": anonymous},
        key=read_only_key,
        default_key=owner_app["default_key"],
    )


def call(caller: Caller, endpoint: str, key_id: str, app_id: str = "vision"):
    body = BODIES.get(endpoint)
    method, path = endpoint.split(" ", 1)
    url = path.format(key=key_id).replace("/v2/apps/vision", f"/v2/apps/{app_id}")
    if method == "GET":
        return caller.get(url)
    if method == "DELETE":
        return caller.delete(url)
    if method == "PATCH":
        return caller.patch(url, json=body)
    return caller.post(url, json=body)


@pytest.mark.parametrize(("endpoint", "caller_name", "expected"), CASES)
def test_authorization(world, endpoint: str, caller_name: str, expected: int) -> None:
    caller = world.callers[caller_name]
    key_id = world.key["id"]
    events_before = world.system.keys_app.last_position()
    key_before = world.callers["admin"].get(f"/v2/keys/{key_id}").json

    response = call(caller, endpoint, key_id)

    assert response.status_code == expected, response.get_data(as_text=True)
    if expected >= 400:
        body = response.get_json()
        assert response.mimetype == "application/json"
        assert set(body) == {"error", "request_id"}
        assert body["error"]["code"] == ERROR_CODES[expected], body
        assert body["error"]["message"]
        world.system.follower.catch_up()
        assert world.system.keys_app.last_position() == events_before, "a refused request wrote events"
        assert world.callers["admin"].get(f"/v2/keys/{key_id}").json == key_before
        if expected == 404:
            assert_same_as_for_a_missing_thing(caller, endpoint, key_id, body)
        return
    check_success(world, endpoint, caller_name, response)


def assert_same_as_for_a_missing_thing(caller: Caller, endpoint: str, key_id: str, body: dict) -> None:
    """No existence leak: another owner's app or key answers exactly like one that does not exist."""
    ghost_key = str(uuid.uuid4())
    ghost = call(caller, endpoint, ghost_key, app_id="ghost-app")
    assert ghost.status_code == 404
    ghost_error = ghost.get_json()["error"]
    mine = body["error"]
    assert mine["code"] == ghost_error["code"]
    assert mine["details"] == ghost_error["details"]
    assert mine["message"] == (ghost_error["message"].replace("ghost-app", "vision")
                               .replace(ghost_key, key_id))


def check_success(world, endpoint: str, caller_name: str, response) -> None:
    caller = world.callers[caller_name]
    key_id = world.key["id"]
    body = response.get_json(silent=True)
    if endpoint == "POST /v2/accounts":
        assert body["email"] == "new.person@example.com" and body["role"] == "owner"
        assert body["token"].startswith("pat_")
    elif endpoint == "GET /v2/me":
        assert body["id"] == caller.id and body["role"] == caller.role
        assert "token" not in body
    elif endpoint == "POST /v2/apps":
        assert body["owner_id"] == caller.id
        assert body["default_key"]["scopes"] == ["All"]
        assert body["default_key"]["key"].startswith("ak_")
    elif endpoint == "GET /v2/apps":
        ids = {app["id"] for app in body["apps"]}
        visible = VISIBLE_APPS[caller_name]
        assert visible <= ids, f"{caller_name} should see {visible}, got {ids}"
        assert not (ALL_APPS - visible) & ids, f"{caller_name} sees apps that are not theirs: {ids}"
    elif endpoint == "GET /v2/apps/vision":
        assert body["id"] == "vision" and body["owner_id"] == world.callers["owner"].id
    elif endpoint == "POST /v2/apps/vision/keys":
        assert body["app_id"] == "vision" and body["scopes"] == ["Predict"]
        assert body["key"].startswith("ak_")
    elif endpoint == "GET /v2/apps/vision/keys":
        listed = {k["id"] for k in body["keys"]}
        assert listed == {key_id, world.default_key["id"]}
        assert all("key" not in k for k in body["keys"])
    elif endpoint == "GET /v2/keys/{key}":
        assert body["id"] == key_id and "key" not in body
        assert response.headers["ETag"] == f'"{body["version"]}"'
    elif endpoint == "PATCH /v2/keys/{key}":
        assert body["description"] == "changed by the matrix" and body["version"] == 2
    elif endpoint == "DELETE /v2/keys/{key}":
        assert response.get_data() == b""
        assert world.callers["admin"].get(f"/v2/keys/{key_id}").json["status"] == "revoked"
    elif endpoint == "POST /v2/keys/{key}/roll":
        assert body["id"] == key_id and body["key"] != world.key["key"]
    elif endpoint == "GET /v2/keys/{key}/history":
        assert [e["type"] for e in body["events"]] == ["ApiKey.Issued"]
        assert all(e["key_id"] == key_id for e in body["events"])
    elif endpoint == "GET /v2/scopes":
        assert "Models:Add" in [s["name"] for s in body["scopes"]]
    else:  # pragma: no cover - a new row needs its success check
        raise AssertionError(f"no success check for {endpoint}")
