"""The base of every read model: one handler per event type, rows written in SQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from eventsourcing.utils import get_topic, resolve_topic

from projections.store import copy_rows
from projections.stored import read_checked, readable_class


def handles(*event_classes: type) -> Callable:
    """Mark a method as the handler of ``event_classes``."""

    def mark(method: Callable) -> Callable:
        method._handles = event_classes  # type: ignore[attr-defined]
        return method

    return mark


# A reader of stored JSON: (judged record, its parsed state) -> the handler's statement (sql, params),
# raising (``projections.stored.Unread``, KeyError, ValueError, TypeError) for a state it does not read.
StoredReader = Callable[[tuple, dict], tuple[Any, Any]]


def reads_stored(reader: StoredReader) -> Callable:
    """Mark a handler whose statement a bulk pass may make from a judged record's stored JSON
    (``Page.state``) with ``reader``, instead of decoding the event: the same statement, with the
    same parameters, as the handler writes for the decoded event. A handler overridden in a
    subclass has no reader unless it is marked again."""

    def mark(method: Callable) -> Callable:
        method._reads = reader  # type: ignore[attr-defined]
        return method

    return mark


class Projection:
    """A read model of the notification log. Subclasses give ``name``, ``tables`` (DDL),
    and ``@handles(...)`` methods ``(self, db, position, event)``. Events without a
    handler are ignored, but still move the projection's position."""

    name: ClassVar[str]
    ddl: ClassVar[tuple[str, ...]] = ()
    indexes: ClassVar[tuple[str, ...]] = ()  # built after the rows when rebuilding
    tables: ClassVar[tuple[str, ...]] = ()
    reads_records: ClassVar[bool] = False  # wants a page's stored records (``Page.records``)
    _handlers: ClassVar[dict[type, str]]
    _readers: ClassVar[dict[str, StoredReader]]  # by topic: the handlers marked ``reads_stored``

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for event_class in getattr(value, "_handles", ()):
                    cls._handlers[event_class] = attr
        cls._readers = {}
        for event_class, attr in cls._handlers.items():
            reader = getattr(getattr(cls, attr), "_reads", None)
            if reader is not None and readable_class(event_class):  # a later version's state is upcast
                topic = get_topic(event_class)
                if topic_class(topic) is event_class:
                    cls._readers[topic] = reader

    def create(self, db: Any, *, with_indexes: bool = True) -> None:
        for statement in self.ddl:
            db.execute(statement)
        if with_indexes:
            self.create_indexes(db)

    def create_indexes(self, db: Any) -> None:
        for statement in self.indexes:
            db.execute(statement)

    def drop(self, db: Any) -> None:
        for table in self.tables:
            db.execute(f"DROP TABLE IF EXISTS {table}")

    def adopt(self, db: Any, schema: str) -> None:
        """This view's rows, built in the attached database ``schema`` by a second process (a bulk
        pass's side build, on SQLite), made the store's: every table of ``tables`` replaced by its
        copy there (same DDL, so the same columns)."""
        for table in self.tables:
            db.execute(f"DELETE FROM main.{table}")
            copy_rows(db, schema, table)

    # Whether a rebuild of this view alone may hand the second half of a long log to a second process
    # (``Follower._build_halves``): one that stages rows there (``stage_aside``) for this view to take
    # in (``adopt_staged``), as far as the log holds nothing else it handles.
    stages_aside: ClassVar[bool] = False

    def stage_aside(self, db: Any, judged: Sequence[tuple], vouched: Callable[[tuple], bool], after: int) -> int:
        """In a second process: the rows of the judged records after ``after`` (``read_judged``) staged
        in ``db``, in order, up to the first record this view cannot stage there (one it handles
        otherwise, or not ``vouched``); returns the position through which it staged them."""
        raise NotImplementedError

    def adopt_staged(self, db: Any, schema: str) -> None:
        """The rows ``stage_aside`` staged in the attached database ``schema`` taken in after this
        view's own, as if this process had staged them."""
        raise NotImplementedError

    def side_build(self) -> None:
        """Called in the second process of a bulk pass before it builds this view there: drop what
        must only happen in the main process (callbacks into it)."""

    def process(self, db: Any, position: int, event: Any) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            getattr(self, handler)(db, position, event)

    def prefetch(self, db: Any) -> None:
        """Start the reads the next ``process_batch`` of this transaction will need (a live write
        sends them with its first round trip); nothing by default."""

    def process_batch(self, db: Any, batch: Sequence[tuple[int, Any]]) -> None:
        """Apply events in order; a projection may override this to write rows in bulk."""
        for position, event in batch:
            self.process(db, position, event)

    def finish_bulk(self, db: Any) -> None:
        """At the end of a bulk pass, in the transaction of its last page (the log's end reached):
        whatever the pages left for the end (``VerificationView``: the new keys it staged)."""

    def process_page(self, db: Any, page: Sequence[tuple[int, Any]]) -> None:
        """Apply a page of the log in bulk (a rebuild, a first start): ``process_batch`` with its
        statements sent in runs (``StatementRuns``), so the rows are those of the live path — given
        only the events this view has a handler for (``handled``). Read from judged records, the
        statement of an event whose handler has a reader (``reads_stored``) is made from its stored
        JSON, in its place in the page (unless another view has decoded it already: its event is
        handled, cheaper); the reader's leftovers are decoded and handled."""
        runs = StatementRuns(db)
        judged = getattr(page, "judged", None)
        if judged is None or not self._readers or not self._applies_by_handlers():
            self.process_batch(runs, self.handled(page))
        else:
            readers, readable, event = self._readers, page.readable, page.event  # type: ignore[attr-defined]
            decoded = page.decoded()  # type: ignore[attr-defined]
            for i in self._wanted(page):
                record = judged[i]
                reader = readers.get(record[3]) if type(record[3]) is str and i not in decoded else None
                found = None if reader is None else read_checked(reader, record, readable(i))
                if found is None:
                    self.process(runs, record[0], event(i))
                else:
                    runs.execute(*found)
        runs.flush()

    def _applies_by_handlers(self) -> bool:
        """Whether this view applies events through its handlers alone."""
        kind = type(self)
        return kind.process is Projection.process and kind.process_batch is Projection.process_batch

    def handled(self, page: Sequence[tuple[int, Any]]) -> Sequence[tuple[int, Any]]:
        """The events of ``page`` this view handles, for a view that applies events through its
        handlers alone (``process`` and ``process_batch`` its base's): read from judged records
        (``Page.judged``), an event of a class this view has no handler for is not decoded, nor
        passed on. A refused record, or one whose topic names no class, is decoded (the refusal
        is reported there). Any other view, or any other page: the page itself."""
        judged = getattr(page, "judged", None)
        if judged is None or not self._applies_by_handlers():
            return page
        event = page.event  # type: ignore[attr-defined]
        return [(judged[i][0], event(i)) for i in self._wanted(page)]

    def _wanted(self, page: Any) -> list[int]:
        """The indexes in ``page.judged`` of the records ``handled`` decodes, in log order."""
        judged = page.judged
        wanted: list[int] = []
        handlers = self._handlers
        for topic, indexes in page.by_topic().items():  # type: ignore[attr-defined]
            cls = topic_class(topic)
            if cls is None or cls in handlers:
                wanted.extend(indexes)
            else:  # a refused record is decoded whatever its topic (the refusal is reported there)
                wanted.extend(i for i in indexes if judged[i][5] is not None)
        wanted.sort()
        return wanted

    def wants(self, record: tuple) -> bool:
        """Whether a judged record's event may be one this view has a handler for: its topic's
        class has one, or the record is refused, or its topic names no class (both decoded as a
        ``RefusedRecord``)."""
        if record[5] is not None:
            return True
        cls = topic_class(record[3])
        return cls is None or cls in self._handlers


