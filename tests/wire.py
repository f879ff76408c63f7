"""Round trips to PostgreSQL as they go over the wire: a TCP proxy that counts them.

Point a client at ``WireCounter(host, port).port`` instead of PostgreSQL's port. For each
connection the proxy counts the times the server answers after the client has sent something
since the server last spoke: one round trip. (PostgreSQL's extended protocol sends nothing back
before a ``Sync`` or a ``Flush``, so statements queued in a pipeline and sent in several writes
still make one round trip, as they should.) It also counts the statements the client has the
server run (each extended-protocol ``Execute`` and each simple ``Query``), pipelined or not.
Each connection is named by the ``application_name``
of its start-up message (SSL is not negotiated through the proxy: the client is told "no"), so
the event subscription's connection (``keyledger-listener``) can be left out.

Used by ``tests/integration/test_round_trips.py`` and ``scripts/bench_scale.py``.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    name: str = "?"
    last: str = ""  # "c" (the client spoke last) or "s"
    trips: int = 0
    waited: float = 0.0  # seconds from the client's last bytes to the server's answer, summed over trips
    sent_at: float = 0.0
    statements: int = 0
    parsing: bytes = b""  # the client's bytes not yet split into messages
    startup: bytes = b""
    started: bool = False
    closed: bool = False
    said: bytes = b""  # what the client sent since the server last spoke (for ``journal``)


class WireCounter:
    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.upstream = (host, port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self.journal: list[tuple[str, bytes]] | None = None  # a list: (name, what the client sent) per trip
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-counter", daemon=True)
        self._thread.start()

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by the proxy's."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(database_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def trips(self, exclude: tuple[str, ...] = ("keyledger-listener",)) -> int:
        """Round trips so far on every connection but those named in ``exclude``."""
        with self._lock:
            return sum(link.trips for link in self._links if link.name not in exclude)

    def statements(self, exclude: tuple[str, ...] = ("keyledger-listener",)) -> int:
        """Statements run so far on every connection but those named in ``exclude``."""
        with self._lock:
            return sum(link.statements for link in self._links if link.name not in exclude)

    def waited(self, exclude: tuple[str, ...] = ("keyledger-listener",)) -> float:
        """Seconds the clients waited for the server's answers so far (the server's work, the
        loopback and this proxy), on every connection but those named in ``exclude``."""
        with self._lock:
            return sum(link.waited for link in self._links if link.name not in exclude)

    def by_name(self) -> Counter:
        with self._lock:
            counts: Counter = Counter()
            for link in self._links:
                counts[link.name] += link.trips
            return counts

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for link in self._links:
            for s in (link.client, link.server):
                try:
                    s.close()
                except OSError:
                    pass
        self._listener.close()
        self._selector.close()

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                if key.data is None:
                    self._accept()
                else:
                    link, side = key.data
                    self._pump(link, side)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        server = socket.create_connection(self.upstream)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        link = _Link(client, server)
        with self._lock:
            self._links.append(link)
        self._selector.register(client, selectors.EVENT_READ, (link, "c"))
        self._selector.register(server, selectors.EVENT_READ, (link, "s"))

    def _pump(self, link: _Link, side: str) -> None:
        source, target = (link.client, link.server) if side == "c" else (link.server, link.client)
        try:
            data = source.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(link)
            return
        started = link.started
        if side == "c" and not started:
            data = self._startup(link, data)  # counts the statements of what follows the packet
            if not data:
                return
        with self._lock:
            if side == "s" and link.last == "c":
                link.trips += 1
                link.waited += time.perf_counter() - link.sent_at
                if self.journal is not None:
                    self.journal.append((link.name, link.said))
            if side == "c":
                link.sent_at = time.perf_counter()
                link.said = (link.said if link.last == "c" else b"") + data[:2000]
                if started:
                    self._count_statements(link, data)
            link.last = side
        try:
            target.setblocking(True)
            target.sendall(data)
            target.setblocking(False)
        except OSError:
            self._close(link)

    @staticmethod
    def _count_statements(link: _Link, data: bytes) -> None:
        buffer = link.parsing + data
        at = 0
        while len(buffer) - at >= 5:
            kind, length = buffer[at:at + 1], struct.unpack("!I", buffer[at + 1:at + 5])[0]
            if len(buffer) - at < 1 + length:
                break
            if kind in (b"E", b"Q"):
                link.statements += 1
            at += 1 + length
        link.parsing = buffer[at:]

    def _startup(self, link: _Link, data: bytes) -> bytes:
        """Read the start-up packet (answering an SSL or GSS request with "no" ourselves)."""
        link.startup += data
        if len(link.startup) < 8:
            return b""
        length, code = struct.unpack("!II", link.startup[:8])
        if len(link.startup) < length:
            return b""
        packet, link.startup = link.startup[:length], link.startup[length:]
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            link.client.setblocking(True)
            link.client.sendall(b"N")
            link.client.setblocking(False)
            return self._startup(link, b"") if link.startup else b""
        fields = packet[8:].split(b"\0")
        params = dict(zip(fields[0::2], fields[1::2], strict=False))
        link.name = params.get(b"application_name", b"").decode() or "?"
        link.started = True
        rest, link.startup = link.startup, b""
        if rest:
            self._count_statements(link, rest)
        return packet + rest

    def _close(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        for s in (link.client, link.server):
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
