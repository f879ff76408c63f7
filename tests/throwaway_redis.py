"""A throwaway redis-server for tests and benchmarks that stop and start Redis.

``ThrowawayRedis`` starts Debian's ``redis-server`` on a free port of 127.0.0.1 with no
persistence (``--save '' --appendonly no``) in a temporary folder, and stops it and removes the
folder afterwards (at interpreter exit as a last resort). It never touches a Redis it did not
start (the machine's own at 6379 included): a test may stop and start this one as it likes, on
the same port.

No pytest here: scripts/bench_verify.py uses it too.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server"
                                                if Path("/usr/bin/redis-server").exists() else None)
_LIVE: set[ThrowawayRedis] = set()


def unavailable_reason() -> str | None:
    return None if REDIS_SERVER is not None else "redis-server is not installed (Debian package redis-server)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayRedis:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="keyledger-redis-"))
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        _LIVE.add(self)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> ThrowawayRedis:
        assert REDIS_SERVER is not None, unavailable_reason()
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.folder / "redis.log").read_text(errors="replace")[-2000:] if (self.folder / "redis.log").exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}: {log}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (the port stays this object's: ``start`` again to bring it back)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> ThrowawayRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


@atexit.register
def _remove_all() -> None:
    for server in list(_LIVE):
        server.remove()
