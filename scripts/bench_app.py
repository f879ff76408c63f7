"""The benchmarks' WSGI app: Keyledger plus two baselines served by the same server and workers.

- ``/bench/bare``: a bare WSGI answer (200, empty body) before any of Keyledger's code runs: the
  physical limit of the server itself, what forward-auth is measured against;
- ``/bench/empty``: an empty Flask route behind Keyledger's gateway (request id, access line,
  metrics).

``TimeoutSyncWorker`` is the "timeouts in the worker" design scripts/bench_serving.py compares:
gunicorn's sync worker whose reads time out after ``BENCH_READ_TIMEOUT`` seconds (default 1).
"""

from __future__ import annotations

import os

from flask import Response

from service.api import create_app
from service.serving import JsonErrorWorker

_BARE_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "0")]


def create_bench_app():
    flask_app = create_app()

    @flask_app.get("/bench/empty")
    def empty() -> Response:
        return Response(b"", 200)

    keyledger = flask_app.wsgi_app

    def bench_wsgi(environ, start_response):  # type: ignore[no-untyped-def]
        if environ["PATH_INFO"] == "/bench/bare":
            start_response("200 OK", _BARE_HEADERS)
            return [b""]
        return keyledger(environ, start_response)

    flask_app.wsgi_app = bench_wsgi  # type: ignore[method-assign]
    return flask_app


class TimeoutSyncWorker(JsonErrorWorker):
    """The sync worker with a read deadline on every client socket."""

    def accept(self, listener):  # type: ignore[no-untyped-def]
        client, addr = listener.accept()
        client.settimeout(float(os.environ.get("BENCH_READ_TIMEOUT", "1")))
        self.handle(listener, client, addr)
