"""The base of every read model: one handler per event type, rows written in SQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar


def handles(*event_classes: type) -> Callable:
    """Mark a method as the handler of ``event_classes``."""

    def mark(method: Callable) -> Callable:
        method._handles = event_classes  # type: ignore[attr-defined]
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
    _handlers: ClassVar[dict[type, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for event_class in getattr(value, "_handles", ()):
                    cls._handlers[event_class] = attr

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
