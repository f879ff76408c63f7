"""Webhook endpoints as events: registered, changed, secret rotated, disabled, deleted.

An endpoint belongs to whoever registered it (``registrant_id``; an admin's endpoint may cover
every app, an owner's only their own). Its signing secret is never in an event: ``sealed_secret``
is the secret encrypted under a key the service derives from its pepper (``service.webhooks.secrets``),
so the delivering process can sign with it and the event store alone cannot.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate
from service.domain.errors import KeyledgerError

# The webhook type of each audit event type (``projections.audit.event_type``); every type in
# EVENT_TYPES has at least one.
SOURCES: dict[str, str] = {
    "ApiKey.Issued": "key.created",
    "ApiKey.ScopesChanged": "key.updated",
    "ApiKey.DescriptionChanged": "key.updated",
    "ApiKey.LimitsChanged": "key.updated",
    "ApiKey.Restricted": "key.updated",
    "ApiKey.Rolled": "key.rolled",
    "ApiKey.Revoked": "key.revoked",
    "ApiKey.Leaked": "key.leaked",
    "ApiKey.Expiring": "key.expiring",  # a reminder before expiry recorded (service.application.expiry)
    "ApiKey.Expired": "key.expired",  # a key's expiry recorded, once, after it passed (scheduler.expiry)
    "App.Registered": "app.created",
    "LegacyUseWindow.LegacyTokenUsed": "legacy.token_used",
    "CampaignStage.Began": "campaign.stage_sent",
    "Sunset.Executed": "campaign.sunset",
}
EVENT_TYPES: tuple[str, ...] = (
    "key.created", "key.updated", "key.rolled", "key.revoked", "key.leaked", "key.expiring", "key.expired",
    "app.created", "legacy.token_used", "campaign.stage_sent", "campaign.sunset",
)
# Events that belong to no app (the deprecation campaign): only endpoints covering every app get them.
DEPLOYMENT_TYPES = frozenset({"campaign.stage_sent", "campaign.sunset"})
# An endpoint disabled after failing for days: its registrant's email goes through the campaign's
# mail outbox (service.domain.campaign's Reminder) as a reminder of this stage, like a leak notice.
WEBHOOK_NOTICE = "webhook-disabled"


class InvalidWebhookUrl(KeyledgerError):
    code = "INVALID_WEBHOOK_URL"


class UnknownEventType(KeyledgerError):
    code = "UNKNOWN_EVENT_TYPE"


class AppNotYours(KeyledgerError):
    code = "UNKNOWN_APP"


class WebhookEndpoint(LedgerAggregate):
    class Registered(LedgerAggregate.Created):
        url: str
        event_types: list
        app_ids: list  # [] : every app the registrant may see (an admin: every app and the campaign)
        description: str
        registrant_id: str
        registrant_role: str  # admin | owner
        sealed_secret: str

    class Changed(LedgerAggregate.Event):
        url: str
        event_types: list
        app_ids: list
        description: str
        status: str  # enabled | disabled

    class SecretRotated(LedgerAggregate.Event):
        sealed_secret: str
        previous_sealed_secret: str
        previous_valid_until: datetime  # both secrets sign until then

    class Disabled(LedgerAggregate.Event):
        reason: str  # e.g. every delivery failing for three days

    class Deleted(LedgerAggregate.Event):
        pass

    status = "enabled"
    deleted = False
    previous_sealed_secret: str | None = None
    previous_valid_until: datetime | None = None

    @event(Registered)
    def __init__(self, url: str, event_types: list, app_ids: list, description: str, registrant_id: str,
                 registrant_role: str, sealed_secret: str, by: str, request: dict) -> None:
        self.url = url
        self.event_types = list(event_types)
        self.app_ids = list(app_ids)
        self.description = description
        self.registrant_id = registrant_id
        self.registrant_role = registrant_role
        self.sealed_secret = sealed_secret

    def change(self, *, url: str, event_types: list, app_ids: list, description: str, status: str, by: str,
               request: dict, at: datetime) -> bool:
        if (url, list(event_types), list(app_ids), description, status) == (
                self.url, self.event_types, self.app_ids, self.description, self.status):
            return False
        self._change(url=url, event_types=list(event_types), app_ids=list(app_ids), description=description,
                     status=status, by=by, request=request, timestamp=at)
        return True

    @event(Changed)
    def _change(self, url: str, event_types: list, app_ids: list, description: str, status: str, by: str,
                request: dict, timestamp: datetime) -> None:
        self.url, self.event_types, self.app_ids = url, list(event_types), list(app_ids)
        self.description, self.status = description, status

    def rotate_secret(self, sealed_secret: str, *, valid_until: datetime, by: str, request: dict,
                      at: datetime) -> None:
        self._rotate(sealed_secret=sealed_secret, previous_sealed_secret=self.sealed_secret,
                     previous_valid_until=valid_until, by=by, request=request, timestamp=at)

    @event(SecretRotated)
    def _rotate(self, sealed_secret: str, previous_sealed_secret: str, previous_valid_until: datetime, by: str,
                request: dict, timestamp: datetime) -> None:
        self.sealed_secret = sealed_secret
        self.previous_sealed_secret = previous_sealed_secret
        self.previous_valid_until = previous_valid_until

    def disable(self, *, reason: str, by: str, request: dict, at: datetime) -> bool:
        if self.status == "disabled" or self.deleted:
            return False
        self._disable(reason=reason, by=by, request=request, timestamp=at)
        return True

    @event(Disabled)
    def _disable(self, reason: str, by: str, request: dict, timestamp: datetime) -> None:
        self.status = "disabled"

    def delete(self, *, by: str, request: dict, at: datetime) -> None:
        if not self.deleted:
            self._delete(by=by, request=request, timestamp=at)

    @event(Deleted)
    def _delete(self, by: str, request: dict, timestamp: datetime) -> None:
        self.deleted = True
        self.status = "disabled"

    @property
    def endpoint_id(self) -> UUID:
        return self.id
