"""A last-used write that fails (a full disk, a lock held too long) loses nothing: the times and
counts are kept in memory, merged with the uses noted since, and written by the next round; and the
SQLite connection that failed to commit is usable again (no transaction left open)."""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import contextmanager

import pytest

from projections.last_used import LastUsed
from projections.store import SqliteViewStore

pytestmark = pytest.mark.sqlite_only


class FailingCommits(SqliteViewStore):
    """A real SQLite view store whose next ``fail`` write transactions fail at COMMIT, as a full
    disk makes them fail (the writes themselves went into the transaction)."""

    fail = 0

    @contextmanager
    def write(self, timeout=None):
        with super().write(timeout) as db:
            yield db
            if self.fail:
                self.fail -= 1
                db.execute("INSERT INTO no_such_table VALUES (1)")  # fails inside, like COMMIT would


def test_a_failed_flush_keeps_the_times_and_the_next_writes_them(tmp_path):
    store = FailingCommits(tmp_path / "views.sqlite")
    last_used = LastUsed(store)
    key, other, client = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    last_used.touch(key.bytes, 100.0)
    last_used.count_legacy(client.bytes, 0.0, 100.0)
    store.fail = 1
    with pytest.raises(sqlite3.OperationalError):
        last_used.flush()
    last_used.touch(other.bytes, 150.0)  # noted while the write failed
    last_used.count_legacy(client.bytes, 0.0, 160.0)
    assert last_used.flush() == 3
    assert {k: v.timestamp() for k, v in last_used.of([str(key), str(other)]).items()} == {
        str(key): 100.0, str(other): 150.0}
    with store.read() as db:
        assert [tuple(r) for r in db.execute("SELECT uses, last_used_at FROM legacy_use_counts")] == [(2, 160.0)]
    assert last_used.flush() == 0


def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path):
    store = SqliteViewStore(tmp_path / "views.sqlite")
    with store.write() as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    store._connection().execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError), store.write() as db:  # the deferred check fails at COMMIT
        db.execute("INSERT INTO child VALUES (42)")
    assert not store._connection().in_transaction
    with store.write() as db:  # the next write on this connection works
        db.execute("INSERT INTO t VALUES (1)")
    with store.read() as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM child").fetchone()[0] == 0
