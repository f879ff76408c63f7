"""Following the notification log: views in SQL, indexes in memory.

``Follower.catch_up()`` reads events after the last position this process has seen,
applies each batch to every view whose tracking position is behind it (rows and
position in one ``BEGIN IMMEDIATE`` transaction, so several processes sharing the view
store apply each event exactly once), then lets in-memory indexes refresh themselves
from the committed rows. The process that wrote an event calls ``catch_up()`` before it
answers (read-your-writes); a background thread polls for other processes' events.

On PostgreSQL a subscription can call ``catch_up()`` when notified instead of polling;
the projections do not change.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from projections.beacon import ChangeBeacon
from projections.projection import Projection
from projections.store import ViewStore

log = logging.getLogger("keyledger.projections")


class EventSource(Protocol):
    def read_events(self, after: int, limit: int) -> list[tuple[int, Any]]: ...

    def last_position(self) -> int: ...


class MemoryIndex(Protocol):
    """An in-memory read model kept equal to rows of a view."""

    view: str

    def load(self, store: ViewStore) -> int:
        """Load everything from the view; return the view's position it reflects."""

    def refresh(self, store: ViewStore, events: Sequence[Any]) -> None:
        """Re-read the rows that ``events`` touched."""


class Follower:
    def __init__(self, source: EventSource, store: ViewStore, projections: Sequence[Projection],
                 indexes: Sequence[MemoryIndex] = (), *, batch_size: int = 1000,
                 bulk_size: int = 250_000, beacon: ChangeBeacon | None = None) -> None:
        self.source = source
        self.store = store
        self.projections = list(projections)
        self.indexes = list(indexes)
        self.batch_size = batch_size
        self.bulk_size = bulk_size
        self.beacon = beacon
        self.position = 0  # the last event this process's indexes reflect
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------

    def start(self) -> None:
        """Create missing views, bring them up to date, load the in-memory indexes."""
        with self._lock:
            with self.store.write() as db:
                for projection in self.projections:
                    projection.create(db)
            self._apply_to_views()
            positions = [index.load(self.store) for index in self.indexes]
            self.position = min(positions) if positions else self._views_floor()
            self.catch_up()

    def follow(self, interval: float) -> None:
        """Poll for events written by other processes every ``interval`` seconds."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow, args=(interval,),
                                        name="keyledger-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _follow(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                if self.source.last_position() > self.position:
                    self.catch_up()
            except Exception:  # keep following; the next poll retries
                log.exception("following the event log failed; retrying")

    # -- work ----------------------------------------------------------------------

    def sync(self) -> None:
        """Catch up if another process on this machine has published newer events (cheap)."""
        if self.beacon is not None and self.beacon.value() > self.position:
            self.catch_up()

    def catch_up(self) -> int:
        """Apply every new event to the views and indexes; return how many were read.
        Publishes the new position on the beacon for the other processes."""
        with self._lock:
            total = 0
            while True:
                batch = self.source.read_events(self.position, self.batch_size)
                if not batch:
                    if total and self.beacon is not None:
                        self.beacon.publish(self.position)
                    return total
                self._write(batch)
                events = [event for _, event in batch]
                for index in self.indexes:
                    index.refresh(self.store, events)
                self.position = batch[-1][0]
                total += len(batch)
                if len(batch) < self.batch_size:
                    if self.beacon is not None:
                        self.beacon.publish(self.position)
                    return total

    def lag(self) -> int:
        return max(0, self.source.last_position() - self.position)

    def rebuild(self, names: Sequence[str] | None = None, *, reload: bool = True) -> int:
        """Drop the named views (all by default) and replay the whole log into them; then
        reload the in-memory indexes from the rebuilt views (unless ``reload`` is false)."""
        chosen = [p for p in self.projections if names is None or p.name in names]
        unknown = set(names or ()) - {p.name for p in self.projections}
        if unknown:
            raise KeyError(f"unknown projection(s): {', '.join(sorted(unknown))}")
        with self._lock:
            with self.store.write() as db:
                for projection in chosen:
                    projection.drop(db)
                    projection.create(db, with_indexes=False)  # bulk rows first, indexes after
                    self.store.set_position(db, projection.name, 0)
            count = self._apply_to_views(only=chosen)
            with self.store.write() as db:
                for projection in chosen:
                    projection.create_indexes(db)
            if reload:
                for index in self.indexes:
                    index.load(self.store)
            return count

    def _apply_to_views(self, only: Sequence[Projection] | None = None) -> int:
        """Bring views up to date in large transactions (start-up and rebuild): events are
        read and decoded ``batch_size`` at a time (small batches keep decoding cache-friendly),
        written ``bulk_size`` per commit (each commit rewrites the B-tree pages it touched, so
        fewer, larger commits write far less)."""
        with collector_paused(), self.store.bulk():
            return self._apply_in_bulk(list(only) if only is not None else self.projections)

    def _apply_in_bulk(self, projections: list[Projection]) -> int:
        count = 0
        while True:
            start = self._views_floor(projections)
            written = 0
            with self.store.write() as db:
                positions = {p.name: self.store.position(db, p.name) for p in projections}
                after = start
                while written < self.bulk_size:
                    batch = self.source.read_events(after, self.batch_size)
                    if not batch:
                        break
                    for projection in projections:
                        done = positions[projection.name]
                        todo = batch if batch[0][0] > done else [i for i in batch if i[0] > done]
                        if todo:
                            projection.process_batch(db, todo)
                            positions[projection.name] = todo[-1][0]
                    after = batch[-1][0]
                    written += len(batch)
                    if len(batch) < self.batch_size:
                        break
                for name, position in positions.items():
                    self.store.set_position(db, name, position)
            count += written
            if written < self.bulk_size:
                return count

    def _views_floor(self, projections: Sequence[Projection] | None = None) -> int:
        projections = self.projections if projections is None else projections
        with self.store.read() as db:
            return min((self.store.position(db, p.name) for p in projections), default=0)

    def _write(self, batch: list[tuple[int, Any]], projections: Sequence[Projection] | None = None) -> None:
        last = batch[-1][0]
        with self.store.write() as db:
            for projection in self.projections if projections is None else projections:
                done = self.store.position(db, projection.name)
                if done >= last:
                    continue
                todo = batch if batch[0][0] > done else [item for item in batch if item[0] > done]
                projection.process_batch(db, todo)
                self.store.set_position(db, projection.name, last)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a bulk pass. Decoded events hold no cycles
    (reference counting frees them), but with a million index entries alive every full
    collection would walk them all, again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def wait_until(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (for tools and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
