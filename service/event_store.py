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
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresFactory,
)

POOL_WAIT = 1.0  # seconds a command waits for a pooled connection
CONNECT_TIMEOUT = 2  # seconds to open a connection (libpq's minimum)
RECONNECT_GIVE_UP = 0.5  # seconds a failed connection slot is retried before it is handed back
OPEN_TIMEOUT = 10.0  # seconds to wait at start for the pool's first connections
BACKGROUND_ATTEMPTS = 10  # attempts per call off the request path (the library's own figure)
RETRY_PAUSE = 0.2  # seconds between them

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


def _once(method: Any) -> Any:
    """The library's method, retried as above instead of by its own decorator (``functools.wraps``
    kept the original as ``__wrapped__``)."""
    original = getattr(method, "__wrapped__", method)

    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        attempts = 1 if _request_path.get() else BACKGROUND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                return original(self, *args, **kwargs)
            except (InterfaceError, OperationalError):
                if attempt == attempts:
                    raise
                time.sleep(RETRY_PAUSE)
        raise AssertionError("unreachable")  # pragma: no cover

    return call


class FailFastAggregateRecorder(PostgresAggregateRecorder):
    """The snapshots' recorder, retried as above."""

    insert_events = _once(PostgresAggregateRecorder.insert_events)
    select_events = _once(PostgresAggregateRecorder.select_events)


class FailFastRecorder(PostgresApplicationRecorder):
    """The events' recorder, retried as above."""

    insert_events = _once(PostgresApplicationRecorder.insert_events)
    select_events = _once(PostgresApplicationRecorder.select_events)
    select_notifications = _once(PostgresApplicationRecorder.select_notifications)
    max_notification_id = _once(PostgresApplicationRecorder.max_notification_id)


class FailFastFactory(PostgresFactory):
    """The library's PostgreSQL persistence with the recorders above and short pool waits."""

    aggregate_recorder_class = FailFastAggregateRecorder
    application_recorder_class = FailFastRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        fail_fast(self.datastore.pool)
        # Connections made now, at start, where a busy server may take longer than POOL_WAIT.
        self.datastore.pool.open(wait=True, timeout=OPEN_TIMEOUT)
