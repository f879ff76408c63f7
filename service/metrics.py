"""Prometheus metrics (``GET /metrics``), correct across gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is first imported (``keyledger
serve`` sets it to a fresh folder of the run's own under /dev/shm or ``KEYLEDGER_METRICS_DIR``,
never in the data directory: see ``service.serving.prepare_metrics_dir``), every worker writes its
values to memory-mapped files there and a scrape, answered by any worker, adds them up. Without it (one
process, or tests) the values live in this process.

Hot path: a request costs one histogram observation (a dict look-up of the labelled child, then
one locked add), a verification one counter increment. Gauges (index size, lag, view age, the
webhook backlog: one indexed count) are computed when scraped, by the worker that answers the
scrape (multiprocess mode ``mostrecent``). Webhook attempts are counted by the process that
delivers them (``service.webhooks.delivery``: the one holding the scheduler lock).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from service.composition import System

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Forward-auth answers in well under a millisecond; management requests in milliseconds.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A webhook attempt is a POST to someone else's server, up to KEYLEDGER_WEBHOOKS_TIMEOUT (10 s).
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The outbox's word for what followed an attempt -> the metric's outcome label.
WEBHOOK_OUTCOMES = {"delivered": "delivered", "pending": "retry", "failed": "failed"}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The process's metrics; ``render(system)`` is the scrape."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values go to files whatever the registry; a scrape collects the files.
        self._own = CollectorRegistry(auto_describe=True)
        own = None if self.multiprocess else self._own
        self.requests = Histogram(
            "keyledger_http_request_duration_seconds", "HTTP requests by route and status, with latency",
            ("route", "method", "status"), buckets=BUCKETS, registry=own)
        self.verifications = Counter(
            "keyledger_verifications", "Verifications (forward-auth and /v2/verify) by verdict code",
            ("code",), registry=own)
        self.rate_limit_fallbacks = Counter(
            "keyledger_rate_limit_fallbacks", "Rate-limit checks answered from this instance's own counters "
            "because Redis (KEYLEDGER_REDIS_URL) could not be reached", registry=own)
        self.last_used_flushes = Counter(
            "keyledger_last_used_flushes", "Writes of last-used times to the view store", registry=own)
        self.store_errors = Counter(
            "keyledger_store_errors", "Errors reading or writing the event or view store", ("store",),
            registry=own)
        self.index_size = Gauge(
            "keyledger_verification_index_credentials", "Credentials in the in-memory verification index",
            registry=own, multiprocess_mode="mostrecent")
        self.lag_events = Gauge(
            "keyledger_follower_lag_events", "Events in the log not yet applied to the index or the views",
            registry=own, multiprocess_mode="mostrecent")
        self.lag_seconds = Gauge(
            "keyledger_follower_lag_seconds", "Seconds since the index and views were last caught up "
            "(0 when they are)", registry=own, multiprocess_mode="mostrecent")
        self.views_age = Gauge(
            "keyledger_views_last_update_age_seconds", "Seconds since the views were last found or "
            "brought up to date", registry=own, multiprocess_mode="mostrecent")
        self.index_stale = Gauge(
            "keyledger_verification_index_stale_seconds", "Seconds since this process last reached the "
            "event log (0 while following works; verdicts carry X-Keyledger-Index-Stale past 1 s)",
            registry=own, multiprocess_mode="max")
        self.subscription = Gauge(
            "keyledger_event_subscription_connected", "1 while the LISTEN/NOTIFY subscription to other "
            "instances' events is up (PostgreSQL; polling covers the gaps), else 0",
            registry=own, multiprocess_mode="min")
        self.audit_alarm = Gauge(
            "keyledger_audit_tamper_alarm", "1 while this process knows of a stored record the service did "
            "not write as it stands (altered, forged, removed, of the wrong type), else 0",
            registry=own, multiprocess_mode="max")
        self.audit_first_bad_seq = Gauge(
            "keyledger_audit_first_bad_seq", "The first bad seq of the raised tamper alarm (0 when none)",
            registry=own, multiprocess_mode="max")
        self.audit_alarms = Counter(
            "keyledger_audit_tamper_alarms", "Times the tamper alarm was raised with a new finding", registry=own)
        self.leak_reports = Counter(
            "keyledger_leak_reports", "Reported leaked strings by outcome: true_positive (a credential of "
            "this service) or false_positive (counted and dropped, never stored)", ("label",), registry=own)
        self.webhook_attempts = Counter(
            "keyledger_webhook_attempts", "Webhook delivery attempts by outcome: delivered (a 2xx answer), retry "
            "(failed; tried again after the backoff) or failed (failed with the schedule spent: the delivery "
            "has failed)", ("outcome",), registry=own)
        self.webhook_attempt_seconds = Histogram(
            "keyledger_webhook_attempt_duration_seconds", "Webhook delivery attempts: connect to the answer's "
            "first bytes read (or the error)", buckets=WEBHOOK_BUCKETS, registry=own)
        self.webhook_backlog = Gauge(
            "keyledger_webhook_backlog", "Webhook deliveries to enabled endpoints neither delivered nor failed yet "
            "(due now, or waiting for a retry)", registry=own, multiprocess_mode="mostrecent")
        for store in ("events", "views"):
            self.store_errors.labels(store)  # shown as 0 from the start
        for label in ("true_positive", "false_positive"):
            self.leak_reports.labels(label)
        self._webhook_outcomes = {outcome: self.webhook_attempts.labels(label)
                                  for outcome, label in WEBHOOK_OUTCOMES.items()}
        self._children: dict[tuple[str, str, int], object] = {}
        self._codes: dict[str, object] = {}

    # -- hot path ------------------------------------------------------------------------

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        child = self._children.get((route, method, status))
        if child is None:
            if method not in METHODS:  # labels stay few whatever a client sends
                method = "OTHER"
            child = self._children[(route, method, status)] = self.requests.labels(route, method, str(status))
        child.observe(seconds)  # type: ignore[attr-defined]

    def verified(self, code: str) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self.verifications.labels(code)
        child.inc()  # type: ignore[attr-defined]

    # -- hooks for the composition's parts ------------------------------------------------

    def flushed(self, count: int) -> None:
        self.last_used_flushes.inc()

    def store_error(self, store: str) -> None:
        self.store_errors.labels(store).inc()

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        """One webhook attempt recorded (by the process that delivers: the one holding the scheduler lock)."""
        self._webhook_outcomes[outcome].inc()
        self.webhook_attempt_seconds.observe(seconds)

    def watch(self, system: System) -> None:
        """Count the follower's and the last-used writer's store errors and flushes (and the
        rate-limit checks Redis could not answer, and the webhook attempts this process makes)."""
        counters = system.limiter.counters if system.limiter is not None else None
        if hasattr(counters, "on_fallback"):
            counters.on_fallback = self.rate_limit_fallbacks.inc
        system.follower.on_error = lambda: self.store_error("events")
        system.last_used.on_flush = self.flushed
        system.last_used.on_error = lambda: self.store_error("views")
        system.usage.on_error = lambda: self.store_error("views")
        system.alarm.on_raise.append(self.audit_alarms.inc)
        if system.webhooks is not None:
            system.webhooks.on_attempt = self.webhook_attempted
        if system.alarm.raised:  # raised while the system was built, before this hook
            self.audit_alarms.inc()

    # -- scrape ----------------------------------------------------------------------------

    def render(self, system: System) -> bytes:
        follower = system.follower
        now = time.time()
        self.index_size.set(len(system.index))
        unreachable = system.store_unreachable()
        try:
            if unreachable:
                raise ConnectionError("the event store is unreachable")
            lag = follower.lag()
        except Exception:
            self.store_error("events")
            lag = -1
        self.lag_events.set(lag)
        self.lag_seconds.set(0 if lag == 0 else max(0.0, now - follower.caught_up_at))
        self.views_age.set(max(0.0, now - follower.views_ok_at))
        self.index_stale.set(follower.staleness())
        self.subscription.set(1 if system.listener is not None and system.listener.connected else 0)
        self.audit_alarm.set(1 if system.alarm.raised else 0)
        self.audit_first_bad_seq.set(system.alarm.first_bad_seq or 0)
        if system.webhooks is not None and not unreachable:  # else the last value found stands
            try:
                self.webhook_backlog.set(system.webhooks.backlog())
            except Exception:
                self.store_error("views")
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self._own)
