"""The view store: one SQLite file holding every materialised view and its position."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_MS = 10_000
CACHE_KIB = 64 * 1024  # page cache per connection while serving
BULK_CACHE_KIB = 512 * 1024  # while rebuilding: a million-key view's B-trees fit

TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    projection TEXT PRIMARY KEY,
    position   INTEGER NOT NULL
)
"""


class ViewStore:
    """SQLite in WAL mode, one connection per thread. Writers take ``BEGIN IMMEDIATE`` so
    several processes sharing the file serialise their view writes."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        with self.write() as db:
            db.execute(TRACKING_DDL)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.row_factory = sqlite3.Row
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    @contextmanager
    def write(self, timeout: float | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction: rows and tracking commit together or not at all.
        ``timeout`` (seconds) bounds the wait for another writer; default 10 s."""
        db = self._connection()
        if timeout is not None:
            db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        try:
            db.execute("BEGIN IMMEDIATE")
        finally:
            if timeout is not None:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: a consistent snapshot across several statements."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """A big page cache on this thread's connection for a bulk pass (rebuild, start-up
        catch-up), so random B-tree inserts stay in memory; given back afterwards."""
        db = self._connection()
        db.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        try:
            yield
        finally:
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute("PRAGMA shrink_memory")

    def position(self, db: sqlite3.Connection, projection: str) -> int:
        row = db.execute("SELECT position FROM projection_tracking WHERE projection = ?",
                         (projection,)).fetchone()
        return row[0] if row else 0

    def set_position(self, db: sqlite3.Connection, projection: str, position: int) -> None:
        db.execute(
            "INSERT INTO projection_tracking (projection, position) VALUES (?, ?) "
            "ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
            (projection, position),
        )

    def close(self) -> None:
        with self._all_lock:
            for db in self._all:
                try:
                    db.close()
                except sqlite3.ProgrammingError:
                    pass
            self._all.clear()
        self._local = threading.local()
