"""The HTTP surface: ``create_app()`` is the Flask app factory (and gunicorn's entry point)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Flask, Response, g, request

from service import logs
from service.api import context
from service.api.errors import KeyledgerApi, error_response, register_error_handlers
from service.api.gateway import SYNC_WAIT
from service.api.jsonbody import BodyError, load_json
from service.composition import System, build_system, store_fault
from service.domain.errors import KeyledgerError
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("keyledger.api")

# Paths that take no credential of their own.
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/v2/verify",
                   "/v2/auth/check", "/v2/token", "/v2/scopes", "/console",
                   "/v2/leaks/github",  # GitHub signs its reports instead (service.api.leaks)
                   "/v2/introspect")  # RFC 7662: authenticates its callers itself (service.api.introspection)
# Paths answered without the store (from the in-memory index or constants).
STORE_FREE_PREFIXES = ("/v2/verify", "/v2/auth/check", "/v2/scopes", "/v2/introspect")
# Paths whose views read their own bodies (the hot path parses JSON once; OAuth2 takes forms).
SELF_PARSING = ("/v2/verify", "/v2/token", "/v2/leaks", "/v2/leaks/github",  # leaks: JSON arrays
                "/v2/introspect")  # a form (RFC 7662)
# The web console (service.console): HTML forms, its own cookie sign-in, CSRF checks and error
# pages; the JSON rules below (bodies, repeated query parameters) are the API's, not its.
CONSOLE = "/console"


def create_app(settings: Settings | None = None, *, system: System | None = None,
               clock: Callable[[], datetime] | None = None) -> Flask:
    """Build the Flask app. With no arguments, settings come from the environment."""
    if system is None:
        logs.configure_once()  # plain ``gunicorn 'service.api:create_app()'`` logs as ``keyledger serve``
        settings = settings or Settings.from_env()
        system = build_system(settings, **({"clock": clock} if clock else {}))
        _sign_at_start(system)
        # The index's objects live as long as the process: keep them out of the collector's scans.
        gc.collect()
        gc.freeze()
    flask_app = Flask("keyledger")
    flask_app.config.update(
        API_TITLE="Keyledger",
        API_VERSION="2",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=False,
    )
    flask_app.json.sort_keys = False
    flask_app.url_map.merge_slashes = False  # "//" would be an HTML redirect, not a JSON 404
    flask_app.extensions["keyledger"] = system
    from service.api.gateway import Gateway
    from service.api.legacy import LegacyNotice
    from service.api.verify import Verdicts

    metrics = Metrics()
    metrics.watch(system)
    verdicts = Verdicts(system.verifier, LegacyNotice.of(system.settings), metrics.verified)
    flask_app.extensions["keyledger_metrics"] = metrics
    flask_app.extensions["keyledger_verdicts"] = verdicts
    from service.api.introspection import Introspection, IssuedAt

    introspection = Introspection(system.verifier, system.authenticator, IssuedAt(system.directory),
                                  system.settings.access_token_ttl)
    flask_app.extensions["keyledger_introspection"] = introspection
    from service.api.client_facts import TrustedProxies

    proxies = flask_app.extensions["keyledger_trusted_proxies"] = TrustedProxies(system.settings.trusted_proxies)
    # Request ids, the access log and metrics for every request; forward-auth without Flask.
    flask_app.wsgi_app = Gateway(flask_app.wsgi_app, system, verdicts, metrics,  # type: ignore[method-assign]
                                 proxies, introspection)
    if system.settings.proxy_hops:  # events record the client's address, not the proxy's
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = system.settings.proxy_hops
        flask_app.wsgi_app = ProxyFix(flask_app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    from service.api.openapi import DESCRIPTION

    api = KeyledgerApi(flask_app, spec_kwargs={
        "info": {"description": DESCRIPTION},
    })
    document = _DOCUMENT.get("spec")
    api.documents = document is None  # else the views are not documented again (see the end)
    flask_app.extensions["keyledger_api"] = api
    api.spec.components.security_scheme(
        "personalToken", {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "Authorization: Key pat_…"})
    api.spec.components.security_scheme(
        "clientCredentials", {"type": "http", "scheme": "basic",
                              "description": "Legacy OAuth2: HTTP Basic client_id:client_secret"})
    register_error_handlers(flask_app)
    _register_request_hooks(flask_app, system)
    _serve_docs_assets(flask_app)

    from service.api import (
        accounts,
        apps,
        audit,
        campaign,
        introspection,
        keys,
        leaks,
        legacy,
        operations,
        usage,
        verify,
        webhooks,
    )

    verify.register_schemas(api)
    for blueprint in (operations.blp, accounts.blp, apps.blp, keys.blp, usage.blp, verify.blp, legacy.blp,
                      audit.blp, campaign.blp, leaks.blp, webhooks.blp):
        api.register_blueprint(blueprint)
    introspection.register(api)
    api.register_blueprint(introspection.blp)
    _serve_migration_guide(flask_app)
    from service.api import idempotency

    idempotency.install(flask_app, system)  # every change committed last; Idempotency-Key on POST
    from service import console  # the web console: the same process, the same use cases

    console.register(flask_app, system)
    # The OpenAPI document is a function of the code alone: documented by a process's first app, and
    # served by every later one (a test suite builds an app per test; documenting the views took a
    # quarter of an API test's time).
    if document is None:
        _DOCUMENT["spec"] = api.spec
    else:
        api.spec = document
    return flask_app


_DOCUMENT: dict[str, Any] = {}  # "spec": the APISpec a process's first app documented


def _serve_migration_guide(flask_app: Flask) -> None:
    """The migration guide the ``Link: <…>; rel="deprecation"`` header of legacy answers points to."""
    from importlib.resources import files

    guide = files("service.api").joinpath("migration.md").read_bytes()

    @flask_app.get("/docs/migration")
    def migration_guide() -> Response:
        response = Response(guide, 200, mimetype="text/markdown")
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response


def _sign_at_start(system: System) -> None:
    """Sign the audit chain's head at start (a no-op when nothing is new since the last checkpoint)."""
    try:
        system.sign_checkpoint()
    except Exception as error:  # serving matters more; the next start or the scheduler signs
        if (reason := store_fault(error)) is None:
            log.exception("could not sign an audit checkpoint at start")
        else:
            log.warning("could not sign an audit checkpoint at start (%s); the scheduler signs later", reason)


