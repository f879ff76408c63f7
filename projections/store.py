"""The view store: every materialised view and its tracking position, on SQLite or PostgreSQL.

One dialect layer, so that no projection holds two copies of its SQL. Projections write one
portable subset of SQL, and the store adapts it mechanically:

- placeholders are ``?`` (PostgreSQL: ``%s``);
- column types are ``TEXT``, ``INTEGER``, ``REAL`` and ``BLOB`` (PostgreSQL: ``TEXT COLLATE "C"``,
  so text sorts by code point as on SQLite, ``BIGINT``, ``DOUBLE PRECISION``, ``BYTEA``);
  SQLite's ``WITHOUT ROWID`` is dropped on PostgreSQL;
- an upsert is ``INSERT … ON CONFLICT (…) DO UPDATE SET …`` / ``DO NOTHING`` (both speak it;
  ``upsert()`` writes the statement), and the row being replaced is named by its table
  (``t.col``), which PostgreSQL requires;
- the two-argument ``LEAST``/``GREATEST`` (SQLite: the scalar ``MIN``/``MAX``), always with
  ``COALESCE``d arguments since the two treat NULL differently;
- ``SUM`` is cast to ``INTEGER`` (PostgreSQL's SUM of a BIGINT is a NUMERIC).

Rows answer by column name and by position on both stores. A write transaction serialises
writers across processes and machines — SQLite ``BEGIN IMMEDIATE``, PostgreSQL a
transaction-scoped advisory lock — so rows and tracking positions commit together, and each
event is applied exactly once however many processes write.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import sqlite3
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
POSITIONS_MOVED_ATTEMPTS = 5  # runs of a pipelined view write that found the positions moved under it
OPEN_TIMEOUT = 10.0  # seconds a PostgreSQL view store waits for its first connection at start
CACHE_KIB = 64 * 1024  # page cache per connection while serving
BULK_CACHE_KIB = 512 * 1024  # while rebuilding: a million-key view's B-trees fit
WAL_PAGES = 1000  # SQLite's default automatic checkpoint (pages of WAL)
BULK_WAL_PAGES = 256 * 1024  # while rebuilding: about 1 GB of WAL before a checkpoint

TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    projection TEXT PRIMARY KEY,
    position   INTEGER NOT NULL
)
"""

try:  # PostgreSQL's driver is only needed when KEYLEDGER_DATABASE_URL says postgresql://
    import psycopg
    import psycopg_pool

    _PG_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, psycopg_pool.PoolTimeout)
except ImportError:  # pragma: no cover - psycopg is a dependency; kept importable without it
    psycopg = None  # type: ignore[assignment]
    psycopg_pool = None  # type: ignore[assignment]
    _PG_ERRORS = ()

class ConnectionDied(*((psycopg.OperationalError,) if psycopg is not None else (Exception,))):  # type: ignore[misc]
    """A pooled connection that had answered before was found dead inside a pipelined transaction
    (the server restarted, the network dropped it while idle): nothing of the block can be known
    to have committed but what its own statements guard (positions commit with their rows), so
    the caller runs the block again (``ViewStore.again_if_died``)."""


class PositionsMoved(Exception):
    """A pipelined write found, under the writer lock, the positions moved since it read them
    (another process applied those events): nothing of it was written; run the block again."""


# What a view store raises when it cannot be reached or written: the API answers 503.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, *_PG_ERRORS)
# Of those, the ones that say "not now" (a full disk, a lock, an outage) rather than a bug.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.OperationalError,
    *((psycopg.OperationalError, psycopg_pool.PoolTimeout) if psycopg is not None else ()))


