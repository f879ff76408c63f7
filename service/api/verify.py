"""Verification for gateways: ``POST /v2/verify`` and the forward-auth ``GET /v2/auth/check``.

This is the hot path, so both answers validate by hand and write JSON directly (the
schemas in ``schemas.py`` document the same shapes in /openapi.json). No store access,
no per-request logging beyond the access log.

``Verdicts`` computes each answer as (status, headers, body) from plain values, without
Flask: ``service.api.gateway`` calls it straight from WSGI for the common requests, and the
Flask views below (documented in /openapi.json, and serving whatever the gateway passes on)
wrap the very same answers in a Response. One code path, two ways in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import parse_qsl
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
from service.api.client_facts import request_facts
from service.api.jsonbody import BodyError, has_lone_surrogate, load_json
from service.api.legacy import EXPIRED_TOKEN, LegacyNotice
from service.api.schemas import VERIFY_MAX, ErrorSchema, VerifyRequestSchema, VerifyResultSchema
from service.credentials import redact
from service.domain.actors import RequestInfo
from service.domain.restrictions import (
    APP_NOT_ALLOWED,
    FACT_FIELDS,
    IP_NOT_ALLOWED,
    NO_FACTS,
    ORIGIN_NOT_ALLOWED,
    Facts,
    RequestFacts,
)
from service.ratelimit import RATE_LIMITED
from service.verification import REFUSALS, Limited, Verifier

blp = Blueprint("verification", __name__, description="Verification for gateways (no credential of its own)")

_FIELDS = frozenset(("key", "scope", "app_id", *FACT_FIELDS))
_PLAIN = frozenset(("key", "scope", "app_id"))
_RESTRICTED = (ORIGIN_NOT_ALLOWED, IP_NOT_ALLOWED, APP_NOT_ALLOWED)
MAX_BODY = 64 * 1024  # as the app's MAX_CONTENT_LENGTH

Headers = list[tuple[str, str]]
Answer = tuple[int, Headers, bytes]
_JSON = ("Content-Type", "application/json")
_KEY_REALM = ("WWW-Authenticate", 'Key realm="keyledger"')


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


def envelope(code: str, message: str, details: dict | None, request_id: str | None) -> bytes:
    """The contract's error body, byte for byte as ``errors.error_response`` writes it."""
    body = {"error": {"code": code, "message": message, "details": details or {}}, "request_id": request_id}
    return redact(json.dumps(body, separators=(",", ":")) + "\n").encode()


def _json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def query_values(query_string: str) -> dict[str, str]:
    """The first value of each query parameter, decoded as Werkzeug decodes ``request.args``."""
    values: dict[str, str] = {}
    if query_string.isascii() and "%" not in query_string and "+" not in query_string:
        # Nothing to decode (a gateway's "scope=Predict"): parse_qsl's split, without its cost.
        for part in query_string.split("&"):
            if part:
                name, _, value = part.partition("=")
                values.setdefault(name, value)
        return values
    for name, value in parse_qsl(query_string, keep_blank_values=True, encoding="latin-1"):
        name = name.encode("latin-1").decode("utf-8", "replace")
        values.setdefault(name, value.encode("latin-1").decode("utf-8", "replace"))
    return values


