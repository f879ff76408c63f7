"""Per-request context: the request id, the caller, and the request facts events record."""

from __future__ import annotations

import os
import re

from flask import current_app, g, request

from service.composition import System
from service.credentials import redact
from service.domain.actors import Actor, RequestInfo
from service.domain.errors import InvalidRequest

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_VERSION = re.compile(r"^[0-9]{1,18}$")


def system() -> System:
    return current_app.extensions["keyledger"]


def current_app_extension(name: str):  # type: ignore[no-untyped-def]
    return current_app.extensions[name]


def request_id_for(offered: str | None) -> str:
    """The caller's ``X-Request-Id`` if it is a sane one (and no key), else a new one."""
    if offered and _REQUEST_ID.fullmatch(offered) and redact(offered) == offered:  # never echo a key
        return offered
    return os.urandom(16).hex()  # as uuid4().hex: 32 hex digits, 5x cheaper


def assign_request_id() -> None:
    # The gateway (service.api.gateway) assigned it already; the same id is logged and echoed.
    assigned = request.environ.get("keyledger.request_id")
    g.request_id = assigned or request_id_for(request.headers.get("X-Request-Id"))


def request_id() -> str | None:
    return g.get("request_id")


def actor() -> Actor:
    """The authenticated caller (authentication ran before the view)."""
    return g.actor


def request_info() -> RequestInfo:
    agent = request.headers.get("User-Agent")
    return RequestInfo(id=g.request_id, ip=request.remote_addr,
                       user_agent=redact(agent[:256]) if agent else None)


def if_match() -> int | None:
    """The version in ``If-Match`` (quoted or bare); None when absent or ``*``."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip()
    if value == "*":
        return None
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not _VERSION.fullmatch(value):
        raise InvalidRequest("If-Match must be the key's version, e.g. If-Match: \"3\".",
                             **{"If-Match": ["Not a version number."]})
    return int(value)


def with_last_used(*keys: dict) -> None:
    """Fill ``last_used_at`` of key objects from the last-used records (in place)."""
    used = system().last_used.of(k["id"] for k in keys)
    for key in keys:
        key["last_used_at"] = used.get(key["id"])
