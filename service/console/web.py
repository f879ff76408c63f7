"""The console's request frame: the blueprint, the cookie session, sign-in and sign-out, CSRF,
security headers and the error pages.

Every page answers HTML, never the API's JSON; no error is a 500 page unless something really
went wrong (and then one without details). A POST without the session's CSRF token is refused
with a page saying what to do.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from projections.console_sessions import EndedSessions
from projections.store import STORE_ERRORS
from service.api import context
from service.api.errors import STATUS_BY_CODE
from service.composition import System, first_line
from service.console.session import COOKIE, PRE_COOKIE, Session, Sessions
from service.domain.actors import Actor
from service.domain.errors import CredentialRefused, KeyledgerError

log = logging.getLogger("keyledger.console")

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

# No inline script or style, nothing from another origin, no framing, forms post here only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CSRF_FIELD = "csrf_token"
_SAFE_NEXT = re.compile(r"^/console(?:/[A-Za-z0-9._~\-/]*)?$")

TITLES = {400: "The request could not be used", 401: "Sign in again", 403: "Not allowed",
          404: "Not found", 405: "Not allowed here", 409: "Conflict", 412: "Changed meanwhile",
          413: "Too large", 503: "Unavailable for a moment"}


def configure(flask_app: Flask, system: System) -> None:
    # A key of its own for signing sessions, derived from the pepper every instance shares.
    key = system.authenticator.digester.digest("keyledger-console-session-key/v1")
    flask_app.extensions["keyledger_console"] = Sessions(key)
    flask_app.extensions["keyledger_console_ended"] = EndedSessions(system.views)


def sessions() -> Sessions:
    return current_app.extensions["keyledger_console"]


def ended_sessions() -> EndedSessions:
    return current_app.extensions["keyledger_console_ended"]


def system() -> System:
    return context.system()


def actor() -> Actor:
    return g.console_actor


# -- the frame of every request ----------------------------------------------------------------

@bp.before_request
def _open_session() -> Response | None:
    store = sessions()
    g.console_cookie = None  # which cookie to (re)write after the view: COOKIE or PRE_COOKIE
    g.console_drop = set()  # cookies to delete
    g.console_actor = None
    session = store.load(request.cookies.get(COOKIE))
    if session is not None and session.signed_in and ended_sessions().ended(store.session_id(session)):
        session = None  # signed out (this copy of the cookie, or another)
        g.console_drop.add(COOKIE)
    if session is not None and session.signed_in:
        try:
            g.console_actor = system().authenticator.actor_of_digest(session.digest)
        except KeyledgerError:  # the token was replaced or revoked: this session ends
            session = None
            g.console_drop.add(COOKIE)
        else:
            g.actor = g.console_actor  # the access log names who acted
            g.console_account = system().keys_app.get_account(g.console_actor.id)
    else:
        session = None
    if session is None:
        session = store.load(request.cookies.get(PRE_COOKIE))
        if session is None:
            session = store.new()
            g.console_cookie = PRE_COOKIE
    g.console_session = session
    if request.method == "POST" and not store.csrf_ok(g.console_session, request.form.get(CSRF_FIELD)):
        return page("console/csrf.html", status=403, title="This form cannot be accepted")
    return None


@bp.after_request
def _close_session(response: Response) -> Response:
    for name in g.get("console_drop", ()):
        response.delete_cookie(name, path="/console", secure=request.is_secure, httponly=True,
                               samesite="Strict")
    if name := g.get("console_cookie"):
        response.set_cookie(name, sessions().dump(g.console_session), httponly=True,
                            secure=request.is_secure, samesite="Strict", path="/console",
                            max_age=g.console_session.expires - int(datetime.now(UTC).timestamp()))
    for header, value in SECURITY_HEADERS.items():
        response.headers.setdefault(header, value)
    if request.endpoint == "console.static":
        response.headers["Cache-Control"] = "public, max-age=300"
    else:
        response.headers["Cache-Control"] = "no-store"
    return response


def signed_in_as(session: Session) -> None:
    """Open the signed-in session (a new nonce: the anonymous one's forms no longer post)."""
    g.console_session = session
    g.console_cookie = COOKIE
    g.console_drop.add(PRE_COOKIE)


def signed_out_anew(session: Session) -> None:
    g.console_session = session
    g.console_cookie = PRE_COOKIE
    g.console_drop.add(COOKIE)


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages for signed-in people only: others are sent to sign in, and brought back after."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if g.console_actor is None:
            target = request.path if request.method == "GET" else None
            return redirect(url_for("console.sign_in", next=target) if target else url_for("console.sign_in"))
        return view(*args, **kwargs)

    return guarded


# -- rendering -------------------------------------------------------------------------------

def page(template: str, *, status: int = 200, **values: Any) -> Response:
    response = Response(render_template(template, **values), status=status, mimetype="text/html")
    return response


def field_errors(error: KeyledgerError) -> dict[str, list[str]]:
    """The API's ``details`` as sentences per form field (``valid_scopes`` and the like are not
    fields: the form already lists the catalogue)."""
    found: dict[str, list[str]] = {}
    for name, problems in error.details.items():
        if name in ("valid_scopes", "unknown", "current_version"):
            continue
        if isinstance(problems, list) and all(isinstance(p, str) for p in problems):
            found[name] = problems
    if error.code == "SCOPE_UNKNOWN":
        found.setdefault("scopes", [error.message])
    return found


@bp.app_template_filter("when")
def _when(value: Any) -> str:
    """A time as people read it: ``2026-12-02 07:45 UTC``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@bp.app_template_filter("iso")
def _iso(value: Any) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@bp.context_processor
def _frame_values() -> dict:
    session = g.get("console_session")
    who = g.get("console_actor")
    return {"csrf_token": sessions().csrf_token(session) if session else "",
            "me": who, "account": g.get("console_account")}


# -- sign-in and sign-out -------------------------------------------------------------------------

SIGN_IN_REFUSALS = {
    "MALFORMED": "This is not a personal token: a personal token starts with pat_ and is 42 characters long. "
                 "Paste it whole.",
    "REVOKED": "This personal token was replaced by a newer one; sign in with the new token.",
    "EXPIRED": "This personal token has expired; ask an admin for a new one.",
}


@bp.get("/sign-in")
def sign_in() -> Response:
    if g.console_actor is not None:
        return redirect(url_for("console.home"))
    # A link from another site arrives without the (SameSite=Strict) session cookie: one click
    # on this page, a same-site navigation, brings it back.
    return page("console/sign_in.html", title="Sign in", next=_safe_next(request.args.get("next")),
                errors={}, from_elsewhere=request.headers.get("Sec-Fetch-Site") == "cross-site")


@bp.post("/sign-in")
def sign_in_post() -> Response:
    token = (request.form.get("token") or "").strip()
    target = _safe_next(request.form.get("next"))
    problem = None
    if not token:
        problem = "Paste your personal token (pat_…)."
    elif not token.startswith("pat_"):
        problem = ("Sign in with a personal token (it starts with pat_), not an API key or an "
                   "access token.")
    else:
        try:
            who = system().authenticator.actor(f"Key {token}")
        except CredentialRefused as error:
            problem = SIGN_IN_REFUSALS.get(error.code, error.message)
        except KeyledgerError:
            problem = "No account has this personal token. Check that you pasted the whole token."
        else:
            if who.kind != "account":
                problem = "Sign in with a personal token (pat_…)."
    if problem:
        return page("console/sign_in.html", status=400, title="Sign in", next=target,
                    errors={"token": [problem]})
    signed_in_as(sessions().new(digest=system().authenticator.digester.digest(token)))
    return redirect(target or url_for("console.home"), code=303)


@bp.post("/sign-out")
def sign_out() -> Response:
    store = sessions()
    if g.console_actor is not None:  # every copy of this session's cookie stops working, everywhere
        ended = g.console_session
        ended_sessions().end(store.session_id(ended), ended.expires, store.now())
    signed_out_anew(store.new())  # a new nonce: the old page's forms no longer post
    return redirect(url_for("console.sign_in"), code=303)


def _safe_next(target: str | None) -> str | None:
    """Only a path of the console itself (never another site)."""
    if target and _SAFE_NEXT.fullmatch(target) and "//" not in target and "/." not in target:
        return target
    return None


# -- errors as pages ---------------------------------------------------------------------------

@bp.errorhandler(KeyledgerError)
def _domain_error(error: KeyledgerError) -> Response:
    status = STATUS_BY_CODE.get(error.code, 400)
    if status == 401:
        return redirect(url_for("console.sign_in"))
    response = page("console/error.html", status=status, title=TITLES.get(status, "Not possible"),
                    message=error.message)
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


def _view_store_error(error: Exception) -> Response:
    log.error("view store error (request %s): %s", g.get("request_id"), first_line(error))
    response = page("console/error.html", status=503, title=TITLES[503],
                    message="The read store is unavailable right now; reload the page in a moment.")
    response.headers["Retry-After"] = "1"
    return response


for _store_error in STORE_ERRORS:  # SQLite's and PostgreSQL's: a page saying "in a moment", not a 500
    bp.errorhandler(_store_error)(_view_store_error)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    messages = {404: "There is no such page in the console.",
                405: "This page cannot be used that way; go back and use the buttons on the page.",
                413: "What was sent is too large."}
    return page("console/error.html", status=status, title=TITLES.get(status, "Not possible"),
                message=messages.get(status, error.description or error.name))


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error in the console (request %s)", g.get("request_id"))
    return page("console/error.html", status=500, title="Something went wrong",
                message="Something went wrong on our side; reload the page, and quote the request id "
                        f"{g.get('request_id')} if it persists.")


@bp.route("/<path:unknown>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(unknown: str) -> Response:
    """Any other path under /console, or a method the console's pages do not take: a page, not
    the API's JSON."""
    if request.method not in ("GET", "POST"):
        response = page("console/error.html", status=405, title=TITLES[405],
                        message="Console pages are read with GET and changed with their forms' POST.")
        response.headers["Allow"] = "GET, POST"
        return response
    return page("console/error.html", status=404, title=TITLES[404],
                message="There is no such page in the console.")
