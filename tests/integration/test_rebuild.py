"""Dropping every view and replaying the log gives the same rows as following it live."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from projections.verification import VerificationIndex
from scheduler import expiry
from service.domain.actors import NO_REQUEST, Actor
from service.domain.legacy import LegacyClient
from service.settings import Settings
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER

TABLES = ("verification", "verification_legacy_clients", "directory_accounts", "directory_apps",
          "directory_keys", "audit_events", "audit_aggregate_apps", "audit_app_owners", "legacy_usage",
          "projection_tracking", "key_limits", "app_limits",
          "verification_restrictions", "directory_key_restrictions",
          "expiry_reminded", "expiry_rolls", "expiry_expired")


@pytest.fixture
def settings(data_dir) -> Settings:  # legacy OAuth2 still open, so the history can use it
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05,
                    legacy_sunset_at=datetime.now(UTC) + timedelta(days=30))


def dump(system) -> dict[str, list[tuple]]:
    with system.views.read() as db:
        return {t: [tuple(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in TABLES}


def index_state(index: VerificationIndex) -> dict:
    return {
        "credentials": {d: (e.kind, e.id, e.app_id, e.role, e.scopes, e.expires_at, e.ends_at,
                            getattr(getattr(e, "grant", None), "restriction_text", None))
                        for d, e in index.by_digest.items()},
        "clients": {c: (s.client_id, s.app_id, s.ends_at) for c, s in index.clients.items()},
    }


def limit_state(system) -> dict:
    book = system.limiter.book
    return {"keys": {k: s.limits for k, s in book.keys.items()}, "apps": {a: s.limits for a, s in book.apps.items()}}
def restrict_keys(system, app_id: str, i: int, admin: Actor) -> None:
    """Client restrictions: set at creation, changed, kept through a roll and new scopes, lifted."""
    app = system.keys_app
    kinds = [{"browser": ["https://*.example.com/*"]}, {"server": ["10.0.0.0/8", "2001:db8::/32"]},
             {"ios": ["com.example.app"]}]
    key, _ = app.issue_key(app_id, description="web", scopes=["Predict"], by=admin, request=NO_REQUEST,
                           restrictions=kinds[i % 3])
    system.after_command()
    app.roll_key(key["id"], grace_seconds=30, by=admin, request=NO_REQUEST)
    app.change_key(key["id"], restrictions=kinds[(i + 1) % 3], by=admin, request=NO_REQUEST)
    app.change_key(key["id"], scopes=["Predict", "Search"], by=admin, request=NO_REQUEST)
    if i == 4:
        app.change_key(key["id"], restrictions=None, by=admin, request=NO_REQUEST)
    if i == 1:  # a restricted key rolled and left so: its new secret carries the restriction over
        kept, _ = app.issue_key(app_id, description="kept", scopes=["Predict"], by=admin, request=NO_REQUEST,
                                restrictions=kinds[0])
        app.roll_key(kept["id"], grace_seconds=0, by=admin, request=NO_REQUEST)
    system.after_command()


def make_history(system) -> None:
    app = system.keys_app
    admin = Actor.system("test")
    owner, _ = app.register_account(email="o@example.com", name="O", role="owner", by=admin, request=NO_REQUEST)
    app.register_account(email="a@example.com", name="A", role="auditor", by=admin, request=NO_REQUEST)
    for i in range(5):
        system.after_command()  # views follow one command at a time, as in a live server
        _, default, _ = app.create_app(name=f"App {i}", slug=f"app-{i}", owner_id=owner["id"], by=admin,
                                       request=NO_REQUEST)
        key, _ = app.issue_key(f"app-{i}", description="ro", scopes=["Predict", "Search"], by=admin,
                               request=NO_REQUEST)
        system.after_command()
        app.change_key(key["id"], scopes=["Predict"], description="read", by=admin, request=NO_REQUEST)
        app.roll_key(key["id"], grace_seconds=60 * i, by=admin, request=NO_REQUEST)
        system.after_command()
        if i % 2:
            app.revoke_key(default["id"], by=admin, request=NO_REQUEST)
        # Rate limits: a key's, changed and (for one) removed; an app's; a limited key revoked
        app.change_key(key["id"], limits=[{"limit": 10 + i, "per": "1s"}], by=admin, request=NO_REQUEST)
        app.change_app(f"app-{i}", limits=[{"limit": 100 * (i + 1), "per": "1m"}], by=admin, request=NO_REQUEST)
        if i == 2:
            app.change_key(key["id"], limits=[], by=admin, request=NO_REQUEST)
            app.change_app(f"app-{i}", limits=[], by=admin, request=NO_REQUEST)
        if i == 3:
            app.revoke_key(key["id"], by=admin, request=NO_REQUEST)
        restrict_keys(system, f"app-{i}", i, admin)
    # Legacy OAuth2: imported and issued clients, tokens, uses, a disabled client, a new personal token.
    for i in range(3):
        app.import_legacy_app({"app_id": f"old-{i}", "app_name": f"Old {i}", "owner_email": "o@example.com",
                               "owner_name": "O", "client_id": f"client-{i}", "client_secret": f"secret-{i}-xyz"},
                              by=admin)
        system.after_command()
        for _ in range(i + 1):
            _token, _, _ = app.issue_access_token(f"client-{i}", f"secret-{i}-xyz", request=NO_REQUEST)
        client = app._find(LegacyClient, LegacyClient.create_id(f"client-{i}"))
        app.record_legacy_use(client.id, token_display="…abcd", at=app.now(), request=NO_REQUEST)
        app.record_legacy_use(client.id, token_display="…abcd", at=app.now() + timedelta(hours=2),
                              request=NO_REQUEST)
    app.issue_legacy_credentials("app-0", by=admin, request=NO_REQUEST)
    app.disable_legacy_access("old-1", by=admin, request=NO_REQUEST)
    system.after_command()
    app.replace_personal_token("a@example.com", by=admin, request=NO_REQUEST)
    system.after_command()
    # Expiry: two keys expire, one revoked before; the scheduler's job records the other's ApiKey.Expired.
    soon = app.now() + timedelta(hours=1)
    expiring, _ = app.issue_key("app-0", description="short", scopes=["Predict"], expires_at=soon, by=admin,
                                request=NO_REQUEST)
    revoked, _ = app.issue_key("app-0", description="gone", scopes=["Predict"], expires_at=soon, by=admin,
                               request=NO_REQUEST)
    app.revoke_key(revoked["id"], by=admin, request=NO_REQUEST)
    system.after_command()
    with freeze_time(soon + timedelta(minutes=1)):
        assert expiry.record_expiries(app, system.expiring, app.now()) == 1
        system.after_command()


@pytest.mark.parametrize("page_size", [50_000, 7, 1], ids=["one page", "pages of 7", "pages of 1"])
def test_rebuilding_every_view_gives_identical_rows(system, page_size):
    """In one page and in many: a page's events fold the rows they touch in memory, keys staged by
    earlier pages are moved in first, and a roll, a restriction or a revocation in a later page than
    its key's issue reads the row its page loaded."""
    make_history(system)
    live = dump(system)
    live_index = index_state(system.index)
    assert len(live["audit_events"]) == system.keys_app.last_position()
    assert len(live["legacy_usage"]) == len(live["verification_legacy_clients"]) == 4
    assert sum(row[1] == "access_token" for row in live["verification"]) == 6

    assert len(live["key_limits"]) == 3 and len(live["app_limits"]) == 4
    assert len(live["expiry_expired"]) == 1 and len(live["expiry_rolls"]) == 11
    live_limits = limit_state(system)

    system.follower.page_size = page_size
    rebuilt_count = system.follower.rebuild()

    assert rebuilt_count == system.keys_app.last_position()
    assert dump(system) == live
    assert index_state(system.index) == live_index
    assert limit_state(system) == live_limits


