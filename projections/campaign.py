"""Campaign progress: each reminder's delivery, each stage's start, the sunset's execution.

The scheduler reads it to find mail due for (another) delivery attempt and the owners a
stage has already recorded; ``keyledger campaign status`` and ``GET /v2/campaign`` read it
to show how the campaign stands. The event store stays the authority: a job that finds
this view a little behind re-checks the aggregate before it acts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from projections.projection import Projection, handles
from projections.store import ViewStore, upsert
from projections.timefmt import epoch, from_rfc3339, rfc3339, rfc3339_from_epoch
from service.domain.campaign import CampaignPlan, CampaignStage, Reminder, Sunset


class CampaignView(Projection):
    name = "campaign"
    tables = ("campaign_reminders", "campaign_stages", "campaign_sunsets")
    ddl = (
        # state: pending (to be tried, maybe again), delivered, failed (given up), withdrawn
        """CREATE TABLE IF NOT EXISTS campaign_reminders (
            id TEXT PRIMARY KEY, sunset_at TEXT NOT NULL, stage TEXT NOT NULL, owner_id TEXT NOT NULL,
            owner_email TEXT NOT NULL, recorded_at TEXT NOT NULL, state TEXT NOT NULL,
            attempts INTEGER NOT NULL, failed_attempts INTEGER NOT NULL, last_error TEXT,
            next_attempt_at REAL, delivered_at TEXT, transport TEXT)""",
        """CREATE TABLE IF NOT EXISTS campaign_stages (
            sunset_at TEXT NOT NULL, stage TEXT NOT NULL, due_at TEXT NOT NULL, ran_at TEXT NOT NULL,
            PRIMARY KEY (sunset_at, stage))""",
        """CREATE TABLE IF NOT EXISTS campaign_sunsets (
            sunset_at TEXT PRIMARY KEY, executed_at TEXT NOT NULL, clients_disabled INTEGER NOT NULL)""",
    )
    indexes = (
        "CREATE INDEX IF NOT EXISTS campaign_reminders_by_stage ON campaign_reminders (sunset_at, stage)",
        "CREATE INDEX IF NOT EXISTS campaign_reminders_due ON campaign_reminders (state, next_attempt_at)",
    )

    _RECORDED = upsert("campaign_reminders", (
        "id", "sunset_at", "stage", "owner_id", "owner_email", "recorded_at", "state", "attempts",
        "failed_attempts", "last_error", "next_attempt_at", "delivered_at", "transport"), ("id",))
    _STAGE = upsert("campaign_stages", ("sunset_at", "stage", "due_at", "ran_at"), ("sunset_at", "stage"))
    _SUNSET = upsert("campaign_sunsets", ("sunset_at", "executed_at", "clients_disabled"), ("sunset_at",))

    @handles(Reminder.Recorded)
    def _recorded(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._RECORDED,
                   (str(e.originator_id), rfc3339(e.sunset_at), e.stage, e.owner_id, e.owner_email,
                    rfc3339(e.timestamp), "pending", 0, 0, None, None, None, None))

    @handles(Reminder.DeliveryFailed)
    def _failed(self, db: Any, position: int, e: Any) -> None:
        db.execute("UPDATE campaign_reminders SET attempts = ?, failed_attempts = failed_attempts + 1, "
                   "last_error = ?, next_attempt_at = ?, state = ? WHERE id = ?",
                   (e.attempt, e.error, epoch(e.next_attempt_at), "failed" if e.permanent else "pending",
                    str(e.originator_id)))

    @handles(Reminder.Delivered)
    def _delivered(self, db: Any, position: int, e: Any) -> None:
        db.execute("UPDATE campaign_reminders SET attempts = ?, state = 'delivered', delivered_at = ?, "
                   "transport = ?, next_attempt_at = NULL WHERE id = ?",
                   (e.attempt, rfc3339(e.timestamp), e.transport, str(e.originator_id)))

    @handles(Reminder.Withdrawn)
    def _withdrawn(self, db: Any, position: int, e: Any) -> None:
        db.execute("UPDATE campaign_reminders SET state = 'withdrawn', last_error = ?, "
                   "next_attempt_at = NULL WHERE id = ?", (e.reason, str(e.originator_id)))

    @handles(CampaignStage.Began)
    def _stage(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._STAGE,
                   (rfc3339(e.sunset_at), e.stage, rfc3339(e.due_at), rfc3339(e.timestamp)))

    @handles(Sunset.Executed)
    def _sunset(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._SUNSET,
                   (rfc3339(e.sunset_at), rfc3339(e.timestamp), e.clients_disabled))


class CampaignProgress:
    """Queries over the campaign view."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[str]:
        """Reminders to be delivered now: never tried, or whose retry time has come; oldest first."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT id FROM campaign_reminders WHERE state = 'pending' "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY recorded_at, id LIMIT ?",
                (now.timestamp(), limit)).fetchall()
        return [r["id"] for r in rows]

    def owners_recorded(self, sunset_at: datetime, stage: str) -> set[str]:
        with self.store.read() as db:
            rows = db.execute("SELECT owner_id FROM campaign_reminders WHERE sunset_at = ? AND stage = ?",
                              (rfc3339(sunset_at), stage)).fetchall()
        return {r["owner_id"] for r in rows}

    def sunset_executed_at(self, sunset_at: datetime) -> datetime | None:
        with self.store.read() as db:
            row = db.execute("SELECT executed_at FROM campaign_sunsets WHERE sunset_at = ?",
                             (rfc3339(sunset_at),)).fetchone()
        return from_rfc3339(row["executed_at"]) if row else None

    def stages(self, sunset_at: datetime) -> dict[str, dict]:
        """Per stage name: when it ran, and its reminders counted by delivery state."""
        key = rfc3339(sunset_at)
        with self.store.read() as db:
            ran = {r["stage"]: from_rfc3339(r["ran_at"]) for r in db.execute(
                "SELECT stage, ran_at FROM campaign_stages WHERE sunset_at = ?", (key,))}
            counts = db.execute(
                "SELECT stage, state, COUNT(*) AS n, CAST(SUM(failed_attempts) AS INTEGER) AS failed_attempts "
                "FROM campaign_reminders WHERE sunset_at = ? GROUP BY stage, state", (key,)).fetchall()
        stages: dict[str, dict] = {}
        for name, ran_at in ran.items():
            stages[name] = _empty_stage(ran_at)
        for r in counts:
            stage = stages.setdefault(r["stage"], _empty_stage(None))
            stage[r["state"]] += r["n"]
            stage["failed_attempts"] += r["failed_attempts"] or 0
        return stages

    def undelivered(self, sunset_at: datetime) -> list[dict]:
        """Reminders not delivered (pending or given up), with their last error."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT * FROM campaign_reminders WHERE sunset_at = ? AND state IN ('pending', 'failed') "
                "ORDER BY recorded_at, id", (rfc3339(sunset_at),)).fetchall()
        return [{"id": r["id"], "stage": r["stage"], "owner_id": r["owner_id"], "owner_email": r["owner_email"],
                 "state": r["state"], "attempts": r["attempts"], "last_error": r["last_error"],
                 "next_attempt_at": rfc3339_from_epoch(r["next_attempt_at"]),
                 "recorded_at": r["recorded_at"]} for r in rows]

    def reminders(self, sunset_at: datetime) -> list[dict]:
        """Every reminder of the campaign: owner, stage, state, when delivered."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT id, stage, owner_id, owner_email, state, attempts, delivered_at FROM "
                "campaign_reminders WHERE sunset_at = ? ORDER BY recorded_at, id",
                (rfc3339(sunset_at),)).fetchall()
        return [dict(r) for r in rows]


    def status(self, plan: CampaignPlan, owners_on_tokens: list[dict]) -> dict:
        """How the campaign stands (``GET /v2/campaign``, ``keyledger campaign status``).

        Per stage: ``owners_mailed`` (delivered), ``deliveries_pending`` (recorded, to be tried
        or tried again), ``deliveries_failed`` (refused for good by the mail server),
        ``delivery_attempts_failed`` (failed attempts so far, retried ones included) and
        ``withdrawn`` (reminders overtaken by the sunset before they could be delivered)."""
        counted = self.stages(plan.sunset_at)
        stages = []
        for stage in (*plan.stages, plan.final_stage):
            c = counted.get(stage.name, _empty_stage(None))
            stages.append({
                "name": stage.name, "due_at": stage.due_at, "ran_at": c["ran_at"],
                "owners_mailed": c["delivered"], "deliveries_pending": c["pending"],
                "deliveries_failed": c["failed"], "delivery_attempts_failed": c["failed_attempts"],
                "withdrawn": c["withdrawn"],
            })
        mailed: dict[str, list[str]] = {}
        for reminder in self.reminders(plan.sunset_at):
            mailed.setdefault(reminder["owner_id"], []).append(reminder["stage"])
        owners = [{**owner, "stages_recorded": mailed.get(owner["owner_id"], [])} for owner in owners_on_tokens]
        return {"sunset_at": plan.sunset_at, "sunset_executed_at": self.sunset_executed_at(plan.sunset_at),
                "stages": stages, "owners_on_tokens": owners, "undelivered": self.undelivered(plan.sunset_at)}


def _empty_stage(ran_at: datetime | None) -> dict:
    return {"ran_at": ran_at, "pending": 0, "delivered": 0, "failed": 0, "withdrawn": 0,
            "failed_attempts": 0}
