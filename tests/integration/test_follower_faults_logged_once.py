"""A store that cannot be used for a while (a full disk, an outage) is one warning from the
follower, without a traceback, and one line when following works again — not a traceback every
poll. A failure that is not a store fault (a bug) keeps its traceback."""

from __future__ import annotations

import logging
import time

import pytest

from projections.follower import Follower
from projections.store import SqliteViewStore
from service.domain.errors import Unavailable

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)


class FlakySource:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.polls = 0

    def last_position(self) -> int:
        self.polls += 1
        if self.error is not None:
            raise self.error
        return 0

    def read_events(self, after: int, limit: int) -> list:
        return []


def _wait_polls(source: FlakySource, count: int) -> None:
    start = source.polls
    deadline = time.monotonic() + 5
    while source.polls < start + count:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_store_fault_is_one_warning_and_recovery_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="keyledger.projections")
    source = FlakySource()
    follower = Follower(source, SqliteViewStore(tmp_path / "views.sqlite"), [])
    errors = []
    follower.on_error = lambda: errors.append(1)
    follower.follow(0.01)
    try:
        source.error = Unavailable("The event store cannot be read right now; retry shortly.")
        _wait_polls(source, 20)
        assert len(errors) >= 20  # every failed poll is still counted (the metric)
        source.error = None
        _wait_polls(source, 3)
        source.error = ValueError("a bug")
        _wait_polls(source, 5)
    finally:
        follower.stop()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records
             if r.name == "keyledger.projections"]
    assert lines[0] == ("WARNING", "following the event log failed (The event store cannot be read right now; "
                                   "retry shortly.); retrying every 0.01 s", False)
    assert lines[1] == ("INFO", "following the event log works again", False)
    assert lines[2] == ("ERROR", "following the event log failed; retrying", True)
    assert len(lines) == 3
