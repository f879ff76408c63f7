"""Reminders before a key expires: which stage is due for a key, and the owner's daily mail.

The owner of a key that expires soon is mailed ``KEYLEDGER_EXPIRY_REMINDERS`` before (7 days
and 1 day by default): once per key and stage, only while the key is active (not revoked, not
expired, not rolled in its reminder period) and was used in the look-back window (30 days),
and in one mail per owner and UTC day listing every key due that day.

Recording, not sending, is what happens once: each key gets an ``ApiKey.Expiring`` event
(``service.domain.keys``; the webhook type ``key.expiring``) naming the stage and the mail, and
the mail itself is an outbox entry of the campaign's (``service.domain.campaign.Reminder``, stage
``EXPIRY_NOTICE``) whose id is derived from the owner and the day. Both are saved in one
transaction: a rerun, a restarted or a second scheduler finds them recorded (the key's version,
the mail's id) instead of recording them twice, and the outbox delivers the mail once.

Grouping by day: a run on day D records, for each owner, every key whose stage falls due before
the end of D (so a reminder never arrives later than its stage, and at most a day
early). A key that becomes due later on D, once the owner's mail of D is recorded (a key issued
that day with a short life), waits for the mail of D+1 if it has not expired by then.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

# The stage of the campaign outbox's Reminder that carries an owner's expiry mail; also the
# webhook event type its per-key events (ApiKey.Expiring) map to.
EXPIRY_NOTICE = "key.expiring"
LOOKBACK = timedelta(days=30)  # only keys used this recently are worth a reminder
DAY = timedelta(days=1)


def stage_name(lead: timedelta) -> str:
    """``7d``, ``12h``, ``30m``, ``45s``: a stage named by its lead, in its largest whole unit."""
    seconds = int(lead.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def mail_id(owner_id: str, day: date) -> UUID:
    """The id of an owner's expiry mail of one UTC day (the outbox entry)."""
    return uuid5(NAMESPACE_URL, f"keyledger:expiry:{owner_id}:{day.isoformat()}")


def end_of_day(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + DAY, time(0), tzinfo=UTC)


@dataclass(frozen=True)
class ExpiryPlan:
    """The reminder stages: (name, lead before the expiry), longest lead first."""

    stages: tuple[tuple[str, timedelta], ...]
    lookback: timedelta = LOOKBACK

    @classmethod
    def of(cls, leads: Iterable[timedelta], lookback: timedelta = LOOKBACK) -> ExpiryPlan:
        ordered = sorted(set(leads), reverse=True)
        return cls(stages=tuple((stage_name(lead), lead) for lead in ordered), lookback=lookback)

    @property
    def longest(self) -> timedelta:
        return self.stages[0][1] if self.stages else timedelta(0)

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """The expiry times a run at ``now`` may remind of: after now, up to the end of today plus
        the longest lead."""
        return now, end_of_day(now) + self.longest

    def due_stage(self, *, expires_at: datetime | None, created_at: datetime, rolled_at: datetime | None,
                  reminded: Iterable[str], now: datetime) -> str | None:
        """The stage to remind of now, or None.

        The latest stage due by the end of today, unless it (or a later one) was recorded; an
        earlier stage it overtook (the scheduler was down, or the key was issued late) is never
        sent. A stage due before the key was issued does not count (a key issued with five days
        to live gets no "7 days" reminder). A key rolled in its reminder period (since the
        longest lead before its expiry, less a day for the daily grouping) gets none: its owner
        is looking after it."""
        if expires_at is None or expires_at <= now or not self.stages:
            return None
        if rolled_at is not None and rolled_at >= expires_at - self.longest - DAY:
            return None
        horizon = end_of_day(now)
        due = [(name, lead) for name, lead in self.stages if created_at < expires_at - lead < horizon]
        if not due:
            return None
        name, lead = due[-1]  # the shortest lead: the latest stage
        leads = dict(self.stages)
        if any(leads[done] <= lead for done in set(reminded) if done in leads):
            return None
        return name
