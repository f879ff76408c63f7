"""Apps: each is born with one auto-generated key whose scopes are ["All"]."""

from __future__ import annotations

from uuid import UUID

from flask.views import MethodView
from flask_smorest import Blueprint

from service.api import context
from service.api.schemas import (
    AppChangeSchema,
    AppCreatedSchema,
    AppCreateSchema,
    AppListSchema,
    AppSchema,
    ErrorSchema,
    KeyCreatedSchema,
    KeyCreateSchema,
    KeyListSchema,
)

blp = Blueprint("apps", __name__, description="Apps and their keys")


@blp.route("/v2/apps")
class Apps(MethodView):
    @blp.arguments(AppCreateSchema)
    @blp.response(201, AppCreatedSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(409, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, body):
        """Create an app (owner; an admin may give owner_id). Its default key's secret is in this response only."""
        system = context.system()
        app, key, secret = system.keys_app.create_app(
            name=body["name"], slug=body.get("id"), owner_id=body.get("owner_id"),
            by=context.actor(), request=context.request_info())
        system.after_command()
        return {**app, "default_key": {**key, "key": secret}}

    @blp.response(200, AppListSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self):
        """The caller's apps (auditors and admins: every app)."""
        system = context.system()
        owner = system.keys_app.listing_owner(by=context.actor())
        apps = system.directory.apps(owner_id=owner)
        for app in apps:  # the directory has no limits; the in-memory book has them
            app["limits"] = system.limiter.book.app_limits(app["id"])
        return {"apps": apps}


@blp.route("/v2/apps/<app_id>")
class AppById(MethodView):
    @blp.response(200, AppSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, app_id):
        """One app."""
        return context.system().keys_app.get_app(app_id, by=context.actor())

    @blp.arguments(AppChangeSchema)
    @blp.response(200, AppSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def patch(self, body, app_id):
        """Change an app: the rate `limits` every key of the app shares (`[]`: none), its `leak_policy`
        (revoke or report, overriding the deployment's for its keys), or both."""
        system = context.system()
        app = system.keys_app.change_app(app_id, limits=body.get("limits"), leak_policy=body.get("leak_policy"),
                                         by=context.actor(), request=context.request_info())
        system.after_command()
        return app


@blp.route("/v2/apps/<app_id>/keys")
class AppKeys(MethodView):
    @blp.arguments(KeyCreateSchema)
    @blp.response(201, KeyCreatedSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, body, app_id):
        """Create a key with scopes. The secret is in this response only."""
        system = context.system()
        key, secret = system.keys_app.issue_key(
            app_id, description=body["description"], scopes=body["scopes"],
            expires_at=body.get("expires_at"), by=context.actor(), request=context.request_info(),
            limits=body.get("limits"), restrictions=body.get("restrictions"))
        system.after_command()
        return {**key, "key": secret}, 201, {"ETag": f'"{key["version"]}"',
                                             "Location": f"/v2/keys/{key['id']}"}

    @blp.response(200, KeyListSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, app_id):
        """The app's keys (never a secret)."""
        system = context.system()
        system.keys_app.get_app(app_id, by=context.actor())
        keys = system.directory.keys(app_id, system.keys_app.now())
        context.with_last_used(*keys)
        for key in keys:  # the directory has no limits; the in-memory book has them
            key["limits"] = system.limiter.book.key_limits(UUID(key["id"]).bytes)
        return {"keys": keys}
