"""``POST /v2/introspect``: OAuth 2.0 Token Introspection (RFC 7662) for resource servers.

A resource server (Kong's introspection plugin, Apache ``mod_auth_openidc``, authlib's or
oauthlib's resource-server helpers) posts a form ``token=…`` (and optionally ``token_type_hint``,
which is ignored: the token's digest finds it whatever its kind) and learns whether the token is
active, what it may do and for whom. The verdict comes from the same in-memory verification index
and the same rules as forward-auth (``Verifier.introspect``): no store access on the way, apart
from the key's creation time (``iat``), read once per key and process from the directory view and
kept in memory.

The caller authenticates with the personal token of an account with the ``admin`` or
``introspector`` role, sent in any of the forms OAuth clients use:

- ``Authorization: Key pat_…`` (as everywhere in this API);
- ``Authorization: Bearer pat_…`` (RFC 6750, as in RFC 7662's own example);
- HTTP Basic, the account's id as the user name and the personal token as the password
  (``client_secret_basic``: what authlib's and oauthlib's clients send by default).

Answers (``Cache-Control: no-store`` on each):

- 200 ``{"active": true, "scope": "Predict Search", "client_id", "exp"?, "iat"?, "sub",
  "token_type", "app_id"}`` for a live API key or legacy access token; exactly
  ``{"active": false}`` for anything else (unknown, revoked, expired, malformed, a personal token,
  a legacy token after the sunset, a key whose client restriction needs facts of a request);
- 400 ``INVALID_REQUEST`` (the contract's envelope) for a body that is not a form or has no
  ``token`` (or more than one);
- 401 ``UNAUTHENTICATED`` (or ``MALFORMED``, ``REVOKED``, ``EXPIRED``) with
  ``WWW-Authenticate: Bearer realm="keyledger"`` (RFC 6750 §3; ``error="invalid_token"`` when a
  credential was sent and refused) — RFC 7662 §2.1 points at RFC 6750's 401 for this;
- 403 ``FORBIDDEN`` with ``WWW-Authenticate: Bearer realm="keyledger", error="insufficient_scope"``
  for a valid credential whose account may not introspect (RFC 6750 §3.1's status for it).

Like ``service.api.verify``, the answers are computed from plain values: ``service.api.gateway``
calls ``Introspection.answer`` straight from WSGI, and the Flask view below (documented in
/openapi.json, serving whatever the gateway passes on) wraps the very same answer.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import parse_qs
from uuid import UUID

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Api, Blueprint

from projections.directory import Directory
from projections.verification import ACCESS_TOKEN, VALID, KeyRecord, TokenEntry
from service.api import context
from service.api.schemas import ErrorSchema
from service.api.verify import Answer, _key_id_text, envelope
from service.authentication import Authenticator
from service.domain.actors import Actor, RequestInfo
from service.domain.errors import KeyledgerError
from service.verification import Verifier

blp = Blueprint("introspection", __name__, description="Token introspection (RFC 7662) for resource servers")

PATH = "/v2/introspect"
FORM = "application/x-www-form-urlencoded"
_INACTIVE = b'{"active":false}'
_JSON = ("Content-Type", "application/json")
_NO_STORE = ("Cache-Control", "no-store")
_CHALLENGE = 'Bearer realm="keyledger"'
_MAY_INTROSPECT = ("admin", "introspector")
_MAX_TOKEN = 1024  # characters; a longer "token" is not one of ours: inactive, never digested


class IssuedAt:
    """When each key was created (``iat``), read from the directory view once per key and kept
    (a key's creation time never changes). A key the view cannot tell now gets no ``iat``."""

    __slots__ = ("_directory", "_known")

    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._known: dict[bytes, int] = {}

    def of(self, key_id: bytes) -> int | None:
        known = self._known.get(key_id)
        if known is not None:
            return known
        try:
            created = self._directory.key_created_at(str(UUID(bytes=key_id)))
        except Exception:  # noqa: BLE001 - the store is busy or down: answer without iat
            return None
        if created is None:  # not in the view yet (just issued by another process)
            return None
        if len(self._known) >= 200_000:
            self._known.clear()
        value = self._known[key_id] = int(created.timestamp())
        return value


class Introspection:
    """The answers of ``POST /v2/introspect``, from plain values (no Flask).

    Two memories keep it near forward-auth's cost: the keyed digest of each ``Authorization`` value
    that authenticated once (so a resource server's repeated header costs a dictionary look-up,
    not an HMAC — the account is still looked up in the index every time, so a replaced token or a
    changed role counts at once), and the answer body of each API key's index record (a record is
    immutable: a change of scopes, expiry or secret makes a new one)."""

    __slots__ = ("_introspect", "_authenticator", "_issued_at", "_token_ttl", "_callers", "_answers")

    def __init__(self, verifier: Verifier, authenticator: Authenticator, issued_at: IssuedAt,
                 token_ttl: timedelta) -> None:
        self._introspect = verifier.introspect
        self._authenticator = authenticator
        self._issued_at = issued_at
        self._token_ttl = token_ttl.total_seconds()
        # Authorization -> (digest, Basic user name, the account id it must name as bytes)
        self._callers: dict[str, tuple[bytes, str | None, bytes | None]] = {}
        self._answers: dict[bytes, bytes] = {}  # a key's index record -> its active answer

    def answer(self, authorization: str, mimetype: str, data: bytes, request_id: str | None,
               request: Callable[[], RequestInfo]) -> Answer:
        refusal = self._caller_refused(authorization, request_id)
        if refusal is not None:
            return refusal
        if mimetype != FORM:
            return _invalid({"body": [f"Send the form as 'Content-Type: {FORM}' (RFC 7662)."]}, request_id)
        form = _form(data)
        if form is None:
            return _invalid({"body": ["Not a URL-encoded form of UTF-8 text."]}, request_id)
        tokens = [token for token in form.get("token", ()) if token]
        if len(form.get("token", ())) > 1:
            return _invalid({"token": ["Given more than once."]}, request_id)
        if not tokens:
            return _invalid({"token": ["Required: the token to introspect."]}, request_id)
        if len(form.get("token_type_hint", ())) > 1:
            return _invalid({"token_type_hint": ["Given more than once."]}, request_id)
        return self.verdict(tokens[0], request)

    def verdict(self, token: str, request: Callable[[], RequestInfo] | None = None) -> Answer:
        """The 200 answer for one token: active with its facts, or exactly ``{"active": false}``."""
        if len(token) > _MAX_TOKEN:
            return 200, [_JSON, _NO_STORE], _INACTIVE
        code, entry = self._introspect(token, request)
        if code != VALID or entry is None:
            return 200, [_JSON, _NO_STORE], _INACTIVE
        record = type(entry) is KeyRecord
        if record and (known := self._answers.get(entry)) is not None:
            return 200, [_JSON, _NO_STORE], known
        ends = [t for t in (entry.expires_at, entry.ends_at) if t is not None]
        exp = int(min(ends)) if ends else None
        if entry.kind == ACCESS_TOKEN:
            client_id = entry.client.client_id
            token_type = "Bearer"
            iat = None if entry.expires_at is None else int(entry.expires_at - self._token_ttl)
        else:
            client_id = _key_id_text(entry.id)
            token_type = "Key"
            iat = self._issued_at.of(entry.id)
        body: dict = {"active": True, "scope": " ".join(sorted(entry.scopes)), "client_id": client_id}
        if exp is not None:
            body["exp"] = exp
        if iat is not None:
            body["iat"] = iat
        body.update(sub=entry.app_id, token_type=token_type, app_id=entry.app_id)
        answer = json.dumps(body, separators=(",", ":")).encode()
        if record and iat is not None:
            if len(self._answers) >= 100_000:
                self._answers.clear()
            self._answers[entry] = answer
        return 200, [_JSON, _NO_STORE], answer

    def _caller_refused(self, authorization: str, request_id: str | None) -> Answer | None:
        """None when the caller may introspect; else its 401 or 403."""
        known = self._callers.get(authorization)
        if known is not None:  # this header authenticated before: its digest, looked up afresh
            digest, account_id, named = known
            authenticator = self._authenticator
            code, entry = authenticator.index.check(digest, None, None, authenticator.clock().timestamp())
            if (code == VALID and type(entry) is TokenEntry and entry.role in _MAY_INTROSPECT
                    and (named is None or entry.id == named)):
                return None  # the common case, without building an Actor
            try:
                actor = self._authenticator.actor_of_digest(digest)
            except KeyledgerError as error:
                return _unauthenticated(error.code, error.message, request_id, sent=True)
            return self._role_refused(actor, account_id, request_id)
        scheme, _, credential = authorization.strip().partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        account_id = None
        if scheme == "basic" and credential:
            try:
                account_id, _, credential = base64.b64decode(credential, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, ValueError):
                credential = ""
        elif scheme not in ("key", "bearer"):
            credential = ""
        if not credential:
            return _unauthenticated("UNAUTHENTICATED", "Authenticate with the personal token of an admin or "
                                    "introspector account: 'Authorization: Bearer pat_…' (or Key, or HTTP Basic "
                                    "with the account's id and the token).", request_id, sent=bool(authorization))
        try:
            actor = self._authenticator.actor("Key " + credential)
        except KeyledgerError as error:
            return _unauthenticated(error.code, error.message, request_id, sent=True)
        if len(self._callers) >= 10_000:
            self._callers.clear()
        self._callers[authorization] = (self._authenticator.digester.digest(credential), account_id,
                                        _account_bytes(account_id))
        return self._role_refused(actor, account_id, request_id)

    @staticmethod
    def _role_refused(actor: Actor, account_id: str | None, request_id: str | None) -> Answer | None:
        if account_id is not None and not _same_account(actor, account_id):
            return _unauthenticated("UNAUTHENTICATED", "The user name is not the id of the token's account.",
                                    request_id, sent=True)
        if not actor.may_introspect:
            return 403, [_JSON, _NO_STORE, ("WWW-Authenticate", _CHALLENGE + ', error="insufficient_scope"')], envelope(
                "FORBIDDEN", "Only admin and introspector accounts may introspect tokens.", None, request_id)
        return None


def _form(data: bytes) -> dict[str, list[str]] | None:
    """The form's values by name (None if it is not a form of UTF-8 text); a body with nothing to
    decode (the common "token=ak_…") is split without ``parse_qs``'s cost."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "%" in text or "+" in text:
        try:
            return parse_qs(text, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return None
    form: dict[str, list[str]] = {}
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            form.setdefault(name, []).append(value)
    return form


def _account_bytes(account_id: str | None) -> bytes | None:
    if account_id is None:
        return None
    try:
        return UUID(account_id).bytes
    except ValueError:
        return b""  # names no account: refused by the full check every time


def _same_account(actor: Actor, account_id: str) -> bool:
    try:
        return actor.kind == "account" and UUID(account_id) == UUID(actor.id)
    except ValueError:
        return False


def _unauthenticated(code: str, message: str, request_id: str | None, *, sent: bool) -> Answer:
    challenge = _CHALLENGE + (', error="invalid_token"' if sent else "")
    return 401, [_JSON, _NO_STORE, ("WWW-Authenticate", challenge)], envelope(code, message, None, request_id)


def _invalid(problems: dict, request_id: str | None) -> Answer:
    names = ", ".join(sorted(problems))
    return 400, [_JSON, _NO_STORE], envelope("INVALID_REQUEST", f"Invalid request: check {names}.", problems,
                                             request_id)


def register(api: Api) -> None:
    """The ways a resource server may send its personal token here, beside ``personalToken``."""
    api.spec.components.security_scheme(
        "bearerPersonalToken", {"type": "http", "scheme": "bearer",
                                "description": "Authorization: Bearer pat_… (introspection only)"})
    api.spec.components.security_scheme(
        "basicPersonalToken", {"type": "http", "scheme": "basic",
                               "description": "HTTP Basic: account id : personal token (introspection only)"})


def _introspection() -> Introspection:
    return context.current_app_extension("keyledger_introspection")


_FORM_SCHEMA = {"type": "object", "required": ["token"], "properties": {
    "token": {"type": "string", "minLength": 1,
              "description": "The API key or legacy access token to introspect."},
    "token_type_hint": {"type": "string", "description": "Accepted and ignored (RFC 7662 §2.1)."}}}
_ANSWER_SCHEMA = {"type": "object", "required": ["active"], "properties": {
    "active": {"type": "boolean"},
    "scope": {"type": "string", "description": "The token's scopes, space-separated (\"All\": every scope)."},
    "client_id": {"type": "string", "description": "The key's id, or the legacy OAuth2 client's id."},
    "exp": {"type": "integer", "description": "When it stops working (epoch seconds); absent if never."},
    "iat": {"type": "integer", "description": "When it was issued (epoch seconds)."},
    "sub": {"type": "string", "description": "The app the token acts for (as app_id)."},
    "token_type": {"type": "string", "enum": ["Key", "Bearer"],
                   "description": "The Authorization scheme it is sent with: Key (API key), Bearer (access token)."},
    "app_id": {"type": "string"}}}
_ERROR = {"content": {"application/json": {"schema": ErrorSchema}}}


@blp.route(PATH)
class Introspect(MethodView):
    @blp.doc(
        security=[{"personalToken": []}, {"bearerPersonalToken": []}, {"basicPersonalToken": []}],
        requestBody={"required": True, "content": {FORM: {"schema": _FORM_SCHEMA}}},
        responses={
            "200": {"description": "Active with the token's facts, or exactly {\"active\": false} for "
                                   "anything else (unknown, revoked, expired, malformed; no reason given)",
                    "content": {"application/json": {"schema": _ANSWER_SCHEMA}}},
            "400": {"description": "Not a form, or no token", **_ERROR},
            "401": {"description": "No or refused credential (WWW-Authenticate: Bearer realm=\"keyledger\")",
                    **_ERROR},
            "403": {"description": "The account is neither admin nor introspector", **_ERROR},
        },
    )
    def post(self):
        """Is this token active, and what may it do? (RFC 7662; admin and introspector accounts)"""
        status, headers, body = _introspection().answer(
            request.headers.get("Authorization", ""), request.mimetype, request.get_data(), context.request_id(),
            context.request_info)
        return Response(body, status, headers)
