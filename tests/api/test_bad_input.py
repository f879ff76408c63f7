"""Bad input, table-driven: every refused request gets the contract's status, its stable
``code`` and the JSON error envelope (never HTML, never a 500), and writes nothing.

Each case runs against a fresh world (see ``world``): owner's app ``vision`` with its
default key, a read-only key ``ro`` and a revoked key ``doomed``; other_owner's app
``atlas`` with its default key. Before the request a snapshot is taken (event-store
position, every key as an admin reads it, both apps' key lists and histories, the app list);
after the request the snapshot must be identical. ``POST /v2/verify`` answers a refused
credential with a verdict (200), so those cases have their own table at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from service import credentials
from service.domain.accounts import Account
from service.domain.apps import App

NO_BODY = object()


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # formatted with the world's ids: {ro}, {default}, {doomed}, {atlas_key}, {random}...
    status: int
    code: str
    json: Any = NO_BODY
    data: bytes | str | None = None
    content_type: str | None = None
    headers: dict = field(default_factory=dict)
    # The Authorization header: a caller's name ("owner", "other_owner", "admin", "anonymous")
    # or a function of the world returning the raw header value.
    auth: str | Callable[[SimpleNamespace], str | None] = "owner"
    setup: Callable[[SimpleNamespace], None] | None = None
    check: Callable[[dict, SimpleNamespace], None] | None = None
    # Other (status, code) answers the contract leaves room for, when it does not pin one down.
    or_: tuple[tuple[int, str], ...] = ()


# -- checks on the error body ----------------------------------------------------------------

def details_name(*names: str) -> Callable[[dict, SimpleNamespace], None]:
    def check(body: dict, world: SimpleNamespace) -> None:
        details = body["error"]["details"]
        for name in names:
            assert name in details, f"details should name {name!r}: {details}"
    return check


def lists_the_catalogue(body: dict, world: SimpleNamespace) -> None:
    valid = body["error"]["details"]["valid_scopes"]
    assert "Models:Add" in valid and "Predict" in valid and "Workflows:Delete" in valid
    catalogue = [s["name"] for s in world.anonymous.get("/v2/scopes").json["scopes"]]
    assert set(catalogue) <= set(valid) | {"All"}


# -- credentials -----------------------------------------------------------------------------

def key_header(secret: str) -> Callable[[SimpleNamespace], str]:
    return lambda world: f"Key {secret}"


def with_wrong_checksum(secret: str) -> str:
    last = secret[-1]
    return secret[:-1] + ("A" if last != "A" else "B")


def stale_if_match_setup(world: SimpleNamespace) -> None:
    response = world.owner.patch(f"/v2/keys/{world.ids['ro']}", json={"description": "now at v2"})
    assert response.status_code == 200 and response.json["version"] == 2


LONG = "x" * 201
PAST = "2001-01-01T00:00:00Z"

CASES = [
    # -- bodies that are not a JSON object -----------------------------------------------------
    Case("body-text-plain", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         data='{"description": "d", "scopes": ["Predict"]}', content_type="text/plain"),
    Case("body-invalid-json", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         data='{"description": "d", "scopes": [', content_type="application/json"),
    Case("body-json-array", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json=[{"description": "d", "scopes": ["Predict"]}]),
    Case("body-json-string", "POST", "/v2/apps", 400, "INVALID_REQUEST", json="vision"),
    Case("body-json-null", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         data="null", content_type="application/json"),
    Case("patch-body-text-plain", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         data="description=x", content_type="text/plain"),
    Case("accounts-body-form-encoded", "POST", "/v2/accounts", 400, "INVALID_REQUEST", auth="admin",
         data="email=a%40example.com&name=A&role=owner",
         content_type="application/x-www-form-urlencoded"),
    Case("body-too-large", "POST", "/v2/apps/vision/keys", 413, "PAYLOAD_TOO_LARGE",
         data='{"description": "' + "x" * 70_000 + '", "scopes": ["Predict"]}',
         content_type="application/json"),
    # -- unknown fields and wrong types ----------------------------------------------------------
    Case("create-key-unknown-field", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": "d", "scopes": ["Predict"], "colour": "red"},
         check=details_name("colour")),
    Case("patch-unknown-field", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"status": "active"}, check=details_name("status")),
    Case("patch-empty-body", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST", json={},
         check=details_name("body")),
    Case("create-key-scopes-a-string", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": "d", "scopes": "Predict"}, check=details_name("scopes")),
    Case("create-key-scope-not-a-string", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": "d", "scopes": [7]}, check=details_name("scopes")),
    Case("create-key-description-a-number", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": 42, "scopes": ["Predict"]}, check=details_name("description")),
    Case("create-key-description-missing", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"scopes": ["Predict"]}, check=details_name("description")),
    Case("create-key-two-fields-wrong", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": 42, "scopes": "Predict"}, check=details_name("description", "scopes")),
    Case("patch-scopes-a-string", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"scopes": "Predict"}, check=details_name("scopes")),
    Case("patch-description-null", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"description": None}, check=details_name("description")),
    Case("roll-grace-seconds-a-string", "POST", "/v2/keys/{ro}/roll", 400, "INVALID_REQUEST",
         json={"grace_seconds": "3600"}, check=details_name("grace_seconds")),
    Case("roll-grace-seconds-a-float", "POST", "/v2/keys/{ro}/roll", 400, "INVALID_REQUEST",
         json={"grace_seconds": 1.5}, check=details_name("grace_seconds")),
    Case("roll-grace-seconds-a-bool", "POST", "/v2/keys/{ro}/roll", 400, "INVALID_REQUEST",
         json={"grace_seconds": True}, check=details_name("grace_seconds")),
    # -- scopes ----------------------------------------------------------------------------------
    Case("create-key-empty-scopes", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": "d", "scopes": []}, check=details_name("scopes")),
    Case("patch-empty-scopes", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"scopes": []}, check=details_name("scopes")),
    Case("create-key-unknown-scope", "POST", "/v2/apps/vision/keys", 400, "SCOPE_UNKNOWN",
         json={"description": "d", "scopes": ["Predict", "Models:Explode"]}, check=lists_the_catalogue),
    Case("create-key-scope-wrong-case", "POST", "/v2/apps/vision/keys", 400, "SCOPE_UNKNOWN",
         json={"description": "d", "scopes": ["predict"]}, check=lists_the_catalogue),
    Case("patch-unknown-scope", "PATCH", "/v2/keys/{ro}", 400, "SCOPE_UNKNOWN",
         json={"scopes": ["Models:Explode"]}, check=lists_the_catalogue),
    # -- expiry, description, times ----------------------------------------------------------------
    Case("create-key-expires-in-the-past", "POST", "/v2/apps/vision/keys", 400, "INVALID_EXPIRY",
         json={"description": "d", "scopes": ["Predict"], "expires_at": PAST}),
    Case("create-key-expires-not-a-time", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": "d", "scopes": ["Predict"], "expires_at": "next tuesday"},
         check=details_name("expires_at")),
    Case("create-key-expires-a-number", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": "d", "scopes": ["Predict"], "expires_at": 1700000000},
         check=details_name("expires_at")),
    Case("create-key-description-201-chars", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         json={"description": LONG, "scopes": ["Predict"]}, check=details_name("description")),
    Case("patch-description-201-chars", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"description": LONG}, check=details_name("description")),
    Case("get-key-as-of-not-a-time", "GET", "/v2/keys/{ro}?as_of=yesterday", 400, "INVALID_REQUEST",
         check=details_name("as_of")),
    Case("get-key-as-of-before-creation", "GET", "/v2/keys/{ro}?as_of=2001-01-01T00:00:00Z",
         404, "NOT_FOUND"),
    # -- unknown ids and other people's things (no existence leak) -----------------------------------
    Case("get-key-random-uuid", "GET", "/v2/keys/{random}", 404, "NOT_FOUND"),
    Case("get-key-not-a-uuid", "GET", "/v2/keys/not-a-uuid", 404, "NOT_FOUND"),
    Case("get-key-an-apps-aggregate-id", "GET", "/v2/keys/{vision_uuid}", 404, "NOT_FOUND"),
    Case("get-key-an-accounts-aggregate-id", "GET", "/v2/keys/{owner_uuid}", 404, "NOT_FOUND"),
    Case("patch-key-random-uuid", "PATCH", "/v2/keys/{random}", 404, "NOT_FOUND",
         json={"description": "x"}),
    Case("delete-key-not-a-uuid", "DELETE", "/v2/keys/not-a-uuid", 404, "NOT_FOUND"),
    Case("roll-key-random-uuid", "POST", "/v2/keys/{random}/roll", 404, "NOT_FOUND", json={}),
    Case("history-random-uuid", "GET", "/v2/keys/{random}/history", 404, "NOT_FOUND"),
    Case("get-other-owners-key", "GET", "/v2/keys/{atlas_key}", 404, "NOT_FOUND"),
    Case("patch-other-owners-key", "PATCH", "/v2/keys/{atlas_key}", 404, "NOT_FOUND",
         json={"description": "mine now"}),
    Case("delete-other-owners-key", "DELETE", "/v2/keys/{atlas_key}", 404, "NOT_FOUND"),
    Case("roll-other-owners-key", "POST", "/v2/keys/{atlas_key}/roll", 404, "NOT_FOUND", json={}),
    Case("history-other-owners-key", "GET", "/v2/keys/{atlas_key}/history", 404, "NOT_FOUND"),
    Case("get-other-owners-app", "GET", "/v2/apps/atlas", 404, "NOT_FOUND"),
    Case("list-other-owners-app-keys", "GET", "/v2/apps/atlas/keys", 404, "NOT_FOUND"),
    Case("create-key-in-other-owners-app", "POST", "/v2/apps/atlas/keys", 404, "NOT_FOUND",
         json={"description": "d", "scopes": ["Predict"]}),
    Case("create-key-in-unknown-app", "POST", "/v2/apps/no-such-app/keys", 404, "NOT_FOUND",
         json={"description": "d", "scopes": ["Predict"]}),
    Case("get-app-not-a-slug", "GET", "/v2/apps/Vision", 404, "NOT_FOUND"),
    Case("unknown-path", "GET", "/v2/nothing-here", 404, "NOT_FOUND"),
    # -- If-Match --------------------------------------------------------------------------------
    Case("patch-stale-if-match", "PATCH", "/v2/keys/{ro}", 412, "PRECONDITION_FAILED",
         json={"description": "lost update"}, headers={"If-Match": '"1"'}, setup=stale_if_match_setup),
    Case("patch-future-if-match", "PATCH", "/v2/keys/{ro}", 412, "PRECONDITION_FAILED",
         json={"description": "x"}, headers={"If-Match": "7"}),
    Case("delete-stale-if-match", "DELETE", "/v2/keys/{ro}", 412, "PRECONDITION_FAILED",
         headers={"If-Match": '"1"'}, setup=stale_if_match_setup),
    Case("roll-stale-if-match", "POST", "/v2/keys/{ro}/roll", 412, "PRECONDITION_FAILED",
         json={}, headers={"If-Match": '"1"'}, setup=stale_if_match_setup),
    Case("patch-if-match-garbage", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"description": "x"}, headers={"If-Match": "banana"}),
    Case("patch-if-match-negative", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"description": "x"}, headers={"If-Match": '"-1"'}),
    # -- revoked keys cannot change ----------------------------------------------------------------
    Case("patch-revoked-key-description", "PATCH", "/v2/keys/{doomed}", 409, "CONFLICT",
         json={"description": "too late"}),
    Case("patch-revoked-key-scopes", "PATCH", "/v2/keys/{doomed}", 409, "CONFLICT",
         json={"scopes": ["Search"]}),
    Case("roll-revoked-key", "POST", "/v2/keys/{doomed}/roll", 409, "CONFLICT", json={}),
    # -- roll grace period -------------------------------------------------------------------------
    Case("roll-grace-seconds-negative", "POST", "/v2/keys/{ro}/roll", 400, "INVALID_REQUEST",
         json={"grace_seconds": -1}, check=details_name("grace_seconds")),
    Case("roll-grace-seconds-too-long", "POST", "/v2/keys/{ro}/roll", 400, "INVALID_REQUEST",
         json={"grace_seconds": 604801}, check=details_name("grace_seconds")),
    # -- credentials -------------------------------------------------------------------------------
    Case("no-credential", "GET", "/v2/apps", 401, "UNAUTHENTICATED", auth="anonymous"),
    Case("no-credential-on-a-write", "POST", "/v2/apps/vision/keys", 401, "UNAUTHENTICATED",
         auth="anonymous", json={"description": "d", "scopes": ["Predict"]}),
    Case("key-scheme-without-credential", "GET", "/v2/apps", 401, "UNAUTHENTICATED",
         auth=lambda w: "Key "),
    Case("unknown-api-key", "GET", "/v2/apps", 401, "UNAUTHENTICATED",
         auth=lambda w: f"Key {w.unknown_key}"),
    Case("unknown-personal-token", "GET", "/v2/apps", 401, "UNAUTHENTICATED",
         auth=lambda w: f"Key {w.unknown_token}"),
    Case("unknown-opaque-token", "GET", "/v2/apps", 401, "UNAUTHENTICATED",
         auth=lambda w: "Key 0123456789abcdef0123456789abcdef"),
    Case("malformed-api-key-wrong-checksum", "GET", "/v2/apps", 401, "MALFORMED",
         auth=lambda w: f"Key {with_wrong_checksum(w.secrets['ro'])}"),
    Case("malformed-api-key-truncated", "GET", "/v2/apps", 401, "MALFORMED",
         auth=lambda w: f"Key {w.secrets['ro'][:-3]}"),
    Case("malformed-api-key-too-long", "GET", "/v2/apps", 401, "MALFORMED",
         auth=lambda w: f"Key {w.secrets['ro']}x"),
    Case("malformed-api-key-prefix-only", "GET", "/v2/apps", 401, "MALFORMED",
         auth=lambda w: "Key ak_"),
    Case("malformed-personal-token-wrong-checksum", "GET", "/v2/me", 401, "MALFORMED",
         auth=lambda w: f"Key {with_wrong_checksum(w.owner.token)}"),
    Case("malformed-personal-token-on-a-write", "POST", "/v2/apps/vision/keys", 401, "MALFORMED",
         auth=lambda w: f"Key {w.owner.token[:-1]}", json={"description": "d", "scopes": ["Predict"]}),
    Case("revoked-api-key", "GET", "/v2/apps", 401, "REVOKED",
         auth=lambda w: f"Key {w.secrets['doomed']}"),
    Case("revoked-api-key-on-a-write", "POST", "/v2/apps/vision/keys", 401, "REVOKED",
         auth=lambda w: f"Key {w.secrets['doomed']}", json={"description": "d", "scopes": ["Predict"]}),
    Case("bearer-scheme-with-personal-token", "GET", "/v2/apps", 401, "UNAUTHENTICATED",
         auth=lambda w: f"Bearer {w.owner.token}"),
    Case("bearer-scheme-unknown-legacy-token", "GET", "/v2/apps", 401, "UNAUTHENTICATED",
         auth=lambda w: "Bearer 0123456789abcdef"),
    Case("basic-scheme", "GET", "/v2/apps", 401, "UNAUTHENTICATED",
         auth=lambda w: "Basic dmlzaW9uOnNlY3JldA=="),
    # -- apps ------------------------------------------------------------------------------------
    Case("create-app-id-taken-by-self", "POST", "/v2/apps", 409, "CONFLICT",
         json={"id": "vision", "name": "Vision again"}),
    Case("create-app-id-taken-by-other-owner", "POST", "/v2/apps", 409, "CONFLICT",
         auth="other_owner", json={"id": "vision", "name": "Mine"}),
    Case("create-app-id-upper-case", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "Vision", "name": "V"}, check=details_name("id")),
    Case("create-app-id-with-spaces", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "my app", "name": "My app"}, check=details_name("id")),
    Case("create-app-id-trailing-hyphen", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "vision-", "name": "V"}, check=details_name("id")),
    Case("create-app-id-too-long", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "a" * 64, "name": "V"}, check=details_name("id")),
    Case("create-app-name-missing", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "nameless"}, check=details_name("name")),
    Case("create-app-name-blank", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "blank", "name": "   "}, check=details_name("name")),
    Case("create-app-unknown-field", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "extra", "name": "Extra", "plan": "gold"}, check=details_name("plan")),
    # -- accounts --------------------------------------------------------------------------------
    Case("create-account-bad-role", "POST", "/v2/accounts", 400, "INVALID_REQUEST", auth="admin",
         json={"email": "new@example.com", "name": "New", "role": "superuser"},
         check=details_name("role")),
    Case("create-account-bad-email", "POST", "/v2/accounts", 400, "INVALID_REQUEST", auth="admin",
         json={"email": "not-an-email", "name": "New", "role": "owner"}, check=details_name("email")),
    Case("create-account-missing-fields", "POST", "/v2/accounts", 400, "INVALID_REQUEST", auth="admin",
         json={"email": "new@example.com"}, check=details_name("name", "role")),
    Case("create-account-duplicate-email", "POST", "/v2/accounts", 409, "CONFLICT", auth="admin",
         json={"email": "owner@example.com", "name": "Owner again", "role": "owner"}),
    Case("create-account-duplicate-email-other-case", "POST", "/v2/accounts", 409, "CONFLICT",
         auth="admin", json={"email": "Owner@Example.COM", "name": "Owner again", "role": "auditor"}),
    Case("create-app-for-an-owner-id-not-a-uuid", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         auth="admin", json={"name": "For nobody", "owner_id": "not-a-uuid"},
         check=details_name("owner_id")),
    Case("create-app-for-an-unknown-owner-id", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         auth="admin", json={"name": "For nobody", "owner_id": "00000000-0000-0000-0000-000000000000"},
         check=details_name("owner_id")),
    Case("create-app-for-another-owner-as-owner", "POST", "/v2/apps", 403, "FORBIDDEN",
         json={"name": "Gift", "owner_id": "{other_owner_id}"}),
    # -- methods ---------------------------------------------------------------------------------
    Case("method-not-allowed", "PUT", "/v2/keys/{ro}", 405, "METHOD_NOT_ALLOWED",
         json={"description": "x"}),
    # -- inputs that parse but cannot be stored or shown: still a 400, never a 500 ----------------
    Case("create-key-expiry-beyond-year-9999-in-utc", "POST", "/v2/apps/vision/keys", 400,
         "INVALID_REQUEST", json={"description": "d", "scopes": ["Predict"],
                                  "expires_at": "9999-12-31T23:59:59-23:59"},
         check=details_name("expires_at"), or_=((400, "INVALID_EXPIRY"),)),
    Case("create-key-description-lone-surrogate", "POST", "/v2/apps/vision/keys", 400,
         "INVALID_REQUEST", json={"description": "bad \ud800 text", "scopes": ["Predict"]},
         check=details_name("description")),
    Case("patch-description-lone-surrogate", "PATCH", "/v2/keys/{ro}", 400, "INVALID_REQUEST",
         json={"description": "\udfff"}, check=details_name("description")),
    Case("create-app-name-lone-surrogate", "POST", "/v2/apps", 400, "INVALID_REQUEST",
         json={"id": "surrogate", "name": "\ud800"}, check=details_name("name")),
    Case("create-account-name-lone-surrogate", "POST", "/v2/accounts", 400, "INVALID_REQUEST",
         auth="admin", json={"email": "s@example.com", "name": "\ud800", "role": "owner"},
         check=details_name("name")),
    Case("body-deeply-nested-unclosed", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         data="[" * 50_000, content_type="application/json"),
    Case("body-deeply-nested-valid-json", "POST", "/v2/apps/vision/keys", 400, "INVALID_REQUEST",
         data='{"description": ' + "[" * 3_000 + "]" * 3_000 + ', "scopes": ["Predict"]}',
         content_type="application/json"),
    Case("patch-if-match-5000-digits", "PATCH", "/v2/keys/{ro}", 412, "PRECONDITION_FAILED",
         json={"description": "x"}, headers={"If-Match": "9" * 5_000}, or_=((400, "INVALID_REQUEST"),)),
    # -- verification endpoints (no credential of their own) ---------------------------------------
    Case("verify-body-text-plain", "POST", "/v2/verify", 400, "INVALID_REQUEST", auth="anonymous",
         data="ak_x", content_type="text/plain"),
    Case("verify-body-json-array", "POST", "/v2/verify", 400, "INVALID_REQUEST", auth="anonymous",
         json=["ak_x"]),
    Case("verify-unknown-field", "POST", "/v2/verify", 400, "INVALID_REQUEST", auth="anonymous",
         json={"key": "ak_x", "colour": "red"}, check=details_name("colour")),
    Case("verify-key-not-a-string", "POST", "/v2/verify", 400, "INVALID_REQUEST", auth="anonymous",
         json={"key": 12345}, check=details_name("key")),
    Case("verify-key-missing", "POST", "/v2/verify", 400, "INVALID_REQUEST", auth="anonymous",
         json={"scope": "Predict"}, check=details_name("key")),
    Case("verify-body-deeply-nested", "POST", "/v2/verify", 400, "INVALID_REQUEST", auth="anonymous",
         data="[" * 50_000, content_type="application/json"),
    Case("auth-check-no-credential", "GET", "/v2/auth/check?scope=Predict", 401, "UNAUTHENTICATED",
         auth="anonymous"),
    Case("auth-check-revoked-api-key", "GET", "/v2/auth/check?scope=Predict", 401, "REVOKED",
         auth=lambda w: f"Key {w.secrets['doomed']}"),
    Case("auth-check-malformed-api-key", "GET", "/v2/auth/check?scope=Predict", 401, "MALFORMED",
         auth=lambda w: f"Key {with_wrong_checksum(w.secrets['ro'])}"),
    Case("auth-check-unknown-api-key", "GET", "/v2/auth/check?scope=Predict", 401, "UNAUTHENTICATED",
         auth=lambda w: f"Key {w.unknown_key}"),
    Case("auth-check-insufficient-scope", "GET", "/v2/auth/check?scope=Models:Train", 403, "FORBIDDEN",
         auth=lambda w: f"Key {w.secrets['ro']}"),
]


# -- the world every case runs in --------------------------------------------------------------

@pytest.fixture
def world(system, client, admin, owner, other_owner, anonymous, owner_app, read_only_key):
    # Projections are caught up synchronously (after each command and in ``snapshot``); the
    # background poller is stopped so that an event that breaks a projection is reported by the
    # request that caused it, not by a thread logging tracebacks while pytest formats a failure
    # (on Python 3.11 that concurrent use of ``ast`` can crash pytest with a SystemError).
    system.follower.stop()
    doomed = owner.post("/v2/apps/vision/keys", json={"description": "doomed", "scopes": ["Predict"]})
    assert doomed.status_code == 201
    assert owner.delete(f"/v2/keys/{doomed.json['id']}").status_code == 204
    atlas = other_owner.post("/v2/apps", json={"id": "atlas", "name": "Atlas"})
    assert atlas.status_code == 201
    ids = {
        "ro": read_only_key["id"],
        "default": owner_app["default_key"]["id"],
        "doomed": doomed.json["id"],
        "atlas_key": atlas.json["default_key"]["id"],
        "random": str(uuid.uuid4()),
        "vision_uuid": str(App.create_id("vision")),
        "owner_uuid": str(Account.create_id("owner@example.com")),
        "other_owner_id": other_owner.id,
    }
    return SimpleNamespace(
        system=system, client=client, admin=admin, owner=owner, other_owner=other_owner,
        anonymous=anonymous, ids=ids,
        secrets={"ro": read_only_key["key"], "default": owner_app["default_key"]["key"],
                 "doomed": doomed.json["key"], "atlas": atlas.json["default_key"]["key"]},
        unknown_key=credentials.generate(credentials.API_KEY_PREFIX),
        unknown_token=credentials.generate(credentials.PERSONAL_TOKEN_PREFIX),
    )


def snapshot(world: SimpleNamespace) -> dict:
    """Everything a refused request must leave as it was, read by an admin."""
    world.system.follower.catch_up()  # a stray write would reach the views before we look
    admin = world.admin
    keys = {}
    for name in ("ro", "default", "doomed", "atlas_key"):
        response = admin.get(f"/v2/keys/{world.ids[name]}")
        assert response.status_code == 200
        keys[name] = (response.json, response.headers.get("ETag"))
    return {
        "events": world.system.keys_app.last_position(),
        "keys": keys,
        "vision_keys": admin.get("/v2/apps/vision/keys").json,
        "atlas_keys": admin.get("/v2/apps/atlas/keys").json,
        "apps": admin.get("/v2/apps").json,
        "histories": {name: admin.get(f"/v2/keys/{world.ids[name]}/history").json
                      for name in ("ro", "doomed", "atlas_key")},
    }


def authorization(case: Case, world: SimpleNamespace) -> str | None:
    if callable(case.auth):
        return case.auth(world)
    caller = getattr(world, case.auth)
    return f"Key {caller.token}" if caller.token else None


def send(case: Case, world: SimpleNamespace):
    headers = dict(case.headers)
    auth = authorization(case, world)
    if auth is not None:
        headers["Authorization"] = auth
    kwargs: dict[str, Any] = {"headers": headers}
    if case.json is not NO_BODY:
        kwargs["json"] = format_ids(case.json, world.ids)
    if case.data is not None:
        kwargs["data"] = case.data
        kwargs["content_type"] = case.content_type
    return world.client.open(case.path.format(**world.ids), method=case.method, **kwargs)


def format_ids(value: Any, ids: dict) -> Any:
    if isinstance(value, dict):
        return {k: format_ids(v, ids) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return value.format(**ids)
    return value


def assert_error_envelope(response, status: int, code: str,
                          alternatives: tuple[tuple[int, str], ...] = ()) -> dict:
    assert response.status_code != 500, response.get_data(as_text=True)
    assert response.mimetype == "application/json", (
        f"expected a JSON error, got {response.mimetype}: {response.get_data(as_text=True)[:300]}")
    body = response.get_json()
    assert isinstance(body, dict)
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip()
    assert isinstance(body["error"]["details"], dict)
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert "<html" not in response.get_data(as_text=True).lower()
    answer = (response.status_code, body["error"]["code"])
    if alternatives:
        assert answer in ((status, code), *alternatives), body
    else:
        assert answer == (status, code), body
    return body


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_refused_with_the_contracts_error_and_writes_nothing(case: Case, world) -> None:
    if case.setup:
        case.setup(world)
    before = snapshot(world)

    response = send(case, world)

    body = assert_error_envelope(response, case.status, case.code, case.or_)
    if case.check:
        case.check(body, world)
    after = snapshot(world)
    assert after["events"] == before["events"], "a refused request appended events to the store"
    assert after == before, "a refused request changed what can be read"


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# -- POST /v2/verify: a refused credential is a verdict (200), not an error ---------------------------

ANY_KIND = object()  # the contract does not say which kind an unrecognised credential reports

VERDICTS = [
    ("revoked-api-key", lambda w: w.secrets["doomed"], "REVOKED", "api_key"),
    ("wrong-checksum", lambda w: with_wrong_checksum(w.secrets["ro"]), "MALFORMED", ANY_KIND),
    ("truncated", lambda w: w.secrets["ro"][:-3], "MALFORMED", ANY_KIND),
    ("unknown-api-key", lambda w: w.unknown_key, "NOT_FOUND", ANY_KIND),
    ("unknown-legacy-token", lambda w: "0123456789abcdef", "NOT_FOUND", ANY_KIND),
]


@pytest.mark.parametrize(("secret", "code", "kind"),
                         [pytest.param(s, c, k, id=i) for i, s, c, k in VERDICTS])
def test_verify_answers_refused_credentials_with_a_verdict_and_writes_nothing(
        world, secret, code, kind) -> None:
    before = snapshot(world)
    response = world.anonymous.post("/v2/verify", json={"key": secret(world), "scope": "Predict"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.json["valid"] is False
    assert response.json["code"] == code
    if kind is ANY_KIND:
        assert response.json["kind"] in ("api_key", "access_token", "personal_token", None)
    else:
        assert response.json["kind"] == kind
    assert response.json["key_id"] in (None, world.ids["doomed"])
    assert snapshot(world) == before


def test_an_unrepresentable_expiry_does_not_break_later_requests(world) -> None:
    """One owner's odd (but well-formed) expiry must not stall the projections for everyone."""
    world.owner.post("/v2/apps/vision/keys", json={
        "description": "odd", "scopes": ["Predict"], "expires_at": "9999-12-31T23:59:59-23:59"})
    later = world.other_owner.post("/v2/apps/atlas/keys", json={"description": "fine", "scopes": ["Search"]})
    assert later.status_code == 201, later.get_data(as_text=True)
    listed = [k["id"] for k in world.other_owner.get("/v2/apps/atlas/keys").json["keys"]]
    assert later.json["id"] in listed
    verdict = world.anonymous.post("/v2/verify", json={"key": later.json["key"], "scope": "Search"})
    assert verdict.json["code"] == "VALID"
