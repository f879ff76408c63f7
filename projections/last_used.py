"""When each key was last used, and how often legacy access tokens are used, without an
event per verification.

Verifications note the time in memory (one dictionary store); ``flush()`` writes the
batch to the view store every ``interval`` seconds, keeping the latest time per key, so
``last_used_at`` is accurate to within that interval. Legacy access tokens are counted the
same way, per client and use window (the window itself is recorded as a ``LegacyTokenUsed``
event on its first use; these counts say how many uses followed). Not derived from events,
so a rebuild of the views leaves them alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from uuid import UUID

from projections.flushing import PeriodicFlush
from projections.store import ViewStore
from projections.verification import KEY_ID_BYTES

log = logging.getLogger("keyledger.last_used")

DDL = """CREATE TABLE IF NOT EXISTS key_last_used (
    key_id TEXT PRIMARY KEY, last_used_at REAL NOT NULL) WITHOUT ROWID"""
# The days on which each key was used (the campaign's chart of API-key use per day): one row
# per key and UTC day, written with the last-used times. A day whose only uses fell in the last
# flush interval before midnight is recorded as the next day (at most KEYLEDGER_LAST_USED_INTERVAL).
DAYS_DDL = """CREATE TABLE IF NOT EXISTS key_use_days (
    key_id TEXT NOT NULL, day TEXT NOT NULL, PRIMARY KEY (key_id, day)) WITHOUT ROWID"""
LEGACY_DDL = """CREATE TABLE IF NOT EXISTS legacy_use_counts (
    client_id TEXT NOT NULL, window_start REAL NOT NULL, uses INTEGER NOT NULL,
    last_used_at REAL NOT NULL, PRIMARY KEY (client_id, window_start)) WITHOUT ROWID"""



def _by_key_id(pending: dict[bytes, float]) -> dict[bytes, float]:
    """The latest use per key UUID, from uses noted by UUID or by index record (a key that
    changed between uses has two records)."""
    latest: dict[bytes, float] = {}
    for key, at in pending.items():
        key_id = key if len(key) == 16 else bytes(key[KEY_ID_BYTES])
        if at > latest.get(key_id, 0.0):
            latest[key_id] = at
    return latest


class LastUsed(PeriodicFlush):
    FLUSHED = "last-used times"
    THREAD = "keyledger-last-used"
    LOG = log

    def __init__(self, store: ViewStore) -> None:
        self.store = store
        self.pending: dict[bytes, float] = {}  # key UUID bytes (or index record) → time of last use
        # (legacy client's UUID bytes, window start) → [uses, time of last use]
        self.legacy_pending: dict[tuple[bytes, float], list] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Monitoring hooks: after each write (with the number of records), after a failed one.
        self.on_flush: Callable[[int], None] | None = None
        self.on_error: Callable[[], None] | None = None
        with store.write() as db:
            db.execute(DDL)
            db.execute(DAYS_DDL)
            db.execute(LEGACY_DDL)

    def touch(self, key_id: bytes, at: float) -> None:
        """Hot path: remember the use (the key's UUID as 16 bytes, or its index record, which
        holds it: no slice on the hot path); no I/O."""
        self.pending[key_id] = at

    def count_legacy(self, client_id: bytes, window_start: float, at: float) -> None:
        """Hot path: count a use of a legacy client's access token; no I/O."""
        counted = self.legacy_pending.get((client_id, window_start))
        if counted is None:
            self.legacy_pending[(client_id, window_start)] = [1, at]
        else:
            counted[0] += 1
            counted[1] = at

    def flush(self) -> int:
        pending, self.pending = self.pending, {}
        legacy, self.legacy_pending = self.legacy_pending, {}
        # A verification racing the swap may still add to the old dict: copy it in one
        # step (atomic under the GIL); such a late use is simply written next time.
        pending = _by_key_id(dict(pending))
        legacy = {k: tuple(v) for k, v in dict(legacy).items()}
        if not pending and not legacy:
            return 0
        try:
            self._write(pending, legacy)
        except BaseException:
            self._keep(pending, legacy)  # written with the next round's (a full disk, a locked store)
            raise
        if self.on_flush is not None:
            self.on_flush(len(pending) + len(legacy))
        return len(pending) + len(legacy)

    def _keep(self, pending: dict[bytes, float], legacy: dict[tuple[bytes, float], tuple]) -> None:
        """Put back what a failed write did not write, merged with the uses noted since."""
        for key_id, at in pending.items():
            if at > self.pending.get(key_id, 0.0):
                self.pending[key_id] = at
        for window, (uses, at) in legacy.items():
            counted = self.legacy_pending.get(window)
            if counted is None:
                self.legacy_pending[window] = [uses, at]
            else:
                counted[0] += uses
                counted[1] = max(counted[1], at)

    def _write(self, pending: dict[bytes, float], legacy: dict[tuple[bytes, float], tuple]) -> None:
        with self.store.write() as db:
            db.executemany(
                "INSERT INTO key_last_used (key_id, last_used_at) VALUES (?, ?) "
                "ON CONFLICT (key_id) DO UPDATE SET "
                "last_used_at = GREATEST(key_last_used.last_used_at, excluded.last_used_at)",
                [(str(UUID(bytes=k)), t) for k, t in pending.items()])
            db.executemany(
                "INSERT INTO key_use_days (key_id, day) VALUES (?, ?) ON CONFLICT (key_id, day) DO NOTHING",
                [(str(UUID(bytes=k)), datetime.fromtimestamp(t, UTC).date().isoformat()) for k, t in pending.items()])
            db.executemany(
                "INSERT INTO legacy_use_counts (client_id, window_start, uses, last_used_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (client_id, window_start) DO UPDATE SET "
                "uses = legacy_use_counts.uses + excluded.uses, "
                "last_used_at = GREATEST(legacy_use_counts.last_used_at, excluded.last_used_at)",
                [(str(UUID(bytes=c)), w, n, t) for (c, w), (n, t) in legacy.items()])

    def of(self, key_ids: Iterable[str]) -> dict[str, datetime]:
        """The last use of each key (that has one), including uses not flushed yet."""
        ids = list(key_ids)
        found: dict[str, float] = {}
        if ids:
            def read() -> dict[str, float]:
                rows: dict[str, float] = {}
                with self.store.read(pipelined=True) as db:
                    for start in range(0, len(ids), 500):
                        chunk = ids[start:start + 500]
                        marks = ",".join("?" * len(chunk))
                        rows.update(db.execute(
                            f"SELECT key_id, last_used_at FROM key_last_used WHERE key_id IN ({marks})",
                            chunk).fetchall())
                return rows

            found = self.store.again_if_died(read)
        noted = _by_key_id(dict(self.pending))
        for key_id in ids:
            pending = noted.get(UUID(key_id).bytes)
            if pending is not None and pending > found.get(key_id, 0):
                found[key_id] = pending
        return {k: datetime.fromtimestamp(v, UTC) for k, v in found.items()}

    def apps_per_day(self, since: date) -> dict[date, set[str]]:
        """Per UTC day from ``since``: the apps whose API keys were used that day (uses not yet
        flushed included)."""
        with self.store.read() as db:
            rows = db.execute("SELECT DISTINCT d.day, k.app_id FROM key_use_days d "
                              "JOIN directory_keys k ON k.id = d.key_id WHERE d.day >= ?",
                              (since.isoformat(),)).fetchall()
            pending = [(str(UUID(bytes=k)), datetime.fromtimestamp(t, UTC).date()) for k, t in _by_key_id(dict(self.pending)).items()]
            apps = {}
            for key_id, day in pending:
                if day >= since:
                    row = db.execute("SELECT app_id FROM directory_keys WHERE id = ?", (key_id,)).fetchone()
                    if row is not None:
                        apps.setdefault(day, set()).add(row[0])
        for day, app_id in rows:
            apps.setdefault(date.fromisoformat(day), set()).add(app_id)
        return apps
