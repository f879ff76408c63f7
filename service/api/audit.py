"""The audit trail for the security team: events (paged and exported), integrity, who could
act at a moment, and the key that signs the chain's checkpoints.

Owners read their own apps' events; auditors and admins read everything; API keys, nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from projections.audit import AuditFilter, decode_cursor, encode_cursor, microseconds
from service import exports
from service.api import context
from service.api.feed import AuditFeedQuerySchema, feed_response
from service.api.schemas import (
    AccessQuerySchema,
    AccessSchema,
    AuditFilterSchema,
    AuditPageSchema,
    AuditQuerySchema,
    ErrorSchema,
    IntegritySchema,
    PublicKeySchema,
)
from service.credentials import public_key_pem, public_key_sha256
from service.domain.errors import InvalidRequest
from service.domain.restrictions import FACT_FIELDS, RequestFacts

blp = Blueprint("audit", __name__, description="The audit trail (security team)")

_REFUSALS = (400, 401, 403)


def _refusals(*statuses: int):
    def decorate(view):
        for status in statuses:
            view = blp.alt_response(status, schema=ErrorSchema)(view)
        return blp.doc(security=[{"personalToken": []}])(view)
    return decorate


def utc_field(query: dict, name: str) -> datetime | None:
    """A time from the query in UTC (400 naming the field when it falls outside years 1-9999)."""
    value = query.get(name)
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(f"{name} is out of range.", **{name: ["Out of range."]}) from None


def _time(query: dict, name: str) -> int | None:
    value = utc_field(query, name)
    return None if value is None else microseconds(value)


def audit_filter(query: dict) -> AuditFilter:
    actor_kind = actor_id = None
    if actor := query.get("actor"):
        actor_kind, _, actor_id = actor.partition(":")
        actor_id = actor_id or None
    key_id = query.get("key_id")
    if key_id is not None:
        try:
            key_id = str(UUID(key_id))  # any spelling of a key id finds its events
        except ValueError:
            pass
    return AuditFilter(app_id=query.get("app_id"), key_id=key_id, actor_kind=actor_kind,
                       actor_id=actor_id, type=query.get("type"), since_us=_time(query, "since"),
                       until_us=_time(query, "until"))


@blp.route("/v2/audit/events")
class AuditEvents(MethodView):
    @blp.arguments(AuditQuerySchema, location="query", unknown=RAISE)  # a mistyped filter is not "everything"
    @blp.response(200, AuditPageSchema)
    @_refusals(*_REFUSALS)
    def get(self, query):
        """Audit events, oldest first, filtered; page with `cursor` (a position in the log)."""
        system = context.system()
        owner = system.keys_app.audit_reader(by=context.actor())
        filters = audit_filter(query)
        after = 0
        if "cursor" in query:
            after = decode_cursor(query["cursor"])
            if after is None:
                raise InvalidRequest("cursor is not a cursor this API gave out; pass next_cursor as it came.",
                                     cursor=["Not a valid cursor."])
        limit = query["limit"]
        events = system.audit.page(filters, owner_id=owner, after=after, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return {"events": events, "next_cursor": encode_cursor(events[-1]["seq"]) if more else None}


def _export(query: dict, fmt: str) -> Response:
    system = context.system()
    owner = system.keys_app.audit_reader(by=context.actor())
    events = system.audit.stream(audit_filter(query), owner_id=owner)
    return Response(exports.lines(events, fmt), mimetype=exports.FORMATS[fmt], headers={
        "Content-Disposition": f'attachment; filename="audit-events.{fmt}"'})


def _streamed(content_type: str, description: str) -> dict:
    return {"responses": {"200": {"description": description,
                                  "content": {content_type: {"schema": {"type": "string"}}}}}}


@blp.route("/v2/audit/events.jsonl")
class AuditEventsJsonl(MethodView):
    @blp.arguments(AuditFeedQuerySchema, location="query", unknown=RAISE)
    @blp.doc(**_streamed("application/x-ndjson", "One audit event per line, streamed; with follow=1 the "
                         "stream stays open, new events follow as they are committed, and a blank line is a "
                         "heartbeat (skip it)."))
    @_refusals(*_REFUSALS, 503)
    def get(self, query):
        """Every matching audit event as JSON Lines, streamed (same filters as /v2/audit/events); `since_seq` resumes, `follow=1` keeps streaming new ones."""
        system = context.system()
        owner = system.keys_app.audit_reader(by=context.actor())
        if query.get("follow"):  # the live feed is the security team's
            system.keys_app.require_auditor(by=context.actor())
        return feed_response(system, audit_filter(query), owner, query)


@blp.route("/v2/audit/events.csv")
class AuditEventsCsv(MethodView):
    @blp.arguments(AuditFilterSchema, location="query", unknown=RAISE)
    @blp.doc(**_streamed("text/csv", "A header row, then one row per audit event, streamed; safe to open in a spreadsheet."))
    @_refusals(*_REFUSALS)
    def get(self, query):
        """Every matching audit event as CSV, streamed (same filters as /v2/audit/events)."""
        return _export(query, "csv")


@blp.route("/v2/audit/integrity")
class AuditIntegrity(MethodView):
    @blp.response(200, IntegritySchema)
    @_refusals(401, 403)
    def get(self):
        """Recompute the hash chain from the stored events and check every signed checkpoint (auditors, admins)."""
        system = context.system()
        system.keys_app.require_auditor(by=context.actor())
        return system.check_integrity()


@blp.route("/v2/audit/access")
class AuditAccess(MethodView):
    @blp.arguments(AccessQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, AccessSchema)
    @_refusals(*_REFUSALS, 404)
    def get(self, query):
        """The credentials that could perform `scope` on `app_id` at the moment `at` (from `origin`, `ip`, … if given), from their events."""
        system = context.system()
        at = utc_field(query, "at") or system.keys_app.now()
        until_us = microseconds(at)
        candidates = system.audit.aggregates_of_app(query["app_id"], until_us=until_us)
        facts = RequestFacts(**{name: str(query[name]) for name in FACT_FIELDS if query.get(name) is not None})
        credentials = system.keys_app.access_at(query["app_id"], scope=query["scope"], at=at,
                                                by=context.actor(), aggregate_ids=candidates, facts=facts)
        return {"app_id": query["app_id"], "scope": query["scope"], "at": at, "credentials": credentials,
                **{name: query[name] and str(query[name]) for name in FACT_FIELDS if name in query}}


@blp.route("/v2/audit/public-key")
class AuditPublicKey(MethodView):
    @blp.response(200, PublicKeySchema)
    @_refusals(401, 403)
    def get(self):
        """The Ed25519 public key that verifies the audit chain's signed checkpoints."""
        system = context.system()
        system.keys_app.audit_reader(by=context.actor())
        return {"algorithm": "Ed25519", "public_key_pem": public_key_pem(system.signing_key),
                "sha256": public_key_sha256(system.signing_key)}
