"""Log lines a security team can trust: one JSON object per line, control characters escaped,
key-shaped strings redacted (``service.credentials.redact``), the request's facts as fields.

``configure()`` installs the formatter on the root logger; the command line calls it, and the
app factory calls ``configure_once()`` so that plain ``gunicorn 'service.api:create_app()'``
writes the same lines as ``keyledger serve``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import IO

from service.credentials import redact

# Request facts the access log (and any other line) may carry as ``extra=`` fields.
FIELDS = ("request_id", "method", "path", "route", "status", "duration_ms", "actor", "remote_addr",
          "error")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _clean(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record. ``json.dumps`` with ``ensure_ascii`` escapes every control
    character (a ``%0A`` decoded into a path stays ``\\n`` inside one line); DEL is escaped too."""

    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        clean = record.__dict__.get("redacted", False)  # the access log's fields are redacted already
        message = record.getMessage()
        fields = {}
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                fields[name] = value if clean else _clean(value)
        exc = redact(self.formatException(record.exc_info)) if record.exc_info else None
        return self.line(record.created, record.levelname, record.name, message if clean else redact(message),
                         fields, exc)

    def line(self, created: float, level: str, logger: str, message: str, fields: dict[str, object],
             exc: str | None = None) -> str:
        """The JSON line of one entry whose message and fields are redacted already."""
        second = int(created)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # json.dumps' own output (ensure_ascii, ", " and ": "), written field by field with its
        # C string encoder: the access log writes one of these per request.
        parts = [f'{{"ts": "{self._stamp}.{int((created - second) * 1000):03d}Z", "level": {_string(level)}, '
                 f'"logger": {_string(logger)}, "msg": {_string(message)}']
        for name, value in fields.items():
            kind = type(value)
            if kind is str:
                text = _string(value)
            elif kind is int or (kind is float and math.isfinite(value)):  # type: ignore[arg-type]
                text = repr(value)
            else:
                text = json.dumps(value, ensure_ascii=True, default=str)
            parts.append(f", {_string(name)}: {text}")
        if exc is not None:
            parts.append(f', "exc": {_string(exc)}')
        parts.append("}")
        return "".join(parts).replace("\x7f", "\\u007f")


_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def sole_handler(logger: logging.Logger) -> logging.StreamHandler | None:
    """The handler ``configure()`` installed, if a record of ``logger`` would reach it and nothing
    else (no other handler or filter on the way: not under pytest's caplog, say), so that a hot
    path may write its line straight to it (``write_line``); else None."""
    handlers = logging.root.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if not getattr(handler, "keyledger", False) or handler.filters or handler.level > logging.INFO:
        return None
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate or node.disabled:
            return None
        node = node.parent
    return handler  # type: ignore[return-value]


def write_line(handler: logging.StreamHandler, line: str) -> None:
    """One line to ``handler``'s stream, as its ``emit`` writes it (under its lock, flushed)."""
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.stream.flush()
    except Exception:  # as logging does: a failed log line never fails the request
        handler.handleError(None)  # type: ignore[arg-type]
    finally:
        handler.release()


def configure(level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) as JSON lines, at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "keyledger", False):
            root.removeHandler(old)
    handler.keyledger = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def configure_once() -> None:
    """``configure()`` unless the process already has its logging set up (tests, ``serve``)."""
    if not logging.getLogger().handlers:
        level = os.environ.get("KEYLEDGER_LOG_LEVEL", "INFO").upper()
        configure(level if level in LEVELS else "INFO")
