"""How much each API key is used: valid answers and refusals by code, per key and UTC hour,
without an event per verification.

Verifications count in memory (one dictionary update per verdict that identified a key: a
``MALFORMED`` or ``NOT_FOUND`` credential has no key and is not counted); ``flush()`` adds the
batch to the view store every ``interval`` seconds (``KEYLEDGER_LAST_USED_INTERVAL``, with the
last-used times) in one write. Counts are *added* to the stored ones, never overwritten, so the
workers of an instance and the instances sharing a store sum correctly. A process that dies
without its normal exit loses what it counted since its last flush (at most one interval); a
failed write keeps the counts in memory and retries. A worker answers one request at a time; the
only other thread is the flusher, which swaps the dictionaries and copies the old ones at once, so
a count racing that swap by a few bytecodes may be missed (at most one per flush). Not derived
from events: a rebuild of the views leaves the table alone (like ``key_last_used``).

Table ``key_usage``: (key_id, hour start in epoch seconds, code) → uses; ``code`` is ``VALID``
for a valid answer, else the refusal's code.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from uuid import UUID

from projections.flushing import PeriodicFlush
from projections.store import ViewStore
from projections.verification import KEY_ID_BYTES

log = logging.getLogger("keyledger.usage")

VALID_CODE = "VALID"
HOUR = 3600
DAY = 86400

DDL = """CREATE TABLE IF NOT EXISTS key_usage (
    key_id TEXT NOT NULL, hour INTEGER NOT NULL, code TEXT NOT NULL, uses INTEGER NOT NULL,
    PRIMARY KEY (key_id, hour, code)) WITHOUT ROWID"""

# Pending counts: {(hour start, key, code): uses}; the key is its UUID as 16 bytes or its index
# record (which holds it: no slice on the hot path).
Pending = dict[tuple[int, bytes, str], int]


def _key_id(key: bytes) -> bytes:
    return key if len(key) == 16 else bytes(key[KEY_ID_BYTES])



class Usage(PeriodicFlush):
    FLUSHED = "usage counts"
    THREAD = "keyledger-usage"
    LOG = log

    def __init__(self, store: ViewStore) -> None:
        self.store = store
        # The hour being counted: [start, start + 3600); valid answers by key, refusals by (key, code).
        self._hour = 0
        self._until = 0  # the end of the hour counted in (``_hour`` + HOUR): one comparison less per count
        self._valid: defaultdict[bytes, int] = defaultdict(int)
        self._refused: defaultdict[tuple[bytes, str], int] = defaultdict(int)
        self._closed: list[tuple[int, dict, dict]] = []  # earlier hours not flushed yet
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_flush: Callable[[int], None] | None = None
        self.on_error: Callable[[], None] | None = None
        with store.write() as db:
            db.execute(DDL)

    # -- the hot path: no I/O -------------------------------------------------------------------

    def valid(self, key: bytes, now: float) -> None:
        """Count a valid answer for ``key`` (16 bytes or its index record) at ``now``."""
        if now >= self._until or now < self._hour:
            self._turn(now)
        self._valid[key] += 1  # a defaultdict: one look-up and one store, no method call

    def refused(self, key: bytes, code: str, now: float) -> None:
        """Count a refusal of ``key`` with ``code``."""
        if now >= self._until or now < self._hour:
            self._turn(now)
        self._refused[(key, code)] += 1

    def _turn(self, now: float) -> None:
        """A new hour (or a clock set back): the counts so far wait for the next flush."""
        if self._valid or self._refused:
            self._closed.append((self._hour, self._valid, self._refused))
        self._hour = int(now - now % HOUR)
        self._until = self._hour + HOUR
        self._valid, self._refused = defaultdict(int), defaultdict(int)

    # -- off the hot path -------------------------------------------------------------------------

    def _take(self) -> Pending:
        """What was counted so far, by (hour, key UUID, code); the counting goes on in new dicts."""
        closed, self._closed = self._closed, []
        hour, valid, refused = self._hour, self._valid, self._refused
        self._valid, self._refused = defaultdict(int), defaultdict(int)
        pending: Pending = {}
        # A verification racing the swap may still add to an old dict: copied in one step each.
        for start, v, r in [*closed, (hour, valid, refused)]:
            for key, n in dict(v).items():
                k = (start, _key_id(key), VALID_CODE)
                pending[k] = pending.get(k, 0) + n
            for (key, code), n in dict(r).items():
                k = (start, _key_id(key), code)
                pending[k] = pending.get(k, 0) + n
        return pending

    def _peek(self) -> Pending:
        """The counts not flushed yet, without taking them (for reads by this process)."""
        pending: Pending = {}
        for start, v, r in [*list(self._closed), (self._hour, self._valid, self._refused)]:
            for key, n in dict(v).items():
                k = (start, _key_id(key), VALID_CODE)
                pending[k] = pending.get(k, 0) + n
            for (key, code), n in dict(r).items():
                k = (start, _key_id(key), code)
                pending[k] = pending.get(k, 0) + n
        return pending

    def flush(self) -> int:
        pending = self._take()
        if not pending:
            return 0
        try:
            with self.store.write() as db:
                db.executemany(
                    "INSERT INTO key_usage (key_id, hour, code, uses) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key_id, hour, code) DO UPDATE SET uses = key_usage.uses + excluded.uses",
                    [(str(UUID(bytes=k)), h, c, n) for (h, k, c), n in pending.items()])
        except BaseException:
            # Kept for the next round (a full disk, a locked store), added to what is counted since.
            self._closed.extend((h, {k: n} if c == VALID_CODE else {}, {} if c == VALID_CODE else {(k, c): n})
                                for (h, k, c), n in pending.items())
            raise
        if self.on_flush is not None:
            self.on_flush(len(pending))
        return len(pending)

    def periods(self, key_id: str, since: int, until: int) -> dict[int, dict[str, int]]:
        """Per hour start in [since, until): uses by code (``VALID`` for valid answers), unflushed
        counts of this process included."""
        def read() -> list:
            with self.store.read() as db:
                return db.execute("SELECT hour, code, uses FROM key_usage WHERE key_id = ? AND hour >= ? "
                                  "AND hour < ?", (key_id, since, until)).fetchall()

        hours: dict[int, dict[str, int]] = {}
        for hour, code, uses in self.store.again_if_died(read):
            by_code = hours.setdefault(int(hour), {})
            by_code[code] = by_code.get(code, 0) + int(uses)
        wanted = UUID(key_id).bytes
        for (hour, key, code), uses in self._peek().items():
            if key == wanted and since <= hour < until:
                by_code = hours.setdefault(hour, {})
                by_code[code] = by_code.get(code, 0) + uses
        return hours

    def report(self, key_id: str, since: int, until: int, step: int) -> list[tuple[int, int, dict[str, int]]]:
        """Every period of ``step`` seconds (HOUR or DAY, UTC) from the one holding ``since`` up to
        ``until`` (excluded): (start, valid answers, refusals by code); a period without use
        has zeros."""
        first = since - since % step
        hours = self.periods(key_id, first, until)
        periods: dict[int, tuple[list, dict[str, int]]] = {start: ([0], {}) for start in range(first, until, step)}
        for hour, by_code in hours.items():
            valid, refused = periods[hour - hour % step]
            for code, uses in by_code.items():
                if code == VALID_CODE:
                    valid[0] += uses
                else:
                    refused[code] = refused.get(code, 0) + uses
        return [(start, valid[0], dict(sorted(refused.items()))) for start, (valid, refused) in periods.items()]

    def totals(self, key_ids: Iterable[str], since: int) -> dict[str, int]:
        """Requests (valid and refused) per key in the hours from ``since`` on."""
        ids = list(key_ids)
        found: dict[str, int] = {}
        if ids:
            def read() -> list:
                rows: list = []
                with self.store.read() as db:
                    for start in range(0, len(ids), 500):
                        chunk = ids[start:start + 500]
                        marks = ",".join("?" * len(chunk))
                        rows += db.execute(f"SELECT key_id, SUM(uses) FROM key_usage WHERE hour >= ? AND "
                                           f"key_id IN ({marks}) GROUP BY key_id", [since, *chunk]).fetchall()
                return rows

            found = {k: int(n) for k, n in self.store.again_if_died(read)}
            wanted = set(ids)
            for (hour, key, _code), uses in self._peek().items():
                key_id = str(UUID(bytes=key))
                if hour >= since and key_id in wanted:
                    found[key_id] = found.get(key_id, 0) + uses
        return found
