"""Tamper evidence after the last checkpoint, on the suite's store (SQLite files, or PostgreSQL).

An intruder with write access to the database — not to the data directory's key files, the
checkpoint copies or the tail mark — appends a forged event at the end, rewrites one after the
last checkpoint (and the audit view with it), cuts the tail off (and the views with it), or
leaves a value of the wrong type. Each is found at its seq by ``keyledger audit verify`` and
``GET /v2/audit/integrity``; a service started again refuses the record, signs no checkpoint
over it and says so on ``/readyz``, in the log and in the metrics. ``keyledger audit
accept-baseline`` is how an operator accepts a store restored from a backup.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eventsourcing.persistence import Mapper

from service.api import create_app
from service.application.sealing import SealingMapper
from service.cli import main
from service.composition import System, build_system, view_store
from service.domain.actors import NO_REQUEST, Actor
from service.domain.errors import Conflict
from service.serving import prepare_store
from service.settings import Settings
from tests import backend
from tests.backend import point_environment_at
from tests.conftest import make_account

ADMIN = Actor.system("test")


# -- the intruder's tools: the database, nothing else ---------------------------------------------

class EventTable:
    """The event store's table, edited directly (``?`` placeholders on both stores)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.postgres = backend.ON_POSTGRES
        self.table, self.seq = ("keyledger_events", "notification_id") if self.postgres else ("stored_events", "rowid")

    def execute(self, sql: str, params: tuple = ()) -> Any:
        sql = sql.format(table=self.table, seq=self.seq)
        return self.db.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def row(self, seq: int) -> tuple:
        oid, version, topic, state = self.execute(
            "SELECT originator_id, originator_version, topic, state FROM {table} WHERE {seq} = ?", (seq,)).fetchone()
        return oid, version, topic, bytes(state)

    def last_version(self, oid: Any) -> int:
        return self.execute("SELECT MAX(originator_version) FROM {table} WHERE originator_id = ?", (oid,)).fetchone()[0]

    def append(self, oid: Any, version: int, topic: str, state: bytes) -> int:
        if self.postgres:
            return self.execute("INSERT INTO {table} (originator_id, originator_version, topic, state) "
                                "VALUES (?, ?, ?, ?) RETURNING notification_id", (oid, version, topic, state)).fetchone()[0]
        self.execute("INSERT INTO {table} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
                     (oid, version, topic, state))
        return self.execute("SELECT MAX(rowid) FROM {table}").fetchone()[0]

    def set_state(self, seq: int, state: Any) -> None:
        self.execute("UPDATE {table} SET state = ? WHERE {seq} = ?", (state, seq))

    def delete_from(self, seq: int) -> None:
        self.execute("DELETE FROM {table} WHERE {seq} >= ?", (seq,))


@contextmanager
def event_table(settings: Settings) -> Iterator[EventTable]:
    if backend.ON_POSTGRES:
        with backend.connect(settings.data_dir) as db:
            yield EventTable(db)
        return
    db = sqlite3.connect(settings.events_path)
    try:
        with db:
            yield EventTable(db)
    finally:
        db.close()


def cut_views_to(settings: Settings, seq: int) -> None:
    """The careful intruder: the audit view and every view's position agree with a log cut at ``seq``."""
    store = view_store(settings)
    try:
        with store.write() as db:
            db.execute("DELETE FROM audit_events WHERE seq > ?", (seq,))
            db.execute("UPDATE projection_tracking SET position = ? WHERE position > ?", (seq, seq))
    finally:
        store.close()


def without_seal(state: bytes) -> bytes:
    at = state.rindex(b',"_mac":"')
    return state[:at] + b"}"


# -- a history, and looking at the service afterwards ---------------------------------------------

