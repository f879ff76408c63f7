"""gunicorn's configuration for Keyledger: the production way to run the app factory.

    gunicorn -c gunicorn.conf.py 'service.api:create_app()'

(gunicorn also reads ./gunicorn.conf.py by itself when started from this folder.) It serves the
app as ``keyledger serve`` does, so plain gunicorn may face clients directly:

- malformed HTTP (a request line over 4 KB, a header over 8 KB or more than 100 headers, a NUL or
  bare CR in a header, ``Content-Length`` with ``Transfer-Encoding``, a garbage request line) is
  answered in the contract's JSON error envelope, echoing nothing of the request
  (``service.serving.JsonErrorWorker``), never with gunicorn's HTML pages;
- every log line is one JSON object on standard error: the app's access log
  (``keyledger.access``) and gunicorn's own lines (``JsonLogger``), key-shaped strings redacted;
- the stores and views are created once by the master before the workers start, and
  ``/metrics`` adds up every worker's values (Prometheus multiprocess mode, in a folder of the
  run's own outside the data directory: /dev/shm, or ``KEYLEDGER_METRICS_DIR``).

Settings come from the environment, validated once here (one line naming the variable and what
is allowed, exit 2): ``KEYLEDGER_HOST`` (default 127.0.0.1; 0.0.0.0 in a container),
``KEYLEDGER_PORT`` (default 8080), ``KEYLEDGER_WORKERS`` (default 2) and every other
``KEYLEDGER_*`` setting the app reads (README, "Configuration"). Options given on gunicorn's
command line (``-b``, ``-w``, …) take precedence over this file.

The campaign's scheduler is not run by these workers: run ``keyledger scheduler`` beside them
(``keyledger serve`` embeds it instead).
"""

# ruff: noqa: E402  (settings are validated before anything else is imported)

from __future__ import annotations

import os
import sys

from service.settings import Settings, SettingsError

try:
    _settings = Settings.from_env()
except SettingsError as _error:
    print(f"keyledger: configuration error: {_error}", file=sys.stderr)
    sys.exit(2)


from service import serving

try:
    _host, _port = serving.listen_address(os.environ)
    if _settings.uses_postgres:  # unreachable: one line now, before gunicorn logs anything
        from service.composition import store_exists

        store_exists(_settings)
except SettingsError as _error:
    print(f"keyledger: configuration error: {_error}", file=sys.stderr)
    sys.exit(2)

# --- Where to listen, and how many workers ---------------------------------------------------
bind = [serving.bind_text(_host, _port)]
# Workers, each with its own in-memory verification index (about 220 bytes a key): size
# them by CPU cores and memory, not by concurrent clients (a verification takes microseconds).
workers = _settings.workers
# Each request buffered whole before the app runs on it (slow clients cost a buffer, not the
# worker), malformed HTTP refused in the JSON envelope: service/buffering.py.
worker_class = "service.buffering.BufferingWorker"
# No max_requests: a new worker rebuilds its verification index from the store, which takes
# seconds with millions of keys. Restart workers with SIGHUP on a deploy instead.

# --- Timeouts --------------------------------------------------------------------------------
timeout = serving.TIMEOUT  # a worker silent this long (stuck) is killed and replaced
graceful_timeout = serving.GRACEFUL_TIMEOUT  # after SIGTERM, time to finish requests in flight

# --- Request limits (larger is refused: 414 / 431, in the JSON envelope) ---------------------
limit_request_line = serving.LIMIT_REQUEST_LINE
limit_request_fields = serving.LIMIT_REQUEST_FIELDS
limit_request_field_size = serving.LIMIT_REQUEST_FIELD_SIZE

# --- Logs: JSON lines on standard error ------------------------------------------------------
# The access log is the app's own (logger keyledger.access: request id, actor, route, status,
# duration, redacted path), so gunicorn's is off; gunicorn's own lines are JSON too.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
logger_class = "service.serving.JsonLogger"
capture_output = False  # the app writes nothing to stdout

# --- Process -----------------------------------------------------------------------------------
proc_name = "keyledger"
control_socket_disable = True  # no gunicornc socket in the working directory
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # the workers' heartbeat files off a (possibly slow) disk
# Behind a reverse proxy, KEYLEDGER_PROXY_HOPS (not gunicorn's forwarded_allow_ips) says how many
# X-Forwarded-For entries to trust: the app reads the header itself.


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    """In the master, before any worker: the metrics folder, then the stores (created once). Each
    failure is one line and exit status 2, never a traceback."""
    try:
        _settings.prepare_data_dir()
        serving.prepare_metrics_dir(_settings)
        checkpoint = serving.prepare_store(_settings)
    except SettingsError as error:  # the data directory, or KEYLEDGER_DATABASE_URL unreachable (…)
        print(f"keyledger: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        print(f"keyledger: KEYLEDGER_DATA_DIR={str(_settings.data_dir)!r}: cannot use the data directory "
              f"({error.strerror or type(error).__name__})", file=sys.stderr)
        sys.exit(2)
    if checkpoint:
        server.log.info("audit checkpoint %s signed at seq %s", checkpoint["number"], checkpoint["seq"])
