"""The expiry reminders' job: a plain function of ``now``, a reconciliation like the campaign's.

``send_expiry_reminders`` finds, in the views, the keys whose reminder stage is due by the end
of today (``service.domain.expiry``) and that were used in the look-back window, groups them by
owner and asks the application to record each owner's mail of the day (the use case re-checks
every key against the event store). The campaign's outbox (``scheduler.jobs.deliver_pending_mail``)
then delivers each mail once, retrying while the mail server is down; ``still_due`` is its check
at delivery time (a key revoked, rolled or expired since is left out; a mail left with none is
withdrawn).

``record_expiries`` records, after a key's expiry, its ``ApiKey.Expired`` (the webhook type
``key.expired``): the keys the views show expired and not recorded, each re-checked against the
event store, so a rerun, a restart or a second scheduler records nothing twice (the key's
version). A key revoked before it expired gets none. What verification says does not wait for
it: a key is expired from its ``expires_at`` on.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from service.domain.actors import Actor
from service.domain.errors import KeyledgerError
from service.domain.expiry import ExpiryPlan

log = logging.getLogger("keyledger.expiry")

SCHEDULER = Actor.system("scheduler")


class ExpiringKeysReader(Protocol):
    def expiring_between(self, start: datetime, end: datetime) -> list[dict]: ...


class ExpiredKeysReader(Protocol):
    def expired_unrecorded(self, now: datetime, limit: int = 500) -> list[str]: ...


class LastUsedReader(Protocol):
    def of(self, key_ids: Any) -> dict[str, datetime]: ...


def send_expiry_reminders(keys_app: Any, expiring: ExpiringKeysReader, last_used: LastUsedReader,
                          plan: ExpiryPlan, now: datetime) -> int:
    """Record today's expiry mail for every owner with a key due a stage; returns how many."""
    if not plan.stages:
        return 0
    candidates = []
    for key in expiring.expiring_between(*plan.window(now)):
        if plan.due_stage(expires_at=key["expires_at"], created_at=key["created_at"], rolled_at=key["rolled_at"],
                          reminded=key["reminded"], now=now) is not None:
            candidates.append(key)
    if not candidates:
        return 0
    used = last_used.of([key["key_id"] for key in candidates])
    since = now - plan.lookback
    by_owner: dict[str, list[str]] = {}
    for key in candidates:
        last = used.get(key["key_id"])
        if last is not None and last >= since:
            by_owner.setdefault(key["owner_id"], []).append(key["key_id"])
    recorded = 0
    for owner_id, key_ids in sorted(by_owner.items()):
        try:
            if keys_app.record_expiry_reminder(owner_id=owner_id, key_ids=key_ids, plan=plan,
                                               last_used={k: used[k] for k in key_ids}, by=SCHEDULER):
                recorded += 1
        except KeyledgerError as error:  # one owner must not hold up the others; the next run retries
            log.error("expiry reminder of owner %s could not be recorded yet: %s %s", owner_id, error.code,
                      error.message)
    if recorded:
        log.info("expiry reminders: %d owner mail(s) recorded", recorded)
    return recorded


def record_expiries(keys_app: Any, expired: ExpiredKeysReader, now: datetime, limit: int = 500) -> int:
    """Record ``ApiKey.Expired`` for up to ``limit`` keys expired by ``now`` and not recorded yet
    (the next run takes the rest); returns how many this run recorded."""
    recorded = 0
    for key_id in expired.expired_unrecorded(now, limit):
        try:
            if keys_app.record_expiry(key_id, by=SCHEDULER):
                recorded += 1
        except KeyledgerError as error:  # one key must not hold up the others; the next run retries
            log.error("the expiry of key %s could not be recorded yet: %s %s", key_id, error.code, error.message)
    if recorded:
        log.info("expiries: %d key(s) recorded as expired", recorded)
    return recorded


def still_due(keys_app: Any, reminder: dict) -> dict | None:
    """The expiry mail as it should go out now (only the keys that still concern the owner), or
    None when none does (the outbox withdraws it)."""
    keys = keys_app.keys_still_expiring(reminder)
    return {**reminder, "apps": keys} if keys else None
