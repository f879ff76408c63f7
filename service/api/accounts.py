"""Accounts: created by admins; every account reads itself with its personal token."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from service.api import context
from service.api.schemas import (
    AccountCreatedSchema,
    AccountCreateSchema,
    AccountSchema,
    ErrorSchema,
)
from service.domain.errors import Forbidden

blp = Blueprint("accounts", __name__, description="Accounts and personal tokens")


@blp.route("/v2/accounts")
class Accounts(MethodView):
    @blp.arguments(AccountCreateSchema)
    @blp.response(201, AccountCreatedSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(409, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def post(self, body):
        """Create an account (admin). The personal token is in this response only."""
        system = context.system()
        account, token = system.keys_app.register_account(
            email=body["email"], name=body["name"], role=body["role"],
            by=context.actor(), request=context.request_info())
        system.after_command()
        return {**account, "token": token}


@blp.route("/v2/me")
class Me(MethodView):
    @blp.response(200, AccountSchema)
    @blp.alt_response(401, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self):
        """The caller's own account (personal tokens only)."""
        actor = context.actor()
        if actor.kind != "account":
            raise Forbidden("GET /v2/me is for personal tokens (pat_…); API keys have no account.")
        return context.system().keys_app.get_account(actor.id)
