"""A follower killed between or inside its batches — or half-way through a rebuild — resumes with no
event missed or applied twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.domain.actors import NO_REQUEST, Actor
from tests.integration.crash_follower import CountingProjection, build

ROOT = Path(__file__).resolve().parents[2]


def write_events(data_dir: Path, apps: int) -> int:
    keys_app, store, _ = build(data_dir, CountingProjection())
    admin = Actor.system("test")
    owner, _ = keys_app.register_account(email="o@example.com", name="O", role="owner", by=admin,
                                         request=NO_REQUEST)
    for i in range(apps):
        _, key, _ = keys_app.create_app(name=f"App {i}", slug=f"app-{i}", owner_id=owner["id"], by=admin,
                                        request=NO_REQUEST)
        keys_app.change_key(key["id"], scopes=["Predict"], by=admin, request=NO_REQUEST)
    last = keys_app.last_position()
    store.close()
    keys_app.close()
    return last


def applied(data_dir: Path) -> dict[int, int]:
    _, store, _ = build(data_dir, CountingProjection())
    with store.read() as db:
        rows = dict(db.execute("SELECT position, times FROM applied").fetchall())
        tracked = store.position(db, "counting")
    store.close()
    return rows, tracked


@pytest.mark.parametrize("mode, kill_at", [("after-commit", 3), ("mid-batch", 25), ("rebuild", 4)])
def test_killed_follower_resumes_exactly_once(tmp_path, mode, kill_at):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    last = write_events(data_dir, apps=20)  # 1 + 20 × 3 = 61 events, batches of 10

    crashed = subprocess.run([sys.executable, str(ROOT / "tests/integration/crash_follower.py"),
                              str(data_dir), mode, str(kill_at)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    rows, tracked = applied(data_dir)
    if mode == "after-commit":
        assert tracked == 30 and sorted(rows) == list(range(1, 31))
    elif mode == "rebuild":  # the view dropped (1st commit), then three pages of ten (2nd to 4th)
        assert tracked == 30 and sorted(rows) == list(range(1, 31))
    else:  # the open transaction died with the process: nothing of batch 3 is there
        assert tracked == 20 and sorted(rows) == list(range(1, 21))

    _, store, follower = build(data_dir, CountingProjection())
    follower.start()
    store.close()

    rows, tracked = applied(data_dir)
    assert tracked == last
    assert sorted(rows) == list(range(1, last + 1)), "an event was missed"
    assert set(rows.values()) == {1}, "an event was applied twice"
