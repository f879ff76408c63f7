"""Dropping every view and replaying the log gives the same rows as following it live."""

from __future__ import annotations

from projections.verification import VerificationIndex
from service.domain.actors import NO_REQUEST, Actor

TABLES = ("verification", "directory_accounts", "directory_apps", "directory_keys", "audit_events",
          "audit_aggregate_apps", "audit_app_owners", "projection_tracking")


def dump(system) -> dict[str, list[tuple]]:
    with system.views.read() as db:
        return {t: [tuple(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in TABLES}


def index_state(index: VerificationIndex) -> dict:
    return {d: (e.kind, e.id, e.app_id, e.role, e.scopes, e.expires_at, e.ends_at)
            for d, e in index.by_digest.items()}


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
    system.after_command()


def test_rebuilding_every_view_gives_identical_rows(system):
    make_history(system)
    live = dump(system)
    live_index = index_state(system.index)
    assert len(live["audit_events"]) == system.keys_app.last_position()

    rebuilt_count = system.follower.rebuild()

    assert rebuilt_count == system.keys_app.last_position()
    assert dump(system) == live
    assert index_state(system.index) == live_index


def test_rebuilding_one_view_leaves_the_others_alone(system):
    make_history(system)
    live = dump(system)
    with system.views.write() as db:
        db.execute("DELETE FROM directory_keys")  # damage one view
    system.follower.rebuild(["directory"])
    assert dump(system) == live
