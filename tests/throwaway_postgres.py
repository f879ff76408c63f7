"""A throwaway PostgreSQL cluster for tests and drills that stop and start the database.

``ThrowawayPostgres`` runs ``initdb`` into a fresh temporary folder, starts the server with
``pg_ctl`` on a free port of 127.0.0.1 (its socket in that folder too), and stops and removes it
all afterwards — on failure as well, and at interpreter exit as a last resort. It never touches
the machine's own clusters: a test may stop and start this one as it likes.

``initdb`` refuses to run as root: as root, the folder is given to the ``postgres`` user and the
binaries run as that user (``runuser -u postgres``). The binaries are found with ``pg_config
--bindir``, then under ``/usr/lib/postgresql/<newest>/bin``, then on ``PATH``.

No pytest here: ``scripts/fault_outage.py`` uses it too.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

RUN_AS = "postgres"  # who runs the server when we are root
_LIVE: set[ThrowawayPostgres] = set()


def _binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, if any."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        try:
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10,
                                   check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found:
            candidates.append(Path(found))
    versions = Path("/usr/lib/postgresql")
    if versions.is_dir():
        numbered = [p for p in versions.iterdir() if p.name.replace(".", "").isdigit()]
        candidates += [p / "bin" for p in sorted(numbered, key=lambda p: float(p.name), reverse=True)]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def unavailable_reason() -> str | None:
    """Why a throwaway cluster cannot be made here (None if it can)."""
    if _binaries() is None:
        return "initdb and pg_ctl were not found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root, and runuser (to run initdb as the postgres user) is missing"
        try:
            import pwd

            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root, and there is no {RUN_AS!r} user to run initdb as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """One PostgreSQL cluster of our own: ``start()``, ``stop()``/``start()`` at will, ``remove()``."""

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        bindir = _binaries()
        if bindir is None:
            raise RuntimeError(unavailable_reason())
        self.bindir = bindir
        self.settings = {"listen_addresses": "127.0.0.1", "max_connections": "200", "fsync": "on",
                         **(settings or {})}
        # Not under pytest's tmp_path: the postgres user must be able to reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="keyledger-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.initialised = False
        _LIVE.add(self)

    # -- running the binaries ----------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
                               f"\n(server log {self.log}:\n{self.log_tail()})")
        return done

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> ThrowawayPostgres:
        """Create the cluster (the first time) and start it; returns when it accepts connections."""
        if not self.initialised:
            if os.geteuid() == 0:
                shutil.chown(self.root, RUN_AS)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
            self.initialised = True
        for attempt in range(3):
            if not self.port:
                self.port = _free_port()
            options = " ".join([f"-p {self.port}", f"-k {self.root}"]
                               + [f"-c {name}={value}" for name, value in self.settings.items()])
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                          "start")
                return self
            except RuntimeError:
                if attempt == 2 or "already in use" not in self.log_tail():
                    raise
                self.port = 0  # another process took the port meanwhile: another one
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are cut, as an operator's or a crash's stop would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        """Stop the server if it runs (immediately) and delete every file of the cluster."""
        _LIVE.discard(self)
        if self.initialised and self.running:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            except (RuntimeError, OSError, subprocess.SubprocessError):
                pid = self._postmaster_pid()
                if pid:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                    time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> ThrowawayPostgres:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- connecting ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust authentication on 127.0.0.1)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def connect(self, **kwargs: object):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, dbname="postgres", user="postgres",
                               autocommit=True, connect_timeout=5, **kwargs)


@atexit.register
def _remove_leftovers() -> None:
    """A last resort when a test run is interrupted before its finalizers run."""
    for cluster in list(_LIVE):
        cluster.remove()
