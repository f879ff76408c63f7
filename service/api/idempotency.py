"""Writes safe to retry: every change is committed last, and a POST's ``Idempotency-Key`` gets its first answer again.

Every API request that may change something (POST, PATCH, DELETE under ``/v2/``) runs its
view inside ``keys_app.deferred()``: the use cases check and collect their events, the view
builds the whole answer, and only then are the events written, in one transaction. A failure
before that point (a view store that cannot be read, a snapshot, anything) leaves nothing
behind and may answer 503; after it, nothing can turn the answer into an error — the index
and the views catch up best-effort, and the follower does the rest.

With ``Idempotency-Key: <1 to 255 characters>`` on a POST, the answer is committed with the
change (``service.application.idempotency``), scoped to the caller (their account or key; on
``/v2/token``, the credentials they send). A retry with the same key and request within 24
hours gets that answer again, byte for byte, with ``Idempotent-Replayed: true``; the same
key with another request is 422 ``IDEMPOTENCY_KEY_REUSED``. Duplicates that race both run
deferred and conflict on the record's id at commit: one commits, the others give its answer.
Answers that changed nothing (refusals, validation errors) are not recorded: the retry runs
again, which is harmless. ``POST /v2/verify`` changes nothing, so it is answered afresh (a
replayed verdict would be stale); the gateway answers it before this module sees it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Flask, Response, current_app, g, request

from projections.seal_keys import SealKeys
from service.api import context
from service.api.errors import error_response
from service.api.jsonbody import BodyError, load_json
from service.application.base import COMMAND_ATTEMPTS
from service.application.idempotency import Answer, CommitRaced, IdempotentCall
from service.application.legacy import TOKEN_ATTEMPTS
from service.composition import VIEW_WRITE_TIMEOUT, System
from service.domain.errors import Conflict, KeyledgerError, Unavailable
from service.domain.idempotency import RETENTION

log = logging.getLogger("keyledger.api")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEY_MAX = 255
MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
ANSWERED_AFRESH = ("/v2/verify", "/v2/introspect")  # questions, not commands
VIEWS_LATER = ("/v2/token",)  # a token costs one write: the views catch up in the background
STREAM_READERS = ("/v2/token",)  # views that read the body from the stream
# Tests only: a process that commits the request with this Idempotency-Key dies before answering.
KILL_SWITCH = "KEYLEDGER_TEST_KILL_AFTER_COMMIT"
# Answer headers a replay does not repeat: the new request has its own.
_NOT_RECORDED = frozenset({"x-request-id", "content-length"})


def install(flask_app: Flask, system: System) -> None:
    """Wrap every view that may change something (call after the blueprints are registered)."""
    seal_keys = SealKeys(system.views, retention=RETENTION)
    kill_after = os.environ.get(KILL_SWITCH) or None
    wrapped = set()
    for rule in flask_app.url_map.iter_rules():
        if (not rule.rule.startswith("/v2/") or rule.rule in ANSWERED_AFRESH
                or not (rule.methods or set()) & MUTATING or rule.endpoint in wrapped):
            continue
        wrapped.add(rule.endpoint)
        view = flask_app.view_functions[rule.endpoint]
        flask_app.view_functions[rule.endpoint] = _committing_last(view, system, seal_keys, kill_after)


def _committing_last(view: Callable, system: System, seal_keys: SealKeys, kill_after: str | None) -> Callable:
    @wraps(view)
    def run(*args: Any, **kwargs: Any) -> Any:
        if request.method not in MUTATING:
            return view(*args, **kwargs)
        key = request.headers.get(HEADER) if request.method == "POST" else None
        if key is None:
            return _run(lambda: view(*args, **kwargs), system)
        problem = key_problem(key)
        if problem and request.path.startswith(VIEWS_LATER):  # OAuth2 clients read its error shape
            from service.api.legacy import oauth_error

            return oauth_error("invalid_request", f"{HEADER}: {problem}")
        if problem:
            return error_response("INVALID_REQUEST", f"{HEADER}: {problem}", {HEADER: [problem]}, 400)
        call = system.keys_app.idempotent_call(_scope(), key, _request_material())
        answer = system.keys_app.recorded_answer(call, lambda: seal_keys.get(str(call.record_id)))
        if answer is not None:
            return replay(answer)
        try:
            seal_key = seal_keys.claim(str(call.record_id), system.keys_app.now(), timeout=VIEW_WRITE_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - nothing has been done: the client retries
            log.warning("no seal key for an idempotent request: %s", error)
            raise Unavailable("The store is busy or unreachable right now; retry shortly.") from None
        return _run(lambda: view(*args, **kwargs), system,
                    _Idempotent(call, seal_key, seal_keys, die_after_commit=key == kill_after))

    return run


def key_problem(key: str) -> str | None:
    """Why an Idempotency-Key is not acceptable (None if it is)."""
    if not key.strip():
        return f"Give 1 to {KEY_MAX} characters, e.g. a UUID."
    if len(key) > KEY_MAX:
        return f"At most {KEY_MAX} characters."
    if not all(" " <= char <= "~" for char in key):
        return "Use printable ASCII characters only, e.g. a UUID."
    return None


def replay(answer: Answer) -> Response:
    response = Response(answer.body, answer.status, headers=answer.headers)
    response.headers[REPLAYED] = "true"
    return response


@dataclass(frozen=True)
class _Idempotent:
    """A POST under an Idempotency-Key: who asks what, and the seal key its answer gets."""

    call: IdempotentCall
    seal_key: bytes = field(repr=False)
    seal_keys: SealKeys
    die_after_commit: bool = False  # tests only (KILL_SWITCH)

    def recorded(self, system: System) -> Answer | None:
        return system.keys_app.recorded_answer(self.call, lambda: self.seal_keys.get(str(self.call.record_id)))


def _run(view: Callable[[], Any], system: System, idempotent: _Idempotent | None = None) -> Response:
    """Run the view with its changes deferred, then commit them (with the answer, for a POST
    under an Idempotency-Key)."""
    keys_app = system.keys_app
    body = _ReplayableBody() if request.path.startswith(STREAM_READERS) else None
    # A commit that meets a concurrent change runs the view again, a bounded number of times:
    # as often as the use cases retry a save of their own.
    attempts = TOKEN_ATTEMPTS if request.path.startswith(VIEWS_LATER) else COMMAND_ATTEMPTS
    for attempt in range(attempts):
        if attempt:  # spread the runs that collided
            time.sleep(random.uniform(0, 0.002 * attempt))
        if body is not None:  # a view run again reads the same bytes again
            body.rewind()
        with keys_app.deferred() as batch:
            try:
                response = current_app.make_response(view())
            except KeyledgerError:
                # A duplicate that committed meanwhile makes this run look like a conflict
                # ("app id taken"): its answer is this request's answer.
                answer = idempotent.recorded(system) if idempotent is not None else None
                if answer is not None:
                    return replay(answer)
                raise
        if not batch or response.status_code >= 500:  # nothing changed, or the view says it failed
            return response
        try:
            if idempotent is None:
                keys_app.commit(batch)
            else:
                keys_app.commit_answered(batch, idempotent.call, _recorded(response), idempotent.seal_key,
                                         by=_actor_ref(), request=context.request_info().as_dict())
        except CommitRaced:  # a duplicate committed first (give its answer), or a concurrent change
            answer = idempotent.recorded(system) if idempotent is not None else None
            if answer is not None:
                return replay(answer)
            continue
        if idempotent is not None and idempotent.die_after_commit:
            os.kill(os.getpid(), signal.SIGKILL)  # tests only: the answer is lost after the commit
        _catch_up(system, views=not request.path.startswith(VIEWS_LATER))
        return response
    raise Conflict("What this request changes is being changed by someone else right now; retry.")


class _ReplayableBody:
    """The request stream of a view that reads it itself, kept as read so a second run of the
    view reads the same bytes."""

    def __init__(self) -> None:
        self.source = request.stream
        self.seen = bytearray()
        self.runs = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        if self.runs == 1:
            self.seen += chunk
        return chunk

    def rewind(self) -> None:
        if self.runs:
            self.source = io.BytesIO(bytes(self.seen))
        self.runs += 1
        request.__dict__["stream"] = self


def _catch_up(system: System, *, views: bool) -> None:
    """After the commit: this process's index at once (read-your-writes), the views if they can
    be. Never an error: the change is recorded, and the follower applies what is missed here."""
    try:
        if views:
            system.after_command()
        else:
            with system.keys_app.reading_own_writes():
                system.follower.catch_up()
    except Exception:  # noqa: BLE001
        log.warning("catching up after a commit failed; the follower retries", exc_info=True)


def _recorded(response: Response) -> Answer:
    headers = [(name, value) for name, value in response.headers.items() if name.lower() not in _NOT_RECORDED]
    return Answer(status=response.status_code, headers=headers, body=response.get_data())


def _actor_ref() -> str:
    actor = g.get("actor")
    return actor.ref if actor is not None else "system:anonymous"


def _scope() -> str:
    """Whose key space an Idempotency-Key is in: the authenticated caller, or (``/v2/token``)
    whoever holds the credentials sent. Only its keyed digest is stored."""
    actor = g.get("actor")
    if actor is not None:
        return actor.ref
    return "authorization:" + (request.headers.get("Authorization") or "")


def _request_material() -> bytes:
    """What was asked: the method, the path and query, ``If-Match``, and the body (JSON in
    canonical form, so a retry that serialises its body anew is the same request)."""
    data = request.get_data(cache=True)
    if request.path.startswith(STREAM_READERS):  # the view reads the stream itself: give it back
        request.__dict__["stream"] = io.BytesIO(data)
    try:
        body = json.dumps(load_json(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        canonical = b"json:" + body.encode("utf-8", "surrogatepass")
    except (BodyError, ValueError):
        canonical = b"raw:" + data
    head = "\0".join((request.method, request.path, request.query_string.decode("latin-1"),
                      request.headers.get("If-Match", "")))
    return head.encode("utf-8", "surrogatepass") + b"\0" + canonical
