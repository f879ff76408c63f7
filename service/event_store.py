"""The PostgreSQL event store, failing fast: how long a request can wait when the database is gone.

The eventsourcing library retries every PostgreSQL read and write up to ten times, 0.2 s apart, and
each attempt waits up to ``POSTGRES_CONNECT_TIMEOUT`` for a pooled connection: with the database
stopped, one command held its worker about 20 s (an independent probe measured 19.3–19.9 s for the
verifications queued behind it). Its pool reconnects with a backoff that grows towards five
minutes, so after the database came back requests kept waiting for the pool's next scheduled
attempt (7–10 s). ``FailFastFactory`` (the ``PERSISTENCE_MODULE`` ``Settings.eventsourcing_env``
names) is the library's PostgreSQL persistence with recorders — the events' and the snapshots' —
that have:

- one attempt per call on the request path (inside ``on_the_request_path()``, which the HTTP entry
  point wraps every request in): a command that cannot reach the store answers 503
  ``UNAVAILABLE`` with ``Retry-After`` at once, and the client retries. Background work (the
  follower, the background writer, the scheduler's jobs, the command line) keeps the library's
  patience — ``BACKGROUND_ATTEMPTS`` attempts, ``RETRY_PAUSE`` apart — so a moment's trouble on a
  busy server (a slow connection, a lock) does not fail a job, e.g. leave a sent email unrecorded;
- a pooled connection waited for ``POOL_WAIT`` seconds at most, a new one given up after
  ``CONNECT_TIMEOUT`` (libpq's smallest, whole seconds);
- a connection slot whose reconnection fails handed back after ``RECONNECT_GIVE_UP`` seconds
  instead of retried on a growing backoff, so the pool opens connections again as soon as the
  database answers: the first command after an outage waits milliseconds.

Requests never get here once the database is known to be down (the listener's breaker,
``System.store_unreachable``); this bounds the first ones, before it is known.

And a command costs few round trips (``tests/integration/test_round_trips.py`` pins them):

- no check of a pooled connection before each use (the library's pre-ping, a round trip every
  time): a connection that has answered before and turns out dead when used — the server
  restarted, a network device dropped it while idle — is replaced and the call tried once more on
  another (``on_a_live_connection``), also on the request path (it is not the store that failed);
- the events' insert is one round trip: ``BEGIN``, the table lock, ``NOTIFY``, the ``INSERT`` and
  ``COMMIT`` sent together in one pipeline (the library syncs three to four times, and holds the
  table lock across those round trips). When the answer is lost after the commit may have
  happened (a dropped connection) and a second attempt then meets the unique (originator id,
  version) constraint, the stored records are compared with ours: byte for byte the same means the
  first attempt committed, and the call succeeds with their positions instead of reporting a
  conflict; anything else is the conflict it looks like;
- an aggregate's latest snapshot and its events after it are read in one statement
  (``select_latest``);
- the records just written are kept (``recent``): the index and the views, which read the events
  after their position right after a command, take them from memory when they follow on exactly.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresFactory,
)
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

POOL_WAIT = 1.0  # seconds a command waits for a pooled connection
CONNECT_TIMEOUT = 2  # seconds to open a connection (libpq's minimum)
RECONNECT_GIVE_UP = 0.5  # seconds a failed connection slot is retried before it is handed back
OPEN_TIMEOUT = 10.0  # seconds to wait at start for the pool's first connections
BACKGROUND_ATTEMPTS = 10  # attempts per call off the request path (the library's own figure)
RETRY_PAUSE = 0.2  # seconds between them

RECENT = 256  # records just written, kept for the index's and the views' next read

T = TypeVar("T")
_request_path: ContextVar[bool] = ContextVar("keyledger_request_path", default=False)


@contextmanager
def on_the_request_path() -> Iterator[None]:
    """Store calls made inside are tried once: a request answers 503 rather than wait."""
    token = _request_path.set(True)
    try:
        yield
    finally:
        _request_path.reset(token)


def fail_fast(pool: Any) -> None:
    """Bound a psycopg pool's waits as described above (its attributes are read at each use)."""
    pool.timeout = POOL_WAIT
    pool.reconnect_timeout = RECONNECT_GIVE_UP
    if isinstance(pool.kwargs, dict):
        pool.kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)


# Set while a call is being made again after an attempt whose outcome is unknown (a dropped
# connection): only then may a unique-constraint refusal of an insert be our own earlier commit.
_retrying: ContextVar[bool] = ContextVar("keyledger_retrying", default=False)


