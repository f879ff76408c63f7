"""The base of the Keyledger application: time, persistence, and the rules every use case shares.

Use cases are grouped by subject, one module each (accounts, apps, keys, legacy OAuth2, the
deprecation campaign); ``service.application.Keyledger`` combines them into the one
eventsourcing application. Library errors are translated here into ``service.domain.errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from itertools import chain
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, Repository
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import EventStore, IntegrityError, Mapper, PersistenceError
from eventsourcing.sqlite import SQLiteApplicationRecorder

from service import credentials
from service.application.sealing import (
    RecordRules,
    SealedEventStore,
    SealedSnapshotStore,
    SealingMapper,
)
from service.domain.actors import Actor
from service.domain.audit import RefusedRecord, has_seal
from service.domain.errors import Conflict, Forbidden, NotFound, TamperedRecord, Unavailable

log = logging.getLogger("keyledger.audit")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# (seq, originator id, version, topic, state) exactly as the store returned them (nothing checked).
RawRecord = tuple[Any, Any, Any, Any, Any]

Clock = Callable[[], datetime]
_own_writes: ContextVar[bool] = ContextVar("keyledger_reading_own_writes", default=False)

DESCRIPTION_MAX = 200
NAME_MAX = 100
COMMAND_ATTEMPTS = 5  # a command that meets a concurrent write is re-run this many times at most


def utc_now() -> datetime:
    return datetime.now(UTC)


def text_problem(value: str, maximum: int, *, required: bool = True, secret: bool = False) -> str | None:
    """Why ``value`` is not acceptable text (None if it is): length, control characters,
    lone surrogates (which cannot be stored as UTF-8), or — unless it is a ``secret`` itself —
    something shaped like a credential: a pasted secret must never become an event."""
    if required and not value.strip():
        return f"Give 1 to {maximum} characters."
    if len(value) > maximum:
        return f"At most {maximum} characters."
    for char in value:
        code = ord(char)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            return "Contains a control character or an invalid (surrogate) code point."
    if not secret and credentials.looks_like_a_secret(value):
        return ("Looks like a credential (an API key, token or client secret): never paste a secret "
                "here; if one was exposed, revoke or roll it.")
    return None


def parse_uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"No {what} with id {text!r}.") from None


class LedgerApplication(Application):
    """The eventsourcing application with Keyledger's clock, digester and error translation."""

    def __init__(self, env: dict[str, str] | None = None, *, digester: credentials.Digester,
                 clock: Clock = utc_now, seal_key: bytes | None = None) -> None:
        self.seal_key = seal_key or credentials.UNSEALED
        super().__init__(env=env)
        self.digester = digester
        self.clock = clock
        self.record_rules = RecordRules(self.seal_key)
        # Told of each stored record the service refuses to apply (seq, why): the alarm.
        self.on_refused: Callable[[int, str], None] | None = None
        self._refused: set[int] = set()

    def construct_mapper(self) -> Mapper:
        return SealingMapper(self.construct_transcoder(), self.seal_key)

    def construct_event_store(self) -> EventStore:
        return SealedEventStore(mapper=self.mapper, recorder=self.recorder)

    def construct_snapshot_store(self) -> EventStore:
        return SealedSnapshotStore(mapper=self.mapper, recorder=self.factory.aggregate_recorder(purpose="snapshots"))

    def construct_repository(self) -> Repository:
        repository = super().construct_repository()
        if hasattr(self.recorder, "select_latest"):  # PostgreSQL: a load in one round trip
            repository.__class__ = OneReadRepository
        return repository

    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now

    # -- the notification log, for projections ------------------------------------

    def read_events(self, after: int, limit: int) -> list[tuple[int, DomainEventProtocol]]:
        """Up to ``limit`` events recorded after position ``after``, oldest first. A record the
        service did not write as it stands (``RecordRules``) is never applied: it comes as a
        ``RefusedRecord`` (the audit trail shows it, nothing takes effect) and is reported to
        ``on_refused``; the records after it are applied as usual."""
        return self.read_records(after, limit)[0]

    def read_records(self, after: int, limit: int) -> tuple[list[tuple[int, DomainEventProtocol]], list[tuple]]:
        """``read_events``, and the stored records they were decoded from, from one read: each as
        (seq, originator id as 32 hex digits, version, topic, state), what the audit chain hashes.
        A rebuild reads the log once for every view, the audit trail's chain included."""
        records = self.read_judged(after, limit)
        return [(record[0], self.decode_judged(record)) for record in records], [record[:5] for record in records]

    def read_judged(self, after: int, limit: int) -> list[tuple]:
        """Up to ``limit`` stored records after ``after``, judged (``RecordRules``) but not decoded:
        each (seq, originator id as 32 hex digits, version, topic, state, why it is refused or None,
        its state as bytes, the originator id as the store returned it). A bulk pass decodes
        (``decode_judged``) only what a view needs."""
        return self.record_rules.judge_rows(self.raw_records(after, limit))

    def vouched(self, record: tuple) -> bool:
        """Whether a judged record's seal held (``read_judged``): not refused, sealed, and after any
        accepted baseline (a record accepted with a seal that did not verify is not vouched for).
        The service wrote such a state with this mapper's encoder, so it decodes as stored: a bulk
        pass may read it from its JSON without first checking every value (``Page.readable``)."""
        return record[5] is None and type(record[6]) is bytes and has_seal(record[6]) \
            and record[0] > self.record_rules.accepted_through

    def seals_due_from(self) -> int | None:
        """From which record on every record must be sealed, as far as the records judged here tell
        (``RecordRules.sealed_from``): for a second process to pass on (``sealed_seen``)."""
        return self.record_rules.sealed_from

    def sealed_seen(self, seq: int) -> None:
        """Records judged elsewhere (a second process's part of a rebuild) found seals due from ``seq``
        on (a record there was sealed): so they are here, as if those records had been judged here."""
        self.record_rules.seals_due_after(seq - 1)

    def decode_judged(self, record: tuple) -> DomainEventProtocol:
        """The event of a record from ``read_judged``: decoded, or — refused, or not decodable — a
        ``RefusedRecord`` (the audit trail shows it, nothing takes effect), reported to ``on_refused``."""
        seq, _, version, topic, _, problem, body, oid = record
        if problem is None:
            try:
                return self.mapper.decode_opened(oid if isinstance(oid, UUID) else UUID(oid),  # type: ignore[attr-defined]
                                                 version, topic, body)
            except Exception as error:  # noqa: BLE001 - whatever the bytes are, never crash here
                problem = f"it cannot be decoded ({type(error).__name__})"
        self._refuse(seq, problem)
        return RefusedRecord(oid, version, topic, problem, _EPOCH)

    def _refuse(self, seq: int, problem: str) -> None:
        if seq in self._refused:
            return
        if len(self._refused) > 10_000:
            self._refused.clear()
        self._refused.add(seq)
        if self.on_refused is not None:
            self.on_refused(seq, problem)
        else:
            log.error("refused to apply the stored record at seq %d: %s", seq, problem)

    def raw_records(self, after: int, limit: int, *, every: bool = False) -> list[RawRecord]:
        """Up to ``limit`` records after ``after`` exactly as the store returns them: nothing
        converted or decoded, so a value of the wrong type reaches ``RecordRules`` as it is. With
        ``every``, the caller wants every record up to ``limit`` (records read before, read back):
        an answer from this process's own writes (``reading_own_writes``) is taken only if it holds
        ``limit`` records, else the store is read."""
        try:
            if isinstance(self.recorder, SQLiteApplicationRecorder):
                with self.recorder.datastore.transaction(commit=False) as cursor:
                    cursor.row_factory = None  # plain tuples
                    cursor.execute(
                        "SELECT rowid, originator_id, originator_version, topic, state FROM "
                        f"{self.recorder.events_table_name} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                        (after, limit))
                    return cursor.fetchall()
            if _on_postgres(self.recorder):
                return self._raw_postgres_records(after, limit, every=every)
            return [(n.id, n.originator_id, n.originator_version, n.topic, n.state)  # in memory (tests)
                    for n in self.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)]
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error

    def raw_stream(self, originator_id: UUID) -> list[RawRecord]:
        """One aggregate's records, oldest first, exactly as the store returns them (with their seq)."""
        try:
            if isinstance(self.recorder, SQLiteApplicationRecorder):
                with self.recorder.datastore.transaction(commit=False) as cursor:
                    cursor.row_factory = None
                    cursor.execute(
                        "SELECT rowid, originator_id, originator_version, topic, state FROM "
                        f"{self.recorder.events_table_name} WHERE originator_id = ? ORDER BY originator_version",
                        (originator_id.hex,))
                    return cursor.fetchall()
            if _on_postgres(self.recorder):
                return self._raw_postgres_records(0, None, originator_id)
            return [(None, s.originator_id, s.originator_version, s.topic, s.state)
                    for s in self.recorder.select_events(originator_id)]
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error

    def _raw_postgres_records(self, after: int, limit: int | None,
                              originator_id: UUID | None = None, *, every: bool = False) -> list[RawRecord]:
        import psycopg
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL, Identifier

        from service.event_store import on_a_live_connection

        where, params = ("notification_id > %s ORDER BY notification_id LIMIT %s", (after, limit))
        if originator_id is not None:
            where, params = ("originator_id = %s ORDER BY originator_version", (originator_id,))  # type: ignore[assignment]
        elif limit is not None and _own_writes.get() and (recent := getattr(self.recorder, "recent", None)):
            written = recent(after, limit)  # what this process just wrote: no read needed
            # It may stop short: at another process's record, or at one of this process's whose
            # thread has not noted it yet. A caller that read those records before wants them all.
            if written is not None and (not every or len(written) == limit):
                return written
        statement = SQL("SELECT notification_id, originator_id, originator_version, topic, state FROM {}.{} WHERE "
                        + where).format(Identifier(self.recorder.datastore.schema),  # type: ignore[attr-defined]
                                        Identifier(self.recorder.events_table_name))  # type: ignore[attr-defined]

        def select(connection: Any) -> list[RawRecord]:
            with connection.cursor(row_factory=tuple_row) as cursor:
                cursor.execute(statement, params, prepare=True)
                return cursor.fetchall()

        try:
            return on_a_live_connection(self.recorder.datastore, select)  # type: ignore[attr-defined]
        except psycopg.Error as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error

    @staticmethod
    @contextmanager
    def reading_own_writes() -> Iterator[None]:
        """Reads of the log inside may be answered from the records this process just wrote, when
        they follow on exactly (PostgreSQL: no round trip). Such an answer can stop short of the
        log's end — another process's later records are read by the next catch-up, which a
        notification or a poll brings — so only the catch-up right after a command reads this way,
        never a rebuild, a start or the follower's own catch-ups, which must reach the end."""
        token = _own_writes.set(True)
        try:
            yield
        finally:
            _own_writes.reset(token)

    def last_position(self) -> int:
        try:
            return self.recorder.max_notification_id() or 0
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error

    # -- internals -----------------------------------------------------------------

    def _save_new(self, *aggregates: Any, conflict: str) -> None:
        try:
            self.save(*aggregates)
        except IntegrityError:
            raise Conflict(conflict) from None
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error

    def _find(self, cls: type, aggregate_id: UUID) -> Any:
        try:
            aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error
        except (TamperedRecord, ValueError, TypeError) as error:  # a record the service did not write
            log.error("aggregate %s cannot be loaded: a stored record of it was altered (%s)", aggregate_id, error)
            raise Conflict(f"The stored history of {aggregate_id} holds a record the service did not write; "
                           "it cannot be changed until an operator checks `keyledger audit verify`.") from None
        return aggregate if isinstance(aggregate, cls) else None

    def _get(self, cls: type, aggregate_id: UUID, what: str) -> Any:
        aggregate = self._find(cls, aggregate_id)
        if aggregate is None:
            raise NotFound(f"No {what} with id {aggregate_id}.")
        return aggregate

    @staticmethod
    def _require_person(by: Actor) -> None:
        if by.kind == "key":
            raise Forbidden("API keys cannot manage apps or keys; use a personal token (pat_…).")
        if by.is_introspector:
            raise Forbidden("An introspector account only asks POST /v2/introspect; it manages nothing.")


