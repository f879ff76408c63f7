"""Seal keys: the random half of the key that seals each recorded answer (Idempotency-Key).

An answer recorded for retries lives, encrypted, in the event store, which is forever; the
key that opens it is derived from the pepper, the client's Idempotency-Key and a random seal
key kept here, in the shared view store, for the retention period. Deleting the row makes the
answer unreadable for good (crypto-shredding). Not derived from events, so a rebuild of the
views leaves this table alone.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from projections.store import ViewStore, upsert

DDL = """CREATE TABLE IF NOT EXISTS idempotency_seal_keys (
    record_id TEXT PRIMARY KEY, seal_key BLOB NOT NULL, created_us INTEGER NOT NULL)"""
INDEX = "CREATE INDEX IF NOT EXISTS idempotency_seal_keys_by_age ON idempotency_seal_keys (created_us)"
_REPLACE = upsert("idempotency_seal_keys", ("record_id", "seal_key", "created_us"), ("record_id",))
_MARGIN = timedelta(hours=1)  # a seal key outlives its answer's retention by this much
_SIZE = 32


def _us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


class SealKeys:
    def __init__(self, store: ViewStore, *, retention: timedelta) -> None:
        self.store = store
        self.retention = retention
        with store.write() as db:
            db.execute(DDL)
            db.execute(INDEX)

    def claim(self, record_id: str, now: datetime, *, timeout: float | None = None) -> bytes:
        """The seal key for a request about to run: the one a concurrent duplicate (or an
        earlier attempt that changed nothing) already claimed, or a new one when the last use
        of this record has expired. Either way it is kept from ``now`` for the retention
        period, as long as the answer it may seal. Deletes expired keys on the way."""
        with self.store.write(timeout) as db:
            db.execute("DELETE FROM idempotency_seal_keys WHERE created_us < ?",
                       (_us(now - self.retention - _MARGIN),))
            row = db.execute("SELECT seal_key, created_us FROM idempotency_seal_keys WHERE record_id = ?",
                             (record_id,)).fetchone()
            current = row is not None and row[1] >= _us(now - self.retention)
            key = bytes(row[0]) if current else os.urandom(_SIZE)
            db.execute(_REPLACE, (record_id, key, _us(now)))
            return key

    def get(self, record_id: str) -> bytes | None:
        """The seal key of a recorded answer (None once it has been deleted)."""
        with self.store.read() as db:
            row = db.execute("SELECT seal_key FROM idempotency_seal_keys WHERE record_id = ?",
                             (record_id,)).fetchone()
        return bytes(row[0]) if row is not None else None