def record_history(system: System) -> dict:
    """An app with a read-only key; a checkpoint; the key's scopes changed; a second checkpoint;
    one more change after it (the tail no checkpoint covers)."""
    app = system.keys_app
    auditor = make_account(system, "auditor", "auditor@example.com")
    owner, _ = app.register_account(email="o@example.com", name="O", role="owner", by=ADMIN, request=NO_REQUEST)
    app.create_app(name="Vision", slug="vision", owner_id=owner["id"], by=ADMIN, request=NO_REQUEST)
    key, secret = app.issue_key("vision", description="ro", scopes=["Predict"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    system.sign_checkpoint()
    app.change_key(key["id"], scopes=["Predict", "Search"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    scopes_changed = app.last_position()
    second = system.sign_checkpoint()
    app.change_key(key["id"], description="after the checkpoints", by=ADMIN, request=NO_REQUEST)
    system.after_command()
    return {"key_id": key["id"], "secret": secret, "scopes_changed": scopes_changed, "second": second,
            "last": app.last_position(), "auditor": auditor["token"]}


@pytest.fixture
def history(system: System) -> dict:
    recorded = record_history(system)
    system.close()  # the service stops; the intruder edits the database
    return recorded


def checkpoint_seqs(system: System) -> list[int]:
    return [cp["seq"] for cp in system.keys_app.ledger(system.signing_key.public_key()).genuine]


def cli_verify(settings: Settings, monkeypatch: Any, capsys: Any) -> tuple[int, str]:
    point_environment_at(monkeypatch, settings.data_dir)
    monkeypatch.setenv("KEYLEDGER_PEPPER", settings.pepper)
    capsys.readouterr()
    status = main(["audit", "verify"])
    return status, capsys.readouterr().out


def restarted(settings: Settings) -> System:
    """The service started again on the edited store, as ``create_app()`` starts it: it follows
    the log and tries to sign a checkpoint at start."""
    flask_app = create_app(system=build_system(settings, follow=False))
    from service.api import _sign_at_start

    system = flask_app.extensions["keyledger"]
    _sign_at_start(system)
    return system


def assert_found_everywhere(settings: Settings, history: dict, seq: int, monkeypatch: Any, capsys: Any,
                            caplog: Any, words: str) -> System:
    """Found at ``seq`` by the CLI and over HTTP; a start signs no checkpoint over it and raises
    the alarm (log, metric, /readyz). Returns the restarted system (closed by the caller)."""
    status, out = cli_verify(settings, monkeypatch, capsys)
    assert status == 1
    assert out.startswith(f"BROKEN at seq {seq} "), out
    assert words in out and len(out.strip().splitlines()) == 1

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="keyledger.audit"):
        assert prepare_store(settings) is None  # `keyledger serve`'s master, before the workers start
        system = restarted(settings)  # and a worker
    assert all(s < seq for s in checkpoint_seqs(system)), "a checkpoint was signed over the bad record"
    assert any(r.levelno == logging.ERROR and f"audit chain broken at seq {seq}" in r.getMessage()
               for r in caplog.records)
    client = system_client(system)
    ready = client.get("/readyz").json
    assert ready["audit"]["ok"] is False and ready["audit"]["first_bad_seq"] == seq
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "keyledger_audit_tamper_alarm 1.0" in metrics
    assert f"keyledger_audit_first_bad_seq {float(seq)}" in metrics

    system.keys_app.register_account(email="later@example.com", name="L", role="owner", by=ADMIN,
                                     request=NO_REQUEST)  # life goes on: a write after the tampering
    system.after_command()
    response = client.get("/v2/audit/integrity", headers={"Authorization": f"Key {history['auditor']}"})
    assert response.status_code == 200
    assert (response.json["ok"], response.json["first_bad_seq"]) == (False, seq)
    assert words in response.json["reason"]
    assert system.sign_checkpoint() is None  # the scheduler's hourly checkpoint: refused too
    assert all(s < seq for s in checkpoint_seqs(system))
    return system


def system_client(system: System) -> Any:
    return create_app(system=system).test_client()


# -- the acceptance: append, rewrite, truncate, a wrong type ---------------------------------------

def test_a_forged_scope_change_appended_at_the_end_is_found_refused_and_never_signed(
        history, settings, monkeypatch, capsys, caplog):
    with event_table(settings) as events:
        oid, _, topic, state = events.row(history["scopes_changed"])
        forged = without_seal(state).replace(b'"scopes":["Predict","Search"]', b'"scopes":["All"]')
        assert forged != without_seal(state)
        seq = events.append(oid, events.last_version(oid) + 1, topic, forged)

    system = assert_found_everywhere(settings, history, seq, monkeypatch, capsys, caplog, "no seal")
    try:
        verdict = system_client(system).post("/v2/verify", json={"key": history["secret"], "scope": "Models:Delete"})
        assert (verdict.json["valid"], verdict.json["code"]) == (False, "INSUFFICIENT_SCOPE")
        assert verdict.json["scopes"] == ["Predict", "Search"]  # the forged ["All"] never took effect
    finally:
        system.close()


def test_an_event_rewritten_consistently_after_the_last_checkpoint_is_found(history, settings, monkeypatch, capsys,
                                                                           caplog):
    seq = history["last"]
    assert seq > history["second"]["seq"]
    with event_table(settings) as events:
        _, _, _, state = events.row(seq)
        events.set_state(seq, state.replace(b"after the checkpoints", b"nothing to see here..."))
    intruder = build_system(settings, follow=False)  # the audit view made to agree with the edit
    intruder.follower.rebuild(["audit"])
    intruder.close()

    assert_found_everywhere(settings, history, seq, monkeypatch, capsys, caplog, "seal does not verify").close()


def test_the_tail_cut_off_with_the_views_is_found_at_the_first_missing_seq(history, settings, monkeypatch, capsys,
                                                                         caplog):
    cut = history["last"]  # the change after the last checkpoint goes
    with event_table(settings) as events:
        events.delete_from(cut)
    cut_views_to(settings, cut - 1)

    assert_found_everywhere(settings, history, cut, monkeypatch, capsys, caplog, "removed").close()


def test_a_state_of_the_wrong_type_is_reported_at_its_seq_never_a_crash(history, settings, monkeypatch, capsys,
                                                                       caplog):
    seq = history["last"]
    with event_table(settings) as events:
        if backend.ON_POSTGRES:  # a bytea column holds bytes only: make the column TEXT (every record)
            events.execute("ALTER TABLE {table} ALTER COLUMN state TYPE text USING encode(state, 'escape')")
            seq = 1
        else:  # what an edit with the sqlite3 shell does
            events.execute("UPDATE {table} SET state = CAST(state AS TEXT) WHERE {seq} = ?", (seq,))

    assert_found_everywhere(settings, history, seq, monkeypatch, capsys, caplog, "TEXT").close()


@pytest.mark.parametrize("value", ["null", "garbage", "topic"])
def test_other_wrong_values_are_tampering_at_their_seq(history, settings, monkeypatch, capsys, value):
    seq = history["scopes_changed"]
    with event_table(settings) as events:
        if value == "null" and not backend.ON_POSTGRES:
            events.set_state(seq, None)
        elif value == "topic":
            events.execute("UPDATE {table} SET topic = ? WHERE {seq} = ?", ("service.domain.keys:Nothing", seq))
        else:  # garbage bytes (PostgreSQL's state is NOT NULL)
            events.set_state(seq, b"\x00\xff garbage \xfe")

    status, out = cli_verify(settings, monkeypatch, capsys)

    assert status == 1 and out.startswith(f"BROKEN at seq {seq} ")


def test_a_tampered_record_in_the_middle_does_not_stop_a_start_or_the_records_after_it(history, settings):
    seq = history["scopes_changed"]
    with event_table(settings) as events:
        oid, version, topic, state = events.row(seq)
        events.set_state(seq, without_seal(state).replace(b'"scopes":["Predict","Search"]', b'"scopes":["All"]'))
    cut_views_to(settings, seq - 1)  # the views must apply it again, and everything after it

    system = build_system(settings, follow=False)  # no traceback, no crash
    try:
        assert system.follower.position == history["last"] and system.follower.views_position == history["last"]
        assert system.alarm.first_bad_seq == seq
        system.follower.rebuild()  # every view and the index from the log, as after a restore
        verdict = system_client(system).post("/v2/verify", json={"key": history["secret"], "scope": "Search"})
        assert verdict.json["scopes"] == ["Predict"]  # the forged change never took effect
        row = system.audit.events(after_seq=seq - 1, limit=1)[0]
        assert row["seq"] == seq and row["type"] == "RefusedRecord"
        later = system.audit.events(after_seq=seq, limit=10)
        assert [e["seq"] for e in later][-1] == history["last"]  # the records after it were applied
        with pytest.raises(Conflict):  # its aggregate cannot be loaded while the record is there
            system.keys_app.change_key(history["key_id"], description="x", by=ADMIN, request=NO_REQUEST)
    finally:
        system.close()


# -- what the service writes ------------------------------------------------------------------------

def test_every_record_the_service_writes_is_sealed_and_an_untouched_store_verifies(history, settings):
    states = [s for s in backend.event_states(settings.data_dir, "")]
    assert states and all("_mac" in s for s in states)
    system = build_system(settings, follow=False)
    try:
        report = system.check_integrity()
        assert report["ok"] is True and report["checked"] == history["last"]
        assert system.sign_checkpoint() is not None and system.alarm.raised is False
    finally:
        system.close()


def test_records_from_before_sealing_still_verify_and_a_forged_one_after_them_does_not(system, settings,
                                                                                      monkeypatch):
    """A store written before records were sealed (the older mapper), with its checkpoints and
    an unsigned tail: it verifies; the first start signs that tail and seals from then on; an
    unsealed record appended after that is found."""
    with monkeypatch.context() as older_version:
        older_version.setattr(SealingMapper, "to_stored_event", Mapper.to_stored_event)
        history = record_history(system)
        system.close()
    (settings.data_dir / "audit-tail.json").unlink()  # the older version kept no tail mark
    assert all("_mac" not in s for s in backend.event_states(settings.data_dir, ""))

    system = build_system(settings, follow=False)
    try:
        report = system.check_integrity()
        assert report["ok"] is True, report  # the old checkpoints covered what they signed
        assert system.sign_checkpoint() is not None  # the old tail: before the first sealed record
        assert system.check_integrity()["ok"] is True
    finally:
        system.close()
    with event_table(settings) as events:
        oid, _, topic, state = events.row(history["scopes_changed"])
        forged = events.append(oid, events.last_version(oid) + 1, topic, state)  # unsealed, as they all were

    system = build_system(settings, follow=False)
    try:
        report = system.check_integrity()
        assert (report["ok"], report["first_bad_seq"]) == (False, forged)
        assert "no seal" in report["reason"]
    finally:
        system.close()


# -- a store restored from a backup: the operator accepts it -------------------------------------------

def test_an_operator_accepts_a_restored_store_as_the_new_baseline(history, settings, monkeypatch, capsys):
    restored_end = history["second"]["seq"] - 1  # a backup from before the second checkpoint
    with event_table(settings) as events:
        events.delete_from(restored_end + 1)
    status, out = cli_verify(settings, monkeypatch, capsys)
    assert status == 1 and out.startswith(f"BROKEN at seq {restored_end + 1} ")

    assert main(["audit", "accept-baseline", "--reason", "restored from the 03:00 backup (INC-42)",
                 "--by", "ops@example.com"]) == 0
    out = capsys.readouterr().out
    assert f"Baseline accepted at seq {restored_end} " in out and "ok:" in out

    status, out = cli_verify(settings, monkeypatch, capsys)
    assert status == 0 and out.startswith("ok:")
    system = restarted(settings)
    try:
        assert system.alarm.raised is False
        decision = system.audit.page(_type("AuditLedger.BaselineAccepted"), limit=10)
        assert len(decision) == 1
        assert decision[0]["data"]["seq"] == restored_end
        assert decision[0]["data"]["reason"] == "restored from the 03:00 backup (INC-42)"
        assert decision[0]["actor"] == {"kind": "system", "id": "cli:ops@example.com"}
        assert max(checkpoint_seqs(system)) > restored_end  # a checkpoint signed after the decision
        system.keys_app.change_key(history["key_id"], description="life goes on", by=ADMIN, request=NO_REQUEST)
        system.after_command()
        assert system.check_integrity()["ok"] is True
        assert system.sign_checkpoint() is not None
    finally:
        system.close()
    mirrored = [json.loads(line) for line in (settings.data_dir / "audit-checkpoints.jsonl").read_text().splitlines()]
    assert [m.get("kind") for m in mirrored].count("baseline") == 1


def test_a_baseline_the_intruder_removes_from_the_store_is_missed(history, settings, monkeypatch, capsys):
    point_environment_at(monkeypatch, settings.data_dir)
    monkeypatch.setenv("KEYLEDGER_PEPPER", settings.pepper)
    assert main(["audit", "accept-baseline", "--reason", "drill"]) == 0
    system = build_system(settings, follow=False)
    baseline_at = system.keys_app.last_position()
    system.close()
    with event_table(settings) as events:
        events.delete_from(history["last"] + 1)  # the baseline and the checkpoint after it
    cut_views_to(settings, history["last"])

    status, out = cli_verify(settings, monkeypatch, capsys)

    assert status == 1 and out.startswith(f"BROKEN at seq {history['last'] + 1} "), (out, baseline_at)


def _type(name: str) -> Any:
    from projections.audit import AuditFilter

    return AuditFilter(type=name)


def test_a_refused_record_before_the_last_checkpoint_keeps_the_alarm_through_a_signing(history, settings):
    seq = history["scopes_changed"]  # signed by the second checkpoint
    with event_table(settings) as events:
        events.execute("UPDATE {table} SET topic = ? WHERE {seq} = ?", ("nowhere:Nothing", seq))
    cut_views_to(settings, seq - 1)

    system = build_system(settings, follow=False)
    try:
        assert system.alarm.first_bad_seq == seq
        system.keys_app.register_account(email="n@example.com", name="N", role="owner", by=ADMIN, request=NO_REQUEST)
        system.after_command()
        system.sign_checkpoint()  # the tail since the last checkpoint verifies; the record before it does not
        assert system.alarm.first_bad_seq == seq
        assert system.check_integrity()["first_bad_seq"] == seq
    finally:
        system.close()


def test_a_baseline_gets_past_an_altered_checkpoint_record(history, settings):
    checkpoint_at = history["second"]["seq"] + 1  # the second checkpoint's own event
    with event_table(settings) as events:
        assert events.row(checkpoint_at)[2].endswith("CheckpointSigned")
        events.set_state(checkpoint_at, b"garbage")

    system = build_system(settings, follow=False)
    try:
        assert system.check_integrity()["first_bad_seq"] == checkpoint_at
        baseline, checkpoint = system.accept_baseline("the ledger record was lost; the store was checked by hand",
                                                      Actor.system("cli"))
        assert baseline["seq"] == history["last"] and checkpoint is not None
        assert system.check_integrity()["ok"] is True and system.alarm.raised is False
    finally:
        system.close()
