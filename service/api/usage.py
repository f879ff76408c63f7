"""Usage per key: valid answers and refusals by code, per hour or day (projections.usage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError, fields, validate, validates_schema

from projections.timefmt import rfc3339_from_epoch
from projections.usage import DAY, HOUR
from service.api import context
from service.api.schemas import ErrorSchema, Rfc3339, StrictSchema
from service.domain.errors import InvalidRequest

blp = Blueprint("usage", __name__, description="API keys")

STEPS = {"hour": HOUR, "day": DAY}
# The longest span asked for at once (and the default one, when `since` is left out).
MAX_SPAN = {"hour": timedelta(days=31), "day": timedelta(days=731)}
DEFAULT_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=30)}


class UsageQuerySchema(StrictSchema):
    since = Rfc3339(metadata={"description": "The first period is the one holding this time (default: 24 hours "
                                             "before `until` by the hour, 30 days by the day)."})
    until = Rfc3339(metadata={"description": "The end of the span (excluded; default: the end of the current "
                                             "period)."})
    granularity = fields.String(load_default="hour", validate=validate.OneOf(["hour", "day"]),
                                metadata={"description": "Periods of one UTC hour (at most 31 days at once) "
                                                         "or one UTC day (at most 731 days)."})

    @validates_schema
    def _span(self, data: dict, **_kwargs) -> None:
        since, until = data.get("since"), data.get("until")
        for name, value in (("since", since), ("until", until)):
            if value is not None:
                try:
                    value.astimezone(UTC)
                    datetime.fromtimestamp(value.timestamp() + 2 * DAY, UTC)
                except (OverflowError, ValueError, OSError):
                    raise ValidationError("Out of range.", field_name=name) from None
        if since is not None and until is not None:
            if since > until:
                raise ValidationError("since must not be after until.", field_name="since")
            granularity = data.get("granularity", "hour")
            if until - since > MAX_SPAN[granularity]:
                raise ValidationError(f"At most {MAX_SPAN[granularity].days} days by the {granularity}; ask "
                                      "for a shorter span or by the day.", field_name="since")


class UsagePeriodSchema(StrictSchema):
    start = fields.String(required=True, metadata={"format": "date-time", "description": "The period's start (UTC)."})
    valid = fields.Integer(required=True, metadata={"description": "Valid answers."})
    refused = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True,
                          metadata={"description": "Refusals by code (e.g. INSUFFICIENT_SCOPE, RATE_LIMITED)."})


class UsageSchema(StrictSchema):
    key_id = fields.String(required=True)
    granularity = fields.String(required=True, validate=validate.OneOf(["hour", "day"]))
    periods = fields.List(fields.Nested(UsagePeriodSchema), required=True)


def key_usage(key_id: str, since: datetime | None, until: datetime | None, granularity: str) -> dict:
    """The usage report of a key the caller may read (404/403 as for the key itself)."""
    system = context.system()
    key = system.keys_app.get_key(key_id, by=context.actor())
    step = STEPS[granularity]
    if until is None:  # up to now: the current period included
        now = system.keys_app.now().timestamp()
        end_s = int(now - now % step) + step
    else:
        end_s = int(until.timestamp())
        end_s += 0 if until.timestamp() == end_s else 1  # a fraction of a second still ends in that period
    start_s = int(since.timestamp() // 1) if since is not None else end_s - int(DEFAULT_SPAN[granularity].total_seconds())
    # the schema checked the two when both were given; with one left out, the same rules
    if start_s > end_s:
        raise InvalidRequest("since must not be after until (default: now).", since=["After until."])
    if end_s - start_s > MAX_SPAN[granularity].total_seconds() + step:
        raise InvalidRequest(f"since is too far back: at most {MAX_SPAN[granularity].days} days by the {granularity}.",
                             since=[f"At most {MAX_SPAN[granularity].days} days before until."])
    periods = system.usage.report(key["id"], start_s, end_s, step)
    return {"key_id": key["id"], "granularity": granularity,
            "periods": [{"start": rfc3339_from_epoch(s), "valid": v, "refused": r} for s, v, r in periods]}


@blp.route("/v2/keys/<key_id>/usage")
class KeyUsage(MethodView):
    @blp.arguments(UsageQuerySchema, location="query")
    @blp.response(200, UsageSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(403, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.doc(security=[{"personalToken": []}])
    def get(self, query, key_id):
        """How much a key is used: valid answers and refusals by code, per UTC hour or day (every period of the span, zeros included). Counted in memory and written every `KEYLEDGER_LAST_USED_INTERVAL`: this process's latest counts are included, other processes' up to one interval late."""
        return key_usage(key_id, query.get("since"), query.get("until"), query["granularity"])
