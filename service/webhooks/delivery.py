"""The deliverer: the per-endpoint outbox sent to the endpoints, at least once.

Where it runs: in the scheduler process, the one per deployment that holds the scheduler lock
(``scheduler.main``) — not in every serving instance. Delivery does not need to be near a
request (the outbox is fed from the log by whichever process brings the views up to date), one
sender per deployment makes "once per endpoint in the normal case" the plain case rather than a
race, and a serving instance's workers keep their threads for requests. Should two deliverers run
at once (a lock lost and taken over, an operator's mistake), each claims rows with a lease
(``WebhookOutbox.claim``), so a row is sent by one of them; only a deliverer killed between a
receiver's answer and its record sends that row again after the lease — with the same
``webhook-id``, which is what receivers de-duplicate on.

One slow or dead endpoint never delays another's deliveries: each endpoint's due rows are sent
by one worker of a bounded pool, in order, and a dispatcher hands an endpoint to a worker only
when none is on it; an endpoint that hangs holds one worker for at most the timeout per row.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from projections.webhooks import WebhookOutbox
from service.webhooks import safety
from service.webhooks.domain import InvalidWebhookUrl
from service.webhooks.secrets import signature_header

log = logging.getLogger("keyledger.webhooks")

TIMEOUT = 10.0  # seconds for one delivery, connect to last byte read
RESPONSE_HEAD = 1024  # bytes of the response kept in the delivery log (and read at most)
# Seconds after each failed attempt (the Standard Webhooks / Svix schedule, lengthened): the
# 13th attempt comes about 3 days and 5 hours after the first; then the delivery has failed.
BACKOFF = (5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000, 36000, 36000, 36000)
GIVE_UP_AFTER = timedelta(days=3)  # no success for that long and a delivery failed: endpoint disabled
USER_AGENT = "Keyledger-Webhooks/1"


class Attempt:
    __slots__ = ("status_code", "error", "duration_ms", "response_head")

    def __init__(self, status_code: int | None, error: str | None, duration_ms: int,
                 response_head: str | None) -> None:
        self.status_code, self.error = status_code, error
        self.duration_ms, self.response_head = duration_ms, response_head

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to by then."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, address: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool, timeout: float = TIMEOUT,
         context: ssl.SSLContext | None = None) -> Attempt:
    """One POST, checked against the SSRF rules on the address actually connected to; redirects
    are not followed (a 3xx is a failed attempt); at most RESPONSE_HEAD bytes of the body are read."""
    started = time.monotonic()
    deadline = started + timeout

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    connection = None
    try:
        safety.check_url(url, allow_private=allow_private)
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        address = safety.resolve(parts.hostname or "", port, allow_private=allow_private)
        if https:
            connection = _PinnedHTTPSConnection(parts.hostname or "", address, port, timeout,
                                                context or ssl.create_default_context())
        else:
            connection = _PinnedHTTPConnection(parts.hostname or "", address, port, timeout)
        connection.connect()
        connection.sock.settimeout(max(0.05, deadline - time.monotonic()))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=body, headers=headers)
        connection.sock.settimeout(max(0.05, deadline - time.monotonic()))
        response = connection.getresponse()
        connection.sock.settimeout(max(0.05, deadline - time.monotonic()))
        head = response.read(RESPONSE_HEAD)
        error = None
        if 300 <= response.status < 400:
            error = f"redirect to {response.getheader('Location', '?')[:200]} not followed"
        elif not 200 <= response.status < 300:
            error = f"HTTP {response.status}"
        return Attempt(response.status, error, took(), head.decode("utf-8", "replace"))
    except safety.RefusedTarget as refused:
        return Attempt(None, str(refused), took(), None)
    except InvalidWebhookUrl as refused:  # the URL itself (the rules are stricter now than when registered)
        return Attempt(None, f"refused target: {refused.message}", took(), None)
    except (OSError, http.client.HTTPException, ValueError) as error:  # timeouts are OSErrors
        reason = "timed out" if isinstance(error, TimeoutError | socket.timeout) else (
            str(error) or type(error).__name__)
        return Attempt(None, reason[:300], took(), None)
    finally:
        if connection is not None:
            connection.close()


class Deliverer:
    """Sends the outbox. ``start()`` runs a dispatcher thread and a pool of ``workers``;
    ``deliver_due()`` does one pass in the caller's thread (tests, scripts)."""

    def __init__(self, keys_app: Any, outbox: WebhookOutbox, *, allow_private: bool = False,
                 timeout: float = TIMEOUT, backoff: tuple[float, ...] = BACKOFF,
                 give_up_after: timedelta = GIVE_UP_AFTER, workers: int = 32, batch: int = 20,
                 lease: float | None = None, poll_interval: float = 0.05,
                 clock: Callable[[], float] = time.time, context: ssl.SSLContext | None = None,
                 record_every: int = 10, record_within: float = 0.2) -> None:
        self.keys_app = keys_app
        self.outbox = outbox
        self.allow_private = allow_private
        self.timeout = timeout
        self.backoff = tuple(backoff)
        self.give_up_after = give_up_after
        self.workers = workers
        self.batch = batch
        # A claimed row is leased for two deliveries' time, renewed with each attempt recorded:
        # a deliverer killed mid-batch holds its rows that long at most.
        self.lease = lease if lease is not None else 2 * (timeout + 5)
        self.poll_interval = poll_interval
        self.clock = clock
        self.context = context
        self.record_every = record_every
        self.record_within = record_within
        self.owner = f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.sent = 0  # attempts made by this deliverer (a figure for benchmarks)

    # -- running ----------------------------------------------------------------------

    def start(self) -> Deliverer:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._dispatch, name="webhook-dispatcher", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                due = self.outbox.due_endpoints(self._now_us())
                failures = 0
            except Exception as error:  # noqa: BLE001 - a store outage: said once, retried
                if failures == 0:
                    log.warning("webhooks: the outbox cannot be read now (%s); retrying", error)
                failures += 1
                due = []
            for endpoint_id in due:
                with self._lock:
                    if endpoint_id in self._busy or len(self._busy) >= self.workers:
                        continue
                    self._busy.add(endpoint_id)
                assert self._pool is not None
                self._pool.submit(self._drain_then_free, endpoint_id)
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _drain_then_free(self, endpoint_id: str) -> None:
        try:
            self.drain(endpoint_id)
        except Exception:
            log.exception("webhooks: delivering to endpoint %s failed; retrying later", endpoint_id)
        finally:
            with self._lock:
                self._busy.discard(endpoint_id)

    def deliver_due(self) -> int:
        """Every endpoint's due deliveries, one endpoint after the other (no threads)."""
        return sum(self.drain(e) for e in self.outbox.due_endpoints(self._now_us()))

    # -- one endpoint ------------------------------------------------------------------------

    def drain(self, endpoint_id: str) -> int:
        """Send an endpoint's due deliveries (a batch at a time, oldest first) until none is due;
        returns how many were delivered. Successes are recorded in groups of up to ``record_every``
        (or after ``record_within`` seconds): a deliverer killed before recording a group sends it
        again after the lease — the repeats at-least-once allows, each with its ``webhook-id``.
        Stops at the first failure: the endpoint is not tried again before the next dispatch."""
        delivered = 0
        while not self._stopping.is_set():
            endpoint = self.outbox.endpoint(endpoint_id)
            if endpoint is None or endpoint["status"] != "enabled":
                return delivered
            claimed = self.outbox.claim(endpoint_id, owner=self.owner, now_us=self._now_us(),
                                        lease_us=int(self.lease * 1e6), limit=self.batch)
            if not claimed:
                return delivered
            secrets = self.keys_app.webhook_signing_secrets(endpoint_id, at=datetime.fromtimestamp(
                self.clock(), UTC))
            done: list[tuple] = []
            oldest = 0.0
            try:
                for delivery in claimed:
                    if self._stopping.is_set():
                        return delivered
                    at = self.clock()
                    attempt = self.send(endpoint["url"], delivery, secrets, at=at)
                    if not attempt.ok:
                        self._record(done)
                        done = []
                        self._failed(endpoint, delivery, attempt, at=at)
                        return delivered
                    delivered += 1
                    if not done:
                        oldest = time.monotonic()
                    at_us = int(at * 1e6)
                    done.append((delivery, at_us, attempt.status_code, None, attempt.duration_ms,
                                 attempt.response_head, "delivered", at_us))
                    if len(done) >= self.record_every or time.monotonic() - oldest >= self.record_within:
                        self._record(done)
                        done = []
            finally:
                self._record(done)
        return delivered

    def _record(self, done: list[tuple]) -> None:
        if done:
            self.outbox.record_attempts(done, owner=self.owner,
                                        lease_until_us=self._now_us() + int(self.lease * 1e6))

    def send(self, url: str, delivery: dict, secrets: list[str], *, at: float | None = None) -> Attempt:
        """One attempt (signed at ``at``, now by default); not recorded here."""
        body = delivery["payload"].encode("utf-8")
        now = self.clock() if at is None else at
        timestamp, signature = signature_header(secrets, delivery["event_id"], datetime.fromtimestamp(now, UTC),
                                                body)
        headers = {"content-type": "application/json", "user-agent": USER_AGENT,
                   "webhook-id": delivery["event_id"], "webhook-timestamp": timestamp,
                   "webhook-signature": signature}
        attempt = post(url, body, headers, allow_private=self.allow_private, timeout=self.timeout,
                       context=self.context)
        self.sent += 1
        return attempt

    def _failed(self, endpoint: dict, delivery: dict, attempt: Attempt, *, at: float) -> None:
        at_us = int(at * 1e6)
        number = delivery["attempts"] + 1
        over = number > len(self.backoff)  # the schedule (about three days) is spent
        next_us = at_us if over else at_us + int(self.backoff[number - 1] * 1e6)
        self.outbox.record_attempt(delivery, owner=self.owner, at_us=at_us, status_code=attempt.status_code,
                                   error=attempt.error, duration_ms=attempt.duration_ms,
                                   response_head=attempt.response_head, outcome="failed" if over else "pending",
                                   next_us=next_us)
        self.outbox.release(endpoint["id"], owner=self.owner)  # the rest of the batch: due again
        log.info("webhook delivery %s to endpoint %s: attempt %d failed (%s)%s", delivery["id"], endpoint["id"],
                 number, attempt.error, "; given up" if over else "")
        if over:
            since = self.outbox.failing_since(endpoint["id"])
            if since is not None and (at_us - since) / 1e6 >= self.give_up_after.total_seconds():
                reason = (f"every delivery failed for {self.give_up_after.total_seconds() / 86400:g} days "
                          f"(last: {attempt.error})")
                if self.keys_app.disable_failing_webhook(endpoint["id"], reason=reason) is not None:
                    log.warning("webhook endpoint %s disabled: %s", endpoint["id"], reason)

    def _now_us(self) -> int:
        return int(self.clock() * 1e6)


def payload_of(delivery: dict) -> dict:
    return json.loads(delivery["payload"])
