"""Leak reports: GitHub's secret-scanning partner endpoint and the platform's own scanners.

``POST /v2/leaks/github`` takes GitHub's signed batch ``[{"token", "type", "url", "source"}]``
and answers GitHub's feedback ``[{"token_raw", "token_type", "label"}]``; ``POST /v2/leaks``
(admin, auditor) takes ``[{"credential", "url", "source"}]``. Each reported string is looked up
by digest in the in-memory index: a credential of this service (live now or before) goes to
the leak policy (``service.application.leaks``); any other string is counted and dropped —
never stored, logged or echoed except to the reporter who sent it.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

from flask import Response, current_app, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, fields

from projections.verification import DIGEST_BYTES, KeyEntry, KeyRecord, TokenEntry
from service import credentials
from service.api import context
from service.api.errors import error_response
from service.application.leaks import API_KEY, PERSONAL_TOKEN, SOURCE_MAX, URL_MAX, Found
from service.domain.actors import Actor
from service.github_scanning import ReplayGuard, ScanningKeysError, load_keys, signature_problem

log = logging.getLogger("keyledger.leaks")

blp = Blueprint("leaks", __name__, description="Leaked credentials")

MAX_BODY = 256 * 1024  # a batch of 1,000 tokens with their URLs (the app's other bodies: 64 KB)
MAX_ITEMS = 1000
TOKEN_MAX = 512
GITHUB_REPORTER = "github"
LEAK_PATHS = ("/v2/leaks",)


class GithubReportSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # GitHub may add fields; they are ignored

    token = fields.String(required=True)
    type = fields.String(required=True)
    url = fields.String(required=True)
    source = fields.String(required=True)


class GithubFeedbackSchema(Schema):
    token_raw = fields.String(required=True)
    token_type = fields.String(required=True)
    label = fields.String(required=True, metadata={"enum": ["true_positive", "false_positive"]})


class LeakReportSchema(Schema):
    credential = fields.String(required=True)
    url = fields.String(required=True)
    source = fields.String(required=True)


class LeakOutcomeSchema(Schema):
    label = fields.String(required=True, metadata={"enum": ["true_positive", "false_positive"]})
    key_id = fields.String()
    action = fields.String(required=True, metadata={"enum": ["revoked", "reported", "none"]})


class LeakAnswerSchema(Schema):
    reports = fields.List(fields.Nested(LeakOutcomeSchema), required=True)


def _guard() -> ReplayGuard:
    return current_app.extensions.setdefault("keyledger_leak_replays", ReplayGuard())


def _trusted_keys() -> dict:
    cached = current_app.extensions.get("keyledger_github_keys")
    if cached is None:
        path = context.system().settings.github_scanning_keys
        cached = load_keys(path) if path is not None else {}
        current_app.extensions["keyledger_github_keys"] = cached
    return cached


def _body_bytes() -> bytes:
    request.max_content_length = MAX_BODY
    return request.get_data(cache=True)


def _items(body: bytes, fields_: tuple[str, ...], *, strict: bool = False) -> list[dict]:
    """The body as a list of objects with string fields ``fields_`` (InvalidRequest otherwise)."""
    from service.api.jsonbody import BodyError, load_json
    from service.domain.errors import InvalidRequest

    if request.mimetype != "application/json":
        raise InvalidRequest("Send the body as JSON with 'Content-Type: application/json'.")
    try:
        parsed = load_json(body)
    except BodyError as error:
        raise InvalidRequest(f"The body is not acceptable: {error}") from None
    if not isinstance(parsed, list) or not parsed:
        raise InvalidRequest("The body must be a non-empty JSON array of reports.", body=["Not a non-empty array."])
    if len(parsed) > MAX_ITEMS:
        raise InvalidRequest(f"At most {MAX_ITEMS} reports per request.", body=["Too many items."])
    limits = {"url": URL_MAX, "source": SOURCE_MAX, "type": SOURCE_MAX}
    for number, item in enumerate(parsed):
        if not isinstance(item, dict) or not all(isinstance(item.get(name), str) for name in fields_):
            raise InvalidRequest(f"Report {number} must be an object with string fields {', '.join(fields_)}.",
                                 **{str(number): ["Missing or not a string: " + ", ".join(fields_)]})
        if strict and (extra := sorted(set(item) - set(fields_))):
            raise InvalidRequest(f"Report {number}: unknown field(s) {', '.join(extra)}.",
                                 **{str(number): [f"Unknown field(s): {', '.join(extra)}"]})
        for name in fields_:
            if len(item[name]) > limits.get(name, TOKEN_MAX):
                raise InvalidRequest(f"Report {number}: {name} is too long.", **{str(number): [f"{name} too long."]})
    return parsed


def _recognise(token: str) -> tuple[str, UUID, str] | None:
    """(kind, aggregate id, digest hex) of a credential of this service (live now or before)."""
    if credentials.misshapen(token):
        return None
    system = context.system()
    digest = system.keys_app.digester.digest(token)
    entry = system.index.by_digest.get(digest[:DIGEST_BYTES])
    if type(entry) in (KeyRecord, KeyEntry):
        return API_KEY, UUID(bytes=bytes(entry.id)), digest.hex()  # type: ignore[union-attr]
    if type(entry) is TokenEntry:
        return PERSONAL_TOKEN, UUID(bytes=entry.id), digest.hex()
    return None  # unknown, or a legacy access token (no format GitHub scans for; expires in hours)


def _report(reports: list[tuple[str, str, str]], reporter: str) -> list[dict]:
    """Apply the policy to each (credential, url, source); answers in order, with ``label``."""
    system = context.system()
    metrics = current_app.extensions["keyledger_metrics"]
    found: list[Found] = []
    where: list[int | None] = []
    for credential, url, source in reports:
        recognised = _recognise(credential)
        if recognised is None:
            where.append(None)
            continue
        kind, aggregate_id, digest = recognised
        where.append(len(found))
        found.append(Found(kind, aggregate_id, digest, url, source))
    outcomes = system.keys_app.report_leaks(found, reporter=reporter, by=context.actor() or Actor.system(GITHUB_REPORTER),
                                            request=context.request_info()) if found else []
    answers = []
    for position in where:
        if position is None:
            metrics.leak_reports.labels("false_positive").inc()
            answers.append({"label": "false_positive", "action": "none"})
        else:
            metrics.leak_reports.labels("true_positive").inc()
            answers.append({"label": "true_positive", **outcomes[position]})
    system.after_command()
    return answers


@blp.route("/v2/leaks/github")
class GithubLeaks(MethodView):
    @blp.doc(
        requestBody={"required": True, "content": {"application/json": {"schema": {
            "type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": GithubReportSchema}}}},
        parameters=[
            {"in": "header", "name": "Github-Public-Key-Identifier", "required": True, "schema": {"type": "string"}},
            {"in": "header", "name": "Github-Public-Key-Signature", "required": True, "schema": {"type": "string"},
             "description": "base64 DER ECDSA P-256 / SHA-256 signature of the raw body"},
        ])
    @blp.response(200, GithubFeedbackSchema(many=True))
    @blp.alt_response(400, schema="ErrorSchema")
    @blp.alt_response(401, schema="ErrorSchema")
    @blp.alt_response(413, schema="ErrorSchema")
    def post(self) -> Any:
        """GitHub's secret-scanning partner endpoint: signed reports of tokens found in public;
        answers GitHub's feedback, one label per token."""
        body = _body_bytes()
        try:
            keys = _trusted_keys()
        except ScanningKeysError as error:
            log.error("%s", error)
            return error_response("UNAVAILABLE", "Leak reports cannot be verified right now.", None, 503)
        problem = signature_problem(keys, request.headers.get("Github-Public-Key-Identifier"),
                                    request.headers.get("Github-Public-Key-Signature"), body)
        if problem is not None:
            return error_response("UNAUTHENTICATED", problem, None, 401)
        items = _items(body, ("token", "type", "url", "source"))
        guard = _guard()
        if not guard.first_time(body):
            return error_response("UNAUTHENTICATED", "This signed report was received before; a signature "
                                  "is good for one delivery.", None, 401)
        try:
            answers = _report([(i["token"], i["url"], i["source"]) for i in items], GITHUB_REPORTER)
        except Exception:
            guard.forget(body)
            raise
        feedback = [{"token_raw": item["token"], "token_type": item["type"], "label": answer["label"]}
                    for item, answer in zip(items, answers, strict=True)]
        return Response(json.dumps(feedback), 200, mimetype="application/json")


@blp.route("/v2/leaks")
class Leaks(MethodView):
    @blp.doc(
        security=[{"personalToken": []}],
        requestBody={"required": True, "content": {"application/json": {"schema": {
            "type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": LeakReportSchema}}}})
    @blp.response(200, LeakAnswerSchema)
    @blp.alt_response(400, schema="ErrorSchema")
    @blp.alt_response(401, schema="ErrorSchema")
    @blp.alt_response(403, schema="ErrorSchema")
    @blp.alt_response(413, schema="ErrorSchema")
    def post(self) -> Any:
        """Report credentials found by the platform's own scanners (admin, auditor)."""
        from service.domain.errors import Forbidden

        actor = context.actor()
        if not (actor.is_admin or actor.is_auditor):
            raise Forbidden("Only admins and auditors report leaks.")
        items = _items(_body_bytes(), ("credential", "url", "source"), strict=True)
        answers = _report([(i["credential"], i["url"], i["source"]) for i in items], f"{actor.ref}")
        return jsonify({"reports": answers})
