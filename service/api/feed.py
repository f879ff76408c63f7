"""``GET /v2/audit/events.jsonl?follow=1``: the live audit feed over HTTP (auditors, admins).

The export's JSON Lines, then every new matching event as it is committed (``service.audit_feed``),
with a heartbeat — a blank line, which JSON-lines readers skip as whitespace (``jq``, Vector's and
Fluent Bit's line parsers drop empty lines) — after ``KEYLEDGER_AUDIT_HEARTBEAT`` (15 s) without
events, so proxies keep the connection. ``since_seq=N`` starts after position N (the ``seq`` of the
last event the client has), with or without ``follow``.

A stream ends by itself after ``KEYLEDGER_AUDIT_FOLLOW_LIMIT`` (1 h), when the server stops, or when
the client stops reading; always after a whole line. The contract: reconnect with ``since_seq`` =
the last ``seq`` received, and nothing is lost or repeated. One process serves at most
``MAX_STREAMS`` streams at once (more: 503 ``UNAVAILABLE`` with ``Retry-After``).

Under ``keyledger serve`` and gunicorn with ``gunicorn.conf.py`` (``service.buffering``) the stream is
written by a stream thread, so it never holds the worker's event loop: verification and every other
request keep being answered. Under another WSGI server (one that does not set
``keyledger.detaches``) the stream holds whatever serves it, so it lasts ``UNDETACHED_LIMIT`` (60 s)
at most.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Response, request
from marshmallow import fields, validate

from projections.audit import AuditFilter
from service import exports
from service.api.schemas import AuditFilterSchema
from service.audit_feed import Streams, events_after, follow
from service.composition import System
from service.domain.errors import Unavailable

HEARTBEAT = b"\n"
UNDETACHED_LIMIT = 60.0  # seconds a stream lasts at most where the server writes it itself
_STREAMS = "keyledger_audit_streams"


class AuditFeedQuerySchema(AuditFilterSchema):
    since_seq = fields.Integer(validate=validate.Range(min=0, max=10**18), metadata={
        "description": "Only events after this position (the `seq` of the last event you have): resume here."})
    follow = fields.Boolean(load_default=False, metadata={
        "description": "Keep the response open and stream new events as they are committed, with a blank "
                       "heartbeat line every 15 s without events; the stream ends after an hour (or when the "
                       "server stops): reconnect with `since_seq`."})


def feed_response(system: System, filters: AuditFilter, owner_id: str | None, query: dict) -> Response:
    """The one-shot export after ``since_seq``, or the live feed with ``follow``."""
    after = query.get("since_seq") or 0
    headers = {"Cache-Control": "no-store"}
    if not query.get("follow"):
        events = events_after(system.audit, filters, after=after, owner_id=owner_id)
        return Response(exports.jsonl_lines(events), mimetype=exports.FORMATS["jsonl"], headers={
            **headers, "Content-Disposition": 'attachment; filename="audit-events.jsonl"'})
    if request.method == "HEAD":  # no body to stream, so nothing to wait for
        return Response(b"", mimetype=exports.FORMATS["jsonl"], headers={**headers, "X-Accel-Buffering": "no"})
    from flask import current_app

    streams: Streams = current_app.extensions.setdefault(_STREAMS, Streams())
    if not streams.take():
        raise Unavailable("this server is streaming as many audit feeds as it can; retry in a minute")
    settings = system.settings
    environ = request.environ
    limit = settings.audit_follow_limit.total_seconds()
    if not environ.get("keyledger.detaches"):  # a server that cannot hand the stream to a thread:
        limit = min(limit, UNDETACHED_LIMIT)  # it holds a worker, so not for long
    until = time.monotonic() + limit
    stopping = environ.get("keyledger.stopping")

    def body() -> Iterator[bytes]:
        yield b""  # the status and headers go out now, not with the first event
        for batch in follow(system.audit, filters, after=after, owner_id=owner_id,
                            poll=settings.follow_interval, heartbeat=settings.audit_heartbeat.total_seconds(),
                            until=until, stopping=stopping):
            if batch is None:
                yield HEARTBEAT
            else:
                for chunk in exports.jsonl_lines(batch):
                    yield chunk.encode()

    environ["keyledger.detach"] = True  # service.buffering: a stream thread writes it
    response = Response(body(), mimetype=exports.FORMATS["jsonl"], headers={
        **headers, "X-Accel-Buffering": "no"})  # nginx: pass each line on at once
    response.call_on_close(streams.give_back)
    return response
