"""The deprecation campaign's progress (admins and auditors)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from service.api import context
from service.api.schemas import ErrorSchema, Rfc3339

blp = Blueprint("campaign", __name__, description="The deprecation campaign of legacy access tokens")


class CampaignStageSchema(Schema):
    name = fields.String(required=True, metadata={"example": "30d"})
    due_at = Rfc3339(required=True)
    ran_at = Rfc3339(allow_none=True, metadata={"description": "When the scheduler acted on it; null if "
                                                "not yet, or if a later stage overtook it during downtime"})
    owners_mailed = fields.Integer(required=True, metadata={"description": "Reminders delivered"})
    deliveries_pending = fields.Integer(required=True,
                                        metadata={"description": "Recorded, to be tried (again)"})
    deliveries_failed = fields.Integer(required=True,
                                       metadata={"description": "Refused for good by the mail server"})
    delivery_attempts_failed = fields.Integer(required=True,
                                              metadata={"description": "Failed attempts, retried ones included"})
    withdrawn = fields.Integer(required=True,
                               metadata={"description": "Overtaken by the sunset before delivery"})


class CampaignAppSchema(Schema):
    app_id = fields.String(required=True)
    app_name = fields.String()
    client_id = fields.String()
    last_used_at = Rfc3339(allow_none=True)
    uses = fields.Integer()
    windows = fields.Integer()
    uses_api_keys = fields.Boolean()


class CampaignOwnerSchema(Schema):
    owner_id = fields.String(required=True)
    owner_email = fields.String()
    owner_name = fields.String()
    apps = fields.List(fields.Nested(CampaignAppSchema), required=True)
    stages_recorded = fields.List(fields.String(), required=True)


class UndeliveredSchema(Schema):
    id = fields.String(required=True)
    stage = fields.String(required=True)
    owner_id = fields.String(required=True)
    owner_email = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["pending", "failed"]})
    attempts = fields.Integer(required=True)
    last_error = fields.String(allow_none=True)
    next_attempt_at = fields.String(allow_none=True)
    recorded_at = fields.String(required=True)


class CampaignSchema(Schema):
    sunset_at = Rfc3339(required=True)
    sunset_executed_at = Rfc3339(allow_none=True)
    stages = fields.List(fields.Nested(CampaignStageSchema), required=True)
    owners_on_tokens = fields.List(fields.Nested(CampaignOwnerSchema), required=True)
    undelivered = fields.List(fields.Nested(UndeliveredSchema), required=True)


@blp.route("/v2/campaign")
class Campaign(MethodView):
    @blp.response(200, CampaignSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self):
        """The deprecation campaign: its stages and their deliveries, the sunset, who still uses tokens."""
        system = context.system()
        system.keys_app.check_reads_campaign(context.actor())
        usage = getattr(system, "legacy_usage", None)
        since = system.plan.usage_since(system.keys_app.now())
        owners = usage.owners_using_tokens(since) if usage is not None else []
        return system.campaign.status(system.plan, owners)
