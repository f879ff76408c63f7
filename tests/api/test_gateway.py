"""The WSGI gateway in front of Flask answers forward-auth and verify itself: the same answers the
Flask views give, with request ids, one access line and metrics for every request."""

from __future__ import annotations

import json
import logging

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

LEGACY_LOOKING = "AbCdEfGhIjKlMnOpQrStUvWxYz012345"  # a 30+ char mixed-case legacy secret shape


def both_ways(flask_app, **request) -> tuple:
    """(gateway's answer, Flask view's answer) to one request, each as (status, headers, body)."""
    gateway = flask_app.wsgi_app
    answers = []
    request = {**request, "headers": {**request.get("headers", {}), "X-Request-Id": "fixed-id"}}
    for app in (gateway, gateway.flask_wsgi):
        environ = EnvironBuilder(**request).get_environ()
        body, status, headers = run_wsgi_app(app, environ)
        headers = {k: v for k, v in headers.items() if k not in ("Content-Length",)}
        answers.append((status, headers, b"".join(body)))
    return tuple(answers)


def requests_for(keys: dict) -> list[dict]:
    key = keys["read_only"]
    check = "/v2/auth/check"
    return [
        {"path": check, "query_string": "scope=Predict", "headers": {"Authorization": f"Key {key}"}},
        {"path": check, "query_string": "scope=Models:Add", "headers": {"Authorization": f"Key {key}"}},
        {"path": check, "headers": {"Authorization": f"Key {key}", "X-Required-Scope": "Search",
                                    "X-Required-App-Id": "elsewhere"}},
        {"path": check, "headers": {"Authorization": "Key ak_" + "0" * 38}},
        {"path": check, "headers": {"Authorization": f"Bearer {LEGACY_LOOKING}"}},
        {"path": check, "headers": {"Authorization": "Basic abc"}},
        {"path": check, "query_string": "scope=%FF%FE&scope=Predict", "headers": {"Authorization": f"Key {key}"}},
        {"path": "/v2/verify", "method": "POST", "json": {"key": key, "scope": "Predict"}},
        {"path": "/v2/verify", "method": "POST", "json": {"key": key, "scope": "Models:Add", "app_id": "x"}},
        {"path": "/v2/verify", "method": "POST", "json": {"key": 3, "extra": True}},
        {"path": "/v2/verify", "method": "POST", "data": b"[1]", "content_type": "application/json"},
        {"path": "/v2/verify", "method": "POST", "data": b"{nope", "content_type": "application/json"},
        {"path": "/v2/verify", "method": "POST", "data": b"key=x", "content_type": "text/plain"},
        {"path": "/v2/verify", "method": "POST", "data": b'{"key": "' + b"k" * 2000 + b'"}',
         "content_type": "application/json; charset=utf-8"},
    ]


@pytest.fixture
def keys(read_only_key) -> dict:
    return {"read_only": read_only_key["key"]}


def test_the_gateway_gives_the_flask_views_answers_byte_for_byte(flask_app, keys) -> None:
    for request in requests_for(keys):
        via_gateway, via_flask = both_ways(flask_app, **request)
        assert via_gateway[0] == via_flask[0], request
        assert via_gateway[2] == via_flask[2], request
        assert via_gateway[1] == via_flask[1], request


def test_request_ids_are_echoed_if_sane_and_assigned_otherwise(client, keys) -> None:
    check = {"Authorization": f"Key {keys['read_only']}"}
    answer = client.get("/v2/auth/check?scope=Predict", headers={**check, "X-Request-Id": "gw-42"})
    assert answer.headers["X-Request-Id"] == "gw-42"
    for offered in (None, "has space", "ak_" + "A" * 38, "x" * 200):
        headers = {**check, **({"X-Request-Id": offered} if offered else {})}
        assigned = client.get("/v2/auth/check?scope=Predict", headers=headers).headers["X-Request-Id"]
        assert assigned and assigned != offered and len(assigned) == 32
    refused = client.post("/v2/verify", data=b"{", content_type="application/json",
                          headers={"X-Request-Id": "gw-43"})
    assert refused.headers["X-Request-Id"] == "gw-43" and refused.json["request_id"] == "gw-43"
    assert refused.headers["Cache-Control"] == "no-store"


def test_forward_auth_writes_one_access_line_and_counts_the_verdict(client, flask_app, keys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="keyledger.access")
    metrics = flask_app.extensions["keyledger_metrics"]

    def counted(code: str) -> float:
        return metrics.verifications.labels(code)._value.get()

    before = counted("INSUFFICIENT_SCOPE")
    answer = client.get("/v2/auth/check?scope=Models:Add", headers={
        "Authorization": f"Key {keys['read_only']}", "X-Request-Id": "gw-44"})
    assert answer.status_code == 403
    assert counted("INSUFFICIENT_SCOPE") == before + 1
    lines = [r for r in caplog.records if r.name == "keyledger.access" and r.request_id == "gw-44"]
    assert len(lines) == 1
    assert (lines[0].route, lines[0].status, lines[0].method) == ("/v2/auth/check", 403, "GET")
    assert keys["read_only"] not in json.dumps(lines[0].__dict__, default=str)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'keyledger_http_request_duration_seconds_count{method="GET",route="/v2/auth/check",status="403"}' in text


def test_a_path_is_logged_redacted_and_by_its_route(client, keys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="keyledger.access")
    client.get(f"/v2/keys/{keys['read_only']}/{LEGACY_LOOKING}", headers={"X-Request-Id": "gw-45"})
    line = next(r for r in caplog.records if getattr(r, "request_id", None) == "gw-45")
    assert keys["read_only"] not in line.getMessage() and LEGACY_LOOKING not in line.getMessage()
    assert line.route == "(unmatched)" or "<" in line.route
