"""Audit trail: one row per event, chained by SHA-256, indexed for the security team.

``hash = SHA-256(prev_hash ‖ canonical JSON of the event's audit record)``; the first
event's ``prev_hash`` is 64 zeros. Any altered, removed, inserted or reordered row breaks
the chain at that row. ``data`` holds an event's facts without digests or secrets.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from projections.projection import Projection
from projections.store import ViewStore
from projections.timefmt import rfc3339
from service.domain.aggregate import LedgerAggregate
from service.domain.keys import ApiKey

GENESIS = "0" * 64
_NOT_DATA = {"originator_id", "originator_version", "originator_topic", "timestamp", "by", "request"}
_SECRET_LIKE = {"digest", "digests", "previous_digest", "token_digest"}  # not secrets, but of no use here


def canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def chain_hash(prev_hash: str, record: dict) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(record)).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def event_type(event: Any) -> str:
    """``ApiKey.Revoked`` and the like: the aggregate and the event's class name."""
    return type(event).__qualname__


class AuditTrail(Projection):
    name = "audit"
    tables = ("audit_events", "audit_key_apps")
    ddl = (
        """CREATE TABLE IF NOT EXISTS audit_events (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL,
            actor_kind TEXT NOT NULL, actor_id TEXT NOT NULL, app_id TEXT, key_id TEXT,
            data TEXT NOT NULL, request TEXT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL)""",
        "CREATE TABLE IF NOT EXISTS audit_key_apps (key_id TEXT PRIMARY KEY, app_id TEXT NOT NULL)",
    )
    indexes = (
        "CREATE INDEX IF NOT EXISTS audit_by_key ON audit_events (key_id, seq)",
        "CREATE INDEX IF NOT EXISTS audit_by_app ON audit_events (app_id, seq)",
        "CREATE INDEX IF NOT EXISTS audit_by_time ON audit_events (occurred_at, seq)",
    )

    def process(self, db: sqlite3.Connection, position: int, event: Any) -> None:
        if not isinstance(event, LedgerAggregate.Event):
            return
        record = audit_record(db, position, event)
        row = db.execute("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        prev_hash = row[0] if row else GENESIS
        digest = chain_hash(prev_hash, record)
        db.execute(
            "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record["seq"], record["id"], record["type"], record["occurred_at"],
             record["actor"]["kind"], record["actor"]["id"], record["app_id"], record["key_id"],
             json.dumps(record["data"], sort_keys=True), json.dumps(record["request"], sort_keys=True),
             digest, prev_hash))


def audit_record(db: sqlite3.Connection, position: int, event: Any) -> dict:
    """The audit shape of one event, without its hashes."""
    kind, _, actor_id = event.by.partition(":")
    key_id = app_id = None
    if isinstance(event, ApiKey.Event):
        key_id = str(event.originator_id)
        if isinstance(event, ApiKey.Issued):
            app_id = event.app_id
            db.execute("INSERT OR REPLACE INTO audit_key_apps VALUES (?, ?)", (key_id, app_id))
        else:
            row = db.execute("SELECT app_id FROM audit_key_apps WHERE key_id = ?", (key_id,)).fetchone()
            app_id = row[0] if row else None
    elif hasattr(event, "slug"):
        app_id = event.slug
    data = {k: _plain(v) for k, v in vars(event).items() if k not in _NOT_DATA and k not in _SECRET_LIKE}
    request = event.request or {}
    return {
        "seq": position,
        "id": str(uuid5(NAMESPACE_URL, f"keyledger:event:{event.originator_id}:{event.originator_version}")),
        "type": event_type(event),
        "occurred_at": rfc3339(event.timestamp),
        "actor": {"kind": kind, "id": actor_id},
        "app_id": app_id,
        "key_id": key_id,
        "data": data,
        "request": {"id": request.get("id"), "ip": request.get("ip"), "user_agent": request.get("user_agent")},
    }


class AuditLog:
    """Queries over the audit trail."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def events(self, *, key_id: str | None = None, app_id: str | None = None,
               after_seq: int = 0, limit: int | None = 1000) -> list[dict]:
        """Events oldest first, filtered; ``limit=None`` for all of them."""
        where, params = ["seq > ?"], [after_seq]
        if key_id is not None:
            where.append("key_id = ?")
            params.append(key_id)
        if app_id is not None:
            where.append("app_id = ?")
            params.append(app_id)
        sql = f"SELECT * FROM audit_events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        with self.store.read() as db:
            rows = db.execute(sql, (*params, -1 if limit is None else limit)).fetchall()
        return [self._event(r) for r in rows]

    @staticmethod
    def _event(r: sqlite3.Row) -> dict:
        return {
            "seq": r["seq"], "id": r["id"], "type": r["type"], "occurred_at": r["occurred_at"],
            "actor": {"kind": r["actor_kind"], "id": r["actor_id"]}, "app_id": r["app_id"],
            "key_id": r["key_id"], "data": json.loads(r["data"]), "request": json.loads(r["request"]),
            "hash": r["hash"], "prev_hash": r["prev_hash"],
        }
