"""A process reads its own writes from memory on PostgreSQL (``reading_own_writes``: the catch-up right
after a command, no round trip). Such an answer may stop short of the log's end — at another
process's record, or at one of this process's whose thread has not noted it yet. The follower's read
takes that (the next catch-up reads on); the audit trail's read-back of a batch it has just read must
not: it needs every record of the batch, or it fails the batch ("the stored record at position N could
not be read back"), as a scheduler under load once did in CI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.composition import System, build_system
from service.domain.actors import NO_REQUEST, Actor
from service.domain.audit import GENESIS, chain_hash
from tests import backend
from tests.conftest import TEST_PEPPER

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def two(tmp_path) -> Iterator[tuple[System, System]]:
    """Two instances on one store, without follower threads."""
    settings = backend.make_settings(data_dir=tmp_path / "var", pepper=TEST_PEPPER)
    one = build_system(settings, follow=False)
    other = build_system(settings, follow=False)
    yield one, other
    other.close()
    one.close()


def _account(system: System, n: int) -> int:
    system.keys_app.register_account(email=f"o{n}@example.com", name="O", role="owner",
                                     by=Actor.system("test"), request=NO_REQUEST)
    return system.keys_app.last_position()


def test_a_read_back_gets_another_process_s_record_after_this_one_s(two: tuple[System, System]) -> None:
    one, other = two
    mine = _account(one, 1)
    theirs = _account(other, 2)
    assert theirs == mine + 1
    app = one.keys_app
    with app.reading_own_writes():
        short = app.raw_records(mine - 1, 2)  # from memory: this process's record only
        read_back = app.stored_records(mine - 1, 2)
    assert [r[0] for r in short] == [mine]  # the shortcut this test is about is taken here
    assert [r[0] for r in read_back] == [mine, theirs]
    assert read_back[1][1] == read_back[1][1].lower() and len(read_back[1][1]) == 32  # as stored: hex digits


def test_the_audit_view_writes_a_batch_read_before_this_process_noted_its_own(two: tuple[System, System]) -> None:
    """The race CI met, step by step: a catch-up after a command read a batch from the store (this
    process's record and another's), and by the audit view's read-back the first had been noted in
    memory. The batch is written whole, its chain as the stored records give it."""
    one, other = two
    mine = _account(one, 3)
    theirs = _account(other, 4)
    batch = one.keys_app.read_events(mine - 1, 10)  # from the store: both records
    assert [position for position, _ in batch] == [mine, theirs]
    audit = next(p for p in one.follower.projections if p.name == "audit")
    with one.keys_app.reading_own_writes(), one.views.write() as db:
        audit.process_batch(db, batch)
    expected, head = [], GENESIS
    for record in one.keys_app.stored_records(0, 10_000):
        head = chain_hash(head, *record)
        expected.append((record[0], head))
    assert [position for position, _ in expected] == [mine, theirs]
    assert list(one.audit.chain()) == expected
