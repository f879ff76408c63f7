"""tests/pass_lock.py: a timing-sensitive test of one pass never runs beside a test of the other."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests import pass_lock

pytestmark = pytest.mark.store_independent


def _in_thread(target) -> threading.Thread:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_timing_sensitive_test_waits_for_the_running_test_and_holds_back_the_next(tmp_path: Path) -> None:
    events: list[str] = []
    ordinary_running, release_ordinary = threading.Event(), threading.Event()

    def ordinary() -> None:  # the other pass's test, running when the timing-sensitive one arrives
        with pass_lock.running(alone=False, folder=tmp_path):
            ordinary_running.set()
            release_ordinary.wait(10)
            events.append("ordinary ends")

    def timing_sensitive() -> None:
        with pass_lock.running(alone=True, folder=tmp_path):
            events.append("timing-sensitive starts")
            time.sleep(0.2)
            events.append("timing-sensitive ends")

    def next_ordinary() -> None:  # asks after the timing-sensitive one: waits for it to end
        with pass_lock.running(alone=False, folder=tmp_path):
            events.append("next ordinary starts")

    first = _in_thread(ordinary)
    assert ordinary_running.wait(10)
    alone = _in_thread(timing_sensitive)
    time.sleep(0.2)
    assert events == []  # still waiting for the running test
    following = _in_thread(next_ordinary)
    time.sleep(0.2)
    assert events == []  # not overtaken while it waits
    release_ordinary.set()
    for thread in (first, alone, following):
        thread.join(10)
    assert events == ["ordinary ends", "timing-sensitive starts", "timing-sensitive ends", "next ordinary starts"]


def test_ordinary_tests_of_both_passes_run_side_by_side(tmp_path: Path) -> None:
    entered = threading.Event()

    def other_pass() -> None:
        with pass_lock.running(alone=False, folder=tmp_path):
            entered.set()

    with pass_lock.running(alone=False, folder=tmp_path):
        other = _in_thread(other_pass)
        assert entered.wait(5)
    other.join(5)


def test_without_a_lock_folder_nothing_waits(tmp_path: Path) -> None:
    with pass_lock.running(alone=True, folder=None), pass_lock.running(alone=True, folder=None):
        pass
