"""Following the notification log: views in SQL, indexes in memory, kept apart.

*In-memory indexes* (the verification index) are loaded once from their view at start,
then follow the log themselves: ``catch_up()`` reads new events and applies them in
memory. It never waits for the view store, so a command's effect reaches this process's
index before the command answers, and a request never blocks behind a view write.

*Views* (SQL rows with a tracking position each) are written by ``update_views()``: in
one ``BEGIN IMMEDIATE`` transaction it reads each view's position, reads the events after
the lowest, applies them to every view still behind, and moves the positions. Rows and
positions commit together, so several processes sharing the view store apply each event
exactly once, and a process killed half-way leaves nothing half-applied. Because the
positions are read inside the transaction that writes, no view can skip events.

*Bulk passes* — ``rebuild()``, and a start that finds views behind (a first start, a store
restored from a backup of the log) — read the log in pages of ``page_size`` events (each
record read and decoded once for every view, the audit chain hashing the stored record as
read) and write each view's rows in bulk (``Projection.process_page``: runs of statements as
one ``executemany``). Each page is one transaction with the views' new positions, so a bulk
pass killed half-way resumes where its last page committed, and other processes' writers
interleave with it between pages (each event is still applied exactly once). ``rebuild()``
drops the views and resets their positions in one transaction, then fills them page by
page: readers see a rebuilt view grow as a first start's does; every process's in-memory
index keeps following the log meanwhile, and the rebuilding process reloads its own at the
end. A view whose position is beyond the log (a store restored from an older backup) is
rebuilt at start.

The process that wrote an event calls ``catch_up()`` and ``update_views()`` before it
answers; processes on the same machine learn of new events from the change beacon on
their next request; a background thread polls as the fallback (and, with PostgreSQL, a
subscription wakes the catch-up thread).

A request never reads the log itself while the process follows it: ``sync()`` hands the
catch-up to the catch-up thread and waits for it a bounded time (milliseconds in the common
case), and not at all while the log cannot be reached — the answer then comes from memory as
it is. A store that is down or slow can delay what an index knows, never an answer.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from operator import itemgetter
from typing import Any, Protocol

from projections.beacon import ChangeBeacon
from projections.projection import Projection
from projections.store import TRANSIENT_ERRORS, ViewStore, deleting_fast, sorting_in_runs
from projections.stored import readable
from service.domain.errors import Unavailable

# A store that cannot be used right now (a full disk, a lock, an outage): logged without a traceback.
TRANSIENT = (Unavailable, *TRANSIENT_ERRORS)

log = logging.getLogger("keyledger.projections")

SYNC_WAIT = 1.0  # seconds a request waits, at most, for this machine's newer events to reach the index
RETRY_PAUSE = 0.25  # seconds between catch-up attempts while the log cannot be read


class EventSource(Protocol):
    def read_events(self, after: int, limit: int) -> list[tuple[int, Any]]: ...

    def last_position(self) -> int: ...

    # Optional: ``read_events`` and the stored records the events were decoded from (seq, originator
    # id hex, version, topic, state), from one read. Bulk passes use it when the source has it.
    # def read_records(self, after: int, limit: int) -> tuple[list[tuple[int, Any]], list[tuple]]: ...
    # Better still: the records judged but not decoded, and the decoding of one (``Page``).
    # def read_judged(self, after: int, limit: int) -> list[tuple]: ...
    # def decode_judged(self, record: tuple) -> Any: ...


class Page:
    """A page of the log for a bulk pass: (position, event) pairs in order (iterated, indexed) and,
    when the source gives them, the stored records by position (``records``, for the audit chain)
    and the judged records (``judged``: see ``LedgerApplication.read_judged``). Read from judged
    records, events are decoded on first use — all of them, or one at a time (``event``) for a
    view that reads the others' stored JSON itself — so a page no view needs as events is never
    decoded."""

    __slots__ = ("_items", "judged", "_decode", "_records", "_events", "_states", "_readable", "_by_topic", "_vouched",
                 "first", "last")

    def __init__(self, items: Any = (), records: dict[int, tuple] | None = None, *,
                 judged: list[tuple] | None = None, decode: Callable[[tuple], Any] | None = None,
                 vouched: Callable[[tuple], bool] | None = None) -> None:
        self._items: list[tuple[int, Any]] | None = None if judged is not None else list(items)
        self.judged = judged
        self._decode = decode
        self._records = records
        self._events: dict[int, Any] = {}  # decoded one at a time, by index in ``judged``
        self._states: dict[int, Any] = {}  # stored states parsed (not decoded), by index in ``judged``
        self._readable: dict[int, Any] = {}  # ... and found readable (or None), by index
        self._vouched = vouched
        self._by_topic: dict[Any, list[int]] | None = None
        rows = judged if judged is not None else self._items
        self.first = rows[0][0] if rows else 0
        self.last = rows[-1][0] if rows else 0

    def __len__(self) -> int:
        return len(self.judged if self.judged is not None else self._items)  # type: ignore[arg-type]

    def __bool__(self) -> bool:
        return len(self) > 0

    def items(self) -> list[tuple[int, Any]]:
        if self._items is None:
            event = self.event
            self._items = [(record[0], event(i)) for i, record in enumerate(self.judged)]  # type: ignore[arg-type]
        return self._items

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return iter(self.items())

    def __getitem__(self, i: Any) -> Any:
        return self.items()[i]

    def event(self, i: int) -> Any:
        """The event of ``judged[i]``, decoded once."""
        if self._items is not None:
            return self._items[i][1]
        found = self._events.get(i)
        if found is None:
            found = self._events[i] = self._decode(self.judged[i])  # type: ignore[misc, index]
        return found

    def decoded(self) -> dict[int, Any]:
        """The events of ``judged`` decoded so far, by index: a view that could read a record's
        stored JSON handles its event instead when another view has decoded it already (cheaper
        than reading the JSON). Shared: never mutated."""
        return self._events

    def state(self, i: int) -> Any:
        """The stored state of ``judged[i]`` as parsed JSON (plain dicts, lists and scalars; typed
        values still as ``{"_type_": …, "_data_": …}``), parsed once for every view that reads it;
        None when the record is refused or its state is not a JSON object. Shared: never mutated."""
        found = self._states.get(i, _UNPARSED)
        if found is _UNPARSED:
            record = self.judged[i]  # type: ignore[index]
            found = None
            if record[5] is None:
                try:
                    found = _loads(record[6])
                except Exception:  # noqa: BLE001 - not JSON: decoded (and refused) by the caller
                    found = None
                if type(found) is not dict:
                    found = None
            self._states[i] = found
        return found

    def readable(self, i: int) -> Any:
        """``state(i)`` if the record may be read from its JSON (``projections.stored.readable``: not
        refused, decoded as it is stored — taken as read for a record the source vouches for, its
        seal held: see ``LedgerApplication.vouched``), else None; judged once for every view."""
        found = self._readable.get(i, _UNPARSED)
        if found is _UNPARSED:
            state = self.state(i)
            record = self.judged[i]  # type: ignore[index]
            vouched = self._vouched is not None and state is not None and self._vouched(record)
            found = self._readable[i] = state if vouched or readable(record, state) else None
        return found

    def by_topic(self) -> dict[Any, list[int]]:
        """The indexes in ``judged`` of each topic's records, in log order (computed once)."""
        if self._by_topic is None:
            groups: dict[Any, list[int]] = {}
            judged = self.judged or ()
            try:
                topics = set(map(_topic_of, judged))
            except TypeError:  # a topic of an unhashable type (tampered): grouped one by one below
                topics = set()
            if len(topics) == 1:  # one topic (a page of new keys, say): no loop in Python
                self._by_topic = {topics.pop(): list(range(len(judged)))}
                return self._by_topic
            for i, record in enumerate(judged):
                topic = record[3]
                try:
                    groups.setdefault(topic, []).append(i)
                except TypeError:  # a topic of an unhashable type (tampered): its own group
                    groups.setdefault(repr(topic), []).append(i)
            self._by_topic = groups
        return self._by_topic

    @property
    def records(self) -> dict[int, tuple] | None:
        if self._records is None and self.judged is not None:
            self._records = {record[0]: record[:5] for record in self.judged}
        return self._records

    def after(self, position: int) -> Page:
        """The events after ``position`` (for a view that is part-way through this page)."""
        if self.judged is not None:
            keep = [i for i, record in enumerate(self.judged) if record[0] > position]
            page = Page(judged=[self.judged[i] for i in keep], decode=self._decode, vouched=self._vouched)
            page._events = {j: self._events[i] for j, i in enumerate(keep) if i in self._events}
            page._states = {j: self._states[i] for j, i in enumerate(keep) if i in self._states}
            page._readable = {j: self._readable[i] for j, i in enumerate(keep) if i in self._readable}
            return page
        return Page([item for item in self.items() if item[0] > position], self._records)


