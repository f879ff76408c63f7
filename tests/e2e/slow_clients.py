"""Slow clients against a real server, and the other clients' latency meanwhile.

``Tricklers(port, count)`` keeps ``count`` connections open that send their requests a byte at a
time: a third trickle their headers, a third send ``Content-Length: 20`` and then a byte of body at
a time, a third announce a huge chunk (then trickle its bytes), each reopened as soon as the server
closes it. ``probe(port, paths, seconds)`` meanwhile sends ordinary requests one after another,
each on a new connection, and returns every latency and status. Used by
``tests/e2e/test_slow_clients.py`` and ``scripts/bench_serving.py``.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

KINDS = ("headers", "body", "chunk")


def _opening(kind: str) -> bytes:
    if kind == "headers":
        return b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: "
    if kind == "body":
        return (b"POST /v2/verify HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
                b"Content-Length: 20\r\n\r\n{")
    return (b"POST /v2/verify HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nfffff\r\n{")


class Tricklers:
    """``count`` slow connections, a byte each every ``interval`` seconds, reopened when closed."""

    def __init__(self, port: int, count: int = 50, interval: float = 1.0) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.stop = threading.Event()
        self.opened = 0  # connections opened in all
        self.closed_by_server = 0
        self.thread = threading.Thread(target=self._run, name="tricklers", daemon=True)

    def __enter__(self) -> Tricklers:
        self.thread.start()
        time.sleep(0.5)  # every connection open before the probes start
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _open(self, kind: str) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.sendall(_opening(kind))
            sock.setblocking(False)
        except OSError:
            return None
        self.opened += 1
        return sock

    def _run(self) -> None:
        slots: list[tuple[str, socket.socket | None]] = [
            (KINDS[i % len(KINDS)], None) for i in range(self.count)]
        slots = [(kind, self._open(kind)) for kind, _ in slots]
        while not self.stop.wait(self.interval):
            for i, (kind, sock) in enumerate(slots):
                if sock is not None:
                    try:
                        sock.send(b"a" if kind != "body" else b" ")
                        try:
                            if sock.recv(65536) == b"":
                                raise ConnectionResetError
                        except BlockingIOError:
                            continue
                        raise ConnectionResetError  # answered (refused): start again
                    except OSError:
                        self.closed_by_server += 1
                        sock.close()
                slots[i] = (kind, self._open(kind))
        for _, sock in slots:
            if sock is not None:
                sock.close()


@dataclass
class Probe:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # path -> seconds
    statuses: Counter = field(default_factory=Counter)  # (path, status or error) -> count

    def summary(self, path: str) -> dict:
        values = sorted(self.latencies.get(path, []))
        if not values:
            return {"n": 0}
        return {"n": len(values), "p50_ms": 1000 * statistics.median(values),
                "p99_ms": 1000 * percentile(values, 0.99), "max_ms": 1000 * values[-1]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_request(port: int, path: str, headers: dict[str, str], timeout: float) -> int:
    """One GET on a new connection; the status (the whole answer read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\n{head}Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def probe(port: int, requests: list[tuple[str, dict[str, str]]], seconds: float,
          clients: int = 2, timeout: float = 5.0, pause: float = 0.01) -> Probe:
    """``clients`` threads sending the ``requests`` in turn for ``seconds``, one at a time each
    (``pause`` between them): latency from connect to the answer's last byte."""
    result = Probe()
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < until:
            path, headers = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            try:
                status: int | str = one_request(port, path, headers, timeout)
            except OSError as error:
                status = type(error).__name__
            elapsed = time.perf_counter() - started
            with lock:
                result.statuses[(path, status)] += 1
                if isinstance(status, int):
                    result.latencies.setdefault(path, []).append(elapsed)
            time.sleep(pause)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    return result