class Verdicts:
    """The answers of /v2/verify and /v2/auth/check, from plain values (no Flask)."""

    __slots__ = ("_verify", "_notice", "_count")

    def __init__(self, verifier: Verifier, notice: LegacyNotice, count: Callable[[str], None]) -> None:
        self._verify = verifier.verify
        self._notice = notice
        self._count = count  # counts each verdict by code (metrics)

    # -- POST /v2/verify -----------------------------------------------------------------

    def verify(self, mimetype: str, data: bytes, request_id: str | None,
               request: Callable[[], RequestInfo]) -> Answer:
        if mimetype != "application/json":
            return self._invalid({"body": ["Send a JSON object with 'Content-Type: application/json'."]},
                                 request_id)
        try:
            body = load_json(data)
        except BodyError as error:
            return self._invalid({"body": [str(error)]}, request_id)
        if not isinstance(body, dict):
            return self._invalid({"body": ["Must be a JSON object."]}, request_id)
        problems = {}
        for name in body.keys() - _FIELDS:
            problems[name] = ["Unknown field."]
        key = body.get("key")
        if not isinstance(key, str) or not key:
            problems["key"] = ["Required: the credential to check, as a string."]
        for name, value in body.items():  # the fields given (a gateway's two or three)
            if name not in VERIFY_MAX:
                continue
            if value is not None and (not isinstance(value, str) or len(value) > VERIFY_MAX[name]):
                problems[name] = [f"A string of at most {VERIFY_MAX[name]} characters."]
            elif isinstance(value, str) and has_lone_surrogate(value):
                problems[name] = ["Holds an unpaired surrogate (\\ud800-\\udfff); not valid text."]
        if problems:
            return self._invalid(problems, request_id)
        facts = NO_FACTS
        if len(body) > 1 and not body.keys() <= _PLAIN:  # some facts of the request were given
            facts = RequestFacts(**{name: body.get(name) for name in FACT_FIELDS})
        code, kind, entry = self._verify(key, body.get("scope"), body.get("app_id"), request, facts)
        self._count(code)
        if entry is None:
            return 200, [_JSON], _json({"valid": False, "code": code, "kind": kind, "key_id": None,
                                        "app_id": None, "scopes": None, "expires_at": None})
        is_key = kind == "api_key"
        answer = {
            "valid": code == VALID, "code": code, "kind": kind,
            "key_id": entry.key_id if is_key else None, "app_id": entry.app_id,
            "scopes": _scope_forms(entry.scopes)[0] if is_key or kind == ACCESS_TOKEN else [],
            "expires_at": rfc3339_from_epoch(entry.expires_at),
        }
        if type(entry) is Limited:  # a key with rate limits: the decision's headers, and when refused
            decision = entry.decision  # the seconds to wait
            if not decision.allowed:
                answer["retry_after"] = decision.retry_after
            return 200, [_JSON, *decision.headers()], _json(answer)
        if kind != ACCESS_TOKEN:
            return 200, [_JSON], _json(answer)
        legacy = self._notice
        answer["client_id"] = entry.client.client_id
        answer["deprecation"] = legacy.body
        if code == EXPIRED:
            answer["status"] = EXPIRED_TOKEN
        return 200, [*legacy.headers.items(), _JSON], _json(answer)

    @staticmethod
    def _invalid(problems: dict, request_id: str | None) -> Answer:
        names = ", ".join(sorted(problems))
        return 400, [_JSON], envelope("INVALID_REQUEST", f"Invalid request: check {names}.", problems, request_id)

    # -- GET /v2/auth/check ---------------------------------------------------------------

    def auth_check(self, authorization: str, scope: str | None, app_id: str | None, query_string: str,
                   request_id: str | None, request: Callable[[], RequestInfo], facts: Facts = NO_FACTS,
                   limited_status: str | None = None) -> Answer:
        """``scope`` and ``app_id`` from the gateway's headers win over the query's; ``facts``
        (a function reading the forwarded request) are read only for a restricted key. A rate-limited
        request is answered 429, or 403 when the gateway asks so (``X-Keyledger-Limited-Status:
        403``: nginx's auth_request turns any status but 2xx, 401 and 403 into a 500)."""
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() not in ("key", "bearer") or not credential:
            return 401, [_JSON, _KEY_REALM, ("X-Keyledger-Code", "UNAUTHENTICATED")], envelope(
                "UNAUTHENTICATED", "Send 'Authorization: Key <api key>'.", None, request_id)
        if query_string and (scope is None or app_id is None):
            args = query_values(query_string)
            scope = scope or args.get("scope")
            app_id = app_id or args.get("app_id")
        code, kind, entry = self._verify(credential, scope, app_id, request, facts)
        self._count(code)
        if kind == ACCESS_TOKEN and entry is not None:
            return self._legacy_auth_check(code, entry, scope, request_id)
        if code == VALID:
            headers = [("X-Keyledger-App-Id", entry.app_id or ""), ("X-Keyledger-Key-Id", _key_id_text(entry.id)),
                       ("X-Keyledger-Scopes", _scope_forms(entry.scopes)[1])]
            if type(entry) is Limited:
                headers += entry.decision.headers()
            return 200, headers, b""
        if code == RATE_LIMITED:
            return self._rate_limited(entry, limited_status, request_id)
        if code in (INSUFFICIENT_SCOPE, APP_MISMATCH):
            message = ("This credential may not perform this scope." if code == INSUFFICIENT_SCOPE
                       else "This key belongs to another app.")
            return 403, [_JSON, ("X-Keyledger-Code", code)], envelope(
                "FORBIDDEN", message, {"reason": code, "scope": scope}, request_id)
        if code in _RESTRICTED:  # a client restriction: this request does not come from where it may
            return 403, [_JSON, ("X-Keyledger-Code", code)], envelope(
                code, REFUSALS[code], {"reason": code}, request_id)
        code = "UNAUTHENTICATED" if code == NOT_FOUND else code
        return 401, [_JSON, _KEY_REALM, ("X-Keyledger-Code", code)], envelope(
            code, REFUSALS[code], None, request_id)

    @staticmethod
    def _rate_limited(entry: Limited, limited_status: str | None, request_id: str | None) -> Answer:
        decision = entry.decision
        status = 403 if limited_status == "403" else 429
        return status, [_JSON, ("X-Keyledger-Code", RATE_LIMITED), *decision.headers()], envelope(
            RATE_LIMITED, REFUSALS[RATE_LIMITED], {"retry_after": decision.retry_after, "limit": decision.name},
            request_id)

    def _legacy_auth_check(self, code: str, entry, scope: str | None, request_id: str | None) -> Answer:
        """Forward-auth for a legacy access token: its answers carry the deprecation headers, and an
        expired token's 401 carries the status 2017-era clients take as "fetch a new token"."""
        headers = list(self._notice.headers.items())
        if code == VALID:
            headers += [("X-Keyledger-App-Id", entry.app_id), ("X-Keyledger-Key-Id", ""),
                        ("X-Keyledger-Client-Id", entry.client.client_id), ("X-Keyledger-Scopes", "All"),
                        ("X-Keyledger-Credential", ACCESS_TOKEN)]
            return 200, headers, b""
        headers += [_JSON, ("X-Keyledger-Code", code)]
        if code == APP_MISMATCH:
            return 403, headers, envelope("FORBIDDEN", "This access token belongs to another app.",
                                          {"reason": code, "scope": scope}, request_id)
        headers.append(("WWW-Authenticate", 'Bearer realm="keyledger", error="invalid_token"'))
        body = envelope(code, REFUSALS[code], None, request_id)
        if code == EXPIRED:  # old clients look for status.details == "expired token", then refresh
            parsed = json.loads(body)
            parsed["status"] = EXPIRED_TOKEN
            body = json.dumps(parsed).encode()
        return 401, headers, body


