"""Log lines a security team can trust: one JSON object per line, control characters escaped,
key-shaped strings redacted (``service.credentials.redact``), the request's facts as fields.

``configure()`` installs the formatter on the root logger; the command line calls it, and the
app factory calls ``configure_once()`` so that plain ``gunicorn 'service.api:create_app()'``
writes the same lines as ``keyledger serve``.
"""

from __future__ import annotations

import json
import logging
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
        second = int(record.created)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        clean = record.__dict__.get("redacted", False)  # the access log's fields are redacted already
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": message if clean else redact(message),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value if clean else _clean(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=True, default=str).replace("\x7f", "\\u007f")


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
