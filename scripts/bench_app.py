"""The benchmark's WSGI app: Keyledger plus an empty route, the baseline measured in the same server."""

from __future__ import annotations

from flask import Response

from service.api import create_app


def create_bench_app():
    flask_app = create_app()

    @flask_app.get("/bench/empty")
    def empty() -> Response:
        return Response(b"", 200)

    return flask_app
