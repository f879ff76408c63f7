"""The WSGI entry in front of Flask: every request's id, access log line and metrics, and the
forward-auth hot path.

``GET /v2/auth/check`` and ``POST /v2/verify`` are answered here, straight from the WSGI environ
by ``verify.Verdicts`` (the same answers the Flask views give), skipping Flask's request and
response machinery; a body Flask must judge (no Content-Length, chunked, over the limit) and every
other request go on to Flask. Either way one JSON access line is written and one histogram
observation made, after the answer is known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from service.api.client_facts import TrustedProxies, request_facts
from service.api.context import request_id_for
from service.api.introspection import Introspection
from service.api.verify import MAX_BODY, Verdicts, envelope
from service.composition import System
from service.credentials import redact
from service.domain.actors import RequestInfo
from service.event_store import on_the_request_path
from service.logs import JsonFormatter, sole_handler, write_line
from service.metrics import Metrics

log = logging.getLogger("keyledger.access")
errors = logging.getLogger("keyledger.api")

CHECK = "/v2/auth/check"
VERIFY = "/v2/verify"
INTROSPECT = "/v2/introspect"  # RFC 7662 (service.api.introspection): the same index, the same path
_REASONS = {200: "200 OK", 400: "400 BAD REQUEST", 401: "401 UNAUTHORIZED", 403: "403 FORBIDDEN",
            429: "429 TOO MANY REQUESTS",
            500: "500 INTERNAL SERVER ERROR"}
StartResponse = Callable[..., Any]


def decoded_path(environ: dict) -> str:
    """``PATH_INFO`` as Werkzeug shows it (UTF-8, bad bytes replaced); control characters stay
    in it: the JSON log formatter escapes them."""
    return environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")


# Past this many seconds without reaching the event store, verdicts say they come from an index
# that may be missing the newest changes (the event store is unreachable, or following stalled).
STALE_AFTER = 1.0
# At most this many seconds a verdict waits for events another process of this machine has just
# published (the catch-up thread reads them; nothing on the request path touches the store).
SYNC_WAIT = 0.1

class Gateway:
    __slots__ = ("flask_wsgi", "system", "verdicts", "metrics", "_access", "proxies", "introspection")

    def __init__(self, flask_wsgi: Callable[[dict, StartResponse], Iterable[bytes]], system: System,
                 verdicts: Verdicts, metrics: Metrics, proxies: TrustedProxies | None = None,
                 introspection: Introspection | None = None) -> None:
        self.introspection = introspection
        self.proxies = proxies or TrustedProxies()  # whose X-Forwarded-For forward-auth believes
        self.flask_wsgi = flask_wsgi
        self.system = system
        self.verdicts = verdicts
        self.metrics = metrics
        self._access = log.isEnabledFor

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        with on_the_request_path():  # a store call here is tried once: 503 rather than wait
            return self._serve(environ, start_response)

    def _serve(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        environ["keyledger.request_id"] = request_id
        path = environ.get("PATH_INFO")
        method = environ.get("REQUEST_METHOD")
        answer = None
        if ((path == CHECK and method == "GET") or (path == VERIFY and method == "POST")
                or (path == INTROSPECT and method == "POST" and self.introspection is not None)):
            try:
                answer = self._answer(environ, path, request_id)
            except Exception:  # the contract's envelope, never the server's HTML page
                errors.exception("unhandled error", extra={"request_id": request_id})
                answer = (500, [("Content-Type", "application/json")], envelope(
                    "INTERNAL", "Something went wrong on our side; retry, and quote the request_id if it "
                    "persists.", None, request_id))
        if answer is not None:
            status, headers, body = answer
            headers += [("Content-Length", str(len(body))), ("X-Request-Id", request_id),
                        ("Cache-Control", "no-store")]
            stale = self.system.follower.staleness()
            if stale > STALE_AFTER:  # answered from an index that may miss the last changes
                headers.append(("X-Keyledger-Index-Stale", f"{stale:.1f}"))
            start_response(_REASONS.get(status) or str(status), headers)
            self._done(environ, path, method, status, started, request_id)
            return [body]
        seen: list[str] = []

        def recording(status: str, headers: list, exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, headers, exc_info)

        result = self.flask_wsgi(environ, recording)
        status = int(seen[-1][:3]) if seen else 500
        self._done(environ, environ.get("keyledger.route") or "(unmatched)", method, status, started,
                   request_id)
        return result

    def _answer(self, environ: dict, path: str, request_id: str):  # type: ignore[no-untyped-def]
        try:
            self.system.follower.sync(SYNC_WAIT)  # another process wrote? catch up before answering
        except Exception:  # verification needs no store: answer from the index as it is
            errors.exception("catching up with the event log failed; answering from the current index")
            self.metrics.store_error("events")

        def request_info() -> RequestInfo:
            agent = environ.get("HTTP_USER_AGENT")
            return RequestInfo(id=request_id, ip=environ.get("REMOTE_ADDR"),
                               user_agent=redact(agent[:256]) if agent else None)

        if path == CHECK:
            return self.verdicts.auth_check(
                environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_X_REQUIRED_SCOPE"),
                environ.get("HTTP_X_REQUIRED_APP_ID"), environ.get("QUERY_STRING", ""), request_id,
                request_info, lambda: request_facts(environ, self.proxies),
                environ.get("HTTP_X_KEYLEDGER_LIMITED_STATUS"))
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or int(length) > MAX_BODY or "HTTP_TRANSFER_ENCODING" in environ:
            return None  # Flask judges it (413, chunked bodies)
        data = environ["wsgi.input"].read(int(length)) if length != "0" else b""
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if path == INTROSPECT:
            return self.introspection.answer(environ.get("HTTP_AUTHORIZATION", ""), mimetype, data,  # type: ignore[union-attr]
                                             request_id, request_info)
        return self.verdicts.verify(mimetype, data, request_id, request_info)

    def _done(self, environ: dict, route: str, method: str, status: int, started: float,
              request_id: str) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.observe(route, method, status, elapsed)
        if self._access(logging.INFO):
            # Every text field redacted here (the record says so, and the formatter does not redo
            # it). When the line would only reach the JSON handler, it is written straight to it
            # (the same line, without a LogRecord); else through logging as a record.
            raw = environ.get("PATH_INFO", "")
            path = _redacted(raw if raw.isascii() else decoded_path(environ))
            method = _redacted(method or "")
            fields = {"request_id": request_id, "method": method, "path": path, "route": _redacted(route),
                      "status": status, "duration_ms": round(elapsed * 1000, 3),
                      "actor": environ.get("keyledger.actor") or "-",
                      "remote_addr": _redacted(environ.get("REMOTE_ADDR") or "")}
            handler = sole_handler(log)
            if handler is not None and isinstance(handler.formatter, JsonFormatter):
                write_line(handler, handler.formatter.line(
                    time.time(), "INFO", log.name, f"{method} {path} {status}", fields))
                return
            log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "%s %s %s", (method, path, status),
                                      None, extra={**fields, "redacted": True}))


def _redacted(text: str) -> str:
    """``redact(text)``, skipped when no secret can be in it: shorter than a legacy secret (30
    characters) and without a key's or token's prefix."""
    return text if len(text) < 30 and "ak_" not in text and "pat_" not in text else redact(text)