def _once(method: Any) -> Any:
    """The library's method, retried as above instead of by its own decorator (``functools.wraps``
    kept the original as ``__wrapped__``)."""
    original = getattr(method, "__wrapped__", method)

    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        attempts = 1 if _request_path.get() else BACKGROUND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            token = _retrying.set(attempt > 1 or _retrying.get())
            try:
                return original(self, *args, **kwargs)
            except (InterfaceError, OperationalError):
                if attempt == attempts:
                    raise
                time.sleep(RETRY_PAUSE)
            finally:
                _retrying.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    return call


# Connections that have answered at least once: if one of them fails, it died while pooled.
_answered: weakref.WeakSet[Any] = weakref.WeakSet()
_answered_lock = threading.Lock()


def answered(connection: Any) -> None:
    with _answered_lock:
        _answered.add(connection)


def died_while_pooled(connection: Any, error: BaseException) -> bool:
    """``error`` says the connection is gone, and it had answered before: it died while it was
    idle in the pool (not a store that cannot be reached: a new connection would have failed to open)."""
    if not isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)) or not connection.broken:
        return False
    with _answered_lock:
        return connection in _answered


_DEAD: Any = object()


def on_a_live_connection(datastore: Any, work: Callable[[Any], T]) -> T:
    """``work(connection)`` on a pooled connection of ``datastore`` (the library's errors as it
    raises them); once more on another if the first turns out to have died while pooled (the
    pool's idle connections checked first). ``work`` must be safe to run twice: the insert's
    second run recognises its own records (``FailFastRecorder._already_recorded``)."""
    for attempt in (1, 2):
        with datastore.get_connection() as connection:
            try:
                result = work(connection)
            except Exception as error:
                if attempt == 2 or not died_while_pooled(connection, error):
                    raise
                result = _DEAD
            else:
                answered(connection)
        if result is not _DEAD:
            return result
        # The pool replaces the broken connection; its idle ones likely died with it (a restart):
        # tested now, once, rather than met one by one by the next commands.
        datastore.pool.check()
    raise AssertionError("unreachable")  # pragma: no cover


