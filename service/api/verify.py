"""Verification for gateways: ``POST /v2/verify`` and the forward-auth ``GET /v2/auth/check``.

This is the hot path, so both views validate by hand and write JSON directly (the
schemas in ``schemas.py`` document the same shapes in /openapi.json). No store access,
no per-request logging beyond the access log.
"""

from __future__ import annotations

import json
from functools import lru_cache
from uuid import UUID

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Api, Blueprint

from projections.timefmt import rfc3339_from_epoch
from projections.verification import (
    ACCESS_TOKEN,
    APP_MISMATCH,
    EXPIRED,
    INSUFFICIENT_SCOPE,
    NOT_FOUND,
    VALID,
)
from service.api import context
from service.api.errors import error_response
from service.api.legacy import EXPIRED_TOKEN, notice
from service.api.schemas import ErrorSchema, VerifyRequestSchema, VerifyResultSchema
from service.verification import REFUSALS

blp = Blueprint("verification", __name__, description="Verification for gateways (no credential of its own)")

_FIELDS = frozenset(("key", "scope", "app_id"))
_MAX = {"key": 1024, "scope": 100, "app_id": 100}


def register_schemas(api: Api) -> None:
    api.spec.components.schema("VerifyRequest", schema=VerifyRequestSchema)
    api.spec.components.schema("VerifyResult", schema=VerifyResultSchema)


@lru_cache(maxsize=4096)
def _scope_forms(scopes: frozenset) -> tuple[list[str], str]:
    ordered = sorted(scopes)
    return ordered, " ".join(ordered)


@lru_cache(maxsize=65_536)
def _key_id_text(key_id: bytes) -> str:
    return str(UUID(bytes=key_id))


def _invalid(problems: dict) -> Response:
    names = ", ".join(sorted(problems))
    return error_response("INVALID_REQUEST", f"Invalid request: check {names}.", problems, 400)


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, headers,
                    mimetype="application/json")


@blp.route("/v2/verify")
class Verify(MethodView):
    @blp.doc(
        requestBody={"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/VerifyRequest"}}}},
        responses={
            "200": {"description": "The verdict (also for refused credentials)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VerifyResult"}}}},
            "400": {"description": "Not a well-formed request",
                    "content": {"application/json": {"schema": ErrorSchema}}},
        },
    )
    def post(self):
        """May this credential perform this scope (on this app), now? Always 200 for a well-formed request."""
        if request.mimetype != "application/json":
            return _invalid({"body": ["Send a JSON object with 'Content-Type: application/json'."]})
        try:
            body = json.loads(request.get_data())
        except (ValueError, UnicodeDecodeError):
            return _invalid({"body": ["Not valid JSON."]})
        except RecursionError:
            return _invalid({"body": ["Nested too deeply."]})
        if not isinstance(body, dict):
            return _invalid({"body": ["Must be a JSON object."]})
        problems = {}
        for name in body.keys() - _FIELDS:
            problems[name] = ["Unknown field."]
        key = body.get("key")
        if not isinstance(key, str) or not key:
            problems["key"] = ["Required: the credential to check, as a string."]
        for name in ("key", "scope", "app_id"):
            value = body.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > _MAX[name]):
                problems[name] = [f"A string of at most {_MAX[name]} characters."]
        if problems:
            return _invalid(problems)
        code, kind, entry = context.system().verifier.verify(key, body.get("scope"), body.get("app_id"),
                                                             context.request_info)
        if entry is None:
            return _json({"valid": False, "code": code, "kind": kind, "key_id": None, "app_id": None,
                          "scopes": None, "expires_at": None})
        is_key = kind == "api_key"
        answer = {
            "valid": code == VALID, "code": code, "kind": kind,
            "key_id": entry.key_id if is_key else None, "app_id": entry.app_id,
            "scopes": _scope_forms(entry.scopes)[0] if is_key or kind == ACCESS_TOKEN else [],
            "expires_at": rfc3339_from_epoch(entry.expires_at),
        }
        if kind != ACCESS_TOKEN:
            return _json(answer)
        legacy = notice()
        answer["client_id"] = entry.client.client_id
        answer["deprecation"] = legacy.body
        if code == EXPIRED:
            answer["status"] = EXPIRED_TOKEN
        return _json(answer, headers=legacy.headers)


