"""Use cases: the deprecation campaign (reminders and their delivery, stages, the sunset record).

The scheduler's jobs decide *what* is due (``scheduler.jobs``); these methods record it.
Records have deterministic ids (``service.domain.campaign``): recording something a second
time — a rerun, a restart, a second scheduler — answers False instead of duplicating it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError

from service.application.base import COMMAND_ATTEMPTS, LedgerApplication
from service.domain.actors import NO_REQUEST, Actor
from service.domain.campaign import (
    CampaignStage,
    Reminder,
    Stage,
    Sunset,
    reminder_id,
    stage_id,
    sunset_id,
)
from service.domain.errors import Conflict, Forbidden, NotFound, Unavailable

APP_FIELDS = ("app_id", "app_name", "client_id", "last_used_at", "uses", "windows", "uses_api_keys")


class CampaignUseCases(LedgerApplication):
    def record_reminder(self, *, sunset_at: datetime, stage: Stage, owner: dict, apps: list[dict],
                        by: Actor) -> UUID | None:
        """Record one owner's reminder for one stage (the outbox entry of its email).

        Returns its id, or None if it was already recorded (by this or another scheduler)."""
        self._require_system(by)
        rid = reminder_id(sunset_at, owner["owner_id"], stage.name)
        reminder = Reminder._create(
            Reminder.Recorded, id=rid, sunset_at=sunset_at, stage=stage.name, due_at=stage.due_at,
            owner_id=owner["owner_id"], owner_email=owner["owner_email"],
            owner_name=owner.get("owner_name") or "", apps=[_plain_app(app) for app in apps],
            by=by.ref, request=NO_REQUEST.as_dict(), timestamp=self.now(),
        )
        return rid if self._save_once(reminder) else None

    def reminder_recorded(self, sunset_at: datetime, owner_id: str, stage: str) -> bool:
        return self._find(Reminder, reminder_id(sunset_at, owner_id, stage)) is not None

    def reminder(self, rid: UUID | str) -> dict:
        """Everything about one reminder: what its email says and how its delivery stands."""
        found = self._find(Reminder, UUID(str(rid)))
        if found is None:
            raise NotFound(f"No reminder with id {rid}.")
        return _reminder_view(found)

    def record_delivery(self, rid: UUID | str, *, transport: str, by: Actor) -> bool:
        """The email was handed over (accepted by the SMTP server, or written to the outbox)."""
        self._require_system(by)
        return self._update_reminder(rid, lambda r, now: r.record_delivery(
            transport=transport, by=by.ref, request=NO_REQUEST.as_dict(), at=now))

    def record_delivery_failure(self, rid: UUID | str, *, error: str, permanent: bool,
                                next_attempt_at: datetime | None, by: Actor) -> bool:
        self._require_system(by)

        def fail(reminder: Reminder, now: datetime) -> bool:
            was = reminder.attempts
            reminder.record_failure(error=error, permanent=permanent, next_attempt_at=next_attempt_at,
                                    by=by.ref, request=NO_REQUEST.as_dict(), at=now)
            return reminder.attempts != was

        return self._update_reminder(rid, fail)

    def withdraw_reminder(self, rid: UUID | str, *, reason: str, by: Actor) -> bool:
        """Never deliver this reminder (its news is out of date)."""
        self._require_system(by)
        return self._update_reminder(rid, lambda r, now: r.withdraw(
            reason=reason, by=by.ref, request=NO_REQUEST.as_dict(), at=now))

    def begin_stage(self, *, sunset_at: datetime, stage: Stage, by: Actor) -> bool:
        """Record that a stage is being acted on; False if it already was."""
        self._require_system(by)
        record = CampaignStage._create(
            CampaignStage.Began, id=stage_id(sunset_at, stage.name), sunset_at=sunset_at,
            stage=stage.name, due_at=stage.due_at, by=by.ref, request=NO_REQUEST.as_dict(),
            timestamp=self.now())
        return self._save_once(record)

    def stage_begun(self, sunset_at: datetime, stage: str) -> bool:
        return self._find(CampaignStage, stage_id(sunset_at, stage)) is not None

    def record_sunset(self, *, sunset_at: datetime, clients_disabled: int, by: Actor) -> bool:
        """Record that legacy access is disabled for every client; False if it already was."""
        self._require_system(by)
        record = Sunset._create(Sunset.Executed, id=sunset_id(sunset_at), sunset_at=sunset_at,
                                clients_disabled=clients_disabled, by=by.ref,
                                request=NO_REQUEST.as_dict(), timestamp=self.now())
        return self._save_once(record)

    def sunset_recorded(self, sunset_at: datetime) -> bool:
        return self._find(Sunset, sunset_id(sunset_at)) is not None

    def check_reads_campaign(self, by: Actor) -> None:
        """Admins and auditors read the campaign's progress; owners and keys may not."""
        if by.kind == "key" or not (by.is_admin or by.is_auditor):
            raise Forbidden("Only admins and auditors can read the deprecation campaign.")

    # -- internals -----------------------------------------------------------------

    @staticmethod
    def _require_system(by: Actor) -> None:
        if not by.is_admin:
            raise Forbidden("Only the scheduler (or an admin) records the campaign.")

    def _save_once(self, aggregate: Any) -> bool:
        try:
            self.save(aggregate)
        except IntegrityError:  # the deterministic id exists: recorded before
            return False
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error
        return True

    def _update_reminder(self, rid: UUID | str, change: Callable[[Reminder, datetime], bool]) -> bool:
        for _attempt in range(COMMAND_ATTEMPTS):
            reminder = self._find(Reminder, UUID(str(rid)))
            if reminder is None:
                raise NotFound(f"No reminder with id {rid}.")
            changed = change(reminder, self.now())
            if not changed:
                return False
            try:
                self.save(reminder)
            except IntegrityError:
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return True
        raise Conflict("The reminder is being changed by someone else right now; retry.")


def _plain_app(app: dict) -> dict:
    """An app as the reminder's event stores it: plain values, times as RFC 3339 UTC text."""
    plain = {name: app.get(name) for name in APP_FIELDS}
    last = plain["last_used_at"]
    if isinstance(last, datetime):
        plain["last_used_at"] = last.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    plain["uses"] = int(plain["uses"] or 0)
    plain["windows"] = int(plain["windows"] or 0)
    plain["uses_api_keys"] = bool(plain["uses_api_keys"])
    return plain


def _reminder_view(reminder: Reminder) -> dict:
    return {
        "id": str(reminder.id), "sunset_at": reminder.sunset_at, "stage": reminder.stage,
        "due_at": reminder.due_at, "owner_id": reminder.owner_id, "owner_email": reminder.owner_email,
        "owner_name": reminder.owner_name, "apps": [dict(app) for app in reminder.apps],
        "recorded_at": reminder.created_on, "attempts": reminder.attempts,
        "delivered_at": reminder.delivered_at, "failed_permanently": reminder.failed_permanently,
        "withdrawn": reminder.withdrawn, "next_attempt_at": reminder.next_attempt_at,
        "open": reminder.open,
    }
