"""Usage counts in memory and in the view store: hours turned over, a clock set back, a failed
write that loses nothing, records and UUIDs counted as one key."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from projections.usage import HOUR, Usage
from tests.integration.test_last_used_retry import FailingCommits

pytestmark = pytest.mark.sqlite_only

T = 1796551200  # 2026-12-06T10:00:00Z


def rows(store) -> list[tuple]:
    with store.read() as db:
        return sorted(tuple(r) for r in db.execute("SELECT key_id, hour, code, uses FROM key_usage"))


def test_counts_fall_in_their_hour_and_a_failed_write_loses_nothing(tmp_path):
    store = FailingCommits(tmp_path / "views.sqlite")
    usage = Usage(store)
    key = uuid.uuid4()
    usage.valid(key.bytes, T + 10)
    usage.valid(key.bytes, T + HOUR - 0.001)
    usage.valid(key.bytes, T + HOUR)  # the next hour
    usage.refused(key.bytes, "REVOKED", T + 5)  # a clock set back: its own hour still
    store.fail = 1
    with pytest.raises(sqlite3.OperationalError):
        usage.flush()
    usage.valid(key.bytes, T + HOUR + 1)  # counted while the write failed
    assert usage.flush() == 3
    assert rows(store) == [(str(key), T, "REVOKED", 1), (str(key), T, "VALID", 2),
                           (str(key), T + HOUR, "VALID", 2)]
    assert usage.flush() == 0
    usage.refused(key.bytes, "REVOKED", T + 7)
    usage.flush()  # added to the stored count
    assert rows(store)[0] == (str(key), T, "REVOKED", 2)
    assert usage.report(str(key), T, T + 2 * HOUR, HOUR) == [(T, 2, {"REVOKED": 2}), (T + HOUR, 2, {})]
    assert usage.report(str(key), T, T + 2 * HOUR, 86400)[0][1:] == (4, {"REVOKED": 2})


def test_an_index_record_and_its_uuid_are_one_key(tmp_path, monkeypatch):
    import projections.usage as module

    monkeypatch.setattr(module, "KEY_ID_BYTES", slice(-16, None))
    store = FailingCommits(tmp_path / "views.sqlite")
    usage = Usage(store)
    key = uuid.uuid4()
    usage.valid(b"\1" * 24 + key.bytes, T)
    usage.valid(key.bytes, T)
    assert usage.totals([str(key)], T) == {str(key): 2}  # from memory
    usage.flush()
    assert rows(store) == [(str(key), T, "VALID", 2)]
    assert usage.totals([str(key), str(uuid.uuid4())], T) == {str(key): 2}
    assert usage.totals([str(key)], T + HOUR) == {}