@blp.route("/v2/auth/check", methods=["GET"])
@blp.doc(
    parameters=[
        {"in": "query", "name": "scope", "schema": {"type": "string"},
         "description": "The scope the request needs (or the X-Required-Scope header)."},
        {"in": "query", "name": "app_id", "schema": {"type": "string"},
         "description": "The app the request is for (or the X-Required-App-Id header)."},
    ],
    responses={
        "200": {"description": "Allowed. Headers X-Keyledger-App-Id, X-Keyledger-Key-Id, X-Keyledger-Scopes."},
        "401": {"description": "No, malformed, unknown, revoked or expired credential",
                "content": {"application/json": {"schema": ErrorSchema}}},
        "403": {"description": "Valid credential without the scope (or for another app)",
                "content": {"application/json": {"schema": ErrorSchema}}},
    },
)
def auth_check():
    """Forward-auth for nginx auth_request, Traefik forwardAuth and the like: checks the caller's own Authorization header."""
    environ = request.environ  # read the WSGI environ directly: this view runs per gateway request
    scheme, _, credential = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() not in ("key", "bearer") or not credential:
        return error_response("UNAUTHENTICATED", "Send 'Authorization: Key <api key>'.", None, 401,
                              {"WWW-Authenticate": 'Key realm="keyledger"',
                               "X-Keyledger-Code": "UNAUTHENTICATED"})
    # The gateway's header wins over the query, which a gateway might copy from the client.
    scope = environ.get("HTTP_X_REQUIRED_SCOPE")
    app_id = environ.get("HTTP_X_REQUIRED_APP_ID")
    if environ.get("QUERY_STRING") and (scope is None or app_id is None):
        args = request.args
        scope = scope or args.get("scope")
        app_id = app_id or args.get("app_id")
    code, kind, entry = context.system().verifier.verify(credential, scope, app_id, context.request_info)
    if kind == ACCESS_TOKEN and entry is not None:
        return _legacy_auth_check(code, entry, scope)
    if code == VALID:
        return Response(b"", 200, [("X-Keyledger-App-Id", entry.app_id or ""),
                                   ("X-Keyledger-Key-Id", _key_id_text(entry.id)),
                                   ("X-Keyledger-Scopes", _scope_forms(entry.scopes)[1])])
    if code in (INSUFFICIENT_SCOPE, APP_MISMATCH):
        message = ("This credential may not perform this scope." if code == INSUFFICIENT_SCOPE
                   else "This key belongs to another app.")
        return error_response("FORBIDDEN", message, {"reason": code, "scope": scope}, 403,
                              {"X-Keyledger-Code": code})
    code = "UNAUTHENTICATED" if code == NOT_FOUND else code
    return error_response(code, REFUSALS[code], None, 401,
                          {"WWW-Authenticate": 'Key realm="keyledger"', "X-Keyledger-Code": code})


def _legacy_auth_check(code: str, entry, scope: str | None) -> Response:
    """Forward-auth for a legacy access token: its answers carry the deprecation headers, and an
    expired token's 401 carries the status 2017-era clients take as "fetch a new token"."""
    headers = dict(notice().headers)
    if code == VALID:
        headers.update({"X-Keyledger-App-Id": entry.app_id, "X-Keyledger-Key-Id": "",
                        "X-Keyledger-Client-Id": entry.client.client_id, "X-Keyledger-Scopes": "All",
                        "X-Keyledger-Credential": ACCESS_TOKEN})
        return Response(b"", 200, headers)
    headers["X-Keyledger-Code"] = code
    if code == APP_MISMATCH:
        return error_response("FORBIDDEN", "This access token belongs to another app.",
                              {"reason": code, "scope": scope}, 403, headers)
    headers["WWW-Authenticate"] = 'Bearer realm="keyledger", error="invalid_token"'
    response = error_response(code, REFUSALS[code], None, 401, headers)
    if code == EXPIRED:  # old clients look for status.details == "expired token", then refresh
        body = json.loads(response.get_data())
        body["status"] = EXPIRED_TOKEN
        response.set_data(json.dumps(body))
    return response
