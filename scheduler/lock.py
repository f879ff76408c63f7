"""One scheduler per deployment: an exclusive file lock beside the SQLite store, held for the
scheduler's life. The kernel releases it when the holder exits, however it exits (kill -9
included), so a standing-by scheduler can take over."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class SchedulerLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (never waits). The holder's pid is written in the file."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid written by the current holder ('?' if unknown)."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def alive(self) -> bool:
        """Whether the lock is still ours (a file lock is, until released)."""
        return self._fd is not None


class PostgresSchedulerLock:
    """One scheduler across machines: a PostgreSQL session advisory lock, held on a connection of
    its own for the scheduler's life. PostgreSQL releases it when that session ends — the holder
    exits or is killed, or its connection drops — so a standing-by scheduler takes over; a holder
    that finds its connection gone (``alive()`` false) stops its jobs and stands by again."""

    def __init__(self, conninfo: str, key: int, name: str) -> None:
        self.conninfo = conninfo
        self.key = key
        self.path = f"PostgreSQL advisory lock {key} ({name})"  # named in logs
        self._connection = None

    @property
    def held(self) -> bool:
        return self._connection is not None

    def try_acquire(self) -> bool:
        import psycopg

        if self._connection is not None:
            return True
        try:
            connection = psycopg.connect(self.conninfo, autocommit=True, application_name="keyledger-scheduler")
        except psycopg.Error:
            return False
        try:
            taken = connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        except psycopg.Error:
            taken = False
        if not taken:
            connection.close()
            return False
        self._connection = connection
        return True

    def alive(self) -> bool:
        import psycopg

        if self._connection is None:
            return False
        try:
            self._connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            self.release()
            return False

    def holder(self) -> str:
        """The PostgreSQL backend pid and client address of the holder ('?' if unknown)."""
        import psycopg

        try:
            with psycopg.connect(self.conninfo, autocommit=True) as connection:
                row = connection.execute(
                    "SELECT a.pid, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND ((l.classid::bigint << 32) | l.objid::bigint) = (%s::bigint & x'ffffffffffffffff'::bigint)",
                    (self.key,)).fetchone()
        except psycopg.Error:
            return "?"
        return f"backend {row[0]} from {row[1] or 'local'}" if row else "?"

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()  # the session's advisory locks go with it
            except Exception:  # noqa: BLE001 - already broken
                pass