class OneReadRepository(Repository):
    """The library's repository, loading the current version of an aggregate in one round trip:
    its latest snapshot and the events after it in one statement (the library reads them in two).
    A snapshot that is not genuine is ignored, and the aggregate replayed from all its events."""

    def _reconstruct_aggregate(self, aggregate_id: Any, version: int | None, projector_func: Any) -> Any:
        if version is not None or self.snapshot_store is None:
            return super()._reconstruct_aggregate(aggregate_id, version, projector_func)
        snapshot_records, event_records = self.event_store.recorder.select_latest(aggregate_id)  # type: ignore[attr-defined]
        snapshots = list(self.snapshot_store._genuine(snapshot_records))  # type: ignore[attr-defined]
        if snapshot_records and not snapshots:
            return super()._reconstruct_aggregate(aggregate_id, version, projector_func)
        events = self.event_store._checked(event_records, sealed_seen=bool(snapshots), ordered=True)  # type: ignore[attr-defined]
        aggregate = projector_func(None, chain(snapshots, events))
        if aggregate is None:
            raise AggregateNotFoundError(f"Aggregate {aggregate_id!r} version None not found.")
        return aggregate


def _on_postgres(recorder: object) -> bool:
    """The library's PostgreSQL recorder, or a subclass of it (service.event_store's fail-fast one)."""
    return any(cls.__module__ == "eventsourcing.postgres" for cls in type(recorder).__mro__)
