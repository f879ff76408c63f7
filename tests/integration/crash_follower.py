"""A follower process that kills itself mid-way, for tests/integration/test_follower_crash.py.

    python crash_follower.py DATA_DIR MODE KILL_AT

MODE ``after-commit``: SIGKILL right after the KILL_AT-th view transaction committed
(between the view write and the next batch). MODE ``mid-batch``: SIGKILL inside a
transaction, after KILL_AT events were written but not committed. MODE ``rebuild``: the view
built first, then rebuilt (a page of ten events a transaction) with a SIGKILL right after the
rebuild's KILL_AT-th transaction committed (the first drops the view and resets its position).
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from projections.follower import Follower
from projections.projection import Projection
from service import credentials
from service.application import Keyledger
from service.composition import creating_tables, view_store
from tests.backend import make_settings

PEPPER = b"crash-test-pepper-0123456789abcdef0123456789"


class CountingProjection(Projection):
    """Counts how often each event position was applied: exactly once is 1."""

    name = "counting"
    tables = ("applied",)
    ddl = ("CREATE TABLE IF NOT EXISTS applied (position INTEGER PRIMARY KEY, times INTEGER NOT NULL)",)

    def __init__(self, kill_mid_batch_after: int | None = None) -> None:
        self.kill_after = kill_mid_batch_after
        self.seen = 0

    def process(self, db: Any, position: int, event: Any) -> None:
        db.execute("INSERT INTO applied VALUES (?, 1) ON CONFLICT (position) DO UPDATE SET times = applied.times + 1",
                   (position,))
        self.seen += 1
        if self.kill_after is not None and self.seen == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


class KillingStore:
    """Dies right after its ``kill_after``-th write transaction commits (mixed into a store class)."""

    kill_after = 0  # armed by main(), once the tables exist
    commits = 0

    @contextmanager
    def write(self, timeout=None, **kwargs):
        with super().write(timeout, **kwargs) as db:
            yield db
        if KillingStore.kill_after:
            KillingStore.commits += 1
            if KillingStore.commits == KillingStore.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)


def build(data_dir: Path, projection: Projection, killing: bool = False) -> tuple:
    """The event store and view store of ``data_dir`` (on the suite's backend: SQLite files, or the
    data directory's PostgreSQL schema)."""
    settings = make_settings(data_dir=data_dir, pepper=PEPPER.decode())
    digester = credentials.Digester(PEPPER)
    with creating_tables(settings):
        seal_key = credentials.record_seal_key(credentials.load_or_create_signing_key(data_dir, None))
        keys_app = Keyledger(env=settings.eventsourcing_env(), digester=digester, seal_key=seal_key)
    store = view_store(settings)
    if killing:  # the same store, dying after a chosen commit
        store.__class__ = type("KillingStore", (KillingStore, type(store)), {})
    # Ten events a transaction, so the kill lands between two of them.
    return keys_app, store, Follower(keys_app, store, [projection], batch_size=10, bulk_size=10, page_size=10)


def main() -> None:
    data_dir, mode, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if mode == "mid-batch":
        _, _, follower = build(data_dir, CountingProjection(kill_mid_batch_after=kill_at))
    else:
        _, _, follower = build(data_dir, CountingProjection(), killing=True)
    with follower.store.write() as db:
        follower.projections[0].create(db)
    if mode == "rebuild":
        follower.start()  # built in full (pages, as a first start), then rebuilt and killed
        KillingStore.kill_after = kill_at
        follower.rebuild(reload=False)
    KillingStore.kill_after = kill_at
    follower.update_views()
    raise SystemExit("the follower was meant to be killed before it finished")


if __name__ == "__main__":
    main()