def test_a_rebuild_leaves_usage_counts_alone(system):
    """Usage counts (key_usage) and last-used times are written by serving processes, not derived
    from events (no event per verification): TABLES leaves them out of the rebuild-equals-live
    comparison on purpose, and a rebuild must keep them as they are rather than empty them."""
    make_history(system)
    key_id = system.directory.keys("app-0", system.keys_app.now())[0]["id"]
    raw = bytes.fromhex(key_id.replace("-", ""))
    for _ in range(3):
        system.usage.valid(raw, 1796551200.0)
    system.usage.refused(raw, "RATE_LIMITED", 1796551200.0)
    system.usage.flush()

    def usage_rows():
        with system.views.read() as db:
            return sorted(tuple(row) for row in db.execute("SELECT key_id, hour, code, uses FROM key_usage"))

    before = usage_rows()
    assert before == [(key_id, 1796551200, "RATE_LIMITED", 1), (key_id, 1796551200, "VALID", 3)]
    system.follower.rebuild()
    assert usage_rows() == before


def test_rebuilding_one_view_leaves_the_others_alone(system):
    make_history(system)
    live = dump(system)
    with system.views.write() as db:
        db.execute("DELETE FROM directory_keys")  # damage one view
    system.follower.rebuild(["directory"])
    assert dump(system) == live