def upsert(table: str, columns: Sequence[str], key: Sequence[str], *, update: Sequence[str] | None = None,
           select: str | None = None) -> str:
    """``INSERT INTO table (columns) VALUES (?, …) ON CONFLICT (key) DO UPDATE SET`` every other
    column (or ``update``) — the portable "insert or replace". With ``select``, the rows come
    from that ``SELECT … WHERE …`` instead of ``VALUES``."""
    names = ", ".join(columns)
    source = select if select is not None else f"VALUES ({', '.join('?' * len(columns))})"
    changed = [c for c in columns if c not in key] if update is None else list(update)
    action = ("DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in changed)) if changed else "DO NOTHING"
    return f"INSERT INTO {table} ({names}) {source} ON CONFLICT ({', '.join(key)}) {action}"


# SQLite sorts in memory up to the page cache's size, then in runs ("PMAs") of that size, each sorted
# by a worker thread (``PRAGMA threads``) while the rows are still read, and merges them. With the
# serving cache (64 MiB) or a bulk pass's (512 MiB) a big sort is one in-memory list, sorted with a
# cache miss at nearly every step; in 8 MiB runs it is faster: a million staged keys merged into the
# verification view in 0.6-0.9 s less of 2.2-2.6 s; the audit trail's six indexes over a million rows
# built in 3.7-4.0 s against 5.1-6.5 s (2 MiB to 16 MiB runs all within 3.7-4.6 s).
SORT_RUN_KIB = 8 * 1024


def sqlite_connection(db: Any) -> sqlite3.Connection | None:
    """The SQLite connection under ``db`` (a connection, a view store's ``_SqliteDb``, or its
    ``StatementRuns``), or None on PostgreSQL."""
    connection = getattr(getattr(db, "db", db), "connection", db)
    return connection if isinstance(connection, sqlite3.Connection) else None


@contextmanager
def _pragma_meanwhile(db: Any, name: str, value: str, restore: Callable[[Any], str] = str) -> Iterator[None]:
    """SQLite's ``PRAGMA name`` at ``value`` on ``db``'s connection meanwhile, then as it was
    (``restore`` turns the value read into the one to set again). Nothing on PostgreSQL."""
    connection = sqlite_connection(db)
    if connection is None:
        yield
        return
    previous = restore(connection.execute(f"PRAGMA {name}").fetchone()[0])
    connection.execute(f"PRAGMA {name} = {value}")
    try:
        yield
    finally:
        connection.execute(f"PRAGMA {name} = {previous}")


def sorting_in_runs(db: Any) -> AbstractContextManager[None]:
    """For a big sort on SQLite (indexes built over a view's rows, staged keys merged in the B-tree's
    order): this connection's page cache at ``SORT_RUN_KIB`` meanwhile, then as it was. Setting it
    drops the cached pages beyond it. Nothing on PostgreSQL."""
    return _pragma_meanwhile(db, "cache_size", f"-{SORT_RUN_KIB}")


_SECURE_DELETE = {0: "OFF", 1: "ON", 2: "FAST"}


def deleting_fast(db: Any) -> AbstractContextManager[None]:
    """SQLite's ``secure_delete`` (on in some builds, Debian's among them) as ``FAST`` meanwhile: deleted
    rows are still zeroed where their page is written anyway, but freed pages are not each written
    over. For rows a view holds again (staged keys moved into it, views dropped to be rebuilt from the
    log, whose records hold all their rows hold; a view holds no secret, only digests and hints): what
    is left readable in freed pages is what the store holds anyway (or held, should the log have
    been restored from an older backup). Dropping the audit trail's million rows took 2.5 s with it
    on. Nothing on PostgreSQL."""
    return _pragma_meanwhile(db, "secure_delete", "FAST", lambda previous: _SECURE_DELETE.get(previous, "ON"))


def copy_rows(db: Any, schema: str, table: str, *, conflict: str | None = None) -> bool:
    """``INSERT INTO main.table SELECT`` every row of ``schema.table`` (an attached SQLite database:
    a bulk pass's side build), column by column as that table has them; with ``conflict`` (e.g.
    ``"(id) DO NOTHING"``) the rows that conflict are left to it. False, and nothing copied, when
    the table has no columns there (it is not there)."""
    theirs = [row[1] for row in db.execute(f"PRAGMA {schema}.table_info({table})").fetchall()]
    if not theirs:
        return False
    if conflict is None and theirs == [row[1] for row in db.execute(f"PRAGMA main.table_info({table})").fetchall()]:
        db.execute(f"INSERT INTO main.{table} SELECT * FROM {schema}.{table}")
        return True
    columns = ", ".join(theirs)
    on_conflict = f" WHERE true ON CONFLICT {conflict}" if conflict is not None else ""  # WHERE: SQLite's parse
    db.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM {schema}.{table}{on_conflict}")
    return True


class ViewStore:
    """What projections and queries see of a store; ``open_view_store`` picks the backend."""

    dialect: str
    pipelines = False  # statements can travel together (PostgreSQL); prefetching pays only then

    @contextmanager
    def write(self, timeout: float | None = None, *, pipelined: bool = False) -> Iterator[Any]:
        """A write transaction: rows and tracking commit together or not at all, one writer
        at a time. ``timeout`` (seconds) bounds the wait for another writer; default 10 s.
        ``pipelined``: statements whose results are not read are sent without waiting for
        their answers (PostgreSQL's pipeline mode; no server-side cursor then)."""
        raise NotImplementedError
        yield

    @contextmanager
    def read(self, *, pipelined: bool = False) -> Iterator[Any]:
        """A read transaction: a consistent snapshot across several statements (``pipelined``:
        its begin travels with the first statement, no server-side cursor then)."""
        raise NotImplementedError
        yield

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Settings for a bulk pass (rebuild, start-up catch-up) on this thread's connection."""
        yield

    @staticmethod
    def again_if_died(block: Callable[[], T], *, at_last: Callable[[], T] | None = None) -> T:
        """``block()``, run once more if its pipelined transaction met a connection that died
        while pooled (``ConnectionDied``), and again (a few times) while it finds the positions
        moved under it (``PositionsMoved``). When every one of those runs found them moved (other
        writers keep winning the race), ``at_last()`` ends it: the same work unpipelined, which
        takes the writer lock before it reads the positions and so cannot find them moved.
        Without ``at_last``, ``block()`` runs once more and its error, if any, is the caller's."""
        died = False
        for _ in range(POSITIONS_MOVED_ATTEMPTS):
            try:
                return block()
            except ConnectionDied:
                if died:
                    raise
                died = True
            except PositionsMoved:
                continue
        return (at_last or block)()

    def position(self, db: Any, projection: str) -> int:
        row = db.execute("SELECT position FROM projection_tracking WHERE projection = ?",
                         (projection,)).fetchone()
        return row[0] if row else 0

    def positions(self, db: Any, *, then: Callable[[Any], None] | None = None) -> dict[str, int]:
        """Every view's tracking position, in one read. ``then(db)`` is called once it is asked for
        (before its answer is read): reads made there see the store as it was then or later, and a
        pipelined write sends them with it (``PostgresViewStore.write``)."""
        cursor = db.execute("SELECT projection, position FROM projection_tracking")
        if then is not None:
            then(db)
        return dict(cursor.fetchall())

    def set_positions(self, db: Any, positions: dict[str, int]) -> None:
        db.executemany(upsert("projection_tracking", ("projection", "position"), ("projection",)),
                       list(positions.items()))

    def scan(self, db: Any, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple]:
        """Rows as plain tuples, streamed: for full-table reads of a million rows."""
        raise NotImplementedError

    def release(self, db: Any) -> None:
        """Give back memory a full scan took (SQLite's page cache)."""

    def close(self) -> None:
        raise NotImplementedError


# -- SQLite --------------------------------------------------------------------------------------


def _sqlite_sql(sql: str) -> str:
    return sql.replace("LEAST(", "MIN(").replace("GREATEST(", "MAX(")


class _SqliteDb:
    """An SQLite connection speaking the portable subset (LEAST/GREATEST become MIN/MAX)."""

    __slots__ = ("connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.connection.execute(_sqlite_sql(sql), params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self.connection.executemany(_sqlite_sql(sql), rows)

    def columns(self, table: str) -> set[str]:
        """The columns ``table`` has (empty if it does not exist)."""
        return {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}


def _rollback(db: sqlite3.Connection) -> None:
    """End whatever transaction a failed statement left open, so the connection's next ``BEGIN``
    works (a full disk heals without a restart)."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class SqliteViewStore(ViewStore):
    """SQLite in WAL mode, one connection per thread. Writers take ``BEGIN IMMEDIATE`` so
    several processes sharing the file serialise their view writes.

    A ``scratch`` store is a file one process writes alone and that is thrown away should anything
    fail (a bulk pass's side file, ``Follower.build_aside``): its rollback journal is kept in
    memory and nothing waits for the disk, so a page's commit writes its pages once, into the file
    (not into a WAL, then into the file again at the checkpoint), and no ``fsync``."""

    dialect = "sqlite"

    def __init__(self, path: Path | str, *, scratch: bool = False) -> None:
        self.path = str(path)
        self.scratch = scratch
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        with self.write() as db:
            db.execute(TRACKING_DDL)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA journal_mode={'MEMORY' if self.scratch else 'WAL'}")
            db.execute(f"PRAGMA synchronous={'OFF' if self.scratch else 'NORMAL'}")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            # Big sorts (an index built over a million rows after a first start or a rebuild) may
            # use a second thread: the audit view's six indexes over 200,000 rows took 1.1-2.3 s of
            # wall time with it, 2.0-3.4 s without (one noisy run each, load 5-7 on 2 cores).
            db.execute("PRAGMA threads=2")
            db.row_factory = sqlite3.Row
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    @contextmanager
    def write(self, timeout: float | None = None, *, pipelined: bool = False) -> Iterator[_SqliteDb]:
        db = self._connection()
        if timeout is not None:
            db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        try:
            db.execute("BEGIN IMMEDIATE")
        finally:
            if timeout is not None:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            yield _SqliteDb(db)
        except BaseException:
            _rollback(db)
            raise
        try:
            db.execute("COMMIT")
        except BaseException:  # e.g. "database or disk is full": SQLite may leave the transaction open
            _rollback(db)
            raise

    @contextmanager
    def read(self, *, pipelined: bool = False) -> Iterator[_SqliteDb]:
        db = self._connection()
        db.execute("BEGIN")
        try:
            yield _SqliteDb(db)
        finally:
            db.execute("COMMIT")

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """A big page cache on this thread's connection for a bulk pass, so random B-tree
        inserts stay in memory; given back afterwards."""
        db = self._connection()
        db.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        # The WAL copied back into the file once at the end rather than after every page's commit
        # (which writes most of a big view's pages again each time). A scratch store has no WAL.
        if not self.scratch:
            db.execute(f"PRAGMA wal_autocheckpoint={BULK_WAL_PAGES}")
        try:
            yield
        finally:
            if not self.scratch:
                db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
                try:  # copied back now, and the WAL file cut back to nothing (best effort: readers may hold it)
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute("PRAGMA shrink_memory")

    # -- a bulk pass's second process (``Follower.side_views``) -------------------------------------

    def side_path(self, pid: int) -> Path:
        """The file a second process of process ``pid`` builds views in (beside this store's)."""
        return Path(f"{self.path}.side-{pid}")

    def remove_stale_sides(self) -> None:
        """Side files left by processes that are gone (killed half-way): removed."""
        for path in Path(self.path).parent.glob(Path(self.path).name + ".side-*"):
            pid = path.name.rsplit("-", 1)[-1]  # (its -wal and -shm files end otherwise: skipped)
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                self.remove_side(path)
            except OSError:
                pass

    def side_lock(self, *, wait: bool) -> Any:
        """The lock a process holds while a second process of its builds views aside (one at a time
        per store: instances starting together share one). Returns the held lock (an open file; closing
        it releases it, as does the holder's end), or None when another holds it and ``wait`` is false."""
        lock = os.fdopen(os.open(f"{self.path}.side.lock", os.O_RDWR | os.O_CREAT, 0o600), "r+b")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        except BaseException:
            lock.close()
            raise
        return lock

    @staticmethod
    def remove_side(path: Path) -> None:
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
            name.unlink(missing_ok=True)

    def adopt(self, path: Path, projections: Sequence[Any]) -> dict[str, int] | None:
        """The rows of ``projections`` built in the side file ``path`` made this store's, with their
        positions, in one transaction — if this store's views of them are still unbuilt (position 0:
        nobody built them meanwhile). Returns the positions adopted, or None."""
        db = self._connection()
        db.execute("ATTACH DATABASE ? AS side", (str(path),))
        try:
            with self.write() as tx:
                mine = self.positions(tx)
                if any(mine.get(p.name, 0) != 0 for p in projections):
                    return None
                theirs = dict(tx.execute("SELECT projection, position FROM side.projection_tracking").fetchall())
                for projection in projections:
                    projection.adopt(tx, "side")
                adopted = {p.name: theirs.get(p.name, 0) for p in projections}
                self.set_positions(tx, adopted)
            return adopted
        finally:
            db.execute("DETACH DATABASE side")

    def adopt_staged(self, path: Path, projection: Any, at: int) -> tuple[int, int, int | None] | None:
        """The rows a second process staged for ``projection`` in the side file ``path``
        (``Follower.stage_aside``) taken in after this store's own, and the view's position moved to
        where they end, in one transaction — if the view still stands at ``at``, at or before where
        the second process began reading (the caller applied every event up to there), else nothing.
        Returns (the new position, the records the second process read up to there, where it found
        seals due or None), or None."""
        db = self._connection()
        db.execute("ATTACH DATABASE ? AS side", (str(path),))
        try:
            with self.write() as tx:
                if self.positions(tx).get(projection.name, 0) != at:
                    return None
                row = tx.execute("SELECT after, position, read, sealed FROM side.staged_through").fetchone()
                if row is None or at > row[0]:
                    return None
                projection.adopt_staged(tx, "side")
                self.set_positions(tx, {projection.name: row[1]})
            return row[1], row[2], row[3]
        finally:
            db.execute("DETACH DATABASE side")

    def scan(self, db: _SqliteDb, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple]:
        cursor = db.connection.cursor()
        cursor.row_factory = None  # plain tuples: no Row object per row
        yield from cursor.execute(_sqlite_sql(sql), params)

    def release(self, db: _SqliteDb) -> None:
        db.connection.execute("PRAGMA shrink_memory")

    def close(self) -> None:
        with self._all_lock:
            for db in self._all:
                try:
                    db.close()
                except sqlite3.ProgrammingError:
                    pass
            self._all.clear()
        self._local = threading.local()


# -- PostgreSQL ----------------------------------------------------------------------------------

_PG_TYPES = [
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID\s*$"), ")"),
]
_DDL = re.compile(r"^\s*CREATE\s+TABLE", re.IGNORECASE)
_SCANS = itertools.count()  # names of server-side cursors


def postgres_sql(sql: str) -> str:
    """The portable subset in PostgreSQL's words (placeholders; column types in DDL)."""
    if _DDL.match(sql):
        for pattern, replacement in _PG_TYPES:
            sql = pattern.sub(replacement, sql)
    return sql.replace("%", "%%").replace("?", "%s")


class Row(tuple):
    """A result row addressable by position and by column name, like ``sqlite3.Row``."""

    __slots__ = ()
    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


_ROW_CLASSES: dict[tuple[str, ...], type[Row]] = {}


def _row_factory(cursor: Any) -> Any:
    description = cursor.description
    if description is None:
        return tuple
    names = tuple(column.name for column in description)
    row_class = _ROW_CLASSES.get(names)
    if row_class is None:
        row_class = _ROW_CLASSES[names] = type(
            "Row", (Row,), {"__slots__": (), "_names": {n: i for i, n in enumerate(names)}})
    return row_class


class _PgDb:
    """A PostgreSQL connection inside a transaction, speaking the portable subset."""

    __slots__ = ("connection", "_sql", "begin_after_positions")

    def __init__(self, connection: Any, begin_after_positions: Sequence[tuple[str, Sequence[Any]]] | None = None
                 ) -> None:
        self.connection = connection
        self._sql: dict[str, str] = {}
        # A pipelined write: its transaction's BEGIN and writer lock, queued once the positions are read.
        self.begin_after_positions = begin_after_positions

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:
            translated = self._sql[sql] = postgres_sql(sql)
        return translated

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.connection.cursor(row_factory=_row_factory)
        return cursor.execute(self._translate(sql), tuple(params))

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        cursor = self.connection.cursor()
        if rows:
            cursor.executemany(self._translate(sql), rows)
        return cursor

    def columns(self, table: str) -> set[str]:
        """The columns ``table`` has (empty if it does not exist)."""
        rows = self.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = current_schema() AND table_name = ?", (table,)).fetchall()
        return {r[0] for r in rows}


# Connections that have answered once: one that then fails died while it was pooled (see _begin).
_answered: weakref.WeakSet[Any] = weakref.WeakSet()
_answered_lock = threading.Lock()


# Fails (division by zero) unless the positions are those a pipelined write read before its lock.
_POSITIONS_GUARD = ("SELECT 1 / (CASE WHEN (SELECT coalesce(string_agg(projection || '=' || position, ',' "
                    "ORDER BY projection), '') FROM projection_tracking) = %s THEN 1 ELSE 0 END)")


def _fingerprint(positions: dict[str, int]) -> str:
    return ",".join(f"{name}={position}" for name, position in sorted(positions.items()))


class _Pipeline:
    """A connection's pipeline mode, entered now and ended once (``end``), by whoever comes first."""

    def __init__(self, connection: Any) -> None:
        self._manager = connection.pipeline()
        self._manager.__enter__()
        self._open = True

    def end(self, error: BaseException | None = None) -> None:
        if self._open:
            self._open = False
            if error is None:
                self._manager.__exit__(None, None, None)
            else:
                self._manager.__exit__(type(error), error, error.__traceback__)


def _died_while_pooled(connection: Any, error: BaseException) -> bool:
    if not isinstance(error, psycopg.Error) or not connection.broken:
        return False
    with _answered_lock:
        return connection in _answered


def advisory_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (stable across processes and versions)."""
    value = zlib.crc32(name.encode()) << 32 | zlib.crc32(name[::-1].encode())
    return value - (1 << 64) if value >= 1 << 63 else value


class PostgresViewStore(ViewStore):
    """Views in PostgreSQL tables beside the event store (one schema), through a pool of
    connections. A write transaction takes a transaction-scoped advisory lock first, so view
    writers on every instance take turns, like ``BEGIN IMMEDIATE`` on SQLite; the lock goes
    with the transaction, also when its holder is killed."""

    dialect = "postgresql"
    pipelines = True

    def __init__(self, conninfo: str, *, schema: str = "public", pool_size: int = 4,
                 connect_timeout: float = 2.0, pool_wait: float = 1.0) -> None:
        if psycopg is None:  # pragma: no cover
            raise RuntimeError("PostgreSQL needs the psycopg package: pip install 'psycopg[binary,pool]'")
        self.schema = schema
        self._lock_key = advisory_key(f"keyledger:views:{schema}")
        # Short waits, so a database outage is a 503 at once rather than a held worker: a pooled
        # connection waited for ``pool_wait`` seconds at most, a failed connection slot given back
        # after half a second (not retried on a backoff growing to minutes), so connections open
        # again the moment the database answers.
        # No check before each use (a round trip each time): a connection found dead when a
        # transaction begins is replaced and the transaction begun on another (``_begin``).
        self.pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=pool_size, open=False, timeout=pool_wait, reconnect_timeout=0.5,
            kwargs={"options": f"-c search_path={schema}", "connect_timeout": max(2, int(connect_timeout)),
                    "application_name": "keyledger-views", "autocommit": True},
            name="keyledger-views")
        self.pool.open(wait=True, timeout=OPEN_TIMEOUT)  # at start a busy server may take longer
        with self.write() as db:
            db.execute(TRACKING_DDL)

    @contextmanager
    def _begin(self, statements: Sequence[tuple[str, Sequence[Any]]], *, pipelined: bool) -> Iterator[Any]:
        """A pooled connection with a transaction begun by ``statements``, sent together: one round
        trip (none yet when ``pipelined``: they go with the first statement whose answer is read).
        A connection that answered before and is found dead here (the server restarted, the network
        dropped it while idle) is replaced, and the transaction begun on another, once. Commits
        when the block ends, rolls back if it raises."""
        for attempt in (1, 2):
            with self.pool.connection() as connection:
                pipeline = _Pipeline(connection)
                try:
                    for sql, params in statements:
                        connection.execute(sql, params)
                    if not pipelined:
                        pipeline.end()
                except BaseException as error:
                    pipeline.end(error)
                    if attempt == 2 or not _died_while_pooled(connection, error):
                        raise
                    connection = None  # the pool replaces the broken one
                if connection is not None:
                    try:
                        yield connection
                        connection.execute("COMMIT")
                        pipeline.end()  # pipelined: sends what is queued, the COMMIT, a Sync
                    except BaseException as error:
                        pipeline.end(error)
                        if _died_while_pooled(connection, error):  # the begin went with the block
                            self.pool.check()
                            raise ConnectionDied(str(error)) from error
                        raise  # the pool's connection context rolls back
                    with _answered_lock:
                        _answered.add(connection)
                    return
            self.pool.check()  # its idle connections likely died with it (a restart): tested now, once

    @contextmanager
    def write(self, timeout: float | None = None, *, pipelined: bool = False) -> Iterator[_PgDb]:
        """Pipelined (a command's views, live): the positions are read first, without the writer
        lock, with whatever the block asked for before them (``Projection.prefetch``); then the
        lock is queued, a guard that fails the transaction unless the positions are still those
        read (``PositionsMoved``: the block is run again), the rows, the new positions and COMMIT,
        sent as they come without waiting for an answer until the end. The lock is held from the
        moment the server reaches it until the commit — while the client builds the rows, but not
        across a round trip or the reading of the positions and the events."""
        wait_ms = int((BUSY_TIMEOUT_MS / 1000 if timeout is None else timeout) * 1000)
        # Bound the wait (for this transaction), then queue for the writer lock. The commit need
        # not wait for the disk: views and their positions commit together, so a view write lost
        # in a crash is a position not moved, and those events are applied again.
        begin = [("BEGIN", ()),
                 ("SELECT set_config('lock_timeout', %s, true), set_config('synchronous_commit', 'off', true), "
                  "pg_advisory_xact_lock(%s)", (f"{max(1, wait_ms)}ms", self._lock_key))]
        if not pipelined:
            with self._begin(begin, pipelined=False) as connection:
                yield _PgDb(connection)
            return
        try:
            with self._begin([], pipelined=True) as connection:
                yield _PgDb(connection, begin_after_positions=begin)
        except psycopg.errors.DivisionByZero as error:  # the guard
            raise PositionsMoved("another process moved the views' positions meanwhile") from error

    def positions(self, db: Any, *, then: Callable[[Any], None] | None = None) -> dict[str, int]:
        begin = db.begin_after_positions
        if begin is None:
            return super().positions(db, then=then)
        db.begin_after_positions = None
        # One round trip, without the lock (an implicit transaction that the BEGIN below makes the
        # write's). Reads made by ``then`` come after the positions' read: whatever they see that is
        # newer was written with newer positions, which the guard below then refuses.
        known = super().positions(db, then=then)
        for sql, params in begin:  # ... that BEGIN makes the write's: one transaction)
            db.connection.execute(sql, params)
        db.connection.execute(_POSITIONS_GUARD, (_fingerprint(known),))
        return known

    @contextmanager
    def read(self, *, pipelined: bool = False) -> Iterator[_PgDb]:
        with self._begin([("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", ())],
                         pipelined=pipelined) as connection:
            yield _PgDb(connection)

    def scan(self, db: _PgDb, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple]:
        # A server-side cursor: rows arrive 10,000 at a time (a client-side one holds the whole
        # result in libpq first: 3 GB more at start-up with 10M keys).
        with db.connection.cursor(name=f"keyledger_scan_{next(_SCANS)}") as cursor:
            cursor.itersize = 10_000
            cursor.execute(postgres_sql(sql), tuple(params))
            while rows := cursor.fetchmany(10_000):
                yield from rows

    def close(self) -> None:
        self.pool.close()


def open_view_store(path: Path | str, *, database_url: str | None = None, schema: str = "public",
                    pool_size: int = 4) -> ViewStore:
    """The SQLite file at ``path``, or — with ``database_url`` — PostgreSQL's ``schema``."""
    if database_url:
        return PostgresViewStore(database_url, schema=schema, pool_size=pool_size)
    return SqliteViewStore(path)
