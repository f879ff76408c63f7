"""What the request path must record, written off it: a bounded queue and one thread.

``BackgroundWriter.submit(key, item)`` queues ``item`` (once per ``key``: a second submission of a
key still queued joins the first) and wakes the writer thread, which calls ``write(item)``. While
the store is believed reachable (``healthy()``), ``submit`` waits up to ``wait`` seconds for the
write, so in the common case the record is stored before the request is answered; while it is
not, ``submit`` returns at once. A write that fails with ``Unavailable`` stays queued and is
retried, with a pause that grows to ``max_pause``, until the store is back; any other error is a
bug, logged and dropped (a record that can never be written must not block the rest).

The queue holds at most ``capacity`` records; past that ``submit`` raises ``QueueFull`` and the
caller decides (the verifier answers anyway and tries again a second later). ``close()`` writes
what it can within a timeout and says how many records were left.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from service.domain.errors import Unavailable

log = logging.getLogger("keyledger.background")


class QueueFull(Exception):
    """The writer's queue is at capacity: the record was not taken."""


class BackgroundWriter:
    def __init__(self, write: Callable[[Any], None], *, name: str, capacity: int = 10_000,
                 wait: float = 0.25, healthy: Callable[[], bool] = lambda: True,
                 first_pause: float = 0.25, max_pause: float = 2.0) -> None:
        self._write = write
        self.name = name
        self.capacity = capacity
        self.wait = wait
        self.healthy = healthy
        self.first_pause = first_pause
        self.max_pause = max_pause
        # key -> [item, event set after the next attempt or None, written]; oldest first
        self._queue: dict[Hashable, list] = {}
        self._lock = threading.Condition()
        self._closing = False
        self._stopped = threading.Event()  # set at close: pauses end
        self._thread: threading.Thread | None = None
        self.written = 0
        self.retried = 0  # failed attempts, each followed by a retry
        self.dropped = 0  # records a non-store error made impossible to write

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, key: Hashable, item: Any) -> bool:
        """Queue ``item`` under ``key``; True if it was written before this returned."""
        waiting = self.wait > 0 and self.healthy()
        with self._lock:
            if self._closing:
                raise QueueFull(f"{self.name}: closing")
            entry = self._queue.get(key)
            if entry is None:
                if len(self._queue) >= self.capacity:
                    raise QueueFull(f"{self.name}: {self.capacity} records waiting for the store")
                entry = self._queue[key] = [item, None, False]
            if waiting and entry[1] is None:
                entry[1] = threading.Event()
            attempted = entry[1]
            self._start()
            self._lock.notify()
        if not waiting or attempted is None:
            return False
        attempted.wait(self.wait)  # set after the next attempt, whether it wrote or not
        return entry[2]

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"keyledger-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        pause = self.first_pause
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                key, entry = next(iter(self._queue.items()))
            if not self.healthy():  # known down: no attempt; wait for it to come back
                self._give_up_waiters()
                if self._stopped.wait(pause):
                    return
                pause = min(self.max_pause, pause * 2)
                continue
            try:
                self._write(entry[0])
            except Unavailable:
                self.retried += 1
                with self._lock:  # to the back of the queue; the others get their turn first
                    self._queue[key] = self._queue.pop(key)
                self._give_up_waiters()
                if self._stopped.wait(pause):
                    return
                pause = min(self.max_pause, pause * 2)
                continue
            except Exception:
                self.dropped += 1
                log.exception("%s: a record could not be written and is dropped", self.name)
            else:
                self.written += 1
                entry[2] = True
                pause = self.first_pause
            with self._lock:
                self._queue.pop(key, None)
                if entry[1] is not None:
                    entry[1].set()

    def _give_up_waiters(self) -> None:
        """Whoever waits for a record stops waiting: it is not written yet."""
        with self._lock:
            for entry in self._queue.values():
                if entry[1] is not None:
                    entry[1].set()
                    entry[1] = None

    def close(self, timeout: float = 2.0) -> int:
        """Stop taking records; write the queued ones for up to ``timeout`` seconds. Returns how
        many are left unwritten (logged)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            thread = self._thread
        while self._queue and thread is not None and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self._closing = True
            self._stopped.set()
            self._lock.notify_all()
            left = len(self._queue)
        if thread is not None:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if left:
            log.warning("%s: %d record(s) not written at shutdown (the store was unavailable)", self.name, left)
        return left
