"""Use cases: webhook endpoints (mixed into ``service.application.Keyledger``).

Admins register endpoints for any app or for all of them (``app_ids`` left out or ``[]``: every
app, and the deprecation campaign's events); owners only for their own apps (``[]``: every app
they own). Only whoever may see an endpoint may change it: its registrant, or an admin.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.persistence import IntegrityError, PersistenceError

from service.application.apps import SLUG
from service.application.base import (
    COMMAND_ATTEMPTS,
    DESCRIPTION_MAX,
    LedgerApplication,
    text_problem,
)
from service.domain.accounts import Account
from service.domain.actors import Actor, RequestInfo
from service.domain.apps import App
from service.domain.campaign import Reminder
from service.domain.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from service.webhooks import safety
from service.webhooks.domain import (
    EVENT_TYPES,
    WEBHOOK_NOTICE,
    AppNotYours,
    UnknownEventType,
    WebhookEndpoint,
)
from service.webhooks.secrets import SecretBox, new_secret

MAX_EVENT_TYPES = len(EVENT_TYPES)
MAX_APP_IDS = 100
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=7)


class WebhookUseCases(LedgerApplication):
    webhook_box: SecretBox | None = None  # set by the composition root (the pepper's key)
    webhooks_allow_private: bool = False  # KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE

    # -- commands ---------------------------------------------------------------------

    def register_webhook(self, *, url: object, event_types: object, app_ids: object = None,
                         description: object = None, by: Actor, request: RequestInfo) -> tuple[dict, str]:
        """A new endpoint and its signing secret (returned here only)."""
        self._may_manage_webhooks(by)
        url, event_types, app_ids, description = self._checked(url, event_types, app_ids, description, by)
        endpoint_id = uuid4()
        secret = new_secret()
        endpoint = WebhookEndpoint._create(
            WebhookEndpoint.Registered, id=endpoint_id, url=url, event_types=event_types, app_ids=app_ids,
            description=description, registrant_id=by.id, registrant_role="admin" if by.is_admin else "owner",
            sealed_secret=self._box().seal(secret, str(endpoint_id)), by=by.ref, request=request.as_dict(),
            timestamp=self.now())
        self._save_new(endpoint, conflict="The endpoint could not be registered; retry.")
        return self.webhook_view(endpoint), secret

    def change_webhook(self, endpoint_id: str, changes: dict, *, by: Actor, request: RequestInfo) -> dict:
        """Change an endpoint's url, event types, apps, description or status (enabled|disabled)."""
        for _attempt in range(COMMAND_ATTEMPTS):
            endpoint = self._manageable_webhook(endpoint_id, by)
            url, event_types, app_ids, description = self._checked(
                changes.get("url", endpoint.url), changes.get("event_types", endpoint.event_types),
                changes.get("app_ids", endpoint.app_ids), changes.get("description", endpoint.description),
                by, registrant=endpoint)
            status = changes.get("status", endpoint.status)
            if status not in ("enabled", "disabled"):
                raise InvalidRequest("status is enabled or disabled.", status=["Give enabled or disabled."])
            if not endpoint.change(url=url, event_types=event_types, app_ids=app_ids, description=description,
                                   status=status, by=by.ref, request=request.as_dict(), at=self.now()):
                return self.webhook_view(endpoint)
            if self._saved(endpoint):
                return self.webhook_view(endpoint)
        raise Conflict("The endpoint is being changed by someone else right now; retry.")

    def rotate_webhook_secret(self, endpoint_id: str, *, overlap: timedelta = DEFAULT_OVERLAP, by: Actor,
                              request: RequestInfo) -> tuple[dict, str]:
        """A new signing secret; the previous one keeps signing beside it for ``overlap``."""
        if not timedelta(0) <= overlap <= MAX_OVERLAP:
            raise InvalidRequest("overlap_seconds is 0 to 604800 (7 days).",
                                 overlap_seconds=["Give 0 to 604800 seconds."])
        for _attempt in range(COMMAND_ATTEMPTS):
            endpoint = self._manageable_webhook(endpoint_id, by)
            secret = new_secret()
            now = self.now()
            endpoint.rotate_secret(self._box().seal(secret, str(endpoint.id)), valid_until=now + overlap,
                                   by=by.ref, request=request.as_dict(), at=now)
            if self._saved(endpoint):
                return self.webhook_view(endpoint), secret
        raise Conflict("The endpoint is being changed by someone else right now; retry.")

    def delete_webhook(self, endpoint_id: str, *, by: Actor, request: RequestInfo) -> None:
        for _attempt in range(COMMAND_ATTEMPTS):
            endpoint = self._manageable_webhook(endpoint_id, by)
            endpoint.delete(by=by.ref, request=request.as_dict(), at=self.now())
            if self._saved(endpoint):
                return
        raise Conflict("The endpoint is being changed by someone else right now; retry.")

    def disable_failing_webhook(self, endpoint_id: str, *, reason: str) -> dict | None:
        """The deliverer gives up on an endpoint: disabled, and its registrant told by email (an
        entry of the campaign's mail outbox, recorded with the change: sent once, retried while
        SMTP is down). None if it was disabled already."""
        for _attempt in range(COMMAND_ATTEMPTS):
            endpoint = self._find(WebhookEndpoint, UUID(endpoint_id))
            now = self.now()
            by = Actor.system("webhooks").ref
            if endpoint is None or not endpoint.disable(reason=reason, by=by, request={}, at=now):
                return None
            notice = self._disabled_notice(endpoint, reason, by, now)
            try:
                self.save(endpoint, *([notice] if notice is not None else []))
            except IntegrityError:
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return self.webhook_view(endpoint)
        return None

    def _disabled_notice(self, endpoint: WebhookEndpoint, reason: str, by: str, now: datetime) -> Reminder | None:
        registrant = self._find(Account, UUID(endpoint.registrant_id))
        if registrant is None or not registrant.email:
            return None
        facts = {"endpoint_id": str(endpoint.id), "url": endpoint.url, "reason": reason,
                 "description": endpoint.description}
        return Reminder._create(
            Reminder.Recorded, id=uuid5(NAMESPACE_URL, f"keyledger:webhook-disabled:{endpoint.id}:{endpoint.version}"),
            sunset_at=now, stage=WEBHOOK_NOTICE, due_at=now, owner_id=str(registrant.id),
            owner_email=registrant.email, owner_name=registrant.name or "", apps=[facts], by=by, request={},
            timestamp=now)

    # -- queries ----------------------------------------------------------------------

    def get_webhook(self, endpoint_id: str, *, by: Actor) -> dict:
        return self.webhook_view(self._visible_webhook(endpoint_id, by))

    def managed_webhook(self, endpoint_id: str, *, by: Actor) -> dict:
        """The endpoint, if the caller may act on it (send again, replay): its registrant or an admin."""
        return self.webhook_view(self._manageable_webhook(endpoint_id, by))

    def webhook_reader(self, *, by: Actor) -> str | None:
        """Whose endpoints the caller may list: their own (owners), or everyone's (None)."""
        self._may_see_webhooks(by)
        return None if by.reads_everything else by.id

    def webhook_signing_secrets(self, endpoint_id: str, *, at: datetime) -> list[str]:
        """The secrets that sign a delivery at ``at``: the current one, and the previous one during
        a rotation's overlap. For the deliverer only: never shown, never logged."""
        endpoint = self._find(WebhookEndpoint, UUID(endpoint_id))
        if endpoint is None:
            return []
        box = self._box()
        found = [box.open(endpoint.sealed_secret, endpoint_id)]
        if endpoint.previous_sealed_secret and endpoint.previous_valid_until and at < endpoint.previous_valid_until:
            found.append(box.open(endpoint.previous_sealed_secret, endpoint_id))
        return found

    @staticmethod
    def webhook_view(endpoint: WebhookEndpoint) -> dict:
        return {"id": str(endpoint.id), "url": endpoint.url, "event_types": list(endpoint.event_types),
                "app_ids": list(endpoint.app_ids), "description": endpoint.description,
                "status": "deleted" if endpoint.deleted else endpoint.status,
                "registrant_id": endpoint.registrant_id, "created_at": endpoint.created_on,
                "secret_rotated_until": endpoint.previous_valid_until}

    # -- rules ------------------------------------------------------------------------

    def _box(self) -> SecretBox:
        if self.webhook_box is None:
            raise Unavailable("Webhook secrets cannot be sealed: the service was built without its pepper.")
        return self.webhook_box

    def _saved(self, endpoint: WebhookEndpoint) -> bool:
        try:
            self.save(endpoint)
        except IntegrityError:
            return False
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error
        return True

    def _may_see_webhooks(self, by: Actor) -> None:
        if by.kind == "key":
            raise Forbidden("API keys cannot manage webhooks; use a personal token (pat_…).")
        if not (by.is_admin or by.is_owner or by.is_auditor):
            raise Forbidden("Only owners and admins manage webhooks.")

    def _may_manage_webhooks(self, by: Actor) -> None:
        self._may_see_webhooks(by)
        if by.is_auditor:
            raise Forbidden("Auditors read; they cannot manage webhooks.")

    def _visible_webhook(self, endpoint_id: str, by: Actor) -> WebhookEndpoint:
        self._may_see_webhooks(by)
        missing = NotFound(f"No webhook endpoint with id {endpoint_id!r}.")
        try:
            uuid = UUID(endpoint_id)
        except (ValueError, TypeError, AttributeError):
            raise missing from None
        endpoint = self._find(WebhookEndpoint, uuid)
        if endpoint is None or endpoint.deleted:
            raise missing
        if by.reads_everything or endpoint.registrant_id == by.id:
            return endpoint
        raise missing

    def _manageable_webhook(self, endpoint_id: str, by: Actor) -> WebhookEndpoint:
        endpoint = self._visible_webhook(endpoint_id, by)
        self._may_manage_webhooks(by)
        return endpoint

    def _checked(self, url: object, event_types: object, app_ids: object, description: object, by: Actor,
                 registrant: WebhookEndpoint | None = None) -> tuple[str, list, list, str]:
        url = safety.check_url(url, allow_private=self.webhooks_allow_private)
        if (not isinstance(event_types, list) or not event_types or len(event_types) > MAX_EVENT_TYPES
                or not all(isinstance(t, str) for t in event_types)):
            raise UnknownEventType("event_types is a list of 1 or more event types.",
                                   event_types=[f"Give some of: {', '.join(EVENT_TYPES)}."])
        unknown = [t for t in event_types if t not in EVENT_TYPES]
        if unknown:
            raise UnknownEventType(f"Unknown event type {unknown[0]!r}.",
                                   event_types=[f"Unknown: {', '.join(map(repr, unknown))}; "
                                                f"give some of: {', '.join(EVENT_TYPES)}."])
        event_types = [t for t in EVENT_TYPES if t in event_types]  # canonical order, no repeats
        app_ids = [] if app_ids is None else app_ids
        if (not isinstance(app_ids, list) or len(app_ids) > MAX_APP_IDS
                or not all(isinstance(a, str) for a in app_ids)):
            raise AppNotYours("app_ids is a list of app ids.", app_ids=[f"Give at most {MAX_APP_IDS} app ids."])
        # whose apps: the caller's, unless an admin (an admin changing an owner's endpoint: the owner's)
        owner = None if by.is_admin and (registrant is None or registrant.registrant_role == "admin") else (
            registrant.registrant_id if registrant is not None else by.id)
        for app_id in app_ids:
            app = self._find(App, App.create_id(app_id)) if SLUG.fullmatch(app_id) else None
            if app is None or (owner is not None and app.owner_id != owner):
                raise AppNotYours(f"No app with id {app_id!r} of yours.",
                                  app_ids=[f"{app_id!r} is not an app you can register webhooks for."])
        app_ids = sorted(set(app_ids))
        description = "" if description is None else description
        if not isinstance(description, str):
            raise InvalidRequest("The description is not acceptable.", description=["Give text."])
        if description and (problem := text_problem(description, DESCRIPTION_MAX, required=False)):
            raise InvalidRequest("The description is not acceptable.", description=[problem])
        return url, event_types, app_ids, description.strip()
