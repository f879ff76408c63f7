"""Counters shared by every worker process of one instance: a memory-mapped file of fixed-size
records and a named POSIX semaphore as its lock.

A record is 64 bytes: the limit set's 64-bit id and up to seven TATs (``engine.gcra``). Records
are found by open addressing from the id (a process remembers where its sets live and checks the
id on each use); a set whose counters are all in the past is as good as free and is reused first.
The file lives in the data directory, its blocks allocated when it is made (a full disk then
fails the start of counting, never a write: a sparse mapped file on a full disk kills the
process with SIGBUS). The lock is a semaphore named after the file, so every process that opens
the same file takes the same lock, whoever started it; taking and giving it back costs about
0.1 µs when nobody else holds it. A process killed while holding it would block the others: a
waiter that has waited LOCK_TIMEOUT seconds takes the lock over (logged once) rather than stop
answering.
"""

from __future__ import annotations

import _multiprocessing
import logging
import mmap
import os
import struct
import threading
from hashlib import sha256
from pathlib import Path

from service.ratelimit.engine import MAX_LIMITS, Decision, LimitSet, gcra

log = logging.getLogger("keyledger.ratelimit")

RECORD = struct.Struct("<Q7d")
_ID = struct.Struct("<Q")
RECORD_SIZE = RECORD.size  # 64
SLOTS = 16_384  # 1 MiB: sixteen thousand keys and apps with limits in use at once
PROBES = 32
LOCK_TIMEOUT = 0.5
FILE_NAME = "ratelimit.counters"
_SEMAPHORE = 1  # _multiprocessing's kind for a plain semaphore (any process may release it)
_FRESH = (0.0,) * MAX_LIMITS


def semaphore_name(path: Path) -> str:
    return "/keyledger-rl-" + sha256(str(path.resolve()).encode()).hexdigest()[:20]


class SharedCounters:
    """GCRA counters shared by the processes that open the same file."""

    def __init__(self, path: Path, slots: int = SLOTS) -> None:
        self.path = path
        self.slots = slots
        self._map: mmap.mmap | None = None
        self._lock = None
        self._opening = threading.Lock()
        self._warned = False

    # -- opening (lazily: a deployment without limits never makes the file) -------------

    def _open(self) -> mmap.mmap:
        with self._opening:
            if self._map is not None:
                return self._map
            size = self.slots * RECORD_SIZE
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.posix_fallocate(fd, 0, size)  # zeros: every record free
                self._lock = self._semaphore()
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            return self._map

    def _semaphore(self):  # noqa: ANN202 - _multiprocessing.SemLock
        name = semaphore_name(self.path)
        try:
            return _multiprocessing.SemLock(_SEMAPHORE, 1, 1, name, False)
        except FileExistsError:
            return _multiprocessing.SemLock._rebuild(0, _SEMAPHORE, 1, name)

    def remove(self) -> None:
        """Remove the file and the semaphore (tests; never while another process counts)."""
        self.path.unlink(missing_ok=True)
        try:
            os.unlink("/dev/shm/sem." + semaphore_name(self.path)[1:])
        except OSError:
            pass

    # -- the check -----------------------------------------------------------------------

    def take(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        mem = self._map if self._map is not None else self._open()
        lock = self._lock
        if not lock.acquire(True, LOCK_TIMEOUT):
            self._take_over(lock)
        try:
            offsets = [self._record(mem, s, now) for s in sets]
            states = [list(RECORD.unpack_from(mem, offset)[1:]) for offset in offsets]
            decision, changed = gcra(sets, states, now)
            if changed:
                for s, offset, tats in zip(sets, offsets, states, strict=True):
                    RECORD.pack_into(mem, offset, s.id, *tats)
            return decision
        finally:
            lock.release()

    def _take_over(self, lock) -> None:  # noqa: ANN001
        if not self._warned:
            self._warned = True
            log.warning("the rate-limit counters' lock was held for over %.1f s (a process killed while "
                        "holding it?); taking it over", LOCK_TIMEOUT)
        try:
            lock.release()
        except ValueError:  # given back meanwhile
            pass
        lock.acquire(True, LOCK_TIMEOUT)

    def _record(self, mem: mmap.mmap, s: LimitSet, now: float) -> int:
        """The offset of ``s``'s record (found, or claimed), under the lock."""
        offset = s.offset
        if offset >= 0 and _ID.unpack_from(mem, offset)[0] == s.id:
            return offset
        start = s.id % self.slots
        stalest, stalest_until = -1, float("inf")
        for probe in range(PROBES):
            offset = ((start + probe) % self.slots) * RECORD_SIZE
            record = RECORD.unpack_from(mem, offset)
            if record[0] == s.id:
                s.offset = offset
                return offset
            if record[0] == 0:
                stalest, stalest_until = offset, 0.0
                break
            until = max(record[1:])
            if until < stalest_until:
                stalest, stalest_until = offset, until
        if stalest_until > now:
            log.warning("the rate-limit counters are full around one record; a live counter was reused "
                        "(more than %d keys and apps with limits in use at once?)", self.slots)
        RECORD.pack_into(mem, stalest, s.id, *_FRESH)
        s.offset = stalest
        return stalest


class ProcessCounters:
    """Counters of this process alone (tests, or when the shared file cannot be made)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[int, list[float]] = {}

    def take(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        with self._lock:
            states = [self._states.get(s.id) or list(_FRESH) for s in sets]
            decision, changed = gcra(sets, states, now)
            if changed:
                for s, tats in zip(sets, states, strict=True):
                    self._states[s.id] = tats
            return decision


class LocalCounters:
    """The instance's counters: shared through ``path`` when that works, else this process's own
    (with a warning: each worker then counts alone)."""

    def __init__(self, path: Path) -> None:
        self.shared = SharedCounters(path)
        self._fallback: ProcessCounters | None = None

    def take(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        if self._fallback is None:
            try:
                return self.shared.take(sets, now)
            except OSError as error:
                log.warning("the shared rate-limit counters cannot be opened (%s); this process counts "
                            "alone, so each worker admits up to the whole limit", error)
                self._fallback = ProcessCounters()
        return self._fallback.take(sets, now)
