"""Legacy OAuth2 until the sunset: client credentials, ``POST /v2/token``, usage, and the
deprecation notice every legacy answer carries.

``POST /v2/token`` speaks RFC 6749 §4.4 (client credentials) the way 2017-era clients do:
HTTP Basic ``client_id:client_secret`` (or both in the body), ``grant_type=client_credentials``
as a form or as JSON. Its errors are RFC 6749 JSON (``{"error": "invalid_client", ...}``) with
the ``status`` object those clients read, never the management API's envelope and never HTML.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import parse_qsl, unquote_plus

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from werkzeug.exceptions import RequestEntityTooLarge

from projections.timefmt import rfc3339
from service.api import context
from service.api.schemas import (
    ErrorSchema,
    LegacyCredentialsSchema,
    LegacyUsageSchema,
    OAuthErrorSchema,
    TokenRequestSchema,
    TokenSchema,
)
from service.domain.errors import Forbidden, InvalidClient, LegacyAccessEnded, Unavailable
from service.settings import Settings

blp = Blueprint("legacy", __name__, description="Legacy OAuth2 (until the sunset)")

TOKEN_SCOPE = "api_access_write api_access api_access_read"  # what 2017 tokens said they could do
OK = {"code": 10000, "description": "Ok"}
EXPIRED_TOKEN = {"code": 11001, "description": "Invalid authentication token", "details": "expired token"}
_STATUS = {  # the ``status`` object of each OAuth2 error, as 2017-era clients expect one
    "invalid_request": {"code": 11102, "description": "Invalid request"},
    "unsupported_grant_type": {"code": 11102, "description": "Invalid request"},
    "invalid_client": {"code": 11002, "description": "Invalid client credentials"},
    "unauthorized_client": {"code": 11007, "description": "Access tokens are no longer issued"},
    "temporarily_unavailable": {"code": 99009, "description": "Temporarily unavailable; retry shortly"},
}
_BODY_MAX = 8 * 1024  # a token request is a few dozen bytes


@dataclass(frozen=True)
class LegacyNotice:
    """What every legacy answer says about the sunset: headers (RFC 9745, RFC 8594, a Link
    to the migration guide) and the ``deprecation`` object."""

    deprecated_at: datetime
    sunset_at: datetime
    link: str

    @classmethod
    def of(cls, settings: Settings) -> LegacyNotice:
        return cls(settings.legacy_deprecated_at, settings.legacy_sunset_at, settings.migration_guide_url)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Deprecation": f"@{int(self.deprecated_at.timestamp())}",
            "Sunset": format_datetime(self.sunset_at, usegmt=True),
            "Link": f'<{self.link}>; rel="deprecation"; type="text/markdown"',
        }

    @property
    def body(self) -> dict[str, str]:
        return {"deprecated_at": rfc3339(self.deprecated_at), "sunset_at": rfc3339(self.sunset_at),
                "link": self.link}


def notice() -> LegacyNotice:
    system = context.system()
    cached = getattr(system, "_legacy_notice", None)
    if cached is None:
        cached = LegacyNotice.of(system.settings)
        system._legacy_notice = cached  # type: ignore[attr-defined]
    return cached


@blp.route("/v2/apps/<app_id>/legacy-credentials")
class LegacyCredentials(MethodView):
    @blp.response(201, LegacyCredentialsSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.alt_response(409, schema=ErrorSchema)
    @blp.alt_response(401, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, app_id):
        """Give an app OAuth2 client credentials (admin, before the sunset). The secret is in this response only."""
        system = context.system()
        client, secret = system.keys_app.issue_legacy_credentials(
            app_id, by=context.actor(), request=context.request_info())
        system.after_command()
        return {**client, "client_secret": secret}, 201, notice().headers


def _oauth_error(error: str, description: str, status: int = 400, headers: dict | None = None) -> Response:
    body = {"error": error, "error_description": description, "status": _STATUS[error],
            "request_id": context.request_id()}
    response = Response(json.dumps(body), status, headers, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


oauth_error = _oauth_error  # for the Idempotency-Key's refusal on /v2/token (service.api.idempotency)


def _invalid_client(description: str) -> Response:
    return _oauth_error("invalid_client", description, 401, {"WWW-Authenticate": 'Basic realm="keyledger"'})


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _token_parameters() -> dict[str, str]:
    """The request's parameters from a form or a JSON object; each at most once (RFC 6749 §3.2).
    The body is read up to a bound whatever its framing (Content-Length or chunked)."""
    try:
        data = request.stream.read(_BODY_MAX + 1)
    except RequestEntityTooLarge:
        data = b"x" * (_BODY_MAX + 1)
    if len(data) > _BODY_MAX:
        raise _Refused(_oauth_error("invalid_request", f"The body is larger than {_BODY_MAX} bytes."))
    if not data:
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(_oauth_error("invalid_request", "The body is not UTF-8.")) from None
    if request.mimetype == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise _Refused(_oauth_error("invalid_request", "The form is not valid (percent-encoded UTF-8).")) from None
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise _Refused(_oauth_error("invalid_request", "Give each parameter once."))
        return dict(pairs)
    if request.mimetype == "application/json":
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            raise _Refused(_oauth_error("invalid_request", "The body is not valid JSON.")) from None
        if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
            raise _Refused(_oauth_error("invalid_request", "The body must be a JSON object of strings."))
        return body
    raise _Refused(_oauth_error(
        "invalid_request", "Send grant_type=client_credentials as application/x-www-form-urlencoded or JSON."))


def _basic_credentials(header: str) -> tuple[str, str]:
    """``client_id, client_secret`` from an HTTP Basic header (each form-urlencoded, RFC 6749
    §2.3.1). Anything else is a failed client authentication: 401 ``invalid_client`` (§5.2)."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _Refused(_invalid_client("Send the client id and secret with HTTP Basic authentication."))
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _Refused(_invalid_client("The Basic credentials must be base64 of client_id:client_secret.")) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _Refused(_invalid_client("The Basic credentials must be base64 of client_id:client_secret."))
    return unquote_plus(client_id), unquote_plus(secret)


