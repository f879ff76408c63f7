"""The two passes of ``scripts/test`` run at the same time (each in parts: a pytest process each; "the
other pass" below is every other process of the run); a test marked ``timing_sensitive`` (it
asserts that something happens within a wall-clock bound: a verification under 1 s, a revocation
seen by another instance within 1 s, …) runs alone.

``scripts/test`` gives both passes one folder (``KEYLEDGER_TEST_LOCK_DIR``); without it (a single
pytest run) nothing is locked. Every test holds a shared lock on ``room`` while it runs (set-up,
call, tear-down); a timing-sensitive test holds it exclusively, so it starts when the other pass's
current test has ended, and the other pass starts no test until it is over. A second lock,
``gate``, keeps the waiting timing-sensitive test from being overtaken: while it waits, the other
pass starts nothing new (``flock`` alone would let shared holders take turns forever).

File locks: released by the kernel when a pass dies, whatever happens.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FOLDER = os.environ.get("KEYLEDGER_TEST_LOCK_DIR") or None


@contextmanager
def running(alone: bool, folder: str | Path | None = FOLDER) -> Iterator[None]:
    """Around one test: alone (timing-sensitive) or beside the other pass's ordinary tests."""
    if folder is None:
        yield
        return
    gate = os.open(Path(folder) / "gate", os.O_RDWR | os.O_CREAT, 0o600)
    room = os.open(Path(folder) / "room", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if alone:
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(room, fcntl.LOCK_EX)
        else:
            fcntl.flock(gate, fcntl.LOCK_SH)  # passes unless a timing-sensitive test waits or runs
            fcntl.flock(gate, fcntl.LOCK_UN)
            fcntl.flock(room, fcntl.LOCK_SH)
        yield
    finally:
        os.close(room)
        os.close(gate)


@contextmanager
def beside() -> Iterator[None]:
    """Background work of a pass (tests/schema_pool.py's copies): never while a timing-sensitive test
    of either pass runs."""
    with running(alone=False):
        yield
