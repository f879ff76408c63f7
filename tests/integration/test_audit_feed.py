"""service.audit_feed.follow over the real audit view: resumable by position, new events as they
are committed, heartbeats when there are none, and an end at its limit or when told to stop."""

from __future__ import annotations

import threading
import time

import pytest

from projections.audit import AuditFilter
from service.audit_feed import events_after, follow
from service.domain.actors import NO_REQUEST, Actor
from tests.conftest import make_account


@pytest.mark.timing_sensitive  # wall-clock bound
def test_follow_yields_what_is_committed_after_the_position_then_heartbeats(system):
    for n in range(3):
        make_account(system, "owner", f"o{n}@example.com")
    head = system.audit.last_seq()
    stopping = threading.Event()
    feed = follow(system.audit, AuditFilter(), after=head - 1, poll=0.02, heartbeat=0.2, stopping=stopping)

    assert [e["seq"] for e in next(feed)] == [head]
    make_account(system, "owner", "late@example.com")
    assert [e["seq"] for e in next(feed)] == [head + 1]
    started = time.monotonic()
    assert next(feed) is None  # nothing new: a heartbeat
    assert time.monotonic() - started < 1.0
    stopping.set()
    assert list(feed) == []


def test_filters_apply_and_a_sparse_match_is_found_beyond_a_page(system):
    for n in range(1205):  # more than a page of non-matching events before the match
        system.keys_app.register_account(email=f"x{n}@example.com", name="x", role="owner",
                                         by=Actor.system("bulk"), request=NO_REQUEST)
    system.after_command()
    auditor = make_account(system, "auditor", "auditor@example.com")
    only = list(events_after(system.audit, AuditFilter(actor_kind="system", actor_id="test")))
    assert [e["data"]["email"] for e in only] == [auditor["email"]]
    everything = list(events_after(system.audit, AuditFilter()))
    assert [e["seq"] for e in everything] == list(range(1, system.audit.last_seq() + 1))
    assert [e["seq"] for e in events_after(system.audit, AuditFilter(), after=1200)] == \
        list(range(1201, system.audit.last_seq() + 1))


def test_follow_ends_at_its_limit(system):
    make_account(system, "owner", "o@example.com")
    started = time.monotonic()
    batches = list(follow(system.audit, AuditFilter(), poll=0.02, heartbeat=0.1, until=started + 0.5))
    assert batches[0] and batches[0][0]["seq"] == 1
    assert None in batches  # heartbeats while nothing happened
    assert 0.5 <= time.monotonic() - started < 5.0


def test_the_command_follows_in_json_lines_only_and_takes_a_position(system, data_dir, monkeypatch, capsys):
    from service.cli import main
    from tests import backend
    from tests.conftest import TEST_PEPPER

    for name, value in {"KEYLEDGER_DATA_DIR": str(data_dir), "KEYLEDGER_PEPPER": TEST_PEPPER,
                        **backend.environment_for(data_dir)}.items():
        monkeypatch.setenv(name, value)
    make_account(system, "owner", "o@example.com")
    assert main(["audit", "export", "--follow", "--format", "csv"]) == 2
    assert "JSON Lines only" in capsys.readouterr().err
    assert main(["audit", "export", "--since-seq", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == system.audit.last_seq() - 1 and '"seq": 1,' not in out
    for bad in ("-1", "x"):
        try:
            main(["audit", "export", "--since-seq", bad])
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"--since-seq {bad} was accepted")
