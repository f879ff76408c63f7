"""Every error becomes the contract's envelope, with a stable code; never HTML, never a 500 page."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from projections.store import STORE_ERRORS
from service.composition import first_line
from service.credentials import redact
from service.domain.errors import KeyledgerError

log = logging.getLogger("keyledger.api")

STATUS_BY_CODE = {
    "INVALID_REQUEST": 400,
    "SCOPE_UNKNOWN": 400,
    "INVALID_EXPIRY": 400,
    "INVALID_WEBHOOK_URL": 400,  # service.webhooks
    "UNKNOWN_EVENT_TYPE": 400,
    "UNKNOWN_APP": 400,
    "UNAUTHENTICATED": 401,
    "MALFORMED": 401,
    "REVOKED": 401,
    "EXPIRED": 401,
    "LEGACY_TOKEN_SUNSET": 401,
    "FORBIDDEN": 403,
    "ORIGIN_NOT_ALLOWED": 403,
    "IP_NOT_ALLOWED": 403,
    "APP_NOT_ALLOWED": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "NOT_ACCEPTABLE": 406,
    "CONFLICT": 409,
    "PRECONDITION_FAILED": 412,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}

_CODE_BY_STATUS = {
    400: "INVALID_REQUEST", 401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 406: "NOT_ACCEPTABLE", 409: "CONFLICT", 412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 422: "INVALID_REQUEST",
    503: "UNAVAILABLE",
}

_MESSAGE_BY_STATUS = {
    404: "No such resource; check the path against /openapi.json.",
    405: "This method is not allowed on this path; see /openapi.json.",
    413: "The request body is too large.",
}


def error_response(code: str, message: str, details: dict | None = None,
                   status: int | None = None, headers: dict | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "details": details or {}},
            "request_id": getattr(g, "request_id", None)}
    response = jsonify(body)
    response.set_data(redact(response.get_data(as_text=True)))  # never echo a key back
    response.status_code = status or STATUS_BY_CODE.get(code, 400)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _webargs_details(data: Any) -> dict:
    """webargs nests messages by location (``{"json": {...}}``); flatten to field names."""
    messages = (data or {}).get("messages") or (data or {}).get("errors") or {}
    flat: dict = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            for name, problems in fields.items():
                name = "body" if name == "_schema" else name
                flat[name] = problems
        else:
            flat[location] = fields
    return flat


class KeyledgerApi(Api):
    """flask-smorest's Api with the contract's error envelope instead of its own."""

    from service.api.schemas import ErrorSchema as ERROR_SCHEMA  # noqa: N811

    documents = True  # False: blueprints registered without documenting their views (create_app)

    def _init_spec(self, *, extra_plugins=None, **options):  # type: ignore[no-untyped-def]
        from service.api.openapi import ContractPlugin  # the document as strict as the server

        super()._init_spec(extra_plugins=[ContractPlugin(), *(extra_plugins or ())], **options)

    def register_blueprint(self, blp, *, parameters=None, **options):  # type: ignore[no-untyped-def]
        """flask-smorest's, but with ``documents`` false only the blueprint's registration (its name
        known to this Api, its views to the app): the views are in a document made already."""
        if self.documents:
            return super().register_blueprint(blp, parameters=parameters, **options)
        self._app.extensions["flask-smorest"]["blp_name_to_api"][options.get("name", blp.name)] = self
        self._app.register_blueprint(blp, **options)
        return None

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        status = error.code or 500
        data = getattr(error, "data", None)
        if status in (400, 422) and data:
            details = _webargs_details(data)
            if "json" in details and details.get("json") == ["Invalid JSON body."]:
                return error_response("INVALID_REQUEST", "The body is not valid JSON.",
                                      {"body": ["Not valid JSON."]}, 400)
            names = ", ".join(sorted(details)) or "the request"
            return error_response("INVALID_REQUEST", f"Invalid request: check {names}.", details, 400)
        code = _CODE_BY_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_REQUEST")
        message = _MESSAGE_BY_STATUS.get(status) or (error.description or error.name)
        headers = {}
        if status == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        return error_response(code, message, None, status, headers)


def register_error_handlers(flask_app: Flask) -> None:
    @flask_app.errorhandler(KeyledgerError)
    def _domain_error(error: KeyledgerError) -> Response:
        headers = {"Retry-After": "1"} if error.code == "UNAVAILABLE" else None
        if headers:
            flask_app.extensions["keyledger_metrics"].store_error("events")
        return error_response(error.code, error.message, error.details, headers=headers)

    def _view_store_error(error: Exception) -> Response:
        log.error("view store error (request %s): %s", getattr(g, "request_id", None),
                  first_line(error))
        flask_app.extensions["keyledger_metrics"].store_error("views")
        return error_response("UNAVAILABLE", "The read store is unavailable right now; retry shortly.",
                              None, 503, {"Retry-After": "1"})

    for store_error in STORE_ERRORS:  # SQLite's and PostgreSQL's
        flask_app.errorhandler(store_error)(_view_store_error)

    @flask_app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return flask_app.extensions["keyledger_api"].handle_http_exception(error)
        log.exception("unhandled error (request %s)", getattr(g, "request_id", None))
        return error_response("INTERNAL", "Something went wrong on our side; retry, and quote the request_id if it persists.",
                              None, 500)
