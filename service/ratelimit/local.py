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

Leases: for a large limit, a process takes up to 1 % of its quota at once (``engine.lease_size``:
at most 100 units, none under 200 a period) and admits that many without the lock, within 1 % of
the shortest period (at most 0.1 s); what is left when the lease runs out is given back at the next
take. Nothing is admitted beyond what the shared counters handed out, so the limit holds across
processes as without leases; a refusal (and its Retry-After) always comes from the shared counters.
The RateLimit figures of an admission under a lease are those of the lease's take.
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

from service.ratelimit.engine import MAX_LIMITS, Decision, LimitSet, gcra, lease_size

log = logging.getLogger("keyledger.ratelimit")

RECORD = struct.Struct("<Q7d")
_ID = struct.Struct("<Q")
_unpack = RECORD.unpack_from
_pack = RECORD.pack_into
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
        # Leases by limit sets: [units left, spend until, the admitted decision]. Public for a caller
        # that spends a lease without a call (``LocalCounters.take``, the verification hot path), on this
        # contract: a lease may be spent, without the lock, only while ``lease[0] > 0 and now < lease[1]``,
        # by ``lease[0] -= 1``, its decision ``lease[2]`` being the answer; anything else (a missing or
        # spent lease) is ``take``'s, which alone makes, gives back and replaces leases.
        self.leases: dict[tuple[LimitSet, ...], list] = {}

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
        lease = self.leases.get(sets)
        if lease is not None and lease[0] > 0 and now < lease[1]:
            lease[0] -= 1
            return lease[2]
        return self._take(sets, now, lease)

    def _take(self, sets: tuple[LimitSet, ...], now: float, lease: list | None) -> Decision:
        mem = self._map if self._map is not None else self._open()
        lock = self._lock
        if not lock.acquire(False) and not lock.acquire(True, LOCK_TIMEOUT):  # free: no clock read
            self._take_over(lock)
        try:
            records = []
            offsets = []
            for s in sets:
                offset = s.offset  # where this process last found it: still its record?
                if offset < 0 or (record := _unpack(mem, offset))[0] != s.id:
                    offset = self._record(mem, s, now)
                    record = _unpack(mem, offset)
                records.append(record)
                offsets.append(offset)
            if lease is not None and lease[0] > 0:  # give back what the last lease did not spend
                records = [self._give_back(mem, s, offset, record, lease[0])
                           for s, offset, record in zip(sets, offsets, records, strict=True)]
                lease[0] = 0
            units, seconds = lease_size(sets)
            decision = gcra(sets, records, now, units) if units > 1 else None
            if decision is None or not decision.allowed:
                units, decision = 1, gcra(sets, records, now)
            if decision.allowed:
                for s, offset, tats in zip(sets, offsets, decision._tats, strict=True):
                    _pack(mem, offset, s.id, *tats, *s.padding)
                if units > 1:
                    self.leases[sets] = [units - 1, now + seconds, decision]
            return decision
        finally:
            lock.release()

    @staticmethod
    def _give_back(mem: mmap.mmap, s: LimitSet, offset: int, record: tuple, units: int) -> tuple:
        tats = [tat - interval * units for tat, (interval, _) in zip(record[1:], s.pairs, strict=False)]
        record = (s.id, *tats, *s.padding)
        _pack(mem, offset, *record)
        return record

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
            records = [self._states.get(s.id) or (s.id, *_FRESH) for s in sets]
            decision = gcra(sets, records, now)
            if decision.allowed:
                for s, tats in zip(sets, decision._tats, strict=True):
                    self._states[s.id] = (s.id, *tats)
            return decision


class LocalCounters:
    """The instance's counters: shared through ``path`` when that works, else this process's own
    (with a warning: each worker then counts alone)."""

    def __init__(self, path: Path) -> None:
        self.shared = SharedCounters(path)
        self._leases = self.shared.leases  # the same dict: its leases spent without a call (``take``), by its contract
        self._fallback: ProcessCounters | None = None

    def take(self, sets: tuple[LimitSet, ...], now: float) -> Decision:
        if self._fallback is None:
            # ``SharedCounters.take``'s lease spent here (a call less on every limited verification).
            lease = self._leases.get(sets)
            if lease is not None and lease[0] > 0 and now < lease[1]:
                lease[0] -= 1
                return lease[2]
            try:
                return self.shared.take(sets, now)
            except OSError as error:
                log.warning("the shared rate-limit counters cannot be opened (%s); this process counts "
                            "alone, so each worker admits up to the whole limit", error)
                self._fallback = ProcessCounters()
        return self._fallback.take(sets, now)
