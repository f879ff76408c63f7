"""A view written off the hot path: values gathered in memory and flushed every interval by a
thread of its own, kept and retried while the store cannot be written (said once per outage), and
flushed once more at stop. Last-used times and usage counts are such views."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


class PeriodicFlush:
    """Mixin: the class gives ``flush()``, ``FLUSHED`` (what it writes, for the log), ``THREAD``
    (the thread's name) and ``LOG``, and sets ``_stopping`` (an Event), ``_thread`` (None) and
    ``on_error`` (None or a function called after a failed write)."""

    FLUSHED = "values"
    THREAD = "keyledger-flush"
    LOG = logging.getLogger("keyledger.projections")
    _stopping: threading.Event
    _thread: threading.Thread | None
    on_error: Callable[[], None] | None

    def flush(self) -> None:  # pragma: no cover - given by the class
        raise NotImplementedError

    def run_every(self, interval: float) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(interval,), name=self.THREAD, daemon=True)
            self._thread.start()

    def _run(self, interval: float) -> None:
        failures = 0
        while not self._stopping.wait(interval):
            try:
                self.flush()
            except Exception as error:  # noqa: BLE001 - kept and retried; said once per outage
                failures += 1
                if failures == 1:
                    self.LOG.warning("writing %s failed in process %d (%s); kept in memory, retrying every %s s",
                                     self.FLUSHED, os.getpid(), _first_line(error), interval)
                if self.on_error is not None:
                    self.on_error()
            else:
                if failures:
                    self.LOG.info("%s written again in process %d after %d failed round(s)", self.FLUSHED,
                                  os.getpid(), failures)
                failures = 0

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.flush()
        except Exception:
            self.LOG.exception("writing %s at shutdown failed", self.FLUSHED)