def _serve_docs_assets(flask_app: Flask) -> None:
    """Swagger UI's files from the swagger-ui-bundle package: /docs needs no CDN."""
    from flask import send_from_directory
    from swagger_ui_bundle import swagger_ui_path

    @flask_app.get("/docs/assets/<path:filename>")
    def docs_assets(filename: str) -> Response:
        response = send_from_directory(swagger_ui_path, filename, max_age=3600)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response


def _register_request_hooks(flask_app: Flask, system: System) -> None:
    @flask_app.before_request
    def _begin() -> Response | None:
        context.assign_request_id()
        g.actor = None
        try:  # another process wrote? catch up before answering (verdicts wait milliseconds at most)
            system.follower.sync(SYNC_WAIT if request.path.startswith(STORE_FREE_PREFIXES + ("/v2/token",)) else 1.0)
        except Exception:  # verification needs no store: answer from the index as it is
            log.exception("catching up with the event log failed; answering from the current index")
            flask_app.extensions["keyledger_metrics"].store_error("events")
        if request.path.startswith("/v2/") and not request.path.startswith(PUBLIC_PREFIXES):
            try:
                g.actor = system.authenticator.actor(request.headers.get("Authorization"))
            except KeyledgerError as error:
                return error_response(error.code, error.message, error.details,
                                      headers={"WWW-Authenticate": 'Key realm="keyledger"'})
        if (system.store_unreachable() and request.path.startswith("/v2/")
                and not request.path.startswith(STORE_FREE_PREFIXES + ("/v2/token",))):
            # The database is known to be down: say so now rather than hold the request through
            # the driver's retries. Verification still answers, from memory; /v2/token answers its
            # refusals without the store and says temporarily_unavailable in OAuth2's words itself.
            flask_app.extensions["keyledger_metrics"].store_error("events")
            return error_response("UNAVAILABLE", "The event store is unreachable right now; retry shortly.",
                                  None, 503, {"Retry-After": "1"})
        if request.path == CONSOLE or request.path.startswith(CONSOLE + "/"):
            return None
        if request.environ.get("QUERY_STRING") and request.path != "/v2/auth/check":
            repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
            if repeated:  # which one was meant? say so rather than silently take the first
                return error_response("INVALID_REQUEST", f"Give each query parameter once: {', '.join(repeated)}.",
                                      {name: ["Given more than once."] for name in repeated}, 400)
        if (request.method in ("POST", "PUT", "PATCH") and request.content_length != 0
                and request.path not in SELF_PARSING):
            problem = _body_problem()
            if problem:
                return error_response("INVALID_REQUEST", problem, {"body": [problem]}, 400)
        return None

    @flask_app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = getattr(g, "request_id", "")
        response.headers.setdefault("Cache-Control", "no-store")
        # For the gateway's access line and metrics (service.api.gateway): the route, never the path.
        actor = getattr(g, "actor", None)
        request.environ["keyledger.actor"] = actor.ref if actor else None
        if request.url_rule is not None:
            request.environ["keyledger.route"] = request.url_rule.rule
        return response


def _body_problem() -> str | None:
    """Why a body that should be a JSON object is not one (None if it is)."""
    data = request.get_data(cache=True)
    if not data and request.content_length is None:
        return None
    if request.mimetype != "application/json":
        return "Send the body as JSON with 'Content-Type: application/json'."
    try:
        parsed = load_json(data)
    except BodyError as error:
        return f"The body is not acceptable: {error}"
    if not isinstance(parsed, dict):
        return "The body must be a JSON object."
    return None
