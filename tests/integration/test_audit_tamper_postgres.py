"""Tamper evidence against the PostgreSQL event store: an intruder with write access to the
database edits or deletes a stored event; the integrity check names the first changed record.
(The same chain code as on SQLite, reading the records through the library's PostgreSQL recorder.)"""

from __future__ import annotations

import pytest

from service.composition import System
from tests import backend
from tests.integration.test_audit_tamper import integrity, record_history

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def history(system: System) -> dict:
    recorded = record_history(system)
    system.close()
    return recorded


def _state(db, seq: int) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(db.execute("SELECT state FROM keyledger_events WHERE notification_id = %s", (seq,)).fetchone()[0])


def test_an_untouched_store_is_intact(history, settings):
    report = integrity(settings)
    assert report["ok"] is True and report["checked"] == history["last"] and report["checkpoints"] == 2


def test_one_changed_byte_is_found_at_its_seq(history, settings):
    seq = history["changed"]
    with backend.connect(settings.data_dir) as db:
        state = bytearray(_state(db, seq))
        state[state.index(b"Models:Add")] = ord("N")
        db.execute("UPDATE keyledger_events SET state = %s WHERE notification_id = %s", (bytes(state), seq))
    report = integrity(settings)
    assert (report["ok"], report["first_bad_seq"]) == (False, seq)
    assert "edited" in report["reason"]


def test_a_deleted_event_is_found_at_its_seq(history, settings):
    seq = history["changed"] + 1
    with backend.connect(settings.data_dir) as db:
        db.execute("DELETE FROM keyledger_events WHERE notification_id = %s", (seq,))
    report = integrity(settings)
    assert (report["ok"], report["first_bad_seq"]) == (False, seq)
