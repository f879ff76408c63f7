"""A change beacon shared by the processes of one machine: the newest event position.

Every process that writes (a server worker, the command line) publishes the position of
its newest event in an 8-byte memory-mapped file beside the SQLite store. Every serving
process compares it with the position its index reflects before each request — a memory
read, no system call — and catches up when it is behind. So a revocation accepted by one
gunicorn worker is refused by every other worker on the very next request, and a token
made by ``keyledger accounts create`` works at once. Polling stays as the fallback (and is
the only mechanism across machines).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

_SIZE = 8


class ChangeBeacon:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _SIZE:
            os.ftruncate(self._fd, _SIZE)
        self._map = mmap.mmap(self._fd, _SIZE)

    def value(self) -> int:
        """The newest published position (hot path: a memory read)."""
        return int.from_bytes(self._map[:_SIZE], "little")

    def publish(self, position: int) -> None:
        """Raise the beacon to ``position`` (never lower it), under a file lock."""
        if position <= self.value():
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if position > self.value():
                self._map[:_SIZE] = position.to_bytes(_SIZE, "little")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reset(self, position: int) -> None:
        """Lower the beacon to ``position``: for a value left by another (restored) log."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._map[:_SIZE] = position.to_bytes(_SIZE, "little")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            self._map.close()
            os.close(self._fd)
        except (OSError, ValueError):
            pass
