"""The background writer: what the request path records, written off it — once per key, bounded,
retried while the store is unavailable, waited for only while the store is believed reachable."""

from __future__ import annotations

import threading

import pytest

from service.background_writer import BackgroundWriter, QueueFull
from service.domain.errors import Unavailable

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)


class Store:
    def __init__(self) -> None:
        self.rows: list = []
        self.down = False
        self.attempts = 0
        self.gate = threading.Event()
        self.gate.set()

    def write(self, item) -> None:  # type: ignore[no-untyped-def]
        self.attempts += 1
        self.gate.wait()
        if self.down:
            raise Unavailable("the store is down")
        if item == "bug":
            raise ValueError("cannot be written, ever")
        self.rows.append(item)


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        done.wait(0.01)
    return bool(predicate())


def test_a_record_is_written_before_submit_returns_while_the_store_is_up():
    store = Store()
    writer = BackgroundWriter(store.write, name="test", wait=5.0)
    assert writer.submit("a", 1) is True
    assert store.rows == [1]
    writer.close()


def test_a_second_submission_of_a_queued_key_joins_the_first():
    store = Store()
    store.gate.clear()  # the first write is under way and slow
    writer = BackgroundWriter(store.write, name="test", wait=0)
    assert writer.submit("a", 1) is False
    assert wait_for(lambda: store.attempts == 1)
    writer.submit("b", 2)
    writer.submit("b", 3)  # same key as a queued record: not queued again
    assert len(writer) == 2
    store.gate.set()
    assert wait_for(lambda: len(writer) == 0)
    assert store.rows == [1, 2]
    writer.close()


def test_while_the_store_is_known_down_submit_returns_at_once_and_nothing_is_attempted():
    store = Store()
    healthy = [False]
    writer = BackgroundWriter(store.write, name="test", wait=60.0, healthy=lambda: healthy[0],
                              first_pause=0.01, max_pause=0.02)
    assert writer.submit("a", 1) is False  # a wait of 60 s would hang the test
    assert writer.submit("b", 2) is False
    threading.Event().wait(0.1)
    assert store.attempts == 0 and len(writer) == 2
    healthy[0] = True
    assert wait_for(lambda: store.rows == [1, 2])
    writer.close()


def test_an_unavailable_store_is_retried_until_it_takes_the_record():
    store = Store()
    store.down = True
    writer = BackgroundWriter(store.write, name="test", wait=5.0, first_pause=0.01, max_pause=0.02)
    assert writer.submit("a", 1) is False  # the attempt failed: the caller stops waiting
    assert wait_for(lambda: store.attempts >= 3)
    assert store.rows == [] and len(writer) == 1
    store.down = False
    assert wait_for(lambda: store.rows == [1])
    assert writer.retried >= 2 and writer.written == 1
    writer.close()


def test_a_record_that_can_never_be_written_is_dropped_not_retried(caplog):
    store = Store()
    writer = BackgroundWriter(store.write, name="test", wait=5.0)
    assert writer.submit("x", "bug") is False
    assert writer.submit("a", 1) is True
    assert store.rows == [1] and writer.dropped == 1 and store.attempts == 2
    assert "a record could not be written and is dropped" in caplog.text
    writer.close()


def test_the_queue_is_bounded():
    store = Store()
    writer = BackgroundWriter(store.write, name="test", capacity=2, wait=0, healthy=lambda: False)
    writer.submit("a", 1)
    writer.submit("b", 2)
    writer.submit("a", 1)  # already queued: takes no room
    with pytest.raises(QueueFull):
        writer.submit("c", 3)
    assert writer.close(timeout=0.1) == 2


def test_close_writes_what_is_queued_and_then_takes_nothing():
    store = Store()
    store.gate.clear()
    writer = BackgroundWriter(store.write, name="test", wait=0)
    writer.submit("a", 1)
    writer.submit("b", 2)
    store.gate.set()
    assert writer.close(timeout=5.0) == 0
    assert store.rows == [1, 2]
    with pytest.raises(QueueFull):
        writer.submit("c", 3)