class FailFastAggregateRecorder(PostgresAggregateRecorder):
    """The snapshots' recorder, retried as above."""

    insert_events = _once(PostgresAggregateRecorder.insert_events)

    @_once
    def select_events(self, originator_id: UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> Sequence[StoredEvent]:
        statement = self.select_events_statement
        params: list[Any] = [originator_id]
        if gt is not None:
            params.append(gt)
            statement += SQL(" AND originator_version > %s")
        if lte is not None:
            params.append(lte)
            statement += SQL(" AND originator_version <= %s")
        statement += SQL(" ORDER BY originator_version") + SQL(" DESC" if desc else " ASC")
        if limit is not None:
            params.append(limit)
            statement += SQL(" LIMIT %s")

        def select(connection: Any) -> list[StoredEvent]:
            with connection.cursor() as cursor:
                cursor.execute(statement, params, prepare=True)
                return [StoredEvent(originator_id=row["originator_id"], originator_version=row["originator_version"],
                                    topic=row["topic"], state=bytes(row["state"])) for row in cursor.fetchall()]

        return on_a_live_connection(self.datastore, select)


class FailFastRecorder(PostgresApplicationRecorder):
    """The events' recorder, retried as above, inserting in one round trip."""

    snapshots_table_name: str | None = None  # set by the factory: for ``select_latest``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recent: deque[tuple[int, Any, int, str, bytes]] = deque(maxlen=RECENT)
        self._recent_lock = threading.Lock()
        table = Identifier(self.datastore.schema, self.events_table_name)
        self._commit_statements = (SQL("BEGIN"), *self.lock_table_statements,
                                   SQL("NOTIFY {}").format(Identifier(self.channel_name)))
        self._stored_again = SQL("SELECT notification_id, originator_id, originator_version, topic, state FROM {} "
                                 "WHERE originator_id = ANY(%s)").format(table)

    @_once
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return []
        rows = [self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
                for e in stored_events]

        runs = 0

        def insert(connection: Any) -> list[int]:
            nonlocal runs
            runs += 1
            # One round trip: nothing is waited for before the pipeline's end sends its Sync.
            with connection.pipeline():
                cursor = connection.cursor()
                for statement in self._commit_statements:
                    cursor.execute(statement, prepare=True)
                inserted = connection.cursor(row_factory=tuple_row)
                inserted.execute(self.insert_events_statement, (rows,), prepare=True)
                cursor.execute(SQL("COMMIT"))
            return [row[0] for row in inserted.fetchall()]

        try:
            ids = on_a_live_connection(self.datastore, insert)
        except IntegrityError:
            # A first attempt refused is a real conflict (another writer's records, even identical
            # ones: two schedulers deciding the same reminder). Only a call made again after an
            # attempt whose answer was lost may find its own records there.
            if runs < 2 and not _retrying.get():
                raise
            ids = self._already_recorded(stored_events)
            if ids is None:
                raise
        with self._recent_lock:
            self._recent.extend((n, e.originator_id, e.originator_version, e.topic, e.state)
                                for n, e in zip(ids, stored_events, strict=True))
        return ids

    def _already_recorded(self, stored_events: Sequence[StoredEvent]) -> list[int] | None:
        """The positions of ``stored_events`` if the store holds every one of them exactly as
        given (an earlier attempt committed, its answer lost), else None: a real conflict."""
        ids = list({e.originator_id for e in stored_events})

        def select(connection: Any) -> dict[tuple[Any, int], tuple[int, str, bytes]]:
            with connection.cursor(row_factory=tuple_row) as cursor:
                cursor.execute(self._stored_again, (ids,))
                return {(oid, version): (n, topic, bytes(state)) for n, oid, version, topic, state in cursor}

        found = on_a_live_connection(self.datastore, select)
        positions = []
        for e in stored_events:
            stored = found.get((e.originator_id, e.originator_version))
            if stored is None or stored[1:] != (e.topic, e.state):
                return None
            positions.append(stored[0])
        return positions

    def recent(self, after: int, limit: int) -> list[tuple[int, Any, int, str, bytes]] | None:
        """The records this process wrote just after position ``after`` (up to ``limit``), if it
        wrote the one at ``after + 1``: none can be missing between them (the table lock makes
        positions commit in order, and one insert's positions follow each other). None otherwise."""
        with self._recent_lock:
            if not self._recent or not self._recent[0][0] <= after + 1 <= self._recent[-1][0]:
                return None
            found = []
            for record in self._recent:
                if record[0] == after + 1 + len(found):
                    found.append(record)
                    if len(found) == limit:
                        break
                elif found:
                    break
            return found or None

    @_once
    def select_latest(self, originator_id: UUID) -> tuple[list[StoredEvent], list[StoredEvent]]:
        """An aggregate's latest snapshot (if any) and its events after it, in one statement."""
        if self._latest_statement is None:
            schema = self.datastore.schema
            self._latest_statement = SQL(
                "WITH s AS (SELECT originator_version, topic, state FROM {snapshots} WHERE originator_id = %(id)s "
                "ORDER BY originator_version DESC LIMIT 1) "
                "SELECT true, originator_version, topic, state FROM s UNION ALL "
                "(SELECT false, originator_version, topic, state FROM {events} WHERE originator_id = %(id)s "
                "AND originator_version > COALESCE((SELECT originator_version FROM s), 0) "
                "ORDER BY originator_version)").format(
                snapshots=Identifier(schema, self.snapshots_table_name or ""),
                events=Identifier(schema, self.events_table_name))
        statement = self._latest_statement

        def select(connection: Any) -> tuple[list[StoredEvent], list[StoredEvent]]:
            snapshots: list[StoredEvent] = []
            events: list[StoredEvent] = []
            with connection.cursor(row_factory=tuple_row) as cursor:
                cursor.execute(statement, {"id": originator_id}, prepare=True)
                for is_snapshot, version, topic, state in cursor:
                    (snapshots if is_snapshot else events).append(
                        StoredEvent(originator_id=originator_id, originator_version=version, topic=topic,
                                    state=bytes(state)))
            return snapshots, events

        return on_a_live_connection(self.datastore, select)

    _latest_statement: Any = None

    @_once
    def select_events(self, originator_id: UUID | str, **kwargs: Any) -> Sequence[StoredEvent]:
        return FailFastAggregateRecorder.select_events.__wrapped__(self, originator_id, **kwargs)

    select_notifications = _once(PostgresApplicationRecorder.select_notifications)

    @_once
    def max_notification_id(self) -> int | None:
        def select(connection: Any) -> int | None:
            with connection.cursor(row_factory=tuple_row) as cursor:
                cursor.execute(self.max_notification_id_statement)
                row = cursor.fetchone()
                return row[0] if row else None

        return on_a_live_connection(self.datastore, select)


class FailFastFactory(PostgresFactory):
    """The library's PostgreSQL persistence with the recorders above and short pool waits."""

    aggregate_recorder_class = FailFastAggregateRecorder
    application_recorder_class = FailFastRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        fail_fast(self.datastore.pool)
        # Connections made now, at start, where a busy server may take longer than POOL_WAIT.
        self.datastore.pool.open(wait=True, timeout=OPEN_TIMEOUT)

    def application_recorder(self) -> Any:
        recorder = super().application_recorder()
        recorder.snapshots_table_name = (self.env.name.lower() or "stored") + "_snapshots"
        return recorder
