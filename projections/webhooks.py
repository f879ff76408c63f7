"""Webhooks: the endpoints' view and the per-endpoint outbox, both fed by the log.

``WebhooksView`` follows the notification log like every view (its rows and its tracking
position commit together): endpoint events maintain ``webhook_endpoints``; every event with a
webhook type (``service.webhooks.domain.SOURCES``) puts one row per matching endpoint into the
outbox, ``webhook_deliveries``, with its payload ``{"type", "timestamp", "data"}`` where ``data``
is the audit event's public form (the audit view's row of the same position: the audit trail is
applied before this view in the same transaction). So an event is delivered because it is in the
log: a crash between a command's commit and its delivery loses nothing, and an event is queued
once per endpoint (the tracking position, and ``ON CONFLICT DO NOTHING`` on the delivery's id).

The outbox and the delivery log are not dropped by a rebuild (they record what was sent, which the
log does not); a rebuild replays into them without queueing anything twice.

``WebhookOutbox`` is the deliverer's and the API's side: claims with a lease (several delivering
processes never send the same row at once), attempts, "send again", "replay since".
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from projections.audit import AuditLog, AuditTrail, audit_record, event_type, microseconds
from projections.projection import Projection, topic_class
from projections.store import ViewStore, copy_rows, upsert
from projections.timefmt import rfc3339
from service.webhooks.domain import DEPLOYMENT_TYPES, SOURCES, WebhookEndpoint

_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode
_ENDPOINT = upsert("webhook_endpoints", (
    "id", "url", "event_types", "app_ids", "description", "status", "registrant_id", "registrant_role",
    "created_at", "disabled_reason"), ("id",))
_ATTEMPT = upsert("webhook_attempts", ("delivery_id", "attempt", "endpoint_id", "at_us", "status_code", "error",
                                       "duration_ms", "response_head"), ("delivery_id", "attempt"))
_QUEUE = upsert("webhook_deliveries", (
    "id", "endpoint_id", "event_id", "seq", "type", "payload", "created_us", "status", "attempts", "next_us",
    "lease_until_us", "lease_owner"), ("id",), update=())


def delivery_id(endpoint_id: str, event_id: str) -> str:
    return str(uuid5(NAMESPACE_URL, f"keyledger:webhook-delivery:{endpoint_id}:{event_id}"))


class WebhooksView(Projection):
    name = "webhooks"
    tables = ("webhook_endpoints",)  # the outbox and the attempts survive a rebuild (see above)
    ddl = (
        """CREATE TABLE IF NOT EXISTS webhook_endpoints (
            id TEXT PRIMARY KEY, url TEXT NOT NULL, event_types TEXT NOT NULL, app_ids TEXT NOT NULL,
            description TEXT NOT NULL, status TEXT NOT NULL, registrant_id TEXT NOT NULL,
            registrant_role TEXT NOT NULL, created_at TEXT NOT NULL, disabled_reason TEXT)""",
        """CREATE TABLE IF NOT EXISTS webhook_deliveries (
            id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, event_id TEXT NOT NULL, seq INTEGER NOT NULL,
            type TEXT NOT NULL, payload TEXT NOT NULL, created_us INTEGER NOT NULL, status TEXT NOT NULL,
            attempts INTEGER NOT NULL, next_us INTEGER NOT NULL, lease_until_us INTEGER NOT NULL,
            lease_owner TEXT, first_attempt_us INTEGER, last_attempt_us INTEGER, last_status INTEGER,
            last_error TEXT, last_duration_ms INTEGER, last_response TEXT, delivered_us INTEGER)""",
        """CREATE TABLE IF NOT EXISTS webhook_attempts (
            delivery_id TEXT NOT NULL, attempt INTEGER NOT NULL, endpoint_id TEXT NOT NULL, at_us INTEGER NOT NULL,
            status_code INTEGER, error TEXT, duration_ms INTEGER NOT NULL, response_head TEXT,
            PRIMARY KEY (delivery_id, attempt))""",
    )
    indexes = (
        "CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries (status, next_us)",
        "CREATE INDEX IF NOT EXISTS webhook_by_endpoint ON webhook_deliveries (endpoint_id, seq)",
    )

    def __init__(self, audit: AuditTrail | None = None) -> None:
        self.audit = audit  # applied before this view in the same transaction: its records are reused
        self._prefetched: tuple[Any, Any] | None = None

    def adopt(self, db: Any, schema: str) -> None:
        """The endpoints as built aside; the deliveries it queued added to the outbox, which a rebuild
        keeps (one already there, sent or not, stays as it is)."""
        super().adopt(db, schema)
        if not copy_rows(db, schema, "webhook_deliveries", conflict="(id) DO NOTHING"):
            raise sqlite3.OperationalError(f"no such table: {schema}.webhook_deliveries")  # as before: not skipped

    def prefetch(self, db: Any) -> None:
        """Ask for the enabled endpoints now: in a pipelined write the question travels with the
        positions' read, so a command pays no round trip for it."""
        self._prefetched = (db, db.execute(_ENABLED))

    def process_page(self, db: Any, page: Any) -> None:
        """A page of a bulk pass. With no endpoint enabled when it begins and none registered or
        changed in it (the common case), no event of the page queues a delivery: nothing to do,
        and nothing decoded."""
        judged = getattr(page, "judged", None)
        if judged is not None and not db.execute(_ENABLED).fetchall() and not any(
                _is_endpoint_event(topic_class(topic)) and any(judged[i][5] is None for i in indexes)
                for topic, indexes in page.by_topic().items()):
            self._prefetched = None
            return
        super().process_page(db, page)

    def process_batch(self, db: Any, batch: Sequence[tuple[int, Any]]) -> None:
        prefetched, self._prefetched = self._prefetched, None
        endpoints: dict[str, dict] | None = None
        if prefetched is not None and prefetched[0] is db:
            endpoints = _endpoints_of(prefetched[1].fetchall())
        for position, event in batch:
            if isinstance(event, WebhookEndpoint.Event):
                self._endpoint_event(db, event)
                endpoints = None
                continue
            wtype = SOURCES.get(event_type(event))
            if wtype is None:
                continue
            if endpoints is None:
                endpoints = _endpoints_of(db.execute(_ENABLED).fetchall())
            if endpoints:
                self._queue(db, position, event, wtype, endpoints)

    def _endpoint_event(self, db: Any, event: Any) -> None:
        endpoint_id = str(event.originator_id)
        if isinstance(event, WebhookEndpoint.Registered):
            db.execute(_ENDPOINT, (endpoint_id, event.url, _json(event.event_types), _json(event.app_ids),
                                   event.description, "enabled", event.registrant_id, event.registrant_role,
                                   rfc3339(event.timestamp), None))
        elif isinstance(event, WebhookEndpoint.Changed):
            db.execute("UPDATE webhook_endpoints SET url = ?, event_types = ?, app_ids = ?, description = ?, "
                       "status = ?, disabled_reason = NULL WHERE id = ?",
                       (event.url, _json(event.event_types), _json(event.app_ids), event.description,
                        event.status, endpoint_id))
        elif isinstance(event, WebhookEndpoint.Disabled):
            db.execute("UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = ? WHERE id = ?",
                       (event.reason, endpoint_id))
        elif isinstance(event, WebhookEndpoint.Deleted):
            db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            db.execute("UPDATE webhook_deliveries SET status = 'cancelled' WHERE endpoint_id = ? "
                       "AND status = 'pending'", (endpoint_id,))

    def _queue(self, db: Any, position: int, event: Any, wtype: str, endpoints: dict[str, dict]) -> None:
        found = self.audit.recent.get(position) if self.audit is not None else None
        if found is not None:  # the audit trail's record of this very event, written just before
            record, owner_id = found
            public = {k: record[k] for k in _PUBLIC}
        else:
            row = db.execute("SELECT * FROM audit_events WHERE seq = ?", (position,)).fetchone()
            if row is not None:
                public = AuditLog._event(row)
                owner_id = row["owner_id"]
            else:  # the audit view is behind (rebuilt alone): the same form, without the chain's hashes
                public = audit_record(db, position, event)
                owner_id = public.pop("owner_id")
                public.pop("aggregate_id")
        app_id = public["app_id"]
        payload = _json({"type": wtype, "timestamp": public["occurred_at"], "data": public})
        at = microseconds(event.timestamp)
        rows = []
        for endpoint_id, endpoint in endpoints.items():
            if wtype not in endpoint["event_types"]:
                continue
            if wtype in DEPLOYMENT_TYPES or app_id is None:
                wanted = endpoint["registrant_role"] == "admin" and not endpoint["app_ids"]
            elif endpoint["app_ids"]:
                wanted = app_id in endpoint["app_ids"]
            else:
                wanted = endpoint["registrant_role"] == "admin" or owner_id == endpoint["registrant_id"]
            if wanted:
                rows.append((delivery_id(endpoint_id, public["id"]), endpoint_id, public["id"], position, wtype,
                             payload, at, "pending", 0, at, 0, None))
        if rows:
            db.executemany(_QUEUE, rows)


