"""Webhooks: endpoints (as events), their delivery log, "send again" and "replay since".

The contract is /work/shared/API.md's "Webhooks and feeds"; "send again" for one delivery is
``POST /v2/webhooks/<id>/deliveries/<delivery_id>/retry`` (202). Deliveries are made by the
scheduler process (``service.webhooks.delivery``); these endpoints read and re-queue the outbox.
"""

from __future__ import annotations

from datetime import UTC, timedelta

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from projections.audit import decode_cursor, encode_cursor, microseconds
from projections.timefmt import rfc3339
from service.api import context
from service.api.schemas import ErrorSchema, Rfc3339, StrictSchema
from service.domain.errors import InvalidRequest, NotFound
from service.webhooks.domain import EVENT_TYPES

blp = Blueprint("webhooks", __name__, description="Signed webhooks (Standard Webhooks)")


class Moment(fields.Field):
    """An RFC 3339 UTC time, from a datetime or the view's text."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None or isinstance(value, str):
            return value
        return rfc3339(value)


class WebhookCreateSchema(StrictSchema):
    url = fields.String(required=True, validate=validate.Length(min=9, max=2000),
                        metadata={"example": "https://billing.example.com/keyledger",
                                  "pattern": "^https?://[^\\s]+$"})
    # enum and minItems are said in the document; the use case judges them (UNKNOWN_EVENT_TYPE, naming the field)
    event_types = fields.List(fields.String(metadata={"enum": list(EVENT_TYPES)}), required=True,
                              metadata={"example": ["key.created", "key.revoked"], "minItems": 1,
                                        "maxItems": len(EVENT_TYPES)})
    app_ids = fields.List(fields.String(), load_default=None,
                          metadata={"description": "Leave out (or []) for every app you may see."})
    description = fields.String(load_default=None, validate=validate.Length(max=200))


class WebhookChangeSchema(StrictSchema):
    url = fields.String(validate=validate.Length(min=9, max=2000))
    event_types = fields.List(fields.String(metadata={"enum": list(EVENT_TYPES)}),
                              metadata={"minItems": 1, "maxItems": len(EVENT_TYPES)})
    app_ids = fields.List(fields.String())
    description = fields.String(validate=validate.Length(max=200))
    status = fields.String(validate=validate.OneOf(["enabled", "disabled"]))


class WebhookSchema(Schema):
    id = fields.String(required=True)
    url = fields.String(required=True)
    event_types = fields.List(fields.String(), required=True)
    app_ids = fields.List(fields.String(), required=True)
    description = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": ["enabled", "disabled"]})
    registrant_id = fields.String(required=True)
    created_at = Moment(required=True, metadata={"type": "string", "format": "date-time"})


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(required=True, metadata={"description": "whsec_…: shown in this response only"})


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema), required=True)


class RotateSchema(StrictSchema):
    overlap_seconds = fields.Integer(load_default=86400, validate=validate.Range(min=0, max=604800),
                                     metadata={"description": "How long the previous secret keeps signing "
                                                              "beside the new one (default one day)."})


class AttemptSchema(Schema):
    attempt = fields.Integer(required=True)
    at = fields.String(required=True)
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer(required=True)
    response_head = fields.String(allow_none=True, metadata={"description": "the response's first 1024 bytes"})


class DeliverySchema(Schema):
    id = fields.String(required=True)
    event_id = fields.String(required=True, metadata={"description": "the webhook-id header"})
    seq = fields.Integer(required=True)
    type = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": ["pending", "delivered", "failed", "cancelled"]})
    attempts = fields.Integer(required=True)
    created_at = fields.String(required=True)
    next_attempt_at = fields.String(allow_none=True)
    delivered_at = fields.String(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    last_duration_ms = fields.Integer(allow_none=True)
    last_response_head = fields.String(allow_none=True)
    attempt_log = fields.List(fields.Nested(AttemptSchema), required=True)


class DeliveryListSchema(Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class DeliveryQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String()


class ReplaySchema(StrictSchema):
    since = Rfc3339(required=True)


class QueuedSchema(Schema):
    queued = fields.Integer(required=True)


def _outbox():
    outbox = context.system().webhooks
    if outbox is None:
        raise NotFound("Webhooks are not part of this build.")
    return outbox


def _now_us() -> int:
    return microseconds(context.system().keys_app.now())


@blp.route("/v2/webhooks")
class Webhooks(MethodView):
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, body):
        """Register an endpoint (admins: any or every app; owners: their own apps). Its signing secret
        (`whsec_…`) is in this response only."""
        system = context.system()
        endpoint, secret = system.keys_app.register_webhook(
            url=body["url"], event_types=body["event_types"], app_ids=body.get("app_ids"),
            description=body.get("description"), by=context.actor(), request=context.request_info())
        system.after_command()
        return {**endpoint, "secret": secret}

    @blp.response(200, WebhookListSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self):
        """The caller's endpoints (admins and auditors: every endpoint)."""
        registrant = context.system().keys_app.webhook_reader(by=context.actor())
        return {"webhooks": _outbox().endpoints(registrant_id=registrant)}


