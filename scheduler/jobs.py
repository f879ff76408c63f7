"""The deprecation campaign's jobs: plain functions of ``now``, no scheduler framework.

Each job is a reconciliation — "is anything due that has not been done?" — safe to run any
number of times, by a restarted process or by a second scheduler: everything it does is
recorded under a deterministic id (``service.domain.campaign``), and recording it again
answers "already recorded" instead of doing it twice.

* ``send_due_reminders``: the latest stage whose time has come (never an earlier one it
  overtook, none once the sunset has passed) records one reminder per owner on tokens.
* ``execute_sunset``: from the sunset on, legacy access is disabled for every client; then
  the sunset itself is recorded.
* ``send_final_notice``: once the sunset is recorded, one final notice per owner whose apps
  used tokens in the look-back window before it.
* ``deliver_pending_mail``: the outbox: recorded reminders are handed to the mail transport;
  each failure (with its retry time, backing off) and each delivery is recorded.
* ``sign_audit_checkpoint``: the audit chain's head signed (hourly); nothing new, nothing signed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from scheduler import expiry
from scheduler.messages import compose
from scheduler.transport import DeliveryFailed, MailTransport
from service.domain.actors import NO_REQUEST, Actor
from service.domain.campaign import FINAL, CampaignPlan, Stage
from service.domain.errors import KeyledgerError
from service.domain.expiry import EXPIRY_NOTICE
from service.domain.leaks import LEAK_NOTICE
from service.webhooks.domain import WEBHOOK_NOTICE

log = logging.getLogger("keyledger.campaign")

SCHEDULER = Actor.system("scheduler")
MAX_RETRY_DELAY = timedelta(minutes=15)


class LegacyUsageReader(Protocol):
    """What the campaign reads of the legacy-usage projection."""

    def owners_using_tokens(self, since: datetime) -> list[dict]:
        """Owners with an app whose last legacy use is at or after ``since``, with those apps."""

    def clients(self) -> list[dict]:
        """Every legacy client: ``{"app_id", "client_id", "disabled_at"}``."""


class CampaignRecords(Protocol):
    """What the campaign reads of its own progress view."""

    def owners_recorded(self, sunset_at: datetime, stage: str) -> set[str]: ...

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[str]: ...


@dataclass(frozen=True)
class Mailer:
    transport: MailTransport
    mail_from: str
    lookback: timedelta  # named in the emails ("used an access token in the last 30 days")
    first_retry: timedelta = timedelta(seconds=10)  # doubles with each failed attempt

    def retry_delay(self, attempt: int) -> timedelta:
        """How long to wait after the ``attempt``-th failure: 10 s, 20 s, 40 s … at most 15 minutes."""
        return min(self.first_retry * 2 ** max(0, min(attempt - 1, 30)), max(MAX_RETRY_DELAY, self.first_retry))


def send_due_reminders(keys_app: Any, usage: LegacyUsageReader, progress: CampaignRecords,
                       plan: CampaignPlan, now: datetime) -> int:
    """Record the due stage's reminder for every owner on tokens not yet recorded; returns how many."""
    stage = plan.due_stage(now)
    if stage is None:
        return 0
    if keys_app.begin_stage(sunset_at=plan.sunset_at, stage=stage, by=SCHEDULER):
        log.info("campaign stage %s (due %s) begins", stage.name, stage.due_at.isoformat())
    return _record_reminders(keys_app, progress, plan, stage, usage.owners_using_tokens(now - plan.lookback))


def execute_sunset(keys_app: Any, usage: LegacyUsageReader, plan: CampaignPlan, now: datetime) -> int:
    """From the sunset on: disable legacy access for every client still enabled, then record the
    sunset (once, when every client is disabled). Returns how many clients this run disabled."""
    if not plan.sunset_due(now):
        return 0
    disabled, failed = 0, 0
    clients = usage.clients()
    for client in clients:
        if client.get("disabled_at") is not None:
            continue
        try:
            if keys_app.disable_legacy_access(client["app_id"], by=SCHEDULER, request=NO_REQUEST):
                disabled += 1
        except KeyledgerError as error:  # one client must not hold up the others; the next run retries
            failed += 1
            log.error("sunset: legacy access of app %s could not be disabled yet: %s %s", client["app_id"],
                      error.code, error.message)
    if disabled:
        log.info("sunset: legacy access disabled for %d client(s)", disabled)
    if not failed and not keys_app.sunset_recorded(plan.sunset_at):
        if keys_app.record_sunset(sunset_at=plan.sunset_at, clients_disabled=len(clients), by=SCHEDULER):
            log.info("sunset of %s executed: %d legacy client(s) disabled", plan.sunset_at.isoformat(),
                     len(clients))
    return disabled


