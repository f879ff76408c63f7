"""The Keyledger application: its public methods are the use cases.

Endpoints, the command line, scheduler jobs and scripts call these methods and nothing
deeper. The use cases are grouped by subject, a module each; ``Keyledger`` combines them
into the one eventsourcing application (one event store, one notification log). Time comes
from ``clock`` and secrets from ``service.credentials``; the aggregates receive them as
arguments.
"""

from __future__ import annotations

from service import credentials
from service.application.accounts import AccountUseCases
from service.application.apps import AppUseCases
from service.application.audit import AuditUseCases
from service.application.base import DESCRIPTION_MAX, NAME_MAX, Clock, utc_now
from service.application.campaign import CampaignUseCases
from service.application.expiry import ExpiryUseCases
from service.application.idempotency import IdempotencyUseCases
from service.application.keys import MAX_GRACE_SECONDS, KeyUseCases
from service.application.leaks import LeakUseCases
from service.application.legacy import LegacyPolicy, LegacyUseCases
from service.domain.audit import AuditLedger
from service.domain.keys import ApiKey
from service.domain.legacy import LegacyClient
from service.webhooks.application import WebhookUseCases

__all__ = ["DESCRIPTION_MAX", "MAX_GRACE_SECONDS", "NAME_MAX", "Clock", "Keyledger", "LegacyPolicy",
           "utc_now"]


class Keyledger(AccountUseCases, AppUseCases, KeyUseCases, LegacyUseCases, AuditUseCases, CampaignUseCases,
                IdempotencyUseCases, LeakUseCases, ExpiryUseCases, WebhookUseCases):
    """Accounts, apps, their scoped API keys and legacy OAuth2 clients, and the deprecation
    campaign, as immutable events; the audit trail's checkpoints."""

    name = "keyledger"
    # A key changed many times still loads in a fraction of a millisecond; so does a legacy
    # client that has issued thousands of access tokens.
    snapshotting_intervals = {ApiKey: 50, LegacyClient: 8, AuditLedger: 50}

    def __init__(self, env: dict[str, str] | None = None, *, digester: credentials.Digester,
                 clock: Clock = utc_now, legacy: LegacyPolicy | None = None, seal_key: bytes | None = None) -> None:
        super().__init__(env=env, digester=digester, clock=clock, seal_key=seal_key)
        self.legacy = legacy or LegacyPolicy()
