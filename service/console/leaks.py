"""The console's part of leak reports: which keys of an app were reported leaked (from the audit
trail's ``ApiKey.Leaked`` events), for the app's banner and the keys' badges; and the security
team's page of leak reports in a period (``/console/leaks``; the API's equivalent is
``GET /v2/audit/events?type=ApiKey.Leaked&since=&until=``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, request
from marshmallow import ValidationError

from projections.audit import AuditFilter, microseconds
from service.api.audit import audit_filter
from service.api.schemas import AuditQuerySchema
from service.console.web import actor, bp, field_errors, page, signed_in, system
from service.credentials import redact
from service.domain.errors import KeyledgerError

LEAKED = "ApiKey.Leaked"
BANNER_MAX = 20  # reports shown on the app's banner (the latest)


def app_leaks(system: Any, app_id: str) -> list[dict]:
    """The latest leak reports of the app's keys: ``{"key_id", "url", "source", "action", "at"}``."""
    events = system.audit.page(AuditFilter(app_id=app_id, type=LEAKED), limit=1000)
    reports = [{"key_id": e["key_id"], "url": e["data"].get("url"), "source": e["data"].get("source"),
                "action": e["data"].get("action"), "at": e["occurred_at"]} for e in events]
    return reports[-BANNER_MAX:][::-1]


# -- the security team's page: leak reports in a period ----------------------------------------

TOKEN_LEAKED = "Account.TokenLeaked"
PERIOD_FIELDS = ("since", "until")
DEFAULT_PERIOD = timedelta(days=30)  # without a "since": the last 30 days
PAGE_MAX = 1000  # reports of each kind shown; a narrower period shows the rest


def leak_reports(sys: Any, *, owner_id: str | None, since_us: int | None, until_us: int | None) -> tuple[list[dict], bool]:
    """Leak reports (keys; personal tokens for those who read everything) in ``[since, until)``,
    newest first, and whether more than ``PAGE_MAX`` of a kind were left out."""
    rows, truncated = [], False
    for kind in (LEAKED, TOKEN_LEAKED):
        if kind == TOKEN_LEAKED and owner_id is not None:
            continue  # a personal token belongs to no app: for admins and auditors only
        events = sys.audit.page(AuditFilter(type=kind, since_us=since_us, until_us=until_us), owner_id=owner_id,
                                limit=PAGE_MAX + 1)
        truncated |= len(events) > PAGE_MAX
        rows.extend(events[:PAGE_MAX])
    rows.sort(key=lambda e: e["seq"], reverse=True)
    keys: dict[str, dict] = {}
    now = sys.keys_app.now()
    for app_id in {e["app_id"] for e in rows if e["app_id"]}:
        keys.update({k["id"]: k for k in sys.directory.keys(app_id, now)})
    reports = []
    for e in rows:
        key = keys.get(e["key_id"] or "", {})
        reports.append({
            "seq": e["seq"], "at": e["occurred_at"], "kind": "api_key" if e["type"] == LEAKED else "personal_token",
            "key_id": e["key_id"], "description": key.get("description"), "display": key.get("display"),
            "app_id": e["app_id"], "url": e["data"].get("url"), "source": e["data"].get("source"),
            "reporter": e["data"].get("reporter"), "action": e["data"].get("action"),
            "actor": e["actor"],
        })
    return reports, truncated


@bp.get("/leaks")
@signed_in
def leaks_page() -> Response:
    """Leak reports in a period: admins and auditors see all, an owner those of their own apps."""
    sys = system()
    owner = sys.keys_app.audit_reader(by=actor())
    given = {name: value.strip() for name in PERIOD_FIELDS if (value := request.args.get(name, "")).strip()}
    values = {name: redact(given.get(name, "")) for name in PERIOD_FIELDS}
    errors: dict[str, list[str]] = {}
    reports: list[dict] = []
    truncated = False
    since_us = until_us = None
    try:
        filters = audit_filter(AuditQuerySchema().load(given))
        since_us, until_us = filters.since_us, filters.until_us
    except ValidationError as error:
        errors = {name: [str(m) for m in (problems if isinstance(problems, list) else [problems])]
                  for name, problems in (error.messages if isinstance(error.messages, dict) else {}).items()}
    except KeyledgerError as error:
        errors = field_errors(error)
    if not errors:
        if since_us is None:
            since_us = microseconds(sys.keys_app.now() - DEFAULT_PERIOD)
        reports, truncated = leak_reports(sys, owner_id=owner, since_us=since_us, until_us=until_us)
    return page("console/leaks.html", status=400 if errors else 200, title="Leak reports", reports=reports,
                values=values, errors=errors, truncated=truncated, page_max=PAGE_MAX,
                since=datetime.fromtimestamp(since_us / 1e6, UTC) if since_us is not None else None,
                until=datetime.fromtimestamp(until_us / 1e6, UTC) if until_us is not None else None,
                own_apps_only=owner is not None)
