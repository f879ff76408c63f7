"""Keys: read (now or as of a time), change, roll, revoke, and their history."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from service.api import context
from service.api.schemas import (
    AsOfSchema,
    ErrorSchema,
    HistorySchema,
    KeyChangeSchema,
    KeyCreatedSchema,
    KeyRollSchema,
    KeySchema,
)
from service.application.keys import UNCHANGED

blp = Blueprint("keys", __name__, description="API keys")


def _etag(key: dict) -> dict:
    return {"ETag": f'"{key["version"]}"'}


@blp.route("/v2/keys/<key_id>")
class KeyById(MethodView):
    @blp.arguments(AsOfSchema, location="query")
    @blp.response(200, KeySchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, query, key_id):
        """A key now, or as it stood at `as_of` (404 if it did not exist yet)."""
        as_of = query.get("as_of")
        key = context.system().keys_app.get_key(key_id, by=context.actor(), as_of=as_of)
        if as_of is None:
            context.with_last_used(key)
        return key, 200, _etag(key)

    @blp.arguments(KeyChangeSchema)
    @blp.response(200, KeySchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.alt_response(409, schema=ErrorSchema)
    @blp.alt_response(412, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def patch(self, body, key_id):
        """Change a key's scopes, description, client restrictions or rate limits. `If-Match: <version>` guards against lost updates."""
        system = context.system()
        key = system.keys_app.change_key(
            key_id, scopes=body.get("scopes"), description=body.get("description"), limits=body.get("limits"),
            restrictions=body.get("restrictions", UNCHANGED), if_match=context.if_match(), by=context.actor(),
            request=context.request_info())
        system.after_command()
        context.with_last_used(key)
        return key, 200, _etag(key)

    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.alt_response(412, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def delete(self, key_id):
        """Revoke a key: it stops verifying at once and stays readable as revoked. Idempotent."""
        system = context.system()
        system.keys_app.revoke_key(key_id, if_match=context.if_match(), by=context.actor(),
                                   request=context.request_info())
        system.after_command()
        return None


@blp.route("/v2/keys/<key_id>/roll")
class KeyRoll(MethodView):
    @blp.arguments(KeyRollSchema)
    @blp.response(200, KeyCreatedSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.alt_response(409, schema=ErrorSchema)
    @blp.alt_response(412, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, body, key_id):
        """Give a key a new secret; the old one verifies for `grace_seconds` more (0–604800)."""
        system = context.system()
        key, secret = system.keys_app.roll_key(
            key_id, grace_seconds=body["grace_seconds"], if_match=context.if_match(),
            by=context.actor(), request=context.request_info())
        system.after_command()
        context.with_last_used(key)  # the key's use so far; the new secret is the same key
        return {**key, "key": secret}, 200, _etag(key)


@blp.route("/v2/keys/<key_id>/history")
class KeyHistory(MethodView):
    @blp.response(200, HistorySchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, key_id):
        """Every change to the key, oldest first, in the audit-event shape."""
        system = context.system()
        key_id = system.keys_app.visible_key_id(key_id, by=context.actor())
        return {"events": system.audit.events(key_id=key_id, limit=None)}