_ENABLED = ("SELECT id, event_types, app_ids, registrant_id, registrant_role FROM webhook_endpoints "
            "WHERE status = 'enabled'")
_PUBLIC = ("seq", "id", "type", "occurred_at", "actor", "app_id", "key_id", "data", "request", "hash", "prev_hash")


def _is_endpoint_event(cls: type | None) -> bool:
    return isinstance(cls, type) and issubclass(cls, WebhookEndpoint.Event)


def _endpoints_of(rows: Sequence[Any]) -> dict[str, dict]:
    return {r[0]: {"event_types": set(json.loads(r[1])), "app_ids": set(json.loads(r[2])),
                   "registrant_id": r[3], "registrant_role": r[4]} for r in rows}


class WebhookOutbox:
    """The endpoints' view and the outbox, for the deliverer, the API and the console."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store
        # Called once an attempt is recorded, with its outcome (delivered, pending: tried again
        # later, failed: given up) and how long it took in seconds (service.metrics counts them).
        self.on_attempt: Callable[[str, float], None] | None = None

    # -- endpoints ----------------------------------------------------------------------

    def endpoints(self, *, registrant_id: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM webhook_endpoints", []
        if registrant_id is not None:
            sql += " WHERE registrant_id = ?"
            params.append(registrant_id)
        with self.store.read() as db:
            rows = db.execute(sql + " ORDER BY created_at, id", params).fetchall()
        return [self._endpoint(r) for r in rows]

    def endpoint(self, endpoint_id: str) -> dict | None:
        with self.store.read() as db:
            row = db.execute("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return None if row is None else self._endpoint(row)

    @staticmethod
    def _endpoint(r: Any) -> dict:
        return {"id": r["id"], "url": r["url"], "event_types": json.loads(r["event_types"]),
                "app_ids": json.loads(r["app_ids"]), "description": r["description"], "status": r["status"],
                "registrant_id": r["registrant_id"], "created_at": r["created_at"],
                "disabled_reason": r["disabled_reason"]}

    # -- the deliverer's side ---------------------------------------------------------------

    def due_endpoints(self, now_us: int) -> list[str]:
        """Endpoints (enabled) with a delivery due and not leased."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT DISTINCT d.endpoint_id FROM webhook_deliveries d JOIN webhook_endpoints e "
                "ON e.id = d.endpoint_id WHERE d.status = 'pending' AND d.next_us <= ? AND d.lease_until_us < ? "
                "AND e.status = 'enabled'", (now_us, now_us)).fetchall()
        return [r[0] for r in rows]

    def claim(self, endpoint_id: str, *, owner: str, now_us: int, lease_us: int, limit: int) -> list[dict]:
        """Lease up to ``limit`` due deliveries of an endpoint, oldest first. The lease's condition
        is checked again on each row as it is updated, so of several processes claiming at once
        each row goes to one (PostgreSQL re-reads a row changed under it)."""
        until = now_us + lease_us
        with self.store.write() as db:
            rows = db.execute(
                "UPDATE webhook_deliveries SET lease_until_us = ?, lease_owner = ? WHERE id IN ("
                "SELECT id FROM webhook_deliveries WHERE endpoint_id = ? AND status = 'pending' AND next_us <= ? "
                "AND lease_until_us < ? ORDER BY seq LIMIT ?) AND status = 'pending' AND lease_until_us < ? "
                "RETURNING id, event_id, seq, type, payload, attempts, created_us, first_attempt_us",
                (until, owner, endpoint_id, now_us, now_us, limit, now_us)).fetchall()
        claimed = [dict(zip(("id", "event_id", "seq", "type", "payload", "attempts", "created_us",
                             "first_attempt_us"), r, strict=True), endpoint_id=endpoint_id) for r in rows]
        return sorted(claimed, key=lambda d: d["seq"])

    def record_attempt(self, delivery: dict, *, owner: str, at_us: int, status_code: int | None,
                       error: str | None, duration_ms: int, response_head: str | None,
                       outcome: str, next_us: int, lease_until_us: int | None = None) -> None:
        """One attempt, and what follows: ``delivered``, ``pending`` again at ``next_us``, or ``failed``;
        with ``lease_until_us``, the deliverer's other leased rows of the endpoint are kept till then."""
        self.record_attempts([(delivery, at_us, status_code, error, duration_ms, response_head, outcome, next_us)],
                             owner=owner, lease_until_us=lease_until_us)

    def record_attempts(self, attempts: list[tuple], *, owner: str, lease_until_us: int | None = None) -> None:
        """Several attempts of one endpoint in one transaction: ``(delivery, at_us, status_code, error,
        duration_ms, response_head, outcome, next_us)`` each (the deliverer records successes in small
        groups: one transaction, one turn of the views' writer lock, for up to ten deliveries)."""
        if not attempts:
            return
        logged, updates = [], []
        for delivery, at_us, status_code, error, duration_ms, response_head, outcome, next_us in attempts:
            number = delivery["attempts"] + 1
            logged.append((delivery["id"], number, delivery["endpoint_id"], at_us, status_code, error, duration_ms,
                           response_head))
            updates.append((number, outcome, next_us, at_us, at_us, status_code, error, duration_ms, response_head,
                            outcome, at_us, delivery["id"], owner))
        with self.store.write() as db:
            db.executemany(_ATTEMPT, logged)
            db.executemany(
                "UPDATE webhook_deliveries SET attempts = ?, status = ?, next_us = ?, lease_until_us = 0, "
                "lease_owner = NULL, first_attempt_us = COALESCE(first_attempt_us, ?), last_attempt_us = ?, "
                "last_status = ?, last_error = ?, last_duration_ms = ?, last_response = ?, "
                "delivered_us = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_us END "
                "WHERE id = ? AND lease_owner = ?", updates)
            if lease_until_us is not None:
                db.execute("UPDATE webhook_deliveries SET lease_until_us = ? WHERE endpoint_id = ? "
                           "AND lease_owner = ? AND status = 'pending'",
                           (lease_until_us, attempts[0][0]["endpoint_id"], owner))
        if self.on_attempt is not None:
            for _delivery, _at, _status, _error, duration_ms, _head, outcome, _next in attempts:
                self.on_attempt(outcome, duration_ms / 1000)

    def release(self, endpoint_id: str, *, owner: str) -> None:
        """Give back the rows this deliverer leased and did not send (after a failure)."""
        with self.store.write() as db:
            db.execute("UPDATE webhook_deliveries SET lease_until_us = 0, lease_owner = NULL "
                       "WHERE endpoint_id = ? AND lease_owner = ?", (endpoint_id, owner))

    def failing_since(self, endpoint_id: str) -> int | None:
        """When the endpoint's oldest failed delivery since its last success was first tried (µs)."""
        with self.store.read() as db:
            last_ok = db.execute("SELECT MAX(delivered_us) FROM webhook_deliveries WHERE endpoint_id = ?",
                                 (endpoint_id,)).fetchone()[0] or 0
            row = db.execute("SELECT MIN(first_attempt_us) FROM webhook_deliveries WHERE endpoint_id = ? "
                             "AND status IN ('pending', 'failed') AND attempts > 0 AND first_attempt_us > ?",
                             (endpoint_id, last_ok)).fetchone()
        return row[0] if row else None

    # -- the delivery log, "send again", "replay since" ----------------------------------------

    def deliveries(self, endpoint_id: str, *, after_seq: int | None = None, limit: int = 50) -> list[dict]:
        """Newest first; ``after_seq``: those before that position (the next page)."""
        sql = "SELECT * FROM webhook_deliveries WHERE endpoint_id = ?"
        params: list = [endpoint_id]
        if after_seq is not None:
            sql += " AND seq < ?"
            params.append(after_seq)
        with self.store.read() as db:
            rows = db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
            ids = [r["id"] for r in rows]
            attempts: dict[str, list] = {i: [] for i in ids}
            if ids:
                for a in db.execute(f"SELECT * FROM webhook_attempts WHERE delivery_id IN "
                                    f"({', '.join('?' * len(ids))}) ORDER BY attempt", ids).fetchall():
                    attempts[a["delivery_id"]].append(self._attempt(a))
        return [self._delivery(r, attempts[r["id"]]) for r in rows]

    def delivery(self, endpoint_id: str, delivery_id_: str) -> dict | None:
        with self.store.read() as db:
            row = db.execute("SELECT * FROM webhook_deliveries WHERE endpoint_id = ? AND id = ?",
                             (endpoint_id, delivery_id_)).fetchone()
            if row is None:
                return None
            attempts = [self._attempt(a) for a in db.execute(
                "SELECT * FROM webhook_attempts WHERE delivery_id = ? ORDER BY attempt", (row["id"],)).fetchall()]
        return self._delivery(row, attempts)

    def send_again(self, endpoint_id: str, delivery_id_: str, *, now_us: int) -> bool:
        with self.store.write() as db:
            cursor = db.execute("UPDATE webhook_deliveries SET status = 'pending', next_us = ? "
                                "WHERE endpoint_id = ? AND id = ?", (now_us, endpoint_id, delivery_id_))
            return cursor.rowcount > 0

    def replay(self, endpoint_id: str, *, since_us: int, now_us: int) -> int:
        """Queue again every delivery of the endpoint whose event happened at or after ``since_us``."""
        with self.store.write() as db:
            cursor = db.execute("UPDATE webhook_deliveries SET status = 'pending', next_us = ? "
                                "WHERE endpoint_id = ? AND created_us >= ?", (now_us, endpoint_id, since_us))
            return cursor.rowcount

    def backlog(self) -> int:
        """Deliveries to enabled endpoints not yet delivered nor failed (due now, or waiting for a retry)."""
        with self.store.read() as db:
            return db.execute(
                "SELECT COUNT(*) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id "
                "WHERE d.status = 'pending' AND e.status = 'enabled'").fetchone()[0]

    def counts(self, endpoint_id: str) -> dict[str, int]:
        with self.store.read() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM webhook_deliveries WHERE endpoint_id = ? "
                              "GROUP BY status", (endpoint_id,)).fetchall()
        return {r[0]: r[1] for r in rows}

    @staticmethod
    def _attempt(a: Any) -> dict:
        return {"attempt": a["attempt"], "at": _time(a["at_us"]), "status_code": a["status_code"],
                "error": a["error"], "duration_ms": a["duration_ms"], "response_head": a["response_head"]}

    @staticmethod
    def _delivery(r: Any, attempts: list) -> dict:
        return {"id": r["id"], "event_id": r["event_id"], "seq": r["seq"], "type": r["type"],
                "status": r["status"], "attempts": r["attempts"], "created_at": _time(r["created_us"]),
                "next_attempt_at": _time(r["next_us"]) if r["status"] == "pending" else None,
                "delivered_at": _time(r["delivered_us"]), "last_status_code": r["last_status"],
                "last_error": r["last_error"], "last_duration_ms": r["last_duration_ms"],
                "last_response_head": r["last_response"], "attempt_log": attempts}


def _time(us: int | None) -> str | None:
    if us is None:
        return None
    from datetime import UTC, datetime, timedelta

    return rfc3339(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us))
