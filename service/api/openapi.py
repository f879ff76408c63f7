"""What the OpenAPI document says beyond the decorators, so that it is as strict as the server.

One apispec plugin, applied to every operation as it is documented:

* request bodies and query strings that fail validation answer 400 (the contract), never 422;
* every operation that takes a credential declares 401 and 403 with the error envelope
  (``/v2/token`` declares its own OAuth2 error shape instead);
* every operation that reads or writes a store declares 503;
* PATCH, DELETE and roll declare the optional ``If-Match`` header;
* every POST declares the optional ``Idempotency-Key`` header, 422 ``IDEMPOTENCY_KEY_REUSED``
  and the ``Idempotent-Replayed`` header of a replayed answer (``/v2/verify`` accepts the
  header and answers afresh: it changes nothing);
* an empty PATCH body is refused (``minProperties``).
"""

from __future__ import annotations

import re

from apispec import BasePlugin
from apispec.ext.marshmallow.common import resolve_schema_cls

from service.api.schemas import PatchSchema

# The document's own introduction: it must stand alone (it is read at /docs, without the repository).
DESCRIPTION = """\
Keyledger owns the life of an API platform's credentials. **API keys** (`ak_…`) belong to one app,
carry scopes (`Predict`, `Search`, `Models:Add`, … or `All`) and can be changed, rolled and revoked;
**personal tokens** (`pat_…`) are people's credentials for managing them; **legacy OAuth2 access
tokens** (`POST /v2/token`) keep working until the deprecation's sunset. Every change is an immutable
event recording who made it, when and from which request (`/v2/audit/…`).

**Authentication.** `Authorization: Key pat_…` (a personal token; the first admin's comes from
`keyledger accounts create`). Owners manage their own apps; auditors and admins read everything.

**Gateways** ask `POST /v2/verify` (a JSON verdict, always 200 for a well-formed request) or
`GET /v2/auth/check` (forward-auth: 200, or 401/403, for the caller's own `Authorization` header).
Neither takes a credential of its own: expose them only to your gateways.

**Errors** are JSON, `{"error": {"code", "message", "details"}, "request_id"}`, with a stable `code`:
`INVALID_REQUEST` (400, `details` names each field), `UNAUTHENTICATED` (401), `FORBIDDEN` (403),
`NOT_FOUND` (404), `CONFLICT` (409), `PRECONDITION_FAILED` (412, a stale `If-Match`),
`UNAVAILABLE` (503, retry after `Retry-After` seconds), among others. `X-Request-Id` is echoed in every
answer.

**Migrating from access tokens:** the guide is served at [/docs/migration](/docs/migration).
"""

ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
OAUTH_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}}}

DESCRIPTIONS = {
    "400": "Invalid request: `error.details` names each field.",
    "401": "No credential, or one that is unknown, malformed, revoked or expired.",
    "403": "Authenticated, but not allowed.",
    "503": "A store is unavailable; retry after `Retry-After` seconds.",
}

IF_MATCH = {
    "name": "If-Match", "in": "header", "required": False,
    "description": "The key's `version` (the `ETag`), quoted or bare: the change is made only if "
                   "it is still current (412 otherwise).",
    "schema": {"type": "string", "pattern": r'^(?:"[0-9]{1,9}"|[0-9]{1,9})$'},
}

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Makes the POST safe to retry: a retry with the same key and the same request "
                   "within 24 hours gets the first answer again (same status and body, "
                   "`Idempotent-Replayed: true`) and changes nothing; the same key with another "
                   "request is 422 `IDEMPOTENCY_KEY_REUSED`. Keys are per caller; use a new random "
                   "value (a UUID) for each new request. Answers that changed nothing (4xx) are "
                   "not recorded, 5xx never are.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[ -~]*[!-~][ -~]*$"},
}
IDEMPOTENCY_KEY_IGNORED = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Accepted and ignored: a verification (or an introspection) changes nothing, so a retry is answered "
                   "afresh (a replayed verdict could be stale).",
    "schema": {"type": "string"},
}
REPLAYED = {"Idempotent-Replayed": {
    "description": "`true` when this is the recorded answer to an earlier request with the same "
                   "`Idempotency-Key`.", "schema": {"type": "string", "enum": ["true"]}}}
KEY_REUSED = {"description": "`IDEMPOTENCY_KEY_REUSED`: the `Idempotency-Key` was used for another "
                             "request in the last 24 hours.", **ERROR}
ANSWERED_AFRESH = ("/v2/verify", "/v2/introspect")

UNSTORED = ("/healthz", "/v2/scopes", "/v2/verify", "/v2/auth/check", "/v2/introspect")  # no store behind them


