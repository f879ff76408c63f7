"""Rate limits in the console: a form on a key's page and on an app's page.

Each calls the use case the API's PATCH calls (``change_key(limits=…)``, ``change_app(limits=…)``). The
form has one row per limit (a number and a period), blank rows ignored; the use case's errors name
``limits[i].limit`` or ``limits[i].per`` and are shown beside that row's field.
"""

from __future__ import annotations

from flask import Response, redirect, request, url_for

from service.api import context
from service.console.web import actor, bp, field_errors, signed_in, system
from service.domain.errors import KeyledgerError
from service.domain.limits import MAX_LIMITS

PERIODS = ("1s", "1m", "1h", "1d")


def limit_rows(limits: list[dict]) -> list[dict]:
    """The form's rows: the limits, then blank rows up to MAX_LIMITS."""
    rows = [{"limit": str(item["limit"]), "per": item["per"]} for item in limits]
    return rows + [{"limit": "", "per": ""} for _ in range(MAX_LIMITS - len(rows))]


def submitted() -> tuple[list, list[dict], dict[int, int]]:
    """(limits as sent to the use case, the rows to show again, which row each limit came from)."""
    numbers = request.form.getlist("limit")[:MAX_LIMITS + 5]
    periods = request.form.getlist("per")[:MAX_LIMITS + 5]
    limits, rows, origin = [], [], {}
    for i, (number, per) in enumerate(zip(numbers, periods, strict=False)):
        number, per = number.strip()[:20], per.strip()[:20]
        rows.append({"limit": number, "per": per})
        if not number and not per:
            continue
        origin[len(limits)] = i
        limits.append({"limit": int(number) if number.isdigit() else number, "per": per})
    rows += [{"limit": "", "per": ""} for _ in range(max(0, MAX_LIMITS - len(rows)))]
    return limits, rows, origin


def row_errors(error: KeyledgerError, origin: dict[int, int]) -> dict[str, list[str]]:
    """``limits[2].per`` → ``per-<row>``: the sentence beside the field it is about."""
    found: dict[str, list[str]] = {}
    for name, problems in field_errors(error).items():
        if name.startswith("limits[") and "]." in name:
            index, _, field = name[len("limits["):].partition("].")
            row = origin.get(int(index), 0) if index.isdigit() else 0
            found[f"{field}-{row}"] = problems
        else:
            found.setdefault("limits", []).extend(problems)
    return found


@bp.post("/keys/<key_id>/limits")
@signed_in
def change_key_limits(key_id: str) -> Response:
    from service.console.owners import key_page

    sys = system()
    limits, rows, origin = submitted()
    raw = request.form.get("version", "")
    try:
        key = sys.keys_app.change_key(key_id, limits=limits, if_match=int(raw) if raw.isdigit() and len(raw) < 18
                                      else None, by=actor(), request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("NOT_FOUND", "UNAVAILABLE"):
            raise
        return key_page(key_id, status=400 if error.code != "CONFLICT" else 409,
                        errors=row_errors(error, origin), message=error.message, limit_rows_shown=rows)
    sys.after_command()
    return redirect(url_for("console.key_detail", key_id=key["id"], done="limits"), code=303)


@bp.post("/apps/<app_id>/limits")
@signed_in
def change_app_limits(app_id: str) -> Response:
    from service.console.owners import app_page

    sys = system()
    limits, rows, origin = submitted()
    try:
        app = sys.keys_app.change_app(app_id, limits=limits, by=actor(), request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("NOT_FOUND", "UNAVAILABLE"):
            raise
        return app_page(app_id, status=400, errors=row_errors(error, origin), message=error.message,
                        limit_rows_shown=rows)
    sys.after_command()
    return redirect(url_for("console.app_page", app_id=app["id"], done="limits"), code=303)
