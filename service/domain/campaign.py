"""The deprecation campaign: its plan (stages before the sunset), reminders, stages and the sunset.

A campaign is identified by its sunset instant. Every record of it has a deterministic id
derived from that instant and what it is about (an owner and a stage, a stage, the sunset),
so a rerun, a restart or a second scheduler that tries to record it again conflicts with
the first record instead of duplicating it.

A ``Reminder`` is also the outbox entry for its email: recorded first, with everything the
email says, then delivered; each failed attempt and the delivery are events of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate

FINAL = "final"  # the stage name of the notice sent once the sunset has been executed


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reminder_id(sunset_at: datetime, owner_id: str, stage: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"keyledger:campaign:{_instant(sunset_at)}:reminder:{owner_id}:{stage}")


def stage_id(sunset_at: datetime, stage: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"keyledger:campaign:{_instant(sunset_at)}:stage:{stage}")


def sunset_id(sunset_at: datetime) -> UUID:
    return uuid5(NAMESPACE_URL, f"keyledger:campaign:{_instant(sunset_at)}:sunset")


@dataclass(frozen=True)
class Stage:
    name: str  # "90d", "30d", … as configured; FINAL for the final notice
    due_at: datetime


@dataclass(frozen=True)
class CampaignPlan:
    """When each reminder is due, when access tokens stop, and whom the campaign concerns."""

    sunset_at: datetime
    stages: tuple[Stage, ...]  # earliest first
    lookback: timedelta  # owners whose apps used a token this recently are "on tokens"

    @classmethod
    def of(cls, sunset_at: datetime, reminders: dict[str, timedelta], lookback: timedelta) -> CampaignPlan:
        """``reminders``: stage name → how long before the sunset it is due."""
        stages = sorted((Stage(name, sunset_at - before) for name, before in reminders.items()),
                        key=lambda stage: stage.due_at)
        return cls(sunset_at=sunset_at, stages=tuple(stages), lookback=lookback)

    def due_stage(self, now: datetime) -> Stage | None:
        """The latest stage whose time has come, while the sunset has not; None otherwise.

        After downtime only this one is due: the earlier ones it overtook are never sent (an
        owner does not get three reminders in one minute), and after the sunset none is."""
        if now >= self.sunset_at:
            return None
        due = [stage for stage in self.stages if stage.due_at <= now]
        return due[-1] if due else None

    def sunset_due(self, now: datetime) -> bool:
        return now >= self.sunset_at

    def usage_since(self, now: datetime) -> datetime:
        """The start of the look-back window that decides who is "on tokens" at ``now`` (after the
        sunset: the window before it)."""
        return min(now, self.sunset_at) - self.lookback

    @property
    def final_stage(self) -> Stage:
        return Stage(FINAL, self.sunset_at)

    def stage(self, name: str) -> Stage:
        for stage in (*self.stages, self.final_stage):
            if stage.name == name:
                return stage
        raise KeyError(name)


class Reminder(LedgerAggregate):
    """One owner's email at one stage of the campaign, and its delivery (the outbox entry)."""

    class Recorded(LedgerAggregate.Created):
        sunset_at: datetime
        stage: str
        due_at: datetime
        owner_id: str
        owner_email: str
        owner_name: str
        # What the email says about each app still on tokens, as plain values:
        # app_id, app_name, client_id, last_used_at (RFC 3339 text), uses, windows, uses_api_keys
        apps: list

    class DeliveryFailed(LedgerAggregate.Event):
        attempt: int
        error: str  # what went wrong, never a credential
        permanent: bool  # the server refused the message itself: retrying cannot help
        next_attempt_at: datetime | None

    class Delivered(LedgerAggregate.Event):
        attempt: int
        transport: str  # "smtp://host:port" (no credentials) or "file:<name>.eml"

    class Withdrawn(LedgerAggregate.Event):
        reason: str

    @event(Recorded)
    def __init__(self, sunset_at: datetime, stage: str, due_at: datetime, owner_id: str,
                 owner_email: str, owner_name: str, apps: list, by: str, request: dict) -> None:
        self.sunset_at = sunset_at
        self.stage = stage
        self.due_at = due_at
        self.owner_id = owner_id
        self.owner_email = owner_email
        self.owner_name = owner_name
        self.apps = [dict(app) for app in apps]
        self.attempts = 0
        self.delivered_at: datetime | None = None
        self.failed_permanently = False
        self.withdrawn = False
        self.next_attempt_at: datetime | None = None

    @property
    def open(self) -> bool:
        """Still to be delivered (neither delivered, nor given up, nor withdrawn)."""
        return self.delivered_at is None and not self.failed_permanently and not self.withdrawn

    def record_failure(self, *, error: str, permanent: bool, next_attempt_at: datetime | None,
                       by: str, request: dict, at: datetime) -> None:
        if self.open:
            self._fail(attempt=self.attempts + 1, error=error, permanent=permanent,
                       next_attempt_at=None if permanent else next_attempt_at, by=by,
                       request=request, timestamp=at)

    @event(DeliveryFailed)
    def _fail(self, attempt: int, error: str, permanent: bool, next_attempt_at: datetime | None,
              by: str, request: dict, timestamp: datetime) -> None:
        self.attempts = attempt
        self.failed_permanently = permanent
        self.next_attempt_at = next_attempt_at

    def record_delivery(self, *, transport: str, by: str, request: dict, at: datetime) -> bool:
        """Delivered; a second record of the same delivery is a no-op."""
        if not self.open:
            return False
        self._deliver(attempt=self.attempts + 1, transport=transport, by=by, request=request, timestamp=at)
        return True

    @event(Delivered)
    def _deliver(self, attempt: int, transport: str, by: str, request: dict, timestamp: datetime) -> None:
        self.attempts = attempt
        self.delivered_at = timestamp
        self.next_attempt_at = None

    def withdraw(self, *, reason: str, by: str, request: dict, at: datetime) -> bool:
        if not self.open:
            return False
        self._withdraw(reason=reason, by=by, request=request, timestamp=at)
        return True

    @event(Withdrawn)
    def _withdraw(self, reason: str, by: str, request: dict, timestamp: datetime) -> None:
        self.withdrawn = True
        self.next_attempt_at = None


class CampaignStage(LedgerAggregate):
    """A stage of the campaign was acted on (its reminders began to be recorded)."""

    class Began(LedgerAggregate.Created):
        sunset_at: datetime
        stage: str
        due_at: datetime

    @event(Began)
    def __init__(self, sunset_at: datetime, stage: str, due_at: datetime, by: str, request: dict) -> None:
        self.sunset_at = sunset_at
        self.stage = stage
        self.due_at = due_at


class Sunset(LedgerAggregate):
    """Legacy access was disabled for every client at the sunset."""

    class Executed(LedgerAggregate.Created):
        sunset_at: datetime
        clients_disabled: int

    @event(Executed)
    def __init__(self, sunset_at: datetime, clients_disabled: int, by: str, request: dict) -> None:
        self.sunset_at = sunset_at
        self.clients_disabled = clients_disabled
