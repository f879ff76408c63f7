"""gunicorn as ``keyledger serve`` runs it: answers to malformed HTTP in the contract's envelope,
and gunicorn's own log lines as JSON.

gunicorn answers a request it cannot parse (request line over 4 KB, headers too large or too
many, NUL or a bare CR in a header, bytes HTTP forbids, ``Content-Length`` with
``Transfer-Encoding``, a garbage request line) before the app sees it, with an HTML page and a
log line that both quote the request line, a key in the path included. ``JsonErrorWorker``
answers those with the contract's JSON error (status 400, 414 or 431, ``Connection: close``),
names only the exception's class in the log, and echoes nothing of the request.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import errors as http_errors
from gunicorn.workers.sync import SyncWorker

from service.logs import JsonFormatter

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("keyledger.http")

# The server's settings, shared by ``keyledger serve`` and ``gunicorn.conf.py``.
TIMEOUT = 30  # seconds a worker may spend on one request before the master replaces it
GRACEFUL_TIMEOUT = 10  # seconds a worker has to finish its requests after SIGTERM
LIMIT_REQUEST_LINE = 4094  # bytes; longer is 414 (the limits ``refusal`` names)
LIMIT_REQUEST_FIELDS = 100  # headers; more is 431
LIMIT_REQUEST_FIELD_SIZE = 8190  # bytes per header; longer is 431

_CLIENT_ERRORS = tuple(getattr(http_errors, name) for name in (
    "ParseException", "NoMoreData", "ExpectationFailed")) + (UnicodeError, ValueError)
_APP_ERRORS = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)


def listen_address(environ: Mapping[str, str], host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Where to listen: ``host`` and ``port`` if given (command-line options), else
    ``KEYLEDGER_HOST`` (default 127.0.0.1) and ``KEYLEDGER_PORT`` (default 8080). Raises
    ``SettingsError`` naming the variable."""
    from service.settings import SettingsError

    if host is None:
        host = environ.get("KEYLEDGER_HOST", "127.0.0.1").strip()
        if not host or any(c.isspace() or c in "/?#" for c in host):
            raise SettingsError(f"KEYLEDGER_HOST={host!r}: expected an address to listen on, e.g. 127.0.0.1, "
                                "0.0.0.0 or ::")
    if port is None:
        text = environ.get("KEYLEDGER_PORT", "8080").strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise SettingsError(f"KEYLEDGER_PORT={text!r}: expected a port number, 1 to 65535")
        port = int(text)
    return host, port


def bind_text(host: str, port: int) -> str:
    """gunicorn's ``bind`` for an address (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (taken, not an address here), or None. Checked before
    gunicorn tries: its own attempt retries for 5 s and prints a dozen lines. Skipped when the
    listening socket is inherited (a USR2 upgrade, systemd socket activation)."""
    if os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS"):
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as error:
        return f"{host!r} is not an address to listen on ({getattr(error, 'strerror', None) or error})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "the address is already in use (is another server running there?)"
            return error.strerror or str(error)
    return None


def refusal(exc: BaseException) -> tuple[int, str, str, str]:
    """(status, reason, code, message) for an exception raised while reading a request."""
    if isinstance(exc, _APP_ERRORS) or not isinstance(exc, _CLIENT_ERRORS):
        return (500, "Internal Server Error", "INTERNAL",
                "Something went wrong on our side; retry, and quote the request_id if it persists.")
    if isinstance(exc, http_errors.LimitRequestLine):
        return 414, "URI Too Long", "INVALID_REQUEST", f"The request line is too long (at most {LIMIT_REQUEST_LINE} bytes)."
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return (431, "Request Header Fields Too Large", "INVALID_REQUEST",
                f"The request's headers are too large or too many (at most {LIMIT_REQUEST_FIELDS}, "
                f"{LIMIT_REQUEST_FIELD_SIZE} bytes each).")
    return 400, "Bad Request", "INVALID_REQUEST", "The request is not well-formed HTTP/1.1."


