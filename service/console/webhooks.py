"""Webhook endpoints in the console: register (the secret shown once), change, enable or disable,
rotate the secret, delete; the delivery log with "send again" and "replay since".

Each form calls the use case (or the outbox query) the API's endpoint calls; owners see their own
endpoints and register them for their own apps, admins see and manage all, auditors read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Response, redirect, request, url_for

from projections.audit import microseconds
from service.api import context
from service.console.web import actor, bp, field_errors, page, signed_in, system
from service.domain.errors import KeyledgerError, NotFound
from service.webhooks.domain import EVENT_TYPES

DONE = {"changed": "The endpoint was changed.", "retried": "The delivery is queued to be sent again.",
        "replayed": "The deliveries since that time are queued to be sent again."}


def _outbox():  # noqa: ANN202 - projections.webhooks.WebhookOutbox
    outbox = system().webhooks
    if outbox is None:
        raise NotFound("Webhooks are not part of this build.")
    return outbox


def _my_apps() -> list[dict]:
    sys = system()
    if actor().is_admin:
        return sys.directory.apps(owner_id=None)
    return sys.directory.apps(owner_id=sys.keys_app.listing_owner(by=actor()))


def secret_page(title: str, endpoint: dict, secret: str) -> Response:
    response = page("console/webhook_secret.html", title=title, endpoint=endpoint, secret=secret)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.get("/webhooks")
@signed_in
def webhooks(*, status: int = 200, errors: dict | None = None, message: str | None = None,
             form: dict | None = None) -> Response:
    keys_app = system().keys_app
    registrant = keys_app.webhook_reader(by=actor())
    endpoints = _outbox().endpoints(registrant_id=registrant)
    return page("console/webhooks.html", status=status, title="Webhooks", endpoints=endpoints,
                event_types=EVENT_TYPES, apps=_my_apps(), can_change=not actor().is_auditor,
                errors=errors or {}, message=message,
                form=form or {"url": "", "description": "", "event_types": [], "app_ids": []})


@bp.post("/webhooks")
@signed_in
def register_webhook() -> Response:
    sys = system()
    form = {"url": request.form.get("url", "").strip()[:2100], "description": request.form.get("description", "")[:300],
            "event_types": request.form.getlist("event_type")[:20], "app_ids": request.form.getlist("app_id")[:100]}
    try:
        endpoint, secret = sys.keys_app.register_webhook(
            url=form["url"], event_types=form["event_types"], app_ids=form["app_ids"],
            description=form["description"] or None, by=actor(), request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("UNAVAILABLE", "FORBIDDEN"):
            raise
        return webhooks(status=400, errors=field_errors(error), message=error.message, form=form)
    sys.after_command()
    return secret_page("Your new webhook endpoint", endpoint, secret)


@bp.get("/webhooks/<endpoint_id>")
@signed_in
def webhook_page(endpoint_id: str, *, status: int = 200, errors: dict | None = None,
                 message: str | None = None) -> Response:
    sys = system()
    endpoint = sys.keys_app.get_webhook(endpoint_id, by=actor())  # NotFound for someone else's
    outbox = _outbox()
    view = outbox.endpoint(endpoint["id"]) or {}
    deliveries = outbox.deliveries(endpoint["id"], limit=100)
    done = DONE.get(request.args.get("done", "")) if request.method == "GET" else None
    return page("console/webhook.html", status=status, title=endpoint["description"] or endpoint["url"],
                endpoint=endpoint, disabled_reason=view.get("disabled_reason"), deliveries=deliveries,
                counts=outbox.counts(endpoint["id"]), event_types=EVENT_TYPES,
                can_change=not actor().is_auditor, errors=errors or {}, message=message, done=done,
                default_since=(sys.keys_app.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))


@bp.post("/webhooks/<endpoint_id>/change")
@signed_in
def change_webhook(endpoint_id: str) -> Response:
    sys = system()
    changes: dict = {}
    if "status" in request.form:
        changes["status"] = request.form["status"]
    if "url" in request.form:
        changes["url"] = request.form["url"].strip()[:2100]
        changes["description"] = request.form.get("description", "")[:300]
        changes["event_types"] = request.form.getlist("event_type")[:20]
    try:
        sys.keys_app.change_webhook(endpoint_id, changes, by=actor(), request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("NOT_FOUND", "UNAVAILABLE", "FORBIDDEN"):
            raise
        return webhook_page(endpoint_id, status=400, errors=field_errors(error), message=error.message)
    sys.after_command()
    return redirect(url_for("console.webhook_page", endpoint_id=endpoint_id, done="changed"), code=303)


@bp.post("/webhooks/<endpoint_id>/rotate")
@signed_in
def rotate_webhook_secret(endpoint_id: str) -> Response:
    sys = system()
    raw = request.form.get("overlap_hours", "24")
    hours = int(raw) if raw.isdigit() and len(raw) < 5 else -1
    try:
        endpoint, secret = sys.keys_app.rotate_webhook_secret(
            endpoint_id, overlap=timedelta(hours=hours), by=actor(), request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("NOT_FOUND", "UNAVAILABLE", "FORBIDDEN"):
            raise
        return webhook_page(endpoint_id, status=400, errors={"overlap_hours": [error.message]},
                            message=error.message)
    sys.after_command()
    return secret_page("The endpoint's new secret", endpoint, secret)


@bp.post("/webhooks/<endpoint_id>/delete")
@signed_in
def delete_webhook(endpoint_id: str) -> Response:
    sys = system()
    sys.keys_app.delete_webhook(endpoint_id, by=actor(), request=context.request_info())
    sys.after_command()
    return redirect(url_for("console.webhooks"), code=303)


@bp.post("/webhooks/<endpoint_id>/deliveries/<delivery_id>/retry")
@signed_in
def retry_delivery(endpoint_id: str, delivery_id: str) -> Response:
    sys = system()
    endpoint = sys.keys_app.managed_webhook(endpoint_id, by=actor())
    if not _outbox().send_again(endpoint["id"], delivery_id, now_us=microseconds(sys.keys_app.now())):
        raise NotFound(f"No delivery {delivery_id!r} of this endpoint.")
    return redirect(url_for("console.webhook_page", endpoint_id=endpoint["id"], done="retried"), code=303)


@bp.post("/webhooks/<endpoint_id>/replay")
@signed_in
def replay_webhook(endpoint_id: str) -> Response:
    sys = system()
    endpoint = sys.keys_app.managed_webhook(endpoint_id, by=actor())
    text = request.form.get("since", "").strip()[:40]
    try:
        since = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return webhook_page(endpoint["id"], status=400, errors={"since": ["Give a time, e.g. 2026-12-06T09:00 (UTC)."]},
                            message="Nothing was replayed; see the field marked below.")
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since
    _outbox().replay(endpoint["id"], since_us=microseconds(since), now_us=microseconds(sys.keys_app.now()))
    return redirect(url_for("console.webhook_page", endpoint_id=endpoint["id"], done="replayed"), code=303)
