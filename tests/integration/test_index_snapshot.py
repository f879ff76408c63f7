"""The verification index's sealed snapshot: a start loads it and catches up from its position, and
gives the index a start from the view gives; one that is not this store's, not up to date with its
log, or not intact is ignored with one log line."""

from __future__ import annotations

import logging

import pytest

from projections.index_snapshot import FILE_NAME
from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from tests.integration.test_rebuild import index_state, make_history
from tests.integration.test_rebuild import settings as settings  # noqa: F401 - the legacy-open fixture

ADMIN = Actor.system("test")


def snapshot_now(system) -> int:
    """Write the index's snapshot now, whatever its size; its position."""
    system.index.snapshots.min_entries = 0
    system.follower.checkpoint(final=True)
    return system.index.snapshots.position


def snapshot_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "keyledger.projections" and "snapshot" in r.getMessage()]


def test_a_start_from_the_snapshot_catches_up_and_equals_a_start_from_the_view(settings, caplog):
    first = build_system(settings, follow=False)
    try:
        make_history(first)
        app = first.keys_app
        key, secret = app.issue_key("app-0", description="late", scopes=["Predict"], by=ADMIN, request=NO_REQUEST)
        first.after_command()
        at = snapshot_now(first)
        assert at == app.last_position() and (settings.data_dir / FILE_NAME).exists()
        saved = (settings.data_dir / FILE_NAME).read_bytes()
        # After the snapshot: a revocation, new scopes, a roll, a new key.
        app.revoke_key(key["id"], by=ADMIN, request=NO_REQUEST)
        other, other_secret = app.issue_key("app-1", description="new", scopes=["Search"], by=ADMIN,
                                            request=NO_REQUEST)
        app.change_key(other["id"], scopes=["Predict", "Search"], by=ADMIN, request=NO_REQUEST)
        _, rolled = app.roll_key(other["id"], grace_seconds=0, by=ADMIN, request=NO_REQUEST)
        first.after_command()
        live = index_state(first.index)
    finally:
        first.close()
    (settings.data_dir / FILE_NAME).write_bytes(saved)  # the one written half-way, not the one at close

    caplog.set_level(logging.INFO, logger="keyledger.projections")
    restarted = build_system(settings, follow=False)
    try:
        assert restarted.index.snapshots.loaded and restarted.index.snapshots.position == at
        assert index_state(restarted.index) == live
        assert restarted.verifier.verify(secret, "Predict", "app-0")[0] == "REVOKED"
        assert restarted.verifier.verify(other_secret, "Search", "app-1")[0] == "REVOKED"  # rolled, no grace
        assert restarted.verifier.verify(rolled, "Predict", "app-1")[0] == "VALID"
        # ... and it is what a start from the view gives.
        restarted.follower.rebuild()
        assert not (settings.data_dir / FILE_NAME).exists()  # a rebuild forgets it
        assert index_state(restarted.index) == live
    finally:
        restarted.close()
    assert snapshot_warnings(caplog) == []


def assert_restart_ignores_the_snapshot(settings, caplog, live, why: str) -> None:
    """A restart does not load the snapshot, builds the same index from the view, and says why once."""
    caplog.set_level(logging.INFO, logger="keyledger.projections")
    restarted = build_system(settings, follow=False)
    try:
        assert not restarted.index.snapshots.loaded
        assert index_state(restarted.index) == live
    finally:
        restarted.close()
    warnings = snapshot_warnings(caplog)
    assert len(warnings) == 1 and why in warnings[0], warnings


def corrupt(path, data: bytes) -> None:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    path.write_bytes(bytes(changed))


@pytest.mark.parametrize(("damage", "why"), [
    (corrupt, "its seal does not verify"),
    (lambda path, data: path.write_bytes(data[: len(data) // 2]), "its seal does not verify"),
    (lambda path, data: path.write_bytes(b"not a snapshot"), "not a snapshot of this format"),
])
def test_a_damaged_snapshot_is_ignored_with_one_log_line(settings, caplog, damage, why):
    first = build_system(settings, follow=False)
    try:
        make_history(first)
        snapshot_now(first)
        live = index_state(first.index)
    finally:
        first.close()
    path = settings.data_dir / FILE_NAME
    damage(path, path.read_bytes())
    assert_restart_ignores_the_snapshot(settings, caplog, live, why)


@pytest.mark.parametrize("stale", ["beyond the log", "another record there", "another store"])
def test_a_sealed_snapshot_that_is_not_up_to_date_with_this_log_is_ignored(settings, caplog, stale):
    first = build_system(settings, follow=False)
    try:
        make_history(first)
        snapshots = first.index.snapshots
        table, clients = dict(first.index.by_digest), dict(first.index.clients)
        end = first.keys_app.last_position()
        if stale == "beyond the log":  # e.g. a store restored from an older backup
            snapshots._write(table, clients, end + 5, "whatever")
        elif stale == "another record there":  # the log rewritten since
            snapshots._write(table, clients, end - 1, snapshots.fingerprint(end))
        else:
            identity = snapshots.identity
            snapshots.identity = lambda: {**identity(), "store": "elsewhere"}
            snapshots._write(table, clients, end, snapshots.fingerprint(end))
            snapshots.identity = identity
        live = index_state(first.index)
        first.index.snapshots = None  # no snapshot at close
    finally:
        first.close()
    assert_restart_ignores_the_snapshot(settings, caplog, live, "is ignored")


def test_a_snapshot_holds_no_secret(settings):
    system = build_system(settings, follow=False)
    try:
        make_history(system)
        key, secret = system.keys_app.issue_key("app-0", description="x", scopes=["Predict"], by=ADMIN,
                                                request=NO_REQUEST)
        system.after_command()
        snapshot_now(system)
    finally:
        system.close()
    data = (settings.data_dir / FILE_NAME).read_bytes()
    assert secret.encode() not in data and secret[3:].encode() not in data
    assert (settings.data_dir / FILE_NAME).stat().st_mode & 0o077 == 0
