"""A small filesystem of the test's own: a tmpfs mounted on a folder under the test's tmp_path.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the test is skipped with the
reason, and fails under ``KEYLEDGER_REQUIRE_ALL=1``. The mount is always undone at the end.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


@contextmanager
def small_filesystem(where: Path, size: str = "8m") -> Iterator[Path]:
    """``where`` becomes the root of a fresh tmpfs of ``size`` (e.g. ``8m``) until the block ends."""
    where.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    done = _run(mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)) if mount else None
    require("mounting a tmpfs", done is not None and done.returncode == 0,
            (done.stderr.strip() if done is not None else "no mount command") or "mount failed")
    try:
        yield where
    finally:
        _run("umount", "-l", str(where))


def remount_read_only(where: Path) -> None:
    done = _run("mount", "-o", "remount,ro", str(where))
    assert done.returncode == 0, done.stderr


def fill(where: Path) -> Path:
    """Write one file until the filesystem has no space left; returns it (delete it to free).

    Unbuffered, in ever smaller writes down to a byte: a buffered file kept what a refused write
    held and raised ENOSPC again at its close (whether it did hung on how the free space divided)."""
    ballast = where / "ballast"
    size = 1 << 16
    with ballast.open("wb", buffering=0) as out:
        while size:
            try:
                out.write(b"\0" * size)
            except OSError:
                size //= 2
    return ballast
