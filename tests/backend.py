"""Which store the suite runs on: the embedded SQLite store (default), or PostgreSQL when
``KEYLEDGER_TEST_DATABASE_URL`` names a server (``postgresql://postgres@127.0.0.1:5432/postgres``).

On PostgreSQL the session works in a database of its own (created at the start, dropped at the
end), and each data directory gets a schema of its own — so "the same data directory" still
means "the same store", for in-process systems and for server processes alike."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from service.settings import Settings

SERVER_URL = os.environ.get("KEYLEDGER_TEST_DATABASE_URL") or None
ON_POSTGRES = SERVER_URL is not None
BACKEND = "postgresql" if ON_POSTGRES else "sqlite"
# Chosen once per run and inherited by child processes.
TEST_DATABASE = os.environ.setdefault("KEYLEDGER_TEST_DATABASE_NAME", f"keyledger_test_{os.getpid()}")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))


DATABASE_URL = _with_database(SERVER_URL, TEST_DATABASE) if SERVER_URL else None

# -- the guard of store-independent tests ---------------------------------------------------------
# Every way a test reaches the store under test goes through a function below (settings, a server
# process's environment, a direct connection): a test that calls none of them runs the same on SQLite
# and on PostgreSQL. While a test marked ``store_independent`` runs (tests/conftest.py sets GUARDED to
# its id), calling one of them is an error, and the test fails.

GUARDED: str | None = None
REACHED: list[str] = []


class StoreReached(AssertionError):
    """A test marked ``store_independent`` reached the store under test."""


def _reaching(what: str) -> None:
    if GUARDED is not None:
        REACHED.append(what)
        raise StoreReached(f"{GUARDED} is marked store_independent but reached the store under test "
                           f"(tests.backend.{what}): remove the marker, so that it runs on both stores")


def schema_for(data_dir: Path | str) -> str:
    return "t_" + hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]


def make_settings(**kwargs: Any) -> Settings:
    """``Settings(**kwargs)``, on the suite's store: on PostgreSQL, the data directory's schema."""
    _reaching("make_settings")
    if ON_POSTGRES and "data_dir" in kwargs:
        kwargs.setdefault("database_url", DATABASE_URL)
        kwargs.setdefault("database_schema", schema_for(kwargs["data_dir"]))
    return Settings(**kwargs)


def environment_for(data_dir: Path | str) -> dict[str, str]:
    """The variables that put a server process on the suite's store."""
    _reaching("environment_for")
    if not ON_POSTGRES:
        return {}
    return {"KEYLEDGER_DATABASE_URL": DATABASE_URL, "KEYLEDGER_DATABASE_SCHEMA": schema_for(data_dir)}


def create_database() -> None:
    import psycopg

    with psycopg.connect(_conninfo(SERVER_URL), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
        # Tests create thousands of tables: don't wait for each commit to reach the disk.
        db.execute(f'ALTER DATABASE "{TEST_DATABASE}" SET synchronous_commit = off')


def drop_database() -> None:
    """Drop the run's database — in a detached process, so the pass does not wait for it: a run leaves
    about a thousand schemas (100,000 files), and on a disk mounted with ``discard`` (this machine's)
    removing them takes minutes. ``KEYLEDGER_TEST_DROP_WAIT=1`` waits for the drop."""
    import subprocess
    import sys

    code = ("import os, psycopg\n"
            "with psycopg.connect(os.environ['KEYLEDGER_DROP_CONNINFO'], autocommit=True) as db:\n"
            "    db.execute('DROP DATABASE IF EXISTS \"' + os.environ['KEYLEDGER_DROP_DATABASE'] + '\" WITH (FORCE)')\n")
    argv = [sys.executable, "-c", code]  # the connection string in the environment, not on the command line
    env = {**os.environ, "KEYLEDGER_DROP_CONNINFO": _conninfo(SERVER_URL), "KEYLEDGER_DROP_DATABASE": TEST_DATABASE}
    if os.environ.get("KEYLEDGER_TEST_DROP_WAIT") == "1":
        subprocess.run(argv, env=env, check=True)
    else:
        subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)


def connect(data_dir: Path | str) -> Any:
    """A connection to the data directory's schema (tests that look at rows directly)."""
    _reaching("connect")
    import psycopg

    assert DATABASE_URL is not None
    return psycopg.connect(_conninfo(DATABASE_URL), autocommit=True,
                           options=f"-c search_path={schema_for(data_dir)}")


def conninfo() -> str:
    """The libpq connection string of the run's database (tests/schema_pool.py)."""
    assert DATABASE_URL is not None
    return _conninfo(DATABASE_URL)


def _conninfo(url: str) -> str:
    from service.settings import parse_database_url

    parts = parse_database_url(url, "KEYLEDGER_TEST_DATABASE_URL")
    return (f"host={parts['host']} port={parts['port']} dbname={parts['dbname']} user={parts['user']}"
            + (f" password={parts['password']}" if parts["password"] else ""))


def view_rows(settings: Settings, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of the views as stored, read directly from the store (not through the service)."""
    _reaching("view_rows")
    from service.composition import view_store

    store = view_store(settings)
    try:
        with store.read() as db:
            return [tuple(row) for row in db.execute(sql, params).fetchall()]
    finally:
        store.close()


def point_environment_at(monkeypatch: Any, data_dir: Path | str) -> None:
    """Set the process's KEYLEDGER_* variables so an in-process ``keyledger`` command uses the
    store of ``data_dir``."""
    _reaching("point_environment_at")
    monkeypatch.setenv("KEYLEDGER_DATA_DIR", str(data_dir))
    for name, value in environment_for(data_dir).items():
        monkeypatch.setenv(name, value)


def event_states(data_dir: Path | str, topic_suffix: str) -> list[dict]:
    """The stored state (JSON, as recorded) of every event whose topic ends with ``topic_suffix``,
    read from the event store of ``data_dir`` directly."""
    _reaching("event_states")
    import json
    import sqlite3

    pattern = "%" + topic_suffix
    if ON_POSTGRES:
        with connect(data_dir) as db:
            rows = db.execute("SELECT state FROM keyledger_events WHERE topic LIKE %s ORDER BY notification_id",
                              (pattern,)).fetchall()
    else:
        db = sqlite3.connect(Path(data_dir) / "events.sqlite")
        try:
            rows = db.execute("SELECT state FROM stored_events WHERE topic LIKE ? ORDER BY rowid",
                              (pattern,)).fetchall()
        finally:
            db.close()
    return [json.loads(bytes(state) if not isinstance(state, str) else state) for (state,) in rows]