@blp.route("/v2/token", methods=["POST"])
@blp.doc(
    summary="Exchange OAuth2 client credentials for an access token (until the sunset)",
    requestBody={"required": False, "content": {
        "application/x-www-form-urlencoded": {"schema": TokenRequestSchema},
        "application/json": {"schema": TokenRequestSchema}}},
    responses={
        "200": {"description": "A new access token (no scopes: it may do everything its app may).",
                "content": {"application/json": {"schema": TokenSchema}}},
        "400": {"description": "invalid_request, unsupported_grant_type, or unauthorized_client after the sunset",
                "content": {"application/json": {"schema": OAuthErrorSchema}}},
        "401": {"description": "invalid_client: unknown client id or wrong secret",
                "content": {"application/json": {"schema": OAuthErrorSchema}}},
    },
    security=[{"clientCredentials": []}],
)
def token():
    """RFC 6749 §4.4 client-credentials grant with HTTP Basic (or client_id and client_secret in the body)."""
    system = context.system()
    try:
        parameters = _token_parameters()
        header = request.headers.get("Authorization")
        basic = _basic_credentials(header) if header else None
    except _Refused as refused:
        return refused.response
    grant_type = parameters.get("grant_type")
    if not grant_type:
        return _oauth_error("invalid_request", "grant_type is required: grant_type=client_credentials.")
    if grant_type != "client_credentials":
        return _oauth_error("unsupported_grant_type", "Only grant_type=client_credentials is supported.")
    in_body = "client_id" in parameters or "client_secret" in parameters
    if basic is not None and in_body:
        return _oauth_error("invalid_request", "Send the client credentials once: HTTP Basic or the body, not both.")
    client_id, secret = basic if basic is not None else (parameters.get("client_id"), parameters.get("client_secret"))
    if not system.keys_app.legacy_open():
        return _oauth_error("unauthorized_client", "Access tokens are no longer issued: the sunset has passed. "
                            "Use an API key instead ('Authorization: Key <api key>').", 400, notice().headers)
    if not client_id or not secret:
        return _invalid_client("Send the client id and secret with HTTP Basic authentication.")
    if system.store_unreachable():  # known down: say so at once rather than wait on the driver
        return _oauth_error("temporarily_unavailable", "The event store is unreachable right now; retry shortly.",
                            503, {"Retry-After": "1"})
    try:
        access_token, _expires_at, expires_in = system.keys_app.issue_access_token(
            client_id, secret, request=context.request_info())
    except InvalidClient:
        return _invalid_client("Unknown client or wrong client secret.")
    except LegacyAccessEnded as error:
        return _oauth_error("unauthorized_client", error.message, 400, notice().headers)
    except Unavailable as error:
        return _oauth_error("temporarily_unavailable", error.message, 503, {"Retry-After": "1"})
    # The token verifies in this process before the answer goes out (its index follows the log in
    # memory); the views catch up in the background, so a token costs one write, not two.
    system.follower.catch_up()
    body = {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
            "scope": TOKEN_SCOPE, "status": OK}
    response = Response(json.dumps(body), 200, notice().headers, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@blp.route("/v2/legacy/usage")
class LegacyUsage(MethodView):
    @blp.response(200, LegacyUsageSchema)
    @blp.alt_response(401, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self):
        """Who still uses access tokens: per app, its last use, uses, windows, and whether it uses API keys (admin, auditor)."""
        actor = context.actor()
        if not actor.reads_everything:
            raise Forbidden("Only admins and auditors can read legacy usage.")
        system = context.system()
        system.last_used.flush()  # this process's counts too, and every event up to now
        system.after_command()
        return {"sunset_at": system.settings.legacy_sunset_at, "apps": system.legacy_usage.apps()}
