"""Operations: liveness, readiness and the scope catalogue."""

from __future__ import annotations

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from service.api import context
from service.api.gateway import STALE_AFTER
from service.api.schemas import HealthSchema, ReadinessSchema, ScopesSchema
from service.domain.errors import Unavailable
from service.domain.scopes import PRESETS
from service.metrics import CONTENT_TYPE

blp = Blueprint("operations", __name__, description="Operations and the scope catalogue")

# Readiness tolerates a small lag: other processes' events arrive within one poll.
READY_LAG = 1000


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    def get(self):
        """The process is up."""
        return {"status": "ok"}


@blp.route("/readyz")
class Readiness(MethodView):
    @blp.response(200, ReadinessSchema)
    @blp.alt_response(503, schema=ReadinessSchema, description="Store unreachable or projections behind")
    def get(self):
        """The store is reachable and the projections have caught up."""
        system = context.system()
        try:
            if system.store_unreachable():  # known down: don't wait on the driver to find out again
                raise Unavailable("the event store is unreachable")
            lag = system.follower.lag()
        except Unavailable:
            return {"status": "unavailable", "store": "unreachable", "projections_lag": -1}, 503, {"Retry-After": "1"}
        audit = system.alarm.detail()  # tampering is an alarm, not unreadiness: verification must go on
        if system.follower.staleness() > STALE_AFTER:  # following stalled: other instances' changes unseen
            return {"status": "behind", "store": "ok", "projections_lag": lag, "audit": audit}, 503, {"Retry-After": "1"}
        if lag > READY_LAG:
            return {"status": "catching_up", "store": "ok", "projections_lag": lag, "audit": audit}, 503, \
                {"Retry-After": "1"}
        return {"status": "ready", "store": "ok", "projections_lag": lag, "audit": audit}


@blp.route("/metrics")
class MetricsText(MethodView):
    @blp.doc(responses={"200": {
        "description": "Prometheus text format: requests by route and status with latency histograms, "
                       "verifications by verdict, index size, follower lag, view age, last-used "
                       "flushes, store errors (all workers together)",
        "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def get(self):
        """Prometheus metrics (text exposition format)."""
        text = current_app.extensions["keyledger_metrics"].render(context.system())
        return Response(text, 200, {"Content-Type": CONTENT_TYPE})


@blp.route("/v2/scopes")
class Scopes(MethodView):
    @blp.response(200, ScopesSchema)
    def get(self):
        """The scope catalogue and the presets. `All` covers every scope, including later ones."""
        catalogue = context.system().keys_app.scope_catalogue()
        return {"scopes": [{"name": n, "description": d} for n, d in catalogue.items()],
                "presets": PRESETS}