def error_bytes(status: int, reason: str, code: str, message: str, request_id: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "details": {}},
                       "request_id": request_id}, separators=(",", ":")).encode() + b"\n"
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\nCache-Control: no-store\r\n\r\n")
    return head.encode("ascii") + body


class JsonErrorWorker(SyncWorker):
    """gunicorn's sync worker, refusing malformed requests in the contract's JSON envelope."""

    def handle_error(self, req, client, addr, exc):  # type: ignore[no-untyped-def]
        status, reason, code, message = refusal(exc)
        request_id = uuid.uuid4().hex
        fields = {"request_id": request_id, "status": status, "error": type(exc).__name__,
                  "remote_addr": (addr or ("",))[0] if isinstance(addr, tuple) else None}
        if status == 500:  # the class only: an exception's text may quote the request
            log.error("error handling a request", extra=fields)
        else:
            log.warning("refused a malformed request", extra=fields)
        try:
            util.write_nonblock(client, error_bytes(status, reason, code, message, request_id))
        except Exception:
            log.debug("could not send the refusal", extra={"request_id": request_id})


class JsonLogger(Logger):
    """gunicorn's own lines (boot, workers, signals) as JSON lines, like the app's."""

    def setup(self, cfg):  # type: ignore[no-untyped-def]
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())


METRICS_PREFIX = "keyledger-metrics-"


def metrics_parent(settings: Settings) -> Path:
    """Where the run's metrics folder is made: ``KEYLEDGER_METRICS_DIR``, else shared memory
    (/dev/shm), else the runtime directory, else the temporary one — never the data directory:
    prometheus_client memory-maps these files, and a worker touching a page of a full
    filesystem dies of SIGBUS (a full data disk must only cost writes)."""
    if settings.metrics_dir is not None:
        return settings.metrics_dir
    for candidate in ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR")):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return Path(tempfile.gettempdir())


def prepare_metrics_dir(settings: Settings) -> Path | None:
    """Prometheus multiprocess mode for the workers: a fresh folder of this run's own (owner
    only, removed when the master exits), unless PROMETHEUS_MULTIPROC_DIR is set already. Call
    it in the master, before the workers start and before anything imports prometheus_client."""
    from service.settings import SettingsError

    variable = "PROMETHEUS_MULTIPROC_DIR"  # not from service.metrics: that imports prometheus_client
    if os.environ.get(variable):
        return None
    parent = metrics_parent(settings)
    _remove_abandoned(parent)
    shutil.rmtree(settings.data_dir / "metrics", ignore_errors=True)  # where earlier versions kept them
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-", dir=parent))  # 0700
    except OSError as error:
        raise SettingsError(f"KEYLEDGER_METRICS_DIR={str(parent)!r}: cannot make the metrics folder there "
                            f"({error.strerror or type(error).__name__})") from None
    os.environ[variable] = str(folder)
    master = os.getpid()
    atexit.register(lambda: os.getpid() == master and shutil.rmtree(folder, ignore_errors=True))
    try:
        if folder.stat().st_dev == settings.data_dir.stat().st_dev:
            log.warning("the metrics folder %s is on the data directory's filesystem: should it fill up, "
                        "the workers stop; set KEYLEDGER_METRICS_DIR to another filesystem", folder)
    except OSError:
        pass
    return folder


def _remove_abandoned(parent: Path) -> None:
    """Folders of earlier runs whose master is gone (killed, so never cleaned up)."""
    try:
        entries = list(parent.glob(f"{METRICS_PREFIX}*"))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(METRICS_PREFIX):].partition("-")[0]
        try:
            if not pid.isdigit() or entry.stat().st_uid != os.geteuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def prepare_store(settings: Settings) -> dict | None:
    """Create the stores and views once, in the master before the workers start, so the workers
    never race to create them; sign the audit chain's head (the workers then find nothing new to
    sign). Returns the checkpoint signed, if any."""
    from service.composition import build_system

    settings.prepare_data_dir()
    system = build_system(settings, follow=False)
    try:
        return system.sign_checkpoint()
    finally:
        system.close()