_UNPARSED = object()
_topic_of = itemgetter(3)

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency; the standard library reads the same JSON
    from json import loads as _loads


class MemoryIndex(Protocol):
    """An in-memory read model: loaded from its view, then fed events directly."""

    view: str

    def load(self, store: ViewStore) -> int:
        """Load everything from the view; return the position of the view it reflects."""

    def apply(self, events: Sequence[Any]) -> None:
        """Apply new events, in order."""


class Follower:
    def __init__(self, source: EventSource, store: ViewStore, projections: Sequence[Projection],
                 indexes: Sequence[MemoryIndex] = (), *, batch_size: int = 1000,
                 bulk_size: int = 250_000, page_size: int = 50_000, beacon: ChangeBeacon | None = None) -> None:
        self.source = source
        self.store = store
        self.projections = list(projections)
        self.indexes = list(indexes)
        self.batch_size = batch_size  # events read and decoded at a time
        self.bulk_size = bulk_size  # events per commit when views are far behind
        # Events per page (one read, one transaction) in a bulk pass. Big: each commit writes every
        # B-tree page it touched once more (SQLite's WAL), and new keys' random digests touch most of
        # a million-row view's leaves whatever the page's size — a verification rebuild of 1M keys
        # took 90 s in pages of 10,000 and 50 s in pages of 100,000 (load 8 on 2 cores).
        self.page_size = page_size
        self.beacon = beacon
        # A bulk pass builds these views in a second process (``_build``: started by ``side_start``,
        # with ``wait()``, ``returncode`` and ``kill()``, as ``subprocess.Popen``), when they are all
        # unbuilt and the log holds ``side_from`` events or more.
        self.side_views: tuple[str, ...] = ()
        self.side_start: Callable[..., Any] | None = None  # -> a started process
        self.side_from = 100_000
        self.side_builds = 0  # bulk passes whose side views (or second half) were built aside and adopted
        self.position = 0  # the last event this process's in-memory indexes reflect
        self._index_positions: list[int] = []  # each index's (one loaded from a snapshot may be ahead)
        self.views_position = 0  # the lowest view position seen in the last view write
        self._memory_lock = threading.RLock()
        self._views_lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The catch-up thread (while following): woken by requests and notifications. Attempts
        # are counted as they begin and end, so a request can wait for one that began after it asked.
        self._catch_up_thread: threading.Thread | None = None
        self._wanted = threading.Event()
        self._moved = threading.Condition()
        self._begun = 0  # catch-up attempts begun
        self._ended = 0  # and ended (they run one at a time, under the memory lock)
        self._catch_up_failed = False  # the last attempt could not read the log
        self._attempt_started: float | None = None  # the attempt under way began then
        # For monitoring: when the indexes last reached the log's end, when the views were last
        # found or brought up to date (wall-clock seconds), and a hook called on each failed poll.
        self.caught_up_at = time.time()
        self.views_ok_at = time.time()
        self._reached = _monotonic()  # the last time the log was reached (a poll or a catch-up)
        self._failing = False  # the last poll failed
        self._poll_started: float | None = None  # a poll under way since then
        self.on_error: Callable[[], None] | None = None
        # The highest view position found beyond the log's end at start (then rebuilt): the log
        # was truncated, or the store restored from an older backup. Evidence for the audit.
        self.views_ahead_at: int | None = None

    # -- life ---------------------------------------------------------------------

    def start(self) -> None:
        """Create missing views, bring them up to date, load the in-memory indexes.

        The views' positions are read under the writer lock and the log's last position after
        them: instances writing meanwhile can move the log past what was read, never the views
        (they only ever apply events already in the log). So views are "ahead" only when the log
        really is behind them — a store restored from an older backup — and only then rebuilt."""
        with self._views_lock:
            with self.store.write() as db:
                positions = self.store.positions(db)
                fresh = [p for p in self.projections if positions.get(p.name, 0) == 0]
                for projection in self.projections:  # a view never built gets its indexes once filled
                    projection.create(db, with_indexes=projection not in fresh)
                last = self.source.last_position()
                ahead = [p for p in self.projections if positions.get(p.name, 0) > last]
            if ahead:
                self.views_ahead_at = max(positions.get(p.name, 0) for p in ahead)
                log.warning("views %s are ahead of the event log (a store restored from a backup?); "
                            "rebuilding them", ", ".join(p.name for p in ahead))
                self._rebuild(ahead)
            self._build()
            if fresh:
                self._create_indexes(fresh)
        self._load_indexes()
        if self.beacon is not None:
            published = self.beacon.value()  # before the log's end, which only grows: same reasoning
            if published > last and published > (last := self.source.last_position()):
                self.beacon.reset(last)  # left by another log: it would make every request look
        self.catch_up()

    def follow(self, interval: float) -> None:
        """Poll for events written by other processes every ``interval`` seconds, and catch up
        in a thread of its own whenever woken (``wake()``, ``sync()``)."""
        if self._thread is not None:
            return
        self._catch_up_thread = threading.Thread(target=self._catch_up_when_woken,
                                                 name="keyledger-catch-up", daemon=True)
        self._catch_up_thread.start()
        self._thread = threading.Thread(target=self._follow, args=(interval,),
                                        name="keyledger-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wanted.set()
        for thread in (self._thread, self._catch_up_thread):
            if thread is not None:
                thread.join(timeout=5)
        self._thread = self._catch_up_thread = None
        self.checkpoint(final=True)

    def checkpoint(self, *, final: bool = False) -> None:
        """Write the snapshots of the in-memory indexes that keep one, when due (``final``: whenever
        they moved since the last). The indexes are copied under the memory lock, written after."""
        if not self._index_positions:
            return
        with self._memory_lock:
            jobs = [job for index, position in zip(self.indexes, self._index_positions, strict=True)
                    if (snapshot_job := getattr(index, "snapshot_job", None)) is not None
                    and (job := snapshot_job(position, final=final)) is not None]
        for job in jobs:
            try:
                job()
            except Exception:  # a snapshot is a cache: never let it stop a poll or a stop
                log.exception("writing an in-memory index's snapshot failed")

    def wake(self) -> None:
        """Ask the catch-up thread to read the log now (a notification, a request); returns at once.
        Without one (not following), nothing happens: the caller catches up itself if it must."""
        self._wanted.set()

    def _catch_up_when_woken(self) -> None:
        failures = 0
        while True:
            self._wanted.wait()
            if self._stopping.is_set():
                return
            self._wanted.clear()
            try:
                self.catch_up()
                if failures:
                    log.info("catching up with the event log works again")
                failures = 0
            except Exception as error:  # noqa: BLE001 - the log is unreachable: retried when woken
                failures += 1
                if failures == 1:
                    log.warning("catching up with the event log failed (%s); answering from memory "
                                "until it can be read", type(error).__name__)
                if self._stopping.wait(RETRY_PAUSE):  # requests keep waking it: don't hammer the store
                    return

    def _follow(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            self._poll_started = _monotonic()
            try:
                last = self.source.last_position()
                if last > self.position:
                    self.catch_up()
                if last > self.views_position:
                    self.update_views()
                else:
                    self.views_ok_at = time.time()
                self._reached = _monotonic()
                self.checkpoint()
                if self._failing:
                    log.info("following the event log works again")
                self._failing = False
            except Exception as error:  # keep following; the next poll retries
                if not self._failing:  # said once per fault, not every poll (a full disk, an outage)
                    if isinstance(error, TRANSIENT):
                        log.warning("following the event log failed (%s); retrying every %s s",
                                    (str(error).strip().splitlines() or [type(error).__name__])[0], interval)
                    else:
                        log.exception("following the event log failed; retrying")
                self._failing = True
                if self.on_error is not None:
                    self.on_error()
            finally:
                self._poll_started = None

    # -- memory --------------------------------------------------------------------

    def sync(self, wait: float = SYNC_WAIT) -> bool:
        """Before answering a request: catch up if another process on this machine published
        newer events. Nothing new (the common case): a memory read. Something new: while
        following, the catch-up thread reads the log and this waits for it at most ``wait``
        seconds — not at all once the log has been found unreachable (the index answers as it
        is, and the follower's staleness says since when). Not following (a command-line
        process): catches up here. True when the index reflects what was published."""
        beacon = self.beacon
        if beacon is None:
            return True
        target = beacon.value()
        if target <= self.position:
            return True
        if self._catch_up_thread is None:
            self.catch_up()
            return True
        now = _monotonic()
        started = self._attempt_started
        if self._catch_up_failed or self._failing or (started is not None and now - started > wait):
            self._wanted.set()  # unreachable, or an attempt already stuck longer than we would wait
            return False
        deadline = now + wait
        with self._moved:
            asked = self._begun  # an attempt numbered above this one began after the request
            self._wanted.set()
            while self.position < target and self._ended <= asked:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    return False
                self._moved.wait(remaining)
            return self.position >= target

    def catch_up(self) -> int:
        """Apply new events to the in-memory indexes (reads the log; no view lock).
        Publishes the new position on the beacon for the other processes."""
        with self._memory_lock:
            with self._moved:
                self._begun += 1
            self._attempt_started = _monotonic()
            try:
                total = self._catch_up()
            except BaseException:
                self._catch_up_failed = True
                raise
            else:
                self._catch_up_failed = False
            finally:
                self._attempt_started = None
                with self._moved:
                    self._ended += 1
                    self._moved.notify_all()
            return total

    def _catch_up(self) -> int:
        total = 0
        while True:
            batch = self.source.read_events(self.position, self.batch_size)
            if not batch:
                break
            events = [event for _, event in batch]
            first, last = batch[0][0], batch[-1][0]
            positions = self._index_positions
            for i, index in enumerate(self.indexes):
                at = positions[i] if positions else 0
                if at < first:
                    index.apply(events)
                elif at < last:  # loaded from a snapshot ahead of the others: only what it lacks
                    index.apply([event for position, event in batch if position > at])
                if positions:
                    positions[i] = max(at, last)
            self.position = last
            total += len(batch)
            if len(batch) < self.batch_size:
                break
        self.caught_up_at = time.time()
        self._reached = _monotonic()
        if total and self.beacon is not None:
            self.beacon.publish(self.position)
        return total

    def _load_indexes(self, *, from_view: bool = False) -> None:
        """Load every index (from its snapshot, if it keeps one and it can be used; from its view
        when ``from_view``, after a rebuild: its snapshot is then removed)."""
        with self._memory_lock:
            positions = [index.load(self.store, from_view=True) if from_view and hasattr(index, "snapshot_job")
                         else index.load(self.store) for index in self.indexes]
            self._index_positions = positions
            self.position = min(positions) if positions else self.source.last_position()

    def staleness(self) -> float:
        """0 while following works; once the last poll failed, or the one under way has taken more
        than a second (the event store is unreachable), the seconds since the log was last reached.
        On the machine's monotonic clock, which no test's frozen time moves."""
        now = _monotonic()
        started = self._poll_started
        if self._failing or (started is not None and now - started > 1.0):
            return max(0.0, now - self._reached)
        return 0.0

    def lag(self) -> int:
        """How far this process's indexes or the views are behind the log."""
        return max(0, self.source.last_position() - min(self.position, self.views_position))

    # -- views ---------------------------------------------------------------------

    def update_views(self, *, timeout: float | None = None) -> int:
        """Apply new events to every view that is behind; ``timeout`` bounds the wait for
        another writer's lock (sqlite3.OperationalError when it runs out)."""
        with self._views_lock:
            return self._update_views(bulk=False, timeout=timeout)

    def rebuild(self, names: Sequence[str] | None = None, *, reload: bool = True) -> int:
        """Drop the named views (all by default) and replay the whole log into them, a page per
        transaction (see the module's docstring); then reload the in-memory indexes from the views
        (unless told not to). Returns the number of events read."""
        chosen = [p for p in self.projections if names is None or p.name in names]
        unknown = set(names or ()) - {p.name for p in self.projections}
        if unknown:
            raise KeyError(f"unknown projection(s): {', '.join(sorted(unknown))}")
        with self._views_lock:
            count = self._rebuild(chosen)
        if reload:
            self._load_indexes(from_view=True)
            self.catch_up()
        return count

    def _rebuild(self, chosen: list[Projection]) -> int:
        # The old rows go and the positions restart together; freed pages not zeroed one by one (the
        # log the views are rebuilt from holds all they held: ``deleting_fast``).
        with self.store.write() as db, deleting_fast(db):
            for projection in chosen:
                projection.drop(db)
                projection.create(db, with_indexes=False)  # rows first, indexes after: faster
            self.store.set_positions(db, {projection.name: 0 for projection in chosen})
        count = self._build()
        self._create_indexes(chosen)
        return count

    def _create_indexes(self, projections: Sequence[Projection]) -> None:
        """The indexes of views whose rows were written first (a bulk pass), sorted in runs
        (``sorting_in_runs``). An index already there is left as it is."""
        with self.store.write() as db, sorting_in_runs(db):
            for projection in projections:
                projection.create_indexes(db)

    def _build(self) -> int:
        """Bring every view that is behind to the log's end (``_build_pages``) — the views named in
        ``side_views`` in a second process, when they are all unbuilt and the log is long
        (``_start_side``): two cores build the views at once, and the rows built aside are adopted
        in one transaction at the end. Should the second process fail, or someone else build those
        views meanwhile, this process builds (or keeps) them as usual. A process that finds another
        building them aside builds the rest and waits for that one's end. Returns the events read."""
        if hasattr(self.store, "side_lock"):  # side files left by a process killed half-way, whatever comes next
            lock = self.store.side_lock(wait=False)
            if lock is not None:  # (under the lock: no other process's second process is at work)
                try:
                    self.store.remove_stale_sides()  # type: ignore[attr-defined]
                finally:
                    lock.close()
        side = self._start_side()
        if side is None:
            halves = self._start_halves()
            if halves is not None:
                return self._build_halves(*halves)
            return self._build_pages(self.projections)
        process, path, aside, lock = side
        try:
            here = [p for p in self.projections if p not in aside]
            count = self._build_pages(here)
            # Their rows are in: their indexes now, while the second process may still be working.
            self._create_indexes(here)
            if process is None:  # another process's second process builds them: wait for its end
                lock = self.store.side_lock(wait=True)  # type: ignore[attr-defined]
            else:
                process.wait()
        except BaseException:
            if process is not None:
                process.kill()
                process.wait()
                self.store.remove_side(path)  # type: ignore[attr-defined]
            if lock is not None:
                lock.close()
            raise
        try:
            if process is not None:
                self._adopt(process, path, aside)
        finally:
            lock.close()
        # Every view to the log's end: the views built aside if they were not adopted; else whatever
        # the log gained while the two processes built (one empty read, usually).
        return max(count, self._build_pages(self.projections))

    def _adopt(self, process: Any, path: Any, aside: list[Projection]) -> None:
        try:
            if process.returncode == 0:
                adopted = self.store.adopt(path, aside)  # type: ignore[attr-defined]
                if adopted is not None:
                    self.side_builds += 1
                    log.info("views %s built in a second process (through position %d) and adopted",
                             ", ".join(p.name for p in aside), min(adopted.values()))
            else:
                log.warning("the second process building views %s failed (exit code %s); building them here",
                            ", ".join(p.name for p in aside), process.returncode)
        except Exception:  # noqa: BLE001 - built here instead, from where they stand
            log.exception("adopting the views built by a second process failed; building them here")
        finally:
            self.store.remove_side(path)  # type: ignore[attr-defined]

    def _start_side(self) -> tuple[Any, Any, list[Projection], Any] | None:
        """Start the second process of a bulk pass (``side_start(path, names, page_size)``, given by
        the composition root: a process started afresh, never a fork of this one), if there are
        views named in ``side_views``, all unbuilt (position 0), beside others, a log of at least
        ``side_from`` events, and a store that adopts rows built aside (SQLite). Another process
        holding the store's side lock builds them already: (None, None, those views, None)."""
        aside = [p for p in self.projections if p.name in self.side_views]
        if not aside or self.side_start is None or not hasattr(self.store, "adopt") \
                or len(aside) == len(self.projections):
            return None
        with self.store.read() as db:
            positions = self.store.positions(db)
        if any(positions.get(p.name, 0) != 0 for p in aside) or self.source.last_position() < max(self.side_from, 1):
            return None
        lock = self.store.side_lock(wait=False)  # type: ignore[attr-defined]
        if lock is None:
            return None, None, aside, None
        launched = self._launch_side(lock, [p.name for p in aside])
        return None if launched is None else (*launched, aside, lock)

    def _launch_side(self, lock: Any, names: list[str], *more: Any) -> tuple[Any, Any] | None:
        """With the store's side lock held (stale side files removed by ``_build``): a second process
        started on a fresh side file (``side_start(path, names, page_size, *more)``). Returns (process,
        side file), or None — the lock released — if it could not start (built here, as before)."""
        try:
            path = self.store.side_path(os.getpid())  # type: ignore[attr-defined]
            self.store.remove_side(path)  # type: ignore[attr-defined]
            return self.side_start(path, names, self.page_size, *more), path  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - no second process: built here, as before
            log.exception("starting a second process for %s failed; building here", ", ".join(names))
            lock.close()
            return None

    def _start_halves(self) -> tuple[Any, Any, Projection, int, Any] | None:
        """A rebuild of one view that stages rows aside (``Projection.stages_aside``: the verification
        view), all others at the log's end, on a log with ``side_from`` events or more still to read
        and a store that adopts rows built aside (SQLite): a second process started (``side_start``
        with the position after which it reads) to read, judge and stage the log's second half while
        this one builds the first. Returns (process, side file, view, the half's last position, lock)."""
        if self.side_start is None or not hasattr(self.store, "adopt_staged") \
                or not hasattr(self.source, "read_judged"):
            return None
        with self.store.read() as db:
            positions = self.store.positions(db)
        end = self.source.last_position()
        behind = [p for p in self.projections if positions.get(p.name, 0) < end]
        if len(behind) != 1 or not behind[0].stages_aside or end - positions.get(behind[0].name, 0) < max(
                self.side_from, 1):
            return None
        view = behind[0]
        lock = self.store.side_lock(wait=False)  # type: ignore[attr-defined]
        if lock is None:  # another process has a second process at work: built here alone
            return None
        start = positions.get(view.name, 0)
        half = start + (end - start) // 2
        launched = self._launch_side(lock, [view.name], half)
        return None if launched is None else (*launched, view, half, lock)

    def _build_halves(self, process: Any, path: Any, view: Projection, half: int, lock: Any) -> int:
        """``_build`` in two halves: this process builds ``view`` through position ``half`` while the
        second process stages the rows of the records after it; then, if that process ended well and
        the view stands where this one left it, the staged rows are taken in and the view's position
        moved to where they end, in one transaction. The rest of the log (all of it, should the
        second process have failed or stopped early) is built here as usual."""
        try:
            count = self._build_pages([view], until=half)
            process.wait()
            if process.returncode == 0:
                try:
                    taken = self.store.adopt_staged(path, view, self.views_position)  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - built here instead, from where it stands
                    log.exception("taking in the rows staged by a second process failed; building them here")
                    taken = None
                if taken is not None:
                    through, read, sealed = taken
                    if sealed is not None and hasattr(self.source, "sealed_seen"):
                        self.source.sealed_seen(sealed)  # every later record is due to be sealed, as if read here
                    self.side_builds += 1
                    log.info("view %s: positions %d to %d staged by a second process and taken in",
                             view.name, half + 1, through)
                    count += read
            else:
                log.warning("the second process staging %s failed (exit code %s); building it here",
                            view.name, process.returncode)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            self.store.remove_side(path)  # type: ignore[attr-defined]
            lock.close()
        return count + self._build_pages(self.projections)

    def stage_aside(self, parent: int, after: int) -> None:
        """In the second process of a rebuild in two halves (``_build_halves``): the log after position
        ``after`` read and judged a page at a time, its rows staged by this follower's one view into its
        store (the side file), up to the first record that view cannot stage there; the position through
        which it staged them, the records read up to there and where this process found seals due
        (``seals_due_from``), in table ``staged_through`` (with ``after``). Stops should the process
        ``parent`` be gone."""
        store, source = self.store, self.source
        [view] = self.projections
        read_judged, vouched = source.read_judged, source.vouched  # type: ignore[attr-defined]
        seals_due_from = getattr(source, "seals_due_from", lambda: None)
        with store.write() as db:
            view.create(db, with_indexes=False)
            db.execute("CREATE TABLE staged_through (after INTEGER NOT NULL, position INTEGER NOT NULL, "
                       "read INTEGER NOT NULL, sealed INTEGER)")
        through, read = after, 0
        with collector_paused(), store.bulk():
            while True:
                if os.getppid() != parent:  # the main process is gone: nobody will take these rows in
                    raise RuntimeError("the process that started this build is gone")
                judged = read_judged(through, self.page_size)
                with store.write() as db:
                    reached = view.stage_aside(db, judged, vouched, through)
                    read += sum(1 for record in judged if record[0] <= reached)
                    db.execute("DELETE FROM staged_through")
                    db.execute("INSERT INTO staged_through VALUES (?, ?, ?, ?)",
                               (after, reached, read, seals_due_from()))
                if len(judged) < self.page_size or reached != judged[-1][0]:
                    return
                through = reached

    def build_aside(self, parent: int) -> None:
        """In the second process of a bulk pass: this follower's views built from the log's start in
        its store (the side file, ``_build_pages``), stopping should the process ``parent`` be gone."""
        store = self.store
        for projection in self.projections:
            projection.side_build()
        with store.write() as db:
            for projection in self.projections:
                projection.create(db, with_indexes=False)
        read_judged = self.source.read_judged  # type: ignore[attr-defined]

        def read_while_wanted(after: int, limit: int) -> list[tuple]:
            if os.getppid() != parent:  # the main process is gone: nobody will adopt these rows
                raise RuntimeError("the process that started this build is gone")
            return read_judged(after, limit)

        self.source.read_judged = read_while_wanted  # type: ignore[attr-defined]
        try:
            self._build_pages(self.projections)
        finally:
            store.close()

    def _build_pages(self, projections: Sequence[Projection], until: int | None = None) -> int:
        """Bring every view that is behind to the log's end, a page at a time: each page read once
        (``_read_page``), applied in bulk to every view still behind it, and committed with their
        new positions in one transaction. The positions are read inside that transaction, so
        processes building side by side (instances starting together) share the work and apply
        each event once. ``until``: only the events through that position (and the views' ends left
        for a later pass). Returns the number of events read."""
        count = 0
        if not projections:
            return count
        with collector_paused(), self.store.bulk():
            while True:
                with self.store.write() as db:
                    known = self.store.positions(db)
                    positions = {p.name: known.get(p.name, 0) for p in projections}
                    after = min(positions.values())
                    # The stored records too, if a view behind wants them (a view left out here
                    # that turns out to be behind reads them itself: slower, the same rows).
                    records = any(p.reads_records and positions[p.name] < after + self.page_size
                                  for p in projections)
                    page = self._read_page(after, self.page_size, records, until)
                    if page:
                        last = page.last
                        for projection in projections:
                            done = positions[projection.name]
                            if done < last:
                                projection.process_page(db, page if page.first > done else page.after(done))
                                positions[projection.name] = last
                        self.store.set_positions(db, {name: position for name, position in positions.items()
                                                      if position != known.get(name)})
                    if len(page) < self.page_size and until is None:  # the log's end: what the pages left for it
                        for projection in projections:
                            projection.finish_bulk(db)
                count += len(page)
                self.views_position = min(positions.values())
                if len(page) < self.page_size:
                    if until is None:
                        self.views_ok_at = time.time()
                    return count

    def _read_page(self, after: int, limit: int, records: bool = True, until: int | None = None) -> Page:
        """Up to ``limit`` events after position ``after`` (through ``until`` only, if given: the
        page is cut there, short, as at the log's end)."""
        read_judged = getattr(self.source, "read_judged", None)
        if read_judged is not None:
            judged = read_judged(after, limit if until is None else max(0, min(limit, until - after)))
            if until is not None and judged and judged[-1][0] > until:  # gaps in the positions
                judged = [record for record in judged if record[0] <= until]
            return Page(judged=judged, decode=self.source.decode_judged,  # type: ignore[attr-defined]
                        vouched=getattr(self.source, "vouched", None))
        if until is not None:
            raise ValueError("a page cut at a position needs a source that reads judged records")
        read_records = getattr(self.source, "read_records", None)
        if read_records is None or not records:
            return Page(self.source.read_events(after, limit))
        events, records = read_records(after, limit)
        return Page(events, {record[0]: record for record in records})

    def _update_views(self, *, bulk: bool, timeout: float | None = None) -> int:
        count = 0
        with ExitStack() as stack:
            if bulk:
                stack.enter_context(collector_paused())
                stack.enter_context(self.store.bulk())
            while True:
                written, positions, finished = self.store.again_if_died(
                    lambda: self._write_views(bulk, timeout, pipelined=not bulk),
                    at_last=lambda: self._write_views(bulk, timeout, pipelined=False))
                count += written
                self.views_position = min(positions.values(), default=0)
                if finished:
                    self.views_ok_at = time.time()
                    return count

    def _write_views(self, bulk: bool, timeout: float | None, *, pipelined: bool) -> tuple[int, dict[str, int], bool]:
        """One transaction of ``_update_views``: the views' positions, the events after them, the
        rows and the new positions. ``pipelined`` (live writes), the rows' statements are sent
        without waiting for their answers, and the reads the views will need go with the
        positions' read, made before the writer lock (``PositionsMoved`` if they moved meanwhile);
        otherwise the lock is taken first."""
        with self.store.write(timeout=timeout, pipelined=pipelined) as db:
            prefetch = None
            if pipelined and self.store.pipelines:
                def prefetch(db: Any) -> None:
                    for projection in self.projections:
                        projection.prefetch(db)
            known = self.store.positions(db, then=prefetch)
            positions = {p.name: known.get(p.name, 0) for p in self.projections}
            written, finished = self._fill(db, self.projections, positions, limit=self.bulk_size)
            moved = {name: position for name, position in positions.items() if position != known.get(name)}
            if moved:
                self.store.set_positions(db, moved)
        return written, positions, finished

    def _fill(self, db: Any, projections: Sequence[Projection], positions: dict[str, int],
              limit: int | None) -> tuple[int, bool]:
        """Read events after the lowest of ``positions`` and apply each to the views still
        behind it, updating ``positions``; stop after ``limit`` events. Returns (read, done)."""
        after = min(positions.values(), default=0)
        written = 0
        while limit is None or written < limit:
            batch = self.source.read_events(after, self.batch_size)
            if not batch:
                return written, True
            first, last = batch[0][0], batch[-1][0]
            for projection in projections:
                done = positions[projection.name]
                if done >= last:
                    continue
                projection.process_batch(db, batch if first > done else [i for i in batch if i[0] > done])
                positions[projection.name] = last
            after = last
            written += len(batch)
            if len(batch) < self.batch_size:
                return written, True
        return written, False


def _monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


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