class _Cut(Exception):
    pass


def _cut_after(follower, pages: int) -> None:
    """The follower's next bulk pass stops (an error in its transaction) once ``pages`` pages committed."""
    read_page = follower._read_page
    calls = 0

    def cut(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > pages:
            raise _Cut
        return read_page(*args, **kwargs)

    follower._read_page = cut


def staged_keys(system) -> int | None:
    """Keys a bulk pass of the verification view left staged (SQLite), None where it stages none."""
    if system.views.dialect != "sqlite":
        return None
    with system.views.read() as db:
        return db.execute("SELECT COUNT(*) FROM verification_staged_keys").fetchone()[0]


@pytest.mark.parametrize("then", ["a live write", "a start"])
def test_a_verification_rebuild_cut_short_resumes_with_the_keys_it_staged(system, then):
    """New keys a bulk pass staged (SQLite: in the log's order, moved into the view in the B-tree's
    order later) are in the view before any later event applies, whoever writes next: another
    process's live write, or a start resuming the pass — and at the end of a pass. Cut after every
    third page in turn."""
    make_history(system)
    admin = Actor.system("test")
    for i in range(6):  # the log ends with a run of new keys (staged until the pass ends)
        system.keys_app.issue_key("app-1", description=f"last {i}", scopes=["Predict"], by=admin,
                                  request=NO_REQUEST)
    system.after_command()
    live = dump(system)
    follower = system.follower
    follower.page_size = 4
    pages = -(-system.keys_app.last_position() // 4)
    staged_at_a_cut = []
    for cut in range(1, pages, 3):
        _cut_after(follower, cut)
        with pytest.raises(_Cut):
            follower.rebuild(["verification"], reload=False)
        del follower._read_page
        staged_at_a_cut.append(staged_keys(system))
        if then == "a live write":
            follower.update_views()
        else:
            follower.start()
        assert dump(system) == live, f"cut after page {cut}"
        assert staged_keys(system) in (0, None)
    if system.views.dialect == "sqlite":
        assert max(staged_at_a_cut) > 0  # the cuts did leave keys staged


@pytest.mark.parametrize("second", ["builds", "fails"])
def test_the_audit_trail_built_in_a_second_process_gives_identical_rows(system, second):
    """On SQLite a long bulk pass builds the audit trail and the webhooks view in a second process
    (two cores at once) and adopts its rows in one transaction; should that process fail, this one
    builds them itself. Either way the rows are the live ones, the chain's head included."""
    make_history(system)
    live = dump(system)
    live_index = index_state(system.index)
    follower = system.follower
    if system.settings.uses_postgres:  # PostgreSQL's views are built in one process (the server has its own)
        assert follower.side_start is None
        return
    follower.side_from = 0  # any log is long enough
    if second == "fails":
        follower.side_start = lambda path, names, page_size: subprocess.Popen(
            [sys.executable, "-c", "raise SystemExit(3)"])
    noted = []
    audit = next(p for p in follower.projections if p.name == "audit")
    head = audit.on_head
    audit.on_head = lambda seq, digest: (noted.append((seq, digest)), head(seq, digest))
    follower.page_size = 7
    adopt, formats = system.views.adopt, []
    # SQLite's header says how the file was written (bytes 18-19: 1 with a rollback journal, 2 in WAL)
    system.views.adopt = lambda path, views: (formats.append(Path(path).read_bytes()[18:20]), adopt(path, views))[1]
    assert follower.rebuild() == system.keys_app.last_position()
    assert follower.side_builds == (1 if second == "builds" else 0)
    # The side file is scratch: written once, no WAL (its journal in memory, no fsync), thrown away on failure.
    assert formats == ([b"\x01\x01"] if second == "builds" else [])
    assert dump(system) == live
    assert index_state(system.index) == live_index
    last = live["audit_events"][-1]
    assert noted[-1] == (last[0], last[13])  # the tail mark told the chain's head
    assert not list(Path(system.settings.data_dir).glob("*.side-*")), "the side file is removed"


def test_a_process_that_finds_another_building_aside_builds_the_rest_and_waits(system):
    """Instances starting together: while another process holds the store's side lock (its second
    process builds the audit trail and the webhooks view), this one builds every other view, waits
    for the lock, and — that process gone without adopting anything — builds those two itself."""
    if system.settings.uses_postgres:
        assert system.follower.side_start is None
        return
    make_history(system)
    live = dump(system)
    follower = system.follower
    follower.side_from = 0
    held = system.views.side_lock(wait=False)
    assert held is not None
    done = []
    rebuilding = threading.Thread(target=lambda: done.append(follower.rebuild()), daemon=True)
    last = system.keys_app.last_position()
    try:
        rebuilding.start()
        deadline = time.monotonic() + 30
        while True:  # every other view built; the two left at 0 while the lock is held
            with system.views.read() as db:
                positions = system.views.positions(db)
            if positions.get("verification") == last and positions.get("directory") == last:
                break
            assert time.monotonic() < deadline, positions
            time.sleep(0.02)
        time.sleep(0.2)
        with system.views.read() as db:
            positions = system.views.positions(db)
        assert rebuilding.is_alive() and positions.get("audit") == positions.get("webhooks") == 0, positions
    finally:
        held.close()
    rebuilding.join(30)
    assert done == [last] and follower.side_builds == 0
    assert dump(system) == live


def test_a_big_merge_of_staged_keys_sorts_in_small_runs_and_gives_the_page_cache_back(system, monkeypatch):
    """SQLite: staged keys past ``_SORT_IN_RUNS_FROM`` go into the view with the page cache (and so the
    sort's runs) small meanwhile; the rows are the live ones, and the bulk pass's cache is back after."""
    import projections.verification as verification
    from projections.store import CACHE_KIB

    make_history(system)
    for i in range(3):  # the log ends with a run of new keys (staged until the pass ends)
        system.keys_app.issue_key("app-1", description=f"last {i}", scopes=["Predict"], by=Actor.system("test"),
                                  request=NO_REQUEST)
    system.after_command()
    live = dump(system)
    system.follower.page_size = 4  # keys staged at the end of each page, merged in the next
    monkeypatch.setattr(verification, "_SORT_IN_RUNS_FROM", 1)
    sizes = []
    sorting_in_runs = verification._sorting_in_runs

    @contextmanager
    def watched(db):
        with sorting_in_runs(db):
            sizes.append(db.execute("PRAGMA cache_size").fetchone()[0])
            yield
        sizes.append(db.execute("PRAGMA cache_size").fetchone()[0])

    monkeypatch.setattr(verification, "_sorting_in_runs", watched)
    system.follower.rebuild(["verification"])
    assert dump(system) == live
    if system.views.dialect == "sqlite":
        from projections.store import BULK_CACHE_KIB, SORT_RUN_KIB

        assert sizes[:2] == [-SORT_RUN_KIB, -BULK_CACHE_KIB] and len(set(sizes[::2])) == 1
        assert len(set(sizes[1::2])) == 1
        with system.views.read() as db:
            assert db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB


def _pragma_in_each(system, monkeypatch, method: str, pragma: str) -> dict:
    """Every view's ``method`` watched: the SQLite ``PRAGMA pragma`` its connection has when it is
    called, by view name (None on PostgreSQL), in the dict returned."""
    seen = {}
    sqlite = system.views.dialect == "sqlite"
    for projection in system.follower.projections:
        call = getattr(projection, method)

        def watched(db, name=projection.name, call=call):
            seen[name] = db.execute(f"PRAGMA {pragma}").fetchone()[0] if sqlite else None
            call(db)
        monkeypatch.setattr(projection, method, watched)
    return seen


def test_the_indexes_after_a_rebuild_are_sorted_in_small_runs(system, monkeypatch):
    """The indexes of views rebuilt in bulk are built with SQLite's page cache (and so its sort runs)
    at ``SORT_RUN_KIB``, the serving cache given back after; on PostgreSQL nothing changes. The rows
    and their indexes are those of the live path."""
    from projections.store import CACHE_KIB, SORT_RUN_KIB

    make_history(system)
    live = dump(system)
    seen = _pragma_in_each(system, monkeypatch, "create_indexes", "cache_size")
    system.follower.rebuild()
    assert dump(system) == live
    expected = -SORT_RUN_KIB if system.views.dialect == "sqlite" else None
    assert seen == {p.name: expected for p in system.follower.projections}
    if system.views.dialect == "sqlite":
        with system.views.read() as db:
            assert db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"audit_by_key", "audit_by_time"} <= names


def test_a_rebuild_drops_the_old_rows_without_zeroing_every_freed_page(system, monkeypatch):
    """SQLite: the views a rebuild drops are dropped with ``secure_delete`` at FAST (the log holds what
    their rows held), and the connection's own setting is back afterwards; the rows rebuilt are the
    live ones. PostgreSQL has no such setting: nothing asked."""
    make_history(system)
    live = dump(system)
    sqlite = system.views.dialect == "sqlite"
    with system.views.read() as db:
        before = db.execute("PRAGMA secure_delete").fetchone()[0] if sqlite else None
    seen = _pragma_in_each(system, monkeypatch, "drop", "secure_delete")
    system.follower.rebuild()
    assert dump(system) == live
    assert seen == {p.name: (2 if sqlite else None) for p in system.follower.projections}  # 2: FAST
    if sqlite:
        with system.views.read() as db:
            assert db.execute("PRAGMA secure_delete").fetchone()[0] == before


def test_the_second_process_can_be_turned_off(tmp_path):
    """KEYLEDGER_BULK_SECOND_PROCESS_FROM=off: every view built in one process, whatever the log."""
    from service.composition import build_system

    built = build_system(make_settings(data_dir=tmp_path / "var", pepper=TEST_PEPPER, bulk_second_process_from=None,
                                       legacy_sunset_at=datetime.now(UTC) + timedelta(days=30)), follow=False)
    try:
        assert built.follower.side_start is None and built.follower.side_views == ()
        make_history(built)
        built.follower.side_from = 0
        assert built.follower.rebuild() == built.keys_app.last_position()
        assert built.follower.side_builds == 0
    finally:
        built.close()


def _keys_run(system, count: int, *, revoke_at: int | None = None) -> list[dict]:
    """``count`` new keys, one command each (optionally one of them revoked at the ``revoke_at``-th)."""
    admin = Actor.system("test")
    keys = []
    for i in range(count):
        key, _ = system.keys_app.issue_key(f"app-{i % 5}", description=f"run {i}", scopes=["Predict"], by=admin,
                                           request=NO_REQUEST)
        keys.append(key)
        if i == revoke_at:
            system.keys_app.revoke_key(keys[i // 2]["id"], by=admin, request=NO_REQUEST)
    system.after_command()
    return keys


@pytest.mark.parametrize("second", ["stages the rest", "stops at a revocation", "fails"])
def test_a_verification_rebuild_in_two_halves_gives_identical_rows(system, second):
    """On SQLite a rebuild of the verification view alone, on a long log, hands the log's second half
    to a second process, which reads, judges and stages its new keys while this one builds the first
    half; its rows are taken in after this one's, in one transaction. It stages up to the first event
    the view handles otherwise (a revocation), and this process builds the rest; should it fail, this
    process builds it all. Either way the rows and the index are the live ones."""
    make_history(system)
    _keys_run(system, 120, revoke_at=100 if second == "stops at a revocation" else None)
    live = dump(system)
    live_index = index_state(system.index)
    follower = system.follower
    if system.settings.uses_postgres:
        assert follower.side_start is None
        return
    follower.side_from = 0
    follower.page_size = 7
    last = system.keys_app.last_position()
    started, taken = [], []
    start = follower.side_start
    if second == "fails":
        start = lambda path, names, page_size, after: subprocess.Popen(  # noqa: E731
            [sys.executable, "-c", "raise SystemExit(3)"])
    follower.side_start = lambda *args: (started.append(args[1:]), start(*args))[1]
    adopt = system.views.adopt_staged
    system.views.adopt_staged = lambda path, view, at: (taken.append(r := adopt(path, view, at)), r)[1]
    assert follower.rebuild(["verification"]) == last
    assert started == [(["verification"], 7, last // 2)]  # the half after the log's middle
    if second == "fails":
        assert taken == [] and follower.side_builds == 0
    else:
        [(through, read, sealed)] = taken
        assert sealed is not None and sealed <= last // 2 + 1  # seals due: the records it judged were sealed
        revocation = last - 20 + 1  # the revocation came after the 101st key of the run
        assert through == (last if second == "stages the rest" else revocation - 1)
        assert read == through - last // 2
        assert follower.side_builds == 1
    assert dump(system) == live
    assert index_state(system.index) == live_index
    assert staged_keys(system) == 0
    assert not list(Path(system.settings.data_dir).glob("*.side-*")), "the side file is removed"


@pytest.mark.parametrize("forgery", ["scopes made All", "seal removed"])
def test_a_record_whose_seal_fails_in_the_second_half_is_refused_as_in_one_process(system, settings, forgery):
    """The second process stages only records whose seal holds. A key issued whose stored state was
    changed outside the service (its scopes made All), or written without a seal after sealed ones
    (the first record of the second half, which that process judges without the first half's
    records), stops it there, and this process refuses the record, as a rebuild in one process
    does: the key is in neither view."""
    import sqlite3

    from service.domain.audit import SEAL_TAIL

    if system.settings.uses_postgres:
        return
    make_history(system)
    keys = _keys_run(system, 120)
    last = system.keys_app.last_position()
    forged = last - 10 if forgery == "scopes made All" else last // 2 + 1  # keys issued in the second half
    forged_key = keys[len(keys) - 1 - (last - forged)]
    db = sqlite3.connect(settings.events_path)
    with db:
        state = db.execute("SELECT state FROM stored_events WHERE rowid = ?", (forged,)).fetchone()[0]
        assert b'"Predict"' in state
        changed = state.replace(b'"Predict"', b'"All"') if forgery == "scopes made All" \
            else state[:-SEAL_TAIL - 1] + b"}"
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (changed, forged))
    db.close()
    follower = system.follower
    follower.side_from, follower.page_size = 0, 7
    follower.rebuild(["verification"])
    assert follower.side_builds == 1
    halves = dump(system)["verification"]
    follower.side_from = last + 1  # one process
    follower.rebuild(["verification"])
    assert follower.side_builds == 1
    assert dump(system)["verification"] == halves
    ids = {row[2] for row in halves}
    assert forged_key["id"] not in ids
    assert {k["id"] for k in keys if k is not forged_key} <= ids


def test_a_view_moved_by_another_process_meanwhile_is_not_given_the_staged_rows(system, settings):
    """Another process (a serving instance's live write) moves the verification view past the log's
    middle while this one builds the first half: the rows the second process staged would apply some
    events twice, so they are not taken in, and this process builds on from where the view stands.
    The rows are those of a rebuild in one process."""
    from service.composition import build_system

    if system.settings.uses_postgres:
        return
    make_history(system)
    _keys_run(system, 120)
    follower = system.follower
    follower.side_from, follower.page_size = 0, 7
    other = build_system(settings, follow=False)
    build_pages, taken = follower._build_pages, []
    adopt = system.views.adopt_staged
    system.views.adopt_staged = lambda path, view, at: (taken.append(r := adopt(path, view, at)), r)[1]

    def then_another_writes(projections, until=None):  # type: ignore[no-untyped-def]
        count = build_pages(projections, until)
        if until is not None:  # the first half built: a live write elsewhere brings the view to the end
            other.keys_app.issue_key("app-0", description="meanwhile", scopes=["Predict"], by=Actor.system("test"),
                                     request=NO_REQUEST)
            other.after_command()
        return count

    try:
        follower._build_pages = then_another_writes
        follower.rebuild(["verification"])
        del follower._build_pages
        assert taken == [None] and follower.side_builds == 0
        halves = dump(system)
        follower.side_from = system.keys_app.last_position() + 1  # one process
        follower.rebuild(["verification"])
        assert dump(system) == halves
        assert staged_keys(system) == 0
    finally:
        other.close()


_KILLED_MIDWAY = r"""
import os, signal, sys, time
from pathlib import Path
from service.composition import build_system
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER
settings = make_settings(data_dir=Path(sys.argv[1]), pepper=TEST_PEPPER)
system = build_system(settings, follow=False)
follower, store = system.follower, system.views
follower.side_from, follower.page_size = 0, 7
build_pages = follower._build_pages

def killed_midway(projections, until=None):  # the second process at work, a few pages of the first half in
    if until is not None:
        write, commits = store.write, []
        def write_then_die(*args, **kwargs):
            if len(commits) == 3:
                deadline = time.monotonic() + 20  # the second process has opened its side file
                while not list(Path(sys.argv[1]).glob("*.side-*")) and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
            commits.append(1)
            return write(*args, **kwargs)
        store.write = write_then_die
    return build_pages(projections, until)

follower._build_pages = killed_midway
follower.rebuild(["verification"])
sys.exit("not killed")
"""


def test_a_rebuild_in_two_halves_killed_midway_is_finished_by_the_next_start(settings):
    """kill -9 while the first half is built and the second process stages the rest: the next start
    removes the side file it left and finishes the view from where it stands (keys staged by the
    killed pass included): the rows and the index are the live ones."""
    from service.composition import build_system

    if settings.uses_postgres:
        return
    built = build_system(settings, follow=False)
    try:
        make_history(built)
        _keys_run(built, 120)
        live, live_index = dump(built), index_state(built.index)
    finally:
        built.close()
    killed = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(settings.data_dir)],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr[-2000:]
    restarted = build_system(settings, follow=False)
    try:
        assert dump(restarted) == live
        assert index_state(restarted.index) == live_index
        assert staged_keys(restarted) == 0
        assert not list(Path(settings.data_dir).glob("*.side-*")), "the killed process's side file is removed"
    finally:
        restarted.close()
