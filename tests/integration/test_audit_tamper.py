"""Tamper evidence against the real SQLite event store file.

Each test records a history, stops the service, changes ``events.sqlite`` the way an intruder
with access to the file would, starts the service again and checks the audit chain: the first
changed record is reported by its sequence number. A rewrite that also makes the audit view
agree (without the signing key) is caught by the signed checkpoints.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from service.api import create_app
from service.cli import main
from service.composition import System, build_system
from service.domain.actors import NO_REQUEST, Actor
from service.settings import Settings
from tests.backend import point_environment_at
from tests.conftest import make_account

pytestmark = pytest.mark.sqlite_only("edits the SQLite files; tests/integration/test_audit_tamper_postgres.py is PostgreSQL's")

ADMIN = Actor.system("test")


def record_history(system: System) -> dict:
    """Accounts, an app with keys changed, rolled and revoked; a checkpoint half-way; returns
    the positions the tests tamper with."""
    app = system.keys_app
    owner, _ = app.register_account(email="o@example.com", name="O", role="owner", by=ADMIN, request=NO_REQUEST)
    _, default, _ = app.create_app(name="Vision", slug="vision", owner_id=owner["id"], by=ADMIN,
                                   request=NO_REQUEST)
    key, _ = app.issue_key("vision", description="ro", scopes=["Predict"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    first = system.sign_checkpoint()
    app.change_key(key["id"], scopes=["Predict", "Models:Add"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    changed = app.last_position()  # the first event after the first checkpoint
    app.roll_key(key["id"], grace_seconds=60, by=ADMIN, request=NO_REQUEST)
    app.revoke_key(default["id"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    second = system.sign_checkpoint()
    app.change_key(key["id"], description="after the checkpoints", by=ADMIN, request=NO_REQUEST)
    system.after_command()
    return {"key_id": key["id"], "changed": changed, "first": first, "second": second,
            "last": app.last_position()}


@pytest.fixture
def history(system: System) -> dict:
    recorded = record_history(system)
    system.close()  # the service stops; the intruder edits the files
    return recorded


def tamper(settings: Settings, change: Callable[[sqlite3.Connection], None]) -> None:
    db = sqlite3.connect(settings.events_path)
    try:
        with db:
            change(db)
    finally:
        db.close()


def integrity(settings: Settings) -> dict:
    restarted = build_system(settings, follow=False)
    try:
        return restarted.check_integrity()
    finally:
        restarted.close()


def state_of(db: sqlite3.Connection, seq: int) -> bytes:
    return db.execute("SELECT state FROM stored_events WHERE rowid = ?", (seq,)).fetchone()[0]


def test_an_untouched_store_is_intact_and_signed(history, settings):
    report = integrity(settings)

    assert report["ok"] is True and report["first_bad_seq"] is None
    assert report["checked"] == history["last"]
    assert report["checkpoints"] == 2
    assert report["signed_through"] == history["second"]["seq"]


def test_one_changed_byte_of_a_stored_event_is_found_at_its_seq(history, settings):
    seq = history["changed"]

    def flip_one_byte(db):
        state = bytearray(state_of(db, seq))
        at = state.index(b"Models:Add")
        state[at] = ord("N")  # "Nodels:Add"
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (bytes(state), seq))

    tamper(settings, flip_one_byte)
    report = integrity(settings)

    assert (report["ok"], report["first_bad_seq"]) == (False, seq)
    assert "edited" in report["reason"]


def test_a_planted_digest_is_found_though_the_audit_data_omits_digests(history, settings):
    seq = 3  # the default key's ApiKey.Issued: its digest decides which secret verifies

    def plant(db):
        state = state_of(db, seq)
        at = state.index(b'"digest":"') + len(b'"digest":"')
        planted = state[:at] + (b"0" if state[at:at + 1] != b"0" else b"1") + state[at + 1:]
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (planted, seq))

    tamper(settings, plant)

    assert integrity(settings)["first_bad_seq"] == seq


def test_a_deleted_event_is_found_at_its_seq(history, settings):
    seq = history["changed"] + 1
    tamper(settings, lambda db: db.execute("DELETE FROM stored_events WHERE rowid = ?", (seq,)))

    report = integrity(settings)

    assert (report["ok"], report["first_bad_seq"]) == (False, seq)
    assert "missing" in report["reason"]


def test_a_forged_event_inserted_in_the_middle_is_found_at_its_seq(history, settings):
    seq = history["changed"]

    def insert_forged(db):
        # Make room at ``seq`` (move every later record up by one), then forge a scope change
        # that gives the key every scope, copied from the real one.
        db.execute("UPDATE stored_events SET rowid = rowid + 1000000 WHERE rowid >= ?", (seq,))
        db.execute("UPDATE stored_events SET rowid = rowid - 999999 WHERE rowid >= 1000000")
        oid, version, topic, state = db.execute(
            "SELECT originator_id, originator_version, topic, state FROM stored_events WHERE rowid = ?",
            (seq + 1,)).fetchone()
        forged = state.replace(b'"Predict","Models:Add"', b'"All"')
        assert forged != state
        db.execute("INSERT INTO stored_events (rowid, originator_id, originator_version, topic, state) "
                   "VALUES (?, ?, ?, ?, ?)", (seq, oid, version + 100, topic, forged))

    tamper(settings, insert_forged)
    report = integrity(settings)

    assert (report["ok"], report["first_bad_seq"]) == (False, seq)


def test_two_swapped_events_are_found_at_the_first_of_them(history, settings):
    seq = history["changed"]

    def swap(db):
        db.execute("UPDATE stored_events SET rowid = -1 WHERE rowid = ?", (seq,))
        db.execute("UPDATE stored_events SET rowid = ? WHERE rowid = ?", (seq, seq + 1))
        db.execute("UPDATE stored_events SET rowid = ? WHERE rowid = -1", (seq + 1,))

    tamper(settings, swap)
    report = integrity(settings)

    assert (report["ok"], report["first_bad_seq"]) == (False, seq)


def test_a_consistent_rewrite_of_events_and_chain_is_caught_by_the_signatures(history, settings):
    seq = history["changed"]

    def plant(db):
        state = state_of(db, seq)
        at = state.index(b'"digests":["') + len(b'"digests":["')
        planted = state[:at] + (b"0" if state[at:at + 1] != b"0" else b"1") + state[at + 1:]
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (planted, seq))

    tamper(settings, plant)
    # The intruder rebuilds the audit view from the edited store: every row's hash now agrees
    # with the stored events, so only what they cannot recompute tells: the record's seal (and,
    # behind it, the checkpoint that signed the chain past it).
    intruder = build_system(settings, follow=False)
    intruder.follower.rebuild(["audit"])
    intruder.close()

    report = integrity(settings)

    assert (report["ok"], report["first_bad_seq"]) == (False, seq)
    assert "seal does not verify" in report["reason"]
    assert report["signed_through"] == history["first"]["seq"]


def test_dropping_the_latest_checkpoint_from_the_store_is_caught_by_its_copy(history, settings):
    last = history["last"]
    cut_from = history["second"]["seq"] + 1  # the second checkpoint's own event and all after it

    def drop_tail(db):
        db.execute("DELETE FROM stored_events WHERE rowid >= ?", (cut_from,))

    tamper(settings, drop_tail)  # the views are now ahead of the log: rebuilt at start
    report = integrity(settings)

    assert report["ok"] is False
    assert report["first_bad_seq"] == cut_from
    assert "missing from the event store" in report["reason"]
    assert report["checked"] < last


def test_keyledger_audit_verify_exits_non_zero_when_the_store_was_changed(history, settings, monkeypatch, capsys):
    point_environment_at(monkeypatch, settings.data_dir)
    monkeypatch.setenv("KEYLEDGER_PEPPER", settings.pepper)
    assert main(["audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith("ok:")

    seq = history["changed"]
    tamper(settings, lambda db: db.execute("DELETE FROM stored_events WHERE rowid = ?", (seq,)))

    assert main(["audit", "verify"]) == 1
    assert capsys.readouterr().out.startswith(f"BROKEN at seq {seq} ")


def test_a_forged_checkpoint_is_found_at_its_seq(history, settings):
    forged_seq = history["last"] + 1

    def forge(db):
        oid, version, topic, state = db.execute(
            "SELECT originator_id, originator_version, topic, state FROM stored_events WHERE rowid = ?",
            (history["second"]["seq"] + 1,)).fetchone()  # the second checkpoint's own event
        assert b"CheckpointSigned" in topic.encode()
        forged = state.replace(history["second"]["hash"].encode(), b"f" * 64)
        db.execute("INSERT INTO stored_events (rowid, originator_id, originator_version, topic, state) "
                   "VALUES (?, ?, ?, ?, ?)", (forged_seq, oid, version + 1, topic, forged))

    tamper(settings, forge)  # appended at the end: the restarted service takes it into the view
    report = integrity(settings)

    assert (report["ok"], report["first_bad_seq"]) == (False, forged_seq)
    assert "seal does not verify" in report["reason"]  # found by its seal before its signature is read


def test_the_integrity_endpoint_reports_the_same(history, settings):
    seq = history["changed"] + 1
    tamper(settings, lambda db: db.execute("DELETE FROM stored_events WHERE rowid = ?", (seq,)))
    restarted = build_system(settings, follow=False)
    try:
        auditor = make_account(restarted, "auditor", "auditor@example.com")
        client = create_app(system=restarted).test_client()
        response = client.get("/v2/audit/integrity", headers={"Authorization": f"Key {auditor['token']}"})
    finally:
        restarted.close()

    assert response.status_code == 200
    assert response.json["ok"] is False and response.json["first_bad_seq"] == seq
    assert response.json["checked"] >= seq


def test_an_audit_view_from_before_this_chain_is_rebuilt_at_start(history, settings):
    """Views written by the previous version hashed an abridged record; they are dropped and
    rebuilt from the log at the first start, and the chain then verifies."""
    views = sqlite3.connect(settings.views_path)
    with views:
        views.execute("DROP TABLE audit_events")
        views.execute("""CREATE TABLE audit_events (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL,
            actor_kind TEXT NOT NULL, actor_id TEXT NOT NULL, app_id TEXT, key_id TEXT,
            data TEXT NOT NULL, request TEXT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL)""")
        views.execute("CREATE TABLE audit_key_apps (key_id TEXT PRIMARY KEY, app_id TEXT NOT NULL)")
    views.close()

    report = integrity(settings)

    assert report["ok"] is True and report["checked"] == history["last"]
    views = sqlite3.connect(settings.views_path)
    tables = {r[0] for r in views.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    rows = views.execute("SELECT COUNT(*) FROM audit_events").fetchone()[0]
    views.close()
    assert "audit_key_apps" not in tables and rows == history["last"]
