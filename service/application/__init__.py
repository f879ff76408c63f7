"""The Keyledger application: its public methods are the use cases.

Endpoints, the command line, scheduler jobs and scripts call these methods and nothing
deeper. The use cases are grouped by subject, a module each; ``Keyledger`` combines them
into the one eventsourcing application (one event store, one notification log). Time comes
from ``clock`` and secrets from ``service.credentials``; the aggregates receive them as
arguments.
"""

from __future__ import annotations

from service.application.accounts import AccountUseCases
from service.application.apps import AppUseCases
from service.application.audit import AuditUseCases
from service.application.base import DESCRIPTION_MAX, NAME_MAX, Clock, utc_now
from service.application.keys import MAX_GRACE_SECONDS, KeyUseCases
from service.domain.audit import AuditLedger
from service.domain.keys import ApiKey

__all__ = ["DESCRIPTION_MAX", "MAX_GRACE_SECONDS", "NAME_MAX", "Clock", "Keyledger", "utc_now"]


class Keyledger(AccountUseCases, AppUseCases, KeyUseCases, AuditUseCases):
    """Accounts, apps and their scoped API keys, as immutable events; the audit trail's checkpoints."""

    name = "keyledger"
    # A key changed many times still loads in a fraction of a millisecond.
    snapshotting_intervals = {ApiKey: 50, AuditLedger: 50}