_CLASSES: dict[str, type | None] = {}  # a topic's class (None: the topic names none)


def topic_class(topic: Any) -> type | None:
    """The class a stored record's topic names (what its event decodes as), or None."""
    cls = _CLASSES.get(topic, _CLASSES) if type(topic) is str else None
    if cls is _CLASSES:
        try:
            cls = resolve_topic(topic)
        except Exception:  # noqa: BLE001 - decoded, and refused there
            cls = None
        _CLASSES[topic] = cls
    return cls  # type: ignore[return-value]


class StatementRuns:
    """A connection for a bulk pass: consecutive statements with the same SQL go to the store as
    one ``executemany`` (a single call on SQLite, a pipeline on PostgreSQL). Order is kept — a
    run is sent before any other statement, and before any ``SELECT``, which goes through at once
    — so every statement sees the rows it would have seen executed one by one. Writes return
    nothing: handlers never read a write's cursor."""

    __slots__ = ("db", "sql", "rows")

    def __init__(self, db: Any) -> None:
        self.db = db
        self.sql: str | None = None
        self.rows: list[Any] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql.startswith("SELECT"):
            self.flush()
            return self.db.execute(sql, params)
        if sql != self.sql:
            self.flush()
            self.sql = sql
        self.rows.append(params)
        return None

    def executemany(self, sql: str, rows: Any) -> None:
        self.flush()
        self.db.executemany(sql, rows)

    def columns(self, table: str) -> set[str]:
        self.flush()
        return self.db.columns(table)

    def flush(self) -> None:
        if self.rows:
            self.db.executemany(self.sql, self.rows)
            self.rows = []
        self.sql = None
