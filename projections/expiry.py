"""Expiry reminders' progress: the stages recorded per key, when each key was last rolled, and
the keys whose expiry is recorded (``ApiKey.Expired``).

The scheduler's expiry jobs (``scheduler.expiry``) read it with the directory to find the keys
that may be due a reminder, and the expired keys whose expiry is not recorded yet; the event
store stays the authority (the use case re-checks each key before it records anything), so a
view a little behind costs a look, never a second mail or a second ``ApiKey.Expired``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from projections.projection import Projection, handles, reads_stored
from projections.store import ViewStore, upsert
from projections.stored import key_text, text, time_text
from projections.timefmt import from_rfc3339, rfc3339
from service.domain.keys import ApiKey


class ExpiryView(Projection):
    name = "expiry"
    tables = ("expiry_reminded", "expiry_rolls", "expiry_expired")
    ddl = (
        """CREATE TABLE IF NOT EXISTS expiry_reminded (
            key_id TEXT NOT NULL, stage TEXT NOT NULL, reminder_id TEXT NOT NULL, recorded_at TEXT NOT NULL,
            PRIMARY KEY (key_id, stage))""",
        """CREATE TABLE IF NOT EXISTS expiry_rolls (key_id TEXT PRIMARY KEY, rolled_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS expiry_expired (key_id TEXT PRIMARY KEY, recorded_at TEXT NOT NULL)""",
    )

    _REMINDED = upsert("expiry_reminded", ("key_id", "stage", "reminder_id", "recorded_at"), ("key_id", "stage"))
    _ROLLED = upsert("expiry_rolls", ("key_id", "rolled_at"), ("key_id",))
    _EXPIRED = upsert("expiry_expired", ("key_id", "recorded_at"), ("key_id",))

    # In bulk passes, each handler's statement is made from the stored JSON (``reads_stored``): the
    # key's id from the record's, the fields read as the decoded event holds them.
    @handles(ApiKey.Expiring)
    @reads_stored(lambda record, state: (ExpiryView._REMINDED, (
        key_text(record[1]), text(state["stage"]), text(state["reminder_id"]), time_text(state["timestamp"]))))
    def _expiring(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._REMINDED, (str(e.originator_id), e.stage, e.reminder_id, rfc3339(e.timestamp)))

    @handles(ApiKey.Rolled)
    @reads_stored(lambda record, state: (ExpiryView._ROLLED, (key_text(record[1]), time_text(state["timestamp"]))))
    def _rolled(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._ROLLED, (str(e.originator_id), rfc3339(e.timestamp)))

    @handles(ApiKey.Expired)
    @reads_stored(lambda record, state: (ExpiryView._EXPIRED, (key_text(record[1]), time_text(state["timestamp"]))))
    def _expired(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._EXPIRED, (str(e.originator_id), rfc3339(e.timestamp)))


class ExpiringKeys:
    """Queries over the expiry view and the directory."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def expiring_between(self, start: datetime, end: datetime) -> list[dict]:
        """Keys not revoked whose expiry is after ``start`` and at or before ``end``, with their
        app's owner, the stages recorded and the last roll."""
        # RFC 3339 text compares as time only at a fixed precision: widen by a second, then compare times.
        low, high = rfc3339(start - timedelta(seconds=1)), rfc3339(end + timedelta(seconds=1))
        with self.store.read() as db:
            rows = db.execute(
                "SELECT k.id, k.app_id, k.created_at, k.expires_at, a.owner_id, r.rolled_at FROM directory_keys k "
                "JOIN directory_apps a ON a.id = k.app_id LEFT JOIN expiry_rolls r ON r.key_id = k.id "
                "WHERE k.revoked_at IS NULL AND k.expires_at IS NOT NULL AND k.expires_at > ? AND k.expires_at < ?",
                (low, high)).fetchall()
            ids = [r["id"] for r in rows]
            reminded: dict[str, list[str]] = {}
            for start_at in range(0, len(ids), 500):
                chunk = ids[start_at:start_at + 500]
                marks = ",".join("?" * len(chunk))
                for row in db.execute(f"SELECT key_id, stage FROM expiry_reminded WHERE key_id IN ({marks})", chunk):
                    reminded.setdefault(row["key_id"], []).append(row["stage"])
        found = []
        for r in rows:
            expires_at = from_rfc3339(r["expires_at"])
            if not start < expires_at <= end:
                continue
            found.append({"key_id": r["id"], "app_id": r["app_id"], "owner_id": r["owner_id"],
                          "created_at": from_rfc3339(r["created_at"]), "expires_at": expires_at,
                          "rolled_at": from_rfc3339(r["rolled_at"]), "reminded": reminded.get(r["id"], [])})
        return found

    def expired_unrecorded(self, now: datetime, limit: int = 500) -> list[str]:
        """Up to ``limit`` keys not revoked whose expiry is at or before ``now`` and whose
        ``ApiKey.Expired`` the view does not hold yet, the earliest expiry first."""
        high = rfc3339(now + timedelta(seconds=1))  # widened as above, then compared as times
        with self.store.read() as db:
            rows = db.execute(
                "SELECT k.id, k.expires_at FROM directory_keys k LEFT JOIN expiry_expired x ON x.key_id = k.id "
                "WHERE k.revoked_at IS NULL AND k.expires_at IS NOT NULL AND k.expires_at < ? AND x.key_id IS NULL",
                (high,)).fetchall()
        due = sorted((expires_at, r["id"]) for r in rows if (expires_at := from_rfc3339(r["expires_at"])) <= now)
        return [key_id for _, key_id in due[:limit]]
