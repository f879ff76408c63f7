"""gunicorn's worker for Keyledger: it buffers each request whole before the app sees it, so slow
clients cost a buffer, never the worker.

gunicorn's sync worker reads a request from a blocking socket: a client trickling its headers or
its body holds the worker (and, with two workers, the service) until the worker timeout kills it.
``BufferingWorker`` is a gunicorn worker with one event loop (``selectors``) in front of the app,
the way a buffering proxy is in front of sync workers:

- every connection is accepted at once and read as its bytes arrive, without blocking; only when
  a request is complete (its headers, then all of its body: ``Content-Length`` bytes, or chunks up
  to the last one) does the worker run the WSGI app on it, one request at a time as the sync worker
  does, from memory. A request whose bytes do not all arrive within ``READ_TIMEOUT`` seconds of its
  connection is refused (400 in the contract's JSON envelope);
- the head is parsed by gunicorn's own parser, so every limit and refusal of the sync worker holds
  (414, 431, 400 in the JSON envelope, nothing of the request echoed or logged). A chunked body is
  framed as it arrives (a chunk size that is not hexadecimal is refused at once, a chunk larger
  than ``MAX_BODY`` too) and decoded by gunicorn's reader before the app runs: the app sees
  ``Content-Length`` and the decoded body, as behind nginx. Under ``/console`` a body the front
  refuses reaches the console as a 400 (its own HTML error page) instead of the JSON envelope;
- at most ``worker_connections`` connections per worker (gunicorn's setting, 1,000 by default):
  past that the oldest incomplete request is dropped, so a flood of slow clients pushes out its own
  oldest members, not the quick requests;
- answers are written with a ``WRITE_TIMEOUT``; every connection closes after its answer, as under
  the sync worker (a gateway's connection per request), with a bounded, non-blocking linger that
  lets the client read the answer before the socket closes.

A response the app marks as long-lived (it sets ``environ["keyledger.detach"]``, e.g. the audit
feed's ``?follow=1``, which may stream for as long as an hour) is not written by the loop: once the
app has returned it, its writing — and the iteration of its body, which may wait for new events —
is handed to one of ``STREAM_THREADS`` threads, and the loop goes back to the other connections at
once. Only a response that asks for it is detached, and the app learns that it will be
(``environ["keyledger.detaches"]``), so it may bound a stream that would hold the loop under another
server. When the worker stops, ``environ["keyledger.stopping"]`` (a ``threading.Event``) is set, so
such a stream can end at a line boundary; it gets ``DETACHED_STOP`` seconds to do so.

Everything else is gunicorn's: the master, the worker timeout (the loop notifies the master each
turn, so only a stuck app is killed), graceful restarts, hooks (the embedded scheduler is started by
``post_worker_init``), ``max_requests``.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import IterUnreader

from service.serving import JsonErrorWorker, log

READ_TIMEOUT = 10.0  # seconds from a connection's first byte to its request's last
WRITE_TIMEOUT = 10.0  # seconds an answer may wait for a client that does not read it
LINGER = 2.0  # seconds a closing connection is drained so the client can read its answer
MAX_HEAD = 64 * 1024  # bytes of request line and headers; more is 431
MAX_BODY = 256 * 1024  # bytes buffered for one body (the app takes 64 KB); more is 413
MAX_CHUNK_LINE = 1024  # bytes of one chunk-size line with its extensions
RECV = 65536
STREAM_THREADS = 32  # threads writing detached (long-lived) responses, per worker, reused
DETACHED_STOP = 2.0  # seconds detached streams get to end when the worker stops
DETACH = "keyledger.detach"  # set by the app on a response to be written by a stream thread

_LISTENER = "listener"
_PIPE = "pipe"


class BodyRefused(Exception):
    """A body that cannot be framed: ``status``, ``reason`` and the sentence for the client."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _Source:
    """What gunicorn's parser reads a buffered request from, as from a socket (EOF when empty)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        data, self.data = self.data[:size], self.data[size:]
        return data


class _Conn:
    __slots__ = ("sock", "addr", "server", "buf", "deadline", "scanned", "req", "source", "body_start",
                 "length", "chunk_pos", "chunk_total", "registered")

    def __init__(self, sock: socket.socket, addr: Any, server: Any, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.server = server
        self.buf = bytearray()
        self.deadline = deadline
        self.scanned = 0  # bytes of buf searched for the end of the head
        self.req: Any = None  # gunicorn's Request, once the head is parsed
        self.source: _Source | None = None
        self.body_start = 0
        self.length = -1  # the body's length; -1 while unknown (chunked)
        self.chunk_pos = 0  # where the next chunk-size line starts in buf
        self.chunk_total = 0
        self.registered = False  # with the selector (a request that arrives in one read never is)


def chunked_end(buf: bytearray, pos: int, total: int) -> tuple[int | None, int, int]:
    """Frame a chunked body in ``buf`` from ``pos`` (a chunk-size line): (the offset just past
    the body's end or None if more is needed, the position reached, the data bytes so far).
    Raises ``BodyRefused`` for a body that is not chunked encoding or is too large."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > MAX_CHUNK_LINE:
                raise BodyRefused(400, "Bad Request", "The chunked body is not well-formed.")
            return None, pos, total
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
            raise BodyRefused(400, "Bad Request", "The chunked body is not well-formed.")
        size = int(size_text, 16)
        if size == 0:  # the last chunk, then an optional trailer section and an empty line
            if buf[eol + 2:eol + 4] == b"\r\n":
                return eol + 4, pos, total
            end = buf.find(b"\r\n\r\n", eol + 2)
            if end < 0:
                if len(buf) - eol > MAX_HEAD:
                    raise BodyRefused(431, "Request Header Fields Too Large", "The chunked body's trailers are too large.")
                return None, pos, total
            return end + 4, pos, total
        total += size
        if total > MAX_BODY:
            raise BodyRefused(413, "Payload Too Large", "The request body is too large.")
        after = eol + 2 + size
        if len(buf) < after + 2:
            return None, pos, total - size
        if buf[after:after + 2] != b"\r\n":
            raise BodyRefused(400, "Bad Request", "The chunked body is not well-formed.")
        pos = after + 2


class _Response(wsgi.Response):
    """gunicorn's response, its header checks unchanged in effect but cheaper: a header name
    already found valid is not matched again, and a value of printable ASCII (the common case)
    needs no regular expression."""

    _names: dict[str, tuple[str, bool]] = {}  # valid name -> (lower-case name, hop-by-hop)

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        names = self._names
        for name, value in headers:
            known = names.get(name) if type(name) is str else None
            if known is None:
                if not isinstance(name, str):
                    raise TypeError(f"{name!r} is not a string")
                if not wsgi.TOKEN_RE.fullmatch(name):
                    raise http.errors.InvalidResponseHeaderName(f"{name!r}")
                if len(names) < 1000:  # names are few; values are not cached
                    names[name] = known = (name.lower(), util.is_hoppish(name))
                else:
                    known = (name.lower(), util.is_hoppish(name))
            if not isinstance(value, str):
                raise TypeError(f"{value!r} is not a string")
            if not (value.isascii() and value.isprintable()) and not wsgi.HEADER_VALUE_RE.fullmatch(value):
                raise http.errors.InvalidResponseHeader(f"{name!r}")  # the name only: values may be secret
            lname, hoppish = known
            if not hoppish:
                if lname == "content-length":
                    value = value.strip(" \t")
                    self.response_length = int(value)
                elif value[:1] in " \t" or value[-1:] in " \t":
                    value = value.strip(" \t")
                self.headers.append((name, value))
                continue
            value = value.strip(" \t")
            if lname == "connection":
                if value.lower() == "upgrade":
                    self.upgrade = True
            elif lname == "upgrade" and value.lower() == "websocket":
                self.headers.append((name, value))


class _RefusingInput:
    """``wsgi.input`` of a body the front refused, for the console: reading it is a 400 page."""

    def __init__(self, refused: BodyRefused) -> None:
        self.refused = refused

    def _raise(self, *args: Any) -> bytes:
        from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

        error = RequestEntityTooLarge if self.refused.status == 413 else BadRequest
        raise error(self.refused.message)

    read = readline = readlines = _raise

    def __iter__(self) -> Any:
        self._raise()


class BufferingWorker(JsonErrorWorker):
    """Buffers every request whole (headers and body) before the app runs on it; see the module."""

    def init_process(self) -> None:
        if self.cfg.is_ssl:  # never serve TLS clients garbage: stop the arbiter with one line
            self.log.error("BufferingWorker serves plain HTTP only: terminate TLS in front of it")
            sys.exit(3)  # the arbiter's WORKER_BOOT_ERROR: it halts instead of respawning
        self.selector = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}  # incomplete requests, oldest first
        self.closing: dict[int, tuple[socket.socket, float]] = {}  # answered, lingering, oldest first
        self.max_conns = max(1, self.cfg.worker_connections)
        self.stopping = threading.Event()  # told to detached streams (environ["keyledger.stopping"])
        self.streams: ThreadPoolExecutor | None = None  # made at the first detached response
        super().init_process()

    def run(self) -> None:
        for listener in self.sockets:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, _PIPE)
        accepting = True
        while self.alive or (self.conns and time.monotonic() < self._stop_by()):
            self.notify()
            if not self.alive and accepting:  # stop: no new connections, finish the started ones
                accepting = False
                self.stopping.set()
                for listener in self.sockets:
                    self.selector.unregister(listener)
            try:
                events = self.selector.select(self._wait())
            except OSError as error:
                if error.errno != errno.EINTR:
                    raise
                events = []
            for turn, (key, _) in enumerate(events, 1):
                if turn % 32 == 0:  # a long turn of the loop still tells the master it lives
                    self.notify()
                data = key.data
                if data is _LISTENER:
                    self._accept(key.fileobj)
                elif data is _PIPE:
                    try:
                        os.read(self.PIPE[0], 64)
                    except OSError:
                        pass
                elif isinstance(data, _Conn):
                    self._readable(data)
                else:
                    self._drain(key.fileobj)
            self._expire(time.monotonic())
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
        for conn in list(self.conns.values()):
            self._forget(conn)
            conn.sock.close()
        for sock, _ in list(self.closing.values()):
            self._close(sock)
        self.stopping.set()
        if self.streams is not None:  # detached streams end at their next turn; wait a little for them
            self.streams.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + DETACHED_STOP
            for thread in list(getattr(self.streams, "_threads", ())):
                thread.join(max(deadline - time.monotonic(), 0))

    def _stop_by(self) -> float:
        """When a stopping worker gives up on requests still arriving: before the master's
        graceful timeout runs out and it kills the worker."""
        if not hasattr(self, "_stopping_at"):
            self._stopping_at = time.monotonic() + max(self.cfg.graceful_timeout - 1, 0.5)
        return self._stopping_at

    def _wait(self) -> float:
        """Seconds until the earliest deadline (at most 1, for the master's heartbeat)."""
        now = time.monotonic()
        wait = 1.0
        for table in (self.conns, self.closing):
            if table:
                first = next(iter(table.values()))
                deadline = first.deadline if isinstance(first, _Conn) else first[1]
                wait = min(wait, max(deadline - now, 0.0))
        return wait

    # -- reading requests -----------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(16):  # a few at a time, so the other workers get their share
            try:
                sock, addr = listener.accept()
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                if error.errno in (errno.EMFILE, errno.ENFILE):  # out of descriptors: shed the oldest
                    self._shed()
                    return
                raise
            sock.setblocking(False)
            if len(self.conns) >= self.max_conns:
                self._shed()
            conn = _Conn(sock, addr, listener.getsockname(), time.monotonic() + READ_TIMEOUT)
            self.conns[sock.fileno()] = conn
            self._readable(conn)

    def _shed(self) -> None:
        """Drop the oldest incomplete request (a slow client's, if any are slow)."""
        if self.conns:
            oldest = next(iter(self.conns.values()))
            self._forget(oldest)
            oldest.sock.close()

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            self._register(conn)
            return
        except OSError:
            data = b""
        if not data:  # gone before its request was complete: nobody to answer
            self._forget(conn)
            conn.sock.close()
            return
        conn.buf += data
        try:
            complete = self._framed(conn)
        except BodyRefused as refused:
            self._forget(conn)
            self._refuse_body(conn, refused)
            return
        except Exception as error:  # the head is malformed: gunicorn's parser says how
            self._forget(conn)
            self._refuse(conn, conn.req, error)
            return
        if complete:
            self._forget(conn)
            self._dispatch(conn)
        else:
            self._register(conn)

    def _register(self, conn: _Conn) -> None:
        if not conn.registered:
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.registered = True

    def _framed(self, conn: _Conn) -> bool:
        """Whether ``conn.buf`` holds a whole request (parsing its head once it is complete)."""
        buf = conn.buf
        if conn.req is None:
            end = buf.find(b"\r\n\r\n", max(conn.scanned - 3, 0))
            if end < 0:
                conn.scanned = len(buf)
                too_long_line = len(buf) > self.cfg.limit_request_line + 2 and b"\n" not in buf
                if len(buf) > MAX_HEAD or too_long_line:
                    try:
                        self._parse_head(bytes(buf), conn.addr)  # raises the parser's own refusal
                    except http.errors.NoMoreData:
                        pass
                    raise http.errors.LimitRequestHeaders("the head is too large")
                return False
            conn.body_start = end + 4
            conn.req = req = self._parse_head(bytes(buf[:end + 4]), conn.addr)
            reader = req.body.reader
            if isinstance(reader, ChunkedReader):
                conn.chunk_pos = conn.body_start
            else:
                conn.length = reader.length if isinstance(reader, LengthReader) else 0
                if conn.length > MAX_BODY:
                    raise BodyRefused(413, "Payload Too Large", "The request body is too large.")
            if req._expected_100_continue:
                req._expected_100_continue = False  # answered here if at all, not by wsgi.create
                if not self._body_complete(conn):
                    try:
                        conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                    except OSError:
                        pass
                    return False
        return self._body_complete(conn)

    def _body_complete(self, conn: _Conn) -> bool:
        if conn.length >= 0:
            return len(conn.buf) - conn.body_start >= conn.length
        end, conn.chunk_pos, conn.chunk_total = chunked_end(conn.buf, conn.chunk_pos, conn.chunk_total)
        if end is None:
            return False
        conn.length = end - conn.body_start  # the body's bytes on the wire
        return True

    def _parse_head(self, head: bytes, addr: Any) -> Any:
        source = _Source(head)
        req = next(http.get_parser(self.cfg, source, addr))
        req._keyledger_source = source
        return req

    def _forget(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        if conn.registered:
            conn.registered = False
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass

    def _expire(self, now: float) -> None:
        while self.conns:
            conn = next(iter(self.conns.values()))
            if conn.deadline > now:
                break
            self._forget(conn)
            message = f"The request did not arrive whole within {READ_TIMEOUT:.0f} s."
            if conn.req is None:
                self._answer_refusal(conn, 400, "Bad Request", "INVALID_REQUEST", message, "RequestTimeout")
            else:
                self._refuse_body(conn, BodyRefused(400, "Bad Request", message), timeout=True)
        while self.closing:
            fd, (sock, deadline) = next(iter(self.closing.items()))
            if deadline > now:
                break
            self._close(sock)

    # -- answering -----------------------------------------------------------------------------

    def _dispatch(self, conn: _Conn, refused: BodyRefused | None = None) -> None:
        req = conn.req
        source = req._keyledger_source
        body = bytes(conn.buf[conn.body_start:conn.body_start + max(conn.length, 0)])
        if refused is None and isinstance(req.body.reader, ChunkedReader):
            source.data = body
            try:
                body = req.body.read()  # gunicorn's own decoding; the app sees a length
            except Exception as error:
                self._refuse(conn, req, error)
                return
            req.headers = [(name, value) for name, value in req.headers
                           if name not in ("TRANSFER-ENCODING", "CONTENT-LENGTH")]
            req.headers.append(("CONTENT-LENGTH", str(len(body))))
            req.body = Body(LengthReader(IterUnreader([body]), len(body)))
        elif refused is None:
            source.data = body
        sock = conn.sock
        try:
            sock.settimeout(WRITE_TIMEOUT)
            if self.handle_buffered(conn.server, req, sock, conn.addr, refused):
                return  # a stream thread writes the answer and closes the connection
        except http.errors.NoMoreData:
            pass
        except StopIteration:
            pass
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN) and not isinstance(error, TimeoutError):
                self.log.exception("Socket error processing request.")
        except BaseException as error:
            self.handle_error(req, sock, conn.addr, error)
        self._linger(sock, refusal=refused is not None)

    def handle_buffered(self, server: Any, req: Any, client: socket.socket, addr: Any,
                        refused: BodyRefused | None) -> bool:
        """The sync worker's ``handle_request`` on a request read whole. True when the answer was
        handed to a stream thread (which then owns the connection)."""
        environ: dict = {}
        resp = None
        detached = False
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, client, addr, server, self.cfg, _Response)
            if refused is not None:
                environ["wsgi.input"] = _RefusingInput(refused)
            resp.force_close()
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            environ["keyledger.detaches"] = True
            environ["keyledger.stopping"] = self.stopping
            respiter = self.wsgi(environ, resp.start_response)
            if environ.get(DETACH) and not isinstance(respiter, environ["wsgi.file_wrapper"]):
                if self.streams is None:
                    self.streams = ThreadPoolExecutor(STREAM_THREADS, thread_name_prefix="keyledger-stream")
                self.streams.submit(self._stream, req, resp, respiter, environ, client, request_start)
                detached = True
                return True
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            if not detached:
                try:
                    self.cfg.post_request(self, req, environ, resp)
                except Exception:
                    self.log.exception("Exception in post_request hook")
        return False

    def _stream(self, req: Any, resp: Any, respiter: Any, environ: dict, sock: socket.socket,
                request_start: datetime) -> None:
        """In a stream thread: write a detached answer to its end (or until the client stops
        reading for ``WRITE_TIMEOUT`` seconds, or goes away), then close its connection."""
        try:
            for item in respiter:
                resp.write(item)
            resp.close()
        except OSError:
            pass  # the client went away, or stopped reading
        except Exception:
            self.log.exception("Error writing a streamed response")
        finally:
            try:
                if hasattr(respiter, "close"):
                    respiter.close()
            except Exception:
                self.log.exception("Error closing a streamed response")
            try:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            sock.close()

    def _refuse(self, conn: _Conn, req: Any, error: BaseException) -> None:
        """A request gunicorn's parser refuses: the JSON envelope (``handle_error``), then close."""
        self.handle_error(req, conn.sock, conn.addr, error)
        self._linger(conn.sock, refusal=True)

    def _refuse_body(self, conn: _Conn, refused: BodyRefused, timeout: bool = False) -> None:
        path = getattr(conn.req, "path", "") or ""
        if conn.req is not None and (path == "/console" or path.startswith("/console/")):
            self._dispatch(conn, refused)  # the console's own error page, not the API's JSON
            return
        code = "PAYLOAD_TOO_LARGE" if refused.status == 413 else "INVALID_REQUEST"
        name = "RequestTimeout" if timeout else ("BodyTooLarge" if refused.status == 413 else "MalformedBody")
        self._answer_refusal(conn, refused.status, refused.reason, code, refused.message, name)

    def _answer_refusal(self, conn: _Conn, status: int, reason: str, code: str, message: str,
                        name: str) -> None:
        import uuid

        from service.serving import error_bytes

        request_id = uuid.uuid4().hex
        log.warning("refused a request", extra={
            "request_id": request_id, "status": status, "error": name,
            "remote_addr": conn.addr[0] if isinstance(conn.addr, tuple) else None})
        try:
            conn.sock.send(error_bytes(status, reason, code, message, request_id))
        except OSError:
            pass
        self._linger(conn.sock, refusal=True)

    def _linger(self, sock: socket.socket, refusal: bool = False) -> None:
        """Close after an answer: at once after a whole request if the client sent nothing more,
        else (a refusal, or more bytes) half-close and drain without blocking until the client
        closes or ``LINGER`` passes, so that unread bytes do not turn the close into a reset that
        loses the answer."""
        try:
            sock.setblocking(False)
            if not sock.recv(RECV):
                sock.close()
                return
        except (BlockingIOError, InterruptedError):
            if not refusal:
                sock.close()  # nothing unread, nothing more coming: a plain close loses nothing
                return
        except OSError:
            sock.close()
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            self.selector.register(sock, selectors.EVENT_READ, None)
        except (OSError, ValueError, KeyError):
            sock.close()
            return
        self.closing[sock.fileno()] = (sock, time.monotonic() + LINGER)

    def _drain(self, sock: socket.socket) -> None:
        try:
            if sock.recv(RECV):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        self.closing.pop(sock.fileno(), None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

