"""Ready-made PostgreSQL stores for the in-process systems of the PostgreSQL pass.

A fresh store costs its DDL — about 24 tables, 36 indexes, a type and a function: 0.3 to 0.8 s of
PostgreSQL's time on this kind of machine, paid by most tests of the PostgreSQL pass. Here the DDL
runs once: at the start of the run the application builds a store in a template schema (its own
code, ``build_system``), ``pg_dump --schema-only`` writes it down, and a background thread keeps a
few copies of it ready under spare names (``pool_<n>``). When an in-process system is about to
create its store — the moment ``service.composition.creating_tables`` is entered, under the same
advisory lock the application takes — and the data directory's schema does not exist yet, a ready
copy is renamed into place (``ALTER SCHEMA … RENAME``: a catalog update) and the application then
finds its tables there (its ``CREATE … IF NOT EXISTS`` do nothing; it replaces its insert function
itself). Until that moment nothing exists: a command that refuses to run without a store still
refuses. What the copy holds is the application's DDL and nothing else: the template's
``store_identity`` rows (the pepper's and the signing key's fingerprints) are dropped before the
dump, so the first instance on a copy records its own, as on a fresh store.

Systems built in the test process (``build_system``: the ``system`` fixture, in-process CLI
``main([...])`` calls) take copies that way, and so does the first start of a server process through
the e2e harness (``ServerProcess.start``: its master would create the store at once, before it
answers ``/readyz``), only on the suite's own database (a test pointing a server at a throwaway
cluster, or at a schema of its own, is left alone). CLI processes (``run_cli``: ``db init``, ``--init``,
a command refused for want of a store) and processes a test starts itself (the drill of several
instances creating one store at once) create their stores as in production. All of them see the same
schema: its name is still ``tests.backend.schema_for(data_dir)``.

tests/integration/test_schema_pool.py checks that a copy is the same store the application makes
(tables, columns, defaults, indexes, constraints, types, functions), and that it is used. Without
``pg_dump`` (or when it fails), no copies are made and every store is created by the application.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests import pass_lock

TEMPLATE = "keyledger_pool_template"
READY = 4  # copies kept ready: enough for a test that builds a few systems in a row

log = logging.getLogger("tests.schema_pool")


def _pg_dump() -> str | None:
    found = shutil.which("pg_dump")
    if found:
        return found
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin/pg_dump") if p.parent.parent.name.isdigit()),
                      key=lambda p: int(p.parent.parent.name)) if root.is_dir() else []
    return str(versions[-1]) if versions else None


def dump_template(conninfo: str, build: Callable[[Path, str], None]) -> str | None:
    """The DDL of a store the application made in schema ``TEMPLATE`` (``build(data_dir, schema)``
    makes it), as a script that makes the same store in a schema named ``TEMPLATE`` again; None when
    pg_dump is missing or fails."""
    import psycopg
    from psycopg import sql

    binary = _pg_dump()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="keyledger-template-") as folder:
        build(Path(folder) / "var", TEMPLATE)
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP TABLE {}.store_identity").format(sql.Identifier(TEMPLATE)))
    done = subprocess.run([binary, "--schema-only", "--no-owner", "--no-privileges", "--schema", TEMPLATE,
                           "--dbname", conninfo], capture_output=True, text=True, timeout=60, check=False)
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(TEMPLATE)))
    if done.returncode != 0:
        log.warning("pg_dump failed (%s): every store is created by the application",
                    done.stderr.strip().splitlines()[-1:] or done.returncode)
        return None
    # psql's meta-commands (\restrict …) are not SQL.
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith("\\"))


class SchemaPool:
    """Copies of the template under spare names, made ahead by a thread; ``place(schema)`` renames
    one to ``schema``."""

    def __init__(self, conninfo: str, script: str, ready: int = READY) -> None:
        self.conninfo = conninfo
        self.script = script
        self.ready: queue.Queue[str] = queue.Queue()
        self.wanted = ready
        self.placed = 0  # schemas renamed into place (tests/integration/test_schema_pool.py)
        self.missed = 0  # asked while no copy was ready (the application then makes its store itself)
        self._names = iter(range(1 << 62))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._fill, name="keyledger-schema-pool", daemon=True)

    def start(self) -> SchemaPool:
        self._wake.set()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(30)

    def _fill(self) -> None:
        import psycopg

        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            try:
                with psycopg.connect(self.conninfo, autocommit=True, application_name="keyledger-test-pool") as db:
                    while not self._stopped and self.ready.qsize() < self.wanted:
                        with pass_lock.beside():  # not while a timing-sensitive test runs
                            name = self.copy(db)
                        self.ready.put(name)
            except psycopg.Error as error:  # the run goes on without copies
                log.warning("the schema pool stops making copies: %s", error)
                return

    def copy(self, db: Any) -> str:
        with self._lock:
            name = f"pool_{next(self._names)}"
        with db.transaction():
            db.execute(self.script.replace(TEMPLATE, name))
        return name

    def place(self, schema: str, conninfo: str) -> bool:
        """Rename a ready copy to ``schema`` unless a schema of that name exists; whether it did.
        Under the application's advisory lock for creating that store (composition.creating_tables)."""
        import psycopg
        from psycopg import sql

        from projections.store import advisory_key

        try:
            name = self.ready.get_nowait()
        except queue.Empty:
            self._wake.set()
            self.missed += 1
            return False  # the application makes the store, as without a pool
        self._wake.set()
        with psycopg.connect(conninfo, autocommit=True, application_name="keyledger-test-pool") as db:
            db.execute("SELECT pg_advisory_lock(%s)", (advisory_key(f"keyledger:init:{schema}"),))
            if db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
                self.ready.put(name)
                return False
            with db.transaction():
                db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(schema)))
                # Function bodies are text: the ones naming the copy are made again with the new name
                # (the application replaces its own anyway; this keeps the copy right without it).
                for (definition,) in db.execute(
                        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = %s", (schema,)).fetchall():
                    if f'"{name}"' in definition or f"{name}." in definition:
                        db.execute(definition.replace(f'"{name}"', f'"{schema}"').replace(f"{name}.", f"{schema}."))
        self.placed += 1
        return True


POOL: SchemaPool | None = None
_ORIGINAL: list[Callable[[Any], Any]] = []
_DATABASE_URL: list[str] = []


def install(database_url: str, conninfo: str, build: Callable[[Path, str], None]) -> None:
    """Make the template, start the pool and put it in front of ``composition.creating_tables`` for
    stores on ``database_url`` (``conninfo``: the same database, for libpq). ``KEYLEDGER_TEST_SCHEMA_POOL=0`` leaves every store to the
    application."""
    global POOL
    if os.environ.get("KEYLEDGER_TEST_SCHEMA_POOL", "1") == "0":
        return
    script = dump_template(conninfo, build)
    if script is None:
        return
    from service import composition

    POOL = SchemaPool(conninfo, script).start()
    creating_tables = composition.creating_tables

    @contextlib.contextmanager
    def creating_tables_from_pool(settings: Any) -> Iterator[None]:
        if POOL is not None and settings.database_url == database_url:
            with contextlib.suppress(Exception):  # never worse than without the pool
                POOL.place(settings.database_schema, settings.database_conninfo)
        with creating_tables(settings):
            yield

    _ORIGINAL.append(creating_tables)
    composition.creating_tables = creating_tables_from_pool
    _DATABASE_URL.append(database_url)


def place_for_server(environment: dict[str, str]) -> None:
    """Before the first start of a server process (tests/e2e/conftest.py) on the run's database: its
    master would create the store as it starts; a copy is renamed into place instead, unless the
    schema exists (made earlier in the test, by a CLI ``db init`` or an in-process system)."""
    if POOL is None or not _DATABASE_URL or environment.get("KEYLEDGER_DATABASE_URL") != _DATABASE_URL[0]:
        return
    from tests.backend import schema_for

    if environment.get("KEYLEDGER_DATABASE_SCHEMA") != schema_for(environment["KEYLEDGER_DATA_DIR"]):
        return  # a schema the test chose
    with contextlib.suppress(Exception):  # never worse than without the pool
        POOL.place(environment["KEYLEDGER_DATABASE_SCHEMA"], POOL.conninfo)


def uninstall() -> None:
    global POOL
    if POOL is not None:
        POOL.stop()
        POOL = None
    _DATABASE_URL.clear()
    if _ORIGINAL:
        from service import composition

        composition.creating_tables = _ORIGINAL.pop()


def pool_in_use() -> SchemaPool:
    """The pool, for the tests about it: skipped with the reason when there is none (a failure under
    KEYLEDGER_REQUIRE_ALL=1)."""
    from tests.conftest import require  # tests/conftest.py imports this module

    require("the schema pool", POOL is not None,
            "pg_dump missing or failed, or KEYLEDGER_TEST_SCHEMA_POOL=0: every store is made by the application")
    assert POOL is not None
    return POOL