def send_final_notice(keys_app: Any, usage: LegacyUsageReader, progress: CampaignRecords,
                      plan: CampaignPlan, now: datetime) -> int:
    """Once the sunset is recorded: a final notice to every owner whose apps used tokens in the
    look-back window before it. Returns how many this run recorded."""
    if not plan.sunset_due(now) or not keys_app.sunset_recorded(plan.sunset_at):
        return 0
    stage = plan.final_stage
    keys_app.begin_stage(sunset_at=plan.sunset_at, stage=stage, by=SCHEDULER)
    owners = usage.owners_using_tokens(plan.sunset_at - plan.lookback)
    return _record_reminders(keys_app, progress, plan, stage, owners)


def deliver_pending_mail(keys_app: Any, progress: CampaignRecords, mailer: Mailer, now: datetime,
                         limit: int = 100) -> int:
    """Hand recorded reminders whose (next) attempt is due to the transport; returns how many
    were delivered. A transient failure (server down) ends the run: the others wait."""
    delivered = 0
    for rid in progress.due_deliveries(now, limit):
        reminder = keys_app.reminder(rid)  # the store, not the view, decides
        if not reminder["open"] or (reminder["next_attempt_at"] and reminder["next_attempt_at"] > now):
            continue
        if reminder["stage"] == EXPIRY_NOTICE:  # the keys revoked, rolled or expired since are left out
            reminder = expiry.still_due(keys_app, reminder)
            if reminder is None:
                keys_app.withdraw_reminder(rid, reason="every key it lists was revoked, rolled or expired "
                                                       "before it could be delivered", by=SCHEDULER)
                continue
        elif reminder["stage"] not in (FINAL, LEAK_NOTICE, WEBHOOK_NOTICE) and now >= reminder["sunset_at"]:
            keys_app.withdraw_reminder(rid, reason="the sunset passed before it could be delivered; "
                                                   "the final notice replaces it", by=SCHEDULER)
            continue
        try:
            message = compose(reminder, mail_from=mailer.mail_from, lookback=mailer.lookback)
        except Exception as error:  # one unsendable reminder must not hold up the outbox
            log.exception("reminder %s (%s) cannot be composed; giving it up", rid, reminder["stage"])
            keys_app.record_delivery_failure(rid, error=f"the email could not be composed: {type(error).__name__}",
                                             permanent=True, next_attempt_at=None, by=SCHEDULER)
            continue
        name = f"{reminder['recorded_at']:%Y%m%dT%H%M%S}-{reminder['stage']}-{rid}"
        try:
            where = mailer.transport.send(message, name)
        except DeliveryFailed as failure:
            attempt = reminder["attempts"] + 1
            retry_at = None if failure.permanent else now + mailer.retry_delay(attempt)
            keys_app.record_delivery_failure(rid, error=failure.reason, permanent=failure.permanent,
                                             next_attempt_at=retry_at, by=SCHEDULER)
            if failure.permanent:
                log.warning("reminder %s (%s) refused for good: %s", rid, reminder["stage"], failure.reason)
                continue
            log.warning("reminder %s (%s): attempt %d failed, next at %s: %s", rid, reminder["stage"],
                        attempt, retry_at.isoformat(), failure.reason)
            break
        keys_app.record_delivery(rid, transport=where, by=SCHEDULER)
        delivered += 1
    if delivered:
        log.info("delivered %d campaign email(s)", delivered)
    return delivered


def _record_reminders(keys_app: Any, progress: CampaignRecords, plan: CampaignPlan, stage: Stage,
                      owners: list[dict]) -> int:
    known = progress.owners_recorded(plan.sunset_at, stage.name)
    recorded = 0
    for owner in owners:
        if owner["owner_id"] in known or not owner.get("apps"):
            continue
        if not owner.get("owner_email"):
            log.warning("campaign stage %s: owner %s has no e-mail address; not recorded", stage.name,
                        owner["owner_id"])
            continue
        if keys_app.record_reminder(sunset_at=plan.sunset_at, stage=stage, owner=owner,
                                    apps=owner["apps"], by=SCHEDULER) is not None:
            recorded += 1
    if recorded:
        log.info("campaign stage %s: %d reminder(s) recorded", stage.name, recorded)
    return recorded


def sign_audit_checkpoint(sign: Callable[[datetime], dict | None], now: datetime) -> dict | None:
    """Sign the audit chain's head as of ``now`` with ``sign`` (the composition's
    ``System.sign_checkpoint``); None when nothing happened since the last checkpoint."""
    return sign(now)
