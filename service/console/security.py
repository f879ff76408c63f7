"""For the security team: the audit trail (owners see their own apps' part of it), the chain's
integrity with its last signed checkpoint, who could do a scope on an app at a moment, and the
deprecation campaign's progress.

Filters are read with the API's own query schemas, so a filter the API refuses is refused here,
with the same sentence, next to the field.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Response, request, url_for
from marshmallow import ValidationError

from projections.audit import decode_cursor, encode_cursor, microseconds
from service.api.audit import audit_filter, utc_field
from service.api.schemas import AccessQuerySchema, AuditQuerySchema
from service.console import chart
from service.console.web import actor, bp, field_errors, page, signed_in, system
from service.credentials import public_key_sha256, redact
from service.domain.errors import KeyledgerError

AUDIT_FIELDS = ("app_id", "key_id", "actor", "type", "since", "until", "limit")
EVENT_TYPES = ("Account.Registered", "Account.TokenReplaced", "App.Registered", "App.LegacyClientAttached",
               "ApiKey.Issued", "ApiKey.ScopesChanged", "ApiKey.DescriptionChanged", "ApiKey.Rolled",
               "ApiKey.Revoked", "ApiKey.Restricted", "ApiKey.Leaked", "ApiKey.Expiring", "ApiKey.Expired",
               "LegacyClient.CredentialsIssued", "LegacyClient.AccessTokenIssued",
               "LegacyClient.AccessDisabled", "LegacyUseWindow.LegacyTokenUsed",
               "AuditLedger.CheckpointSigned")
PAGE_SIZE = 50
CHART_DAYS = 30


def _given(names: tuple[str, ...]) -> dict[str, str]:
    """The query's non-empty fields (an empty box in a GET form means "any")."""
    return {name: value.strip() for name in names if (value := request.args.get(name, "")).strip()}


def _schema_errors(error: ValidationError) -> dict[str, list[str]]:
    messages = error.messages if isinstance(error.messages, dict) else {"form": error.messages}
    return {name: [str(m) for m in (problems if isinstance(problems, list) else [problems])]
            for name, problems in messages.items()}


@bp.get("/audit")
@signed_in
def audit() -> Response:
    sys = system()
    owner = sys.keys_app.audit_reader(by=actor())
    given = _given((*AUDIT_FIELDS, "cursor"))
    given.setdefault("limit", str(PAGE_SIZE))
    values = {name: redact(given.get(name, "")) for name in AUDIT_FIELDS}  # never echo a pasted secret
    errors: dict[str, list[str]] = {}
    events: list[dict] = []
    next_url = None
    try:
        query = AuditQuerySchema().load(given)
        filters = audit_filter(query)
        after = decode_cursor(query["cursor"]) if "cursor" in query else 0
        if after is None:
            errors["cursor"] = ["This page link is not one the console gave out; start from the first page."]
    except ValidationError as error:
        errors = _schema_errors(error)
    except KeyledgerError as error:
        errors = field_errors(error)
    if not errors:
        limit = query["limit"]
        events = sys.audit.page(filters, owner_id=owner, after=after, limit=limit + 1)
        if len(events) > limit:
            events = events[:limit]
            next_url = url_for("console.audit", **{**_given(AUDIT_FIELDS), "limit": limit,
                                                    "cursor": encode_cursor(events[-1]["seq"])})
    return page("console/audit.html", status=400 if errors else 200, title="Audit trail", events=events,
                values=values, errors=errors, next_url=next_url,
                first_url=url_for("console.audit", **_given(AUDIT_FIELDS)) if "cursor" in given else None,
                event_types=EVENT_TYPES, own_apps_only=owner is not None)


@bp.get("/audit/integrity")
@signed_in
def integrity() -> Response:
    sys = system()
    sys.keys_app.require_auditor(by=actor())
    result = sys.check_integrity()
    recorded, _unreadable = sys.keys_app.checkpoints()
    return page("console/integrity.html", title="Integrity of the audit trail", result=result,
                last=recorded[-1] if recorded else None, fingerprint=public_key_sha256(sys.signing_key))


@bp.get("/audit/access")
@signed_in
def access() -> Response:
    sys = system()
    sys.keys_app.require_auditor(by=actor())
    given = _given(("app_id", "scope", "at"))
    errors: dict[str, list[str]] = {}
    answer = None
    if given:
        try:
            query = AccessQuerySchema().load(given)
            at = utc_field(query, "at") or sys.keys_app.now()
            candidates = sys.audit.aggregates_of_app(query["app_id"], until_us=microseconds(at))
            credentials = sys.keys_app.access_at(query["app_id"], scope=query["scope"], at=at, by=actor(),
                                                 aggregate_ids=candidates)
            answer = {"app_id": query["app_id"], "scope": query["scope"], "at": at, "credentials": credentials}
        except ValidationError as error:
            errors = _schema_errors(error)
        except KeyledgerError as error:
            if error.code == "UNAVAILABLE":
                raise
            errors = field_errors(error) or {"app_id": [error.message]}
    apps = sys.directory.apps(owner_id=None)
    return page("console/access.html", status=400 if errors else 200, title="Who could do it, then?",
                values={name: redact(value) for name, value in given.items()}, errors=errors, answer=answer, apps=apps,
                scopes=list(sys.keys_app.scope_catalogue()))


@bp.get("/campaign")
@signed_in
def campaign() -> Response:
    sys = system()
    sys.keys_app.check_reads_campaign(actor())
    now = sys.keys_app.now()
    owners = sys.legacy_usage.owners_using_tokens(sys.plan.usage_since(now))
    status = sys.campaign.status(sys.plan, owners)
    series = chart.daily_use(sys, now - timedelta(days=CHART_DAYS - 1), days=CHART_DAYS)
    return page("console/campaign.html", title="Deprecation campaign", progress=status,
                chart=chart.bars(series), series=series)
