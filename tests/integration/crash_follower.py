"""A follower process that kills itself mid-way, for tests/integration/test_follower_crash.py.

    python crash_follower.py DATA_DIR MODE KILL_AT

MODE ``after-commit``: SIGKILL right after the KILL_AT-th batch committed (between the view
write and the next batch). MODE ``mid-batch``: SIGKILL inside a transaction, after KILL_AT
events of the current batch were written but not committed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from projections.follower import Follower
from projections.projection import Projection
from projections.store import ViewStore
from service import credentials
from service.application import Keyledger

PEPPER = b"crash-test-pepper-0123456789abcdef0123456789"


class CountingProjection(Projection):
    """Counts how often each event position was applied: exactly once is 1."""

    name = "counting"
    tables = ("applied",)
    ddl = ("CREATE TABLE IF NOT EXISTS applied (position INTEGER PRIMARY KEY, times INTEGER NOT NULL)",)

    def __init__(self, kill_mid_batch_after: int | None = None) -> None:
        self.kill_after = kill_mid_batch_after
        self.seen = 0

    def process(self, db: sqlite3.Connection, position: int, event: Any) -> None:
        db.execute("INSERT INTO applied VALUES (?, 1) ON CONFLICT (position) DO UPDATE SET times = times + 1",
                   (position,))
        self.seen += 1
        if self.kill_after is not None and self.seen == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def build(data_dir: Path, projection: Projection, follower_class: type = Follower) -> tuple:
    keys_app = Keyledger(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                              "SQLITE_DBNAME": str(data_dir / "events.sqlite")},
                         digester=credentials.Digester(PEPPER))
    store = ViewStore(data_dir / "views.sqlite")
    return keys_app, store, follower_class(keys_app, store, [projection], batch_size=10)


def main() -> None:
    data_dir, mode, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if mode == "mid-batch":
        _, _, follower = build(data_dir, CountingProjection(kill_mid_batch_after=kill_at))
    else:
        class KillingFollower(Follower):
            batches = 0

            def _write(self, batch, projections=None):
                super()._write(batch, projections)
                KillingFollower.batches += 1
                if KillingFollower.batches == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        _, _, follower = build(data_dir, CountingProjection(), KillingFollower)
    with follower.store.write() as db:
        follower.projections[0].create(db)
    follower.catch_up()
    raise SystemExit("the follower was meant to be killed before it finished")


if __name__ == "__main__":
    main()