def _response(answer: Answer) -> Response:
    status, headers, body = answer
    response = Response(body, status, headers)
    if not body:  # an empty answer has no type (never text/html)
        del response.headers["Content-Type"]
    return response


def _verdicts() -> Verdicts:
    return context.current_app_extension("keyledger_verdicts")


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
        return _response(_verdicts().verify(request.mimetype, request.get_data(), context.request_id(),
                                            context.request_info))


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
        "403": {"description": "Valid credential without the scope (or for another app: FORBIDDEN); refused by "
                               "its client restriction: ORIGIN_NOT_ALLOWED, IP_NOT_ALLOWED, APP_NOT_ALLOWED (code "
                               "also in X-Keyledger-Code); or, when the gateway sent X-Keyledger-Limited-Status: 403 "
                               "(nginx), over a rate limit (X-Keyledger-Code: RATE_LIMITED, with the 429's headers)",
                "content": {"application/json": {"schema": ErrorSchema}}},
        "429": {"description": "Over a rate limit of the key or its app (code RATE_LIMITED). Headers: Retry-After "
                               "(seconds), RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers)",
                "content": {"application/json": {"schema": ErrorSchema}}},
    },
)
def auth_check():
    """Forward-auth for nginx auth_request, Traefik forwardAuth and the like: checks the caller's own Authorization header."""
    environ = request.environ
    proxies = context.current_app_extension("keyledger_trusted_proxies")
    return _response(_verdicts().auth_check(
        environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_X_REQUIRED_SCOPE"),
        environ.get("HTTP_X_REQUIRED_APP_ID"), environ.get("QUERY_STRING", ""), context.request_id(),
        context.request_info, lambda: request_facts(environ, proxies),
        environ.get("HTTP_X_KEYLEDGER_LIMITED_STATUS")))