@blp.route("/v2/webhooks/<endpoint_id>")
class WebhookById(MethodView):
    @blp.response(200, WebhookSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, endpoint_id):
        """One endpoint (never its secret)."""
        return context.system().keys_app.get_webhook(endpoint_id, by=context.actor())

    @blp.arguments(WebhookChangeSchema)
    @blp.response(200, WebhookSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def patch(self, body, endpoint_id):
        """Change an endpoint's url, event_types, app_ids, description, or status (`enabled`, `disabled`)."""
        if not body:
            raise InvalidRequest("Give at least one of url, event_types, app_ids, description, status.",
                                 body=["Empty change."])
        system = context.system()
        endpoint = system.keys_app.change_webhook(endpoint_id, body, by=context.actor(),
                                                  request=context.request_info())
        system.after_command()
        return endpoint

    @blp.response(204)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def delete(self, endpoint_id):
        """Delete an endpoint: nothing more is delivered to it; its pending deliveries are cancelled."""
        system = context.system()
        system.keys_app.delete_webhook(endpoint_id, by=context.actor(), request=context.request_info())
        system.after_command()
        return None


@blp.route("/v2/webhooks/<endpoint_id>/rotate-secret")
class WebhookRotate(MethodView):
    @blp.arguments(RotateSchema)
    @blp.response(200, WebhookCreatedSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, body, endpoint_id):
        """A new signing secret (shown once); the previous one keeps signing beside it for `overlap_seconds`
        (both signatures in `webhook-signature`, space-separated)."""
        system = context.system()
        endpoint, secret = system.keys_app.rotate_webhook_secret(
            endpoint_id, overlap=timedelta(seconds=body["overlap_seconds"]), by=context.actor(),
            request=context.request_info())
        system.after_command()
        return {**endpoint, "secret": secret}


@blp.route("/v2/webhooks/<endpoint_id>/deliveries")
class WebhookDeliveries(MethodView):
    @blp.arguments(DeliveryQuerySchema, location="query")
    @blp.response(200, DeliveryListSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, query, endpoint_id):
        """The endpoint's delivery log, newest first: each delivery's status and attempts (time, HTTP
        status, duration, the response's first bytes)."""
        endpoint = context.system().keys_app.get_webhook(endpoint_id, by=context.actor())
        before = None
        if "cursor" in query:
            before = decode_cursor(query["cursor"])
            if before is None:
                raise InvalidRequest("Not a cursor of this list.", cursor=["Use next_cursor as given."])
        deliveries = _outbox().deliveries(endpoint["id"], after_seq=before, limit=query["limit"])
        more = len(deliveries) == query["limit"]
        return {"deliveries": deliveries, "next_cursor": encode_cursor(deliveries[-1]["seq"]) if more else None}


@blp.route("/v2/webhooks/<endpoint_id>/deliveries/<delivery_id>")
class WebhookDelivery(MethodView):
    @blp.response(200, DeliverySchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, endpoint_id, delivery_id):
        """One delivery and its attempts."""
        endpoint = context.system().keys_app.get_webhook(endpoint_id, by=context.actor())
        delivery = _outbox().delivery(endpoint["id"], delivery_id)
        if delivery is None:
            raise NotFound(f"No delivery {delivery_id!r} of this endpoint.")
        return delivery


@blp.route("/v2/webhooks/<endpoint_id>/deliveries/<delivery_id>/retry")
class WebhookDeliveryRetry(MethodView):
    @blp.response(202, QueuedSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, endpoint_id, delivery_id):
        """Send one delivery again (same `webhook-id`), whatever its status: queued now."""
        endpoint = context.system().keys_app.managed_webhook(endpoint_id, by=context.actor())
        if not _outbox().send_again(endpoint["id"], delivery_id, now_us=_now_us()):
            raise NotFound(f"No delivery {delivery_id!r} of this endpoint.")
        return {"queued": 1}


@blp.route("/v2/webhooks/<endpoint_id>/replay")
class WebhookReplay(MethodView):
    @blp.arguments(ReplaySchema)
    @blp.response(202, QueuedSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, body, endpoint_id):
        """Send again every delivery of the endpoint whose event happened at or after `since` (each with
        its own `webhook-id`, as first sent)."""
        endpoint = context.system().keys_app.managed_webhook(endpoint_id, by=context.actor())
        since = body["since"].astimezone(UTC) if body["since"].tzinfo else body["since"].replace(tzinfo=UTC)
        queued = _outbox().replay(endpoint["id"], since_us=microseconds(since), now_us=_now_us())
        return {"queued": queued}


