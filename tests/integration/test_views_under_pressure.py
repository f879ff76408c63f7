"""Views and the in-memory index when the view store is busy, rebuilt, or restored from a backup."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time

import pytest

from service.api import create_app
from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, Caller, make_account

ADMIN = Actor.system("test")


def settings_for(data_dir, **kw):
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=60, **kw)


def test_revoked_key_is_refused_at_once_even_while_the_views_are_locked(tmp_path):
    system = build_system(settings_for(tmp_path / "var"))
    try:
        client = create_app(system=system).test_client()
        owner = Caller(client, make_account(system, "owner", "o@example.com")["token"])
        key = owner.post("/v2/apps", json={"id": "vision", "name": "Vision"}).json["default_key"]
        blocker = sqlite3.connect(tmp_path / "var" / "views.sqlite", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # as a rebuild's transaction would
        try:
            assert owner.delete(f"/v2/keys/{key['id']}").status_code == 204
            verdict = client.post("/v2/verify", json={"key": key["key"]}).json
            assert verdict["code"] == "REVOKED"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        system.follower.update_views()
        assert owner.get("/v2/apps/vision/keys").json["keys"][0]["status"] == "revoked"
    finally:
        system.close()


@pytest.mark.timing_sensitive  # wall-clock bound
def test_a_request_does_not_wait_for_the_view_store(tmp_path):
    writer = build_system(settings_for(tmp_path / "var"))
    reader = build_system(settings_for(tmp_path / "var"))
    try:
        client = create_app(system=reader).test_client()
        owner = make_account(writer, "owner", "o@example.com")
        _, key, secret = writer.keys_app.create_app(name="V", slug="v", owner_id=owner["id"], by=ADMIN,
                                                    request=NO_REQUEST)
        writer.after_command()
        assert client.post("/v2/verify", json={"key": secret}).json["code"] == "VALID"

        blocker = sqlite3.connect(tmp_path / "var" / "views.sqlite", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            writer.keys_app.revoke_key(key["id"], by=ADMIN, request=NO_REQUEST)
            writer.follower.catch_up()  # raises the beacon; the views stay locked
            started = time.monotonic()
            verdict = client.post("/v2/verify", json={"key": secret}).json
            elapsed = time.monotonic() - started
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert verdict["code"] == "REVOKED"
        assert elapsed < 0.5, f"the request waited {elapsed:.2f} s for the view store"
    finally:
        writer.close()
        reader.close()


def dump(system) -> dict:
    tables = ("verification", "directory_accounts", "directory_apps", "directory_keys", "audit_events")
    with system.views.read() as db:
        return {t: [tuple(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in tables}


def test_a_rebuild_alongside_live_writes_misses_nothing(tmp_path):
    live = build_system(settings_for(tmp_path / "var"))
    rebuilder = build_system(settings_for(tmp_path / "var"), follow=False)
    try:
        owner = make_account(live, "owner", "o@example.com")
        stop = threading.Event()
        rebuilds = []

        def keep_rebuilding() -> None:
            while not stop.wait(0.02):  # a rebuild now and then, between the live writes
                rebuilds.append(rebuilder.follower.rebuild(reload=False))

        thread = threading.Thread(target=keep_rebuilding)
        thread.start()
        apps = 0
        try:
            while len(rebuilds) < 3 and apps < 500:  # writes interleaved with several rebuilds
                live.keys_app.create_app(name=f"A{apps}", slug=f"a-{apps}", owner_id=owner["id"], by=ADMIN,
                                         request=NO_REQUEST)
                live.after_command()
                apps += 1
                time.sleep(0.002)
        finally:
            stop.set()
            thread.join()
        live.follower.update_views()
        assert len(rebuilds) >= 3
        events = live.keys_app.last_position()
        after_live_writes = dump(live)
        assert len(after_live_writes["audit_events"]) == events
        assert len(after_live_writes["directory_apps"]) == apps
        rebuilder.follower.rebuild(reload=False)
        assert dump(live) == after_live_writes
    finally:
        live.close()
        rebuilder.close()


@pytest.mark.sqlite_only("restores an older copy of the SQLite files")
def test_views_ahead_of_a_restored_event_store_are_rebuilt_at_start(tmp_path):
    data = tmp_path / "var"
    system = build_system(settings_for(data))
    owner = make_account(system, "owner", "o@example.com")
    system.keys_app.create_app(name="Old", slug="old", owner_id=owner["id"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    system.close()
    shutil.copy(data / "events.sqlite", tmp_path / "backup.sqlite")  # the backup

    system = build_system(settings_for(data))
    for i in range(3):
        system.keys_app.create_app(name=f"Lost {i}", slug=f"lost-{i}", owner_id=owner["id"], by=ADMIN,
                                   request=NO_REQUEST)
    system.after_command()
    system.close()
    for suffix in ("", "-wal", "-shm"):
        (data / f"events.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.sqlite", data / "events.sqlite")  # restored; views are newer

    system = build_system(settings_for(data))
    try:
        assert system.follower.lag() == 0
        assert [a["id"] for a in system.directory.apps()] == ["old"]
        _, _, secret = system.keys_app.create_app(name="New", slug="new", owner_id=owner["id"], by=ADMIN,
                                                  request=NO_REQUEST)
        system.after_command()
        assert system.verifier.verify(secret)[0] == "VALID"
        assert [a["id"] for a in system.directory.apps()] == ["old", "new"]
    finally:
        system.close()


class WritesWhileRead:
    """The event log as a starting instance sees it, while another instance writes: right after
    this instance reads the log's end, the other saves an event and brings the shared views up to
    date (waiting at most a second for the views' writer lock, as a real instance would)."""

    def __init__(self, source, write) -> None:
        self.source = source
        self.write = write
        self.writes = 0

    def read_events(self, after: int, limit: int):
        return self.source.read_events(after, limit)

    def last_position(self) -> int:
        last = self.source.last_position()
        if self.writes < 3:
            self.writes += 1
            writer = threading.Thread(target=self.write)
            writer.start()
            writer.join(timeout=1.0)  # the other instance's view write may wait for this one's lock
        return last


def test_an_instance_starting_while_another_writes_rebuilds_nothing(tmp_path, caplog):
    from projections.audit import AuditTrail
    from projections.campaign import CampaignView
    from projections.directory import DirectoryView
    from projections.follower import Follower
    from projections.legacy_usage import LegacyUsageView
    from projections.verification import VerificationView
    from service.composition import view_store

    settings = settings_for(tmp_path / "var")
    other = build_system(settings)  # an instance already serving, writing to the shared store
    owner = make_account(other, "owner", "o@example.com")
    count = iter(range(100))

    def write() -> None:
        other.keys_app.create_app(name="App", slug=f"app-{next(count)}", owner_id=owner["id"], by=ADMIN,
                                  request=NO_REQUEST)
        other.after_command()  # its views are brought up to date before it answers

    views = view_store(settings)
    projections = [VerificationView(), DirectoryView(), AuditTrail(other.keys_app.stored_records),
                   LegacyUsageView(), CampaignView()]  # as build_system makes them
    starting = Follower(WritesWhileRead(other.keys_app, write), views, projections)
    rebuilt = []
    starting._rebuild = lambda chosen: rebuilt.append([p.name for p in chosen])  # type: ignore[method-assign]
    try:
        starting.start()
        assert rebuilt == [] and "ahead of the event log" not in caplog.text
        other.follower.update_views()
        starting.update_views()
        assert other.follower.views_position == starting.views_position == other.keys_app.last_position()
    finally:
        views.close()
        other.close()