def _error(status: str, shape: dict = ERROR) -> dict:
    return {"description": DESCRIPTIONS[status], **shape}


def _ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


APP_ID = {"app_id": "$response.body#/id"}
KEY_ID = {"key_id": "$response.body#/id"}
DEFAULT_KEY_ID = {"key_id": "$response.body#/default_key/id"}
# OpenAPI links: what a client (and schemathesis's stateful phase) does next with a new resource.
LINKS = {
    ("/v2/apps", "post", "201"): {
        "GetApp": (_ref("/v2/apps/{app_id}", "get"), APP_ID),
        "ListKeys": (_ref("/v2/apps/{app_id}/keys", "get"), APP_ID),
        "CreateKey": (_ref("/v2/apps/{app_id}/keys", "post"), APP_ID),
        "IssueLegacyCredentials": (_ref("/v2/apps/{app_id}/legacy-credentials", "post"), APP_ID),
        "GetDefaultKey": (_ref("/v2/keys/{key_id}", "get"), DEFAULT_KEY_ID),
        "RollDefaultKey": (_ref("/v2/keys/{key_id}/roll", "post"), DEFAULT_KEY_ID),
    },
    ("/v2/apps/{app_id}/keys", "post", "201"): {
        "GetKey": (_ref("/v2/keys/{key_id}", "get"), KEY_ID),
        "ChangeKey": (_ref("/v2/keys/{key_id}", "patch"), KEY_ID),
        "RevokeKey": (_ref("/v2/keys/{key_id}", "delete"), KEY_ID),
        "RollKey": (_ref("/v2/keys/{key_id}/roll", "post"), KEY_ID),
        "KeyHistory": (_ref("/v2/keys/{key_id}/history", "get"), KEY_ID),
    },
    ("/v2/keys/{key_id}/roll", "post", "200"): {
        "GetRolledKey": (_ref("/v2/keys/{key_id}", "get"), KEY_ID),
        "RevokeRolledKey": (_ref("/v2/keys/{key_id}", "delete"), KEY_ID),
    },
}


def _openapi_path(path: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", path)


class ContractPlugin(BasePlugin):
    def schema_helper(self, name: str, definition: dict, schema=None, **kwargs) -> dict | None:
        # What the marshmallow plugin cannot say: an empty PATCH body (a PatchSchema) is 400.
        if schema is not None and issubclass(resolve_schema_cls(schema), PatchSchema):
            return {"minProperties": 1}
        return None

    def operation_helper(self, path: str | None = None, operations: dict | None = None, **kwargs) -> None:
        for method, operation in (operations or {}).items():
            if not isinstance(operation, dict) or method == "parameters":
                continue
            responses = operation.setdefault("responses", {})
            for status in list(responses):  # flask-smorest writes some statuses as numbers
                responses.setdefault(str(status), responses.pop(status))
            for (linked_path, linked_method, status), links in LINKS.items():
                if path is not None and _openapi_path(path) == linked_path and method == linked_method:
                    responses[status]["links"] = {
                        name: {"operationRef": ref, "parameters": parameters}
                        for name, (ref, parameters) in links.items()}
            if "422" in responses:
                responses.pop("422")
                responses.setdefault("400", _error("400"))
            if path is not None and path.endswith("/v2/token"):
                for status in ("400", "401"):
                    responses[status] = _error(status, OAUTH_ERROR)
            elif operation.get("security"):
                for status in ("401", "403"):
                    responses.setdefault(status, _error(status))
            if path is not None and not path.endswith(UNSTORED):
                responses.setdefault("503", _error("503"))
            if method == "post" and path is not None:
                _idempotency(path, operation, responses)
            if method in ("patch", "delete") or (path or "").endswith("/roll"):
                if path is not None and "key_id" in path:
                    operation.setdefault("parameters", []).append(dict(IF_MATCH))


def _idempotency(path: str, operation: dict, responses: dict) -> None:
    """The Idempotency-Key every POST accepts (service.api.idempotency)."""
    if path.endswith(ANSWERED_AFRESH):
        operation.setdefault("parameters", []).append(dict(IDEMPOTENCY_KEY_IGNORED))
        return
    operation.setdefault("parameters", []).append(dict(IDEMPOTENCY_KEY))
    responses["422"] = dict(KEY_REUSED)
    responses.setdefault("400", _error("400"))
    responses.setdefault("409", {"description": "`CONFLICT`; also: the request with this `Idempotency-Key` "
                                                "was done, but its answer can no longer be read.", **ERROR})
    for status, response in responses.items():
        if status.startswith("2") and isinstance(response, dict):
            response.setdefault("headers", {}).update(REPLAYED)
