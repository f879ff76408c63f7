"""The PostgreSQL pass's ready-made stores (tests/schema_pool.py): a copy renamed into place is the
store the application makes, it is taken only when the application creates its store, and it is the
data directory's store for everyone."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.composition import build_system, store_exists
from tests import backend, schema_pool
from tests.conftest import TEST_PEPPER, wait_until

pytestmark = pytest.mark.postgres_only("the copies are PostgreSQL schemas")


def describe(schema: str) -> dict[str, list[tuple]]:
    """Everything a store is made of in ``schema``, its name written S."""
    queries = {
        "attributes": """
            SELECT c.relname, c.relkind, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid), co.collname
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
            LEFT JOIN pg_collation co ON co.oid = a.attcollation
            WHERE n.nspname = %s ORDER BY 1, 3""",
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1",
        "constraints": """
            SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid)
            FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s ORDER BY 1, 2""",
        "sequences": """
            SELECT sequencename, data_type::text, start_value, increment_by, max_value, cycle
            FROM pg_sequences WHERE schemaname = %s ORDER BY 1""",
        "functions": """
            SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = %s ORDER BY 1""",
        "types": """
            SELECT t.typname, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = %s ORDER BY 1""",
        "triggers": """
            SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal ORDER BY 1, 2""",
    }
    with backend.connect(Path("/")) as db:
        found = {what: [tuple(v.replace(schema, "S") if isinstance(v, str) else v for v in row)
                        for row in db.execute(sql, (schema,)).fetchall()]
                 for what, sql in queries.items()}
        found["rows"] = [(name, db.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()[0])
                         for name in dict.fromkeys(row[0] for row in found["attributes"] if row[1] == "r")]
    return found


def _build(data_dir: Path):
    settings = backend.make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05)
    build_system(settings).close()
    return settings


def test_a_copy_is_the_store_the_application_makes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = schema_pool.pool_in_use()
    with monkeypatch.context() as without:
        without.setattr(schema_pool, "POOL", None)
        made = _build(tmp_path / "made")  # by the application's own DDL
    assert wait_until(lambda: pool.ready.qsize() > 0, timeout=30), "no copy ready within 30 s"
    placed = pool.placed
    copied = _build(tmp_path / "copied")
    assert pool.placed == placed + 1, "the build did not take a ready copy"
    made_store, copied_store = describe(made.database_schema), describe(copied.database_schema)
    assert made_store["attributes"] and made_store["indexes"] and made_store["functions"]
    assert copied_store == made_store


def test_a_copy_is_placed_only_when_the_application_creates_its_store(tmp_path: Path) -> None:
    pool = schema_pool.pool_in_use()
    assert wait_until(lambda: pool.ready.qsize() > 0, timeout=30)
    settings = backend.make_settings(data_dir=tmp_path / "var", pepper=TEST_PEPPER)
    assert not store_exists(settings)  # commands that need an existing store still refuse
    placed = pool.placed
    system = build_system(settings, follow=False)
    try:
        assert store_exists(settings) and pool.placed == placed + 1
        # The fingerprints of this store's pepper and signing key, recorded by this first instance.
        assert len(backend.view_rows(settings, "SELECT name FROM store_identity")) == 2
    finally:
        system.close()
    build_system(settings, follow=False).close()  # the second start finds its store: no copy taken
    assert pool.placed == placed + 1


def test_the_copy_is_the_data_directory_s_store_for_everyone(tmp_path: Path) -> None:
    settings = backend.make_settings(data_dir=tmp_path / "var", pepper=TEST_PEPPER)
    system = build_system(settings, follow=False)
    try:
        from service.domain.actors import NO_REQUEST, Actor

        system.keys_app.register_account(email="a@example.com", name="A", role="admin", by=Actor.system("test"),
                                         request=NO_REQUEST)
    finally:
        system.close()
    # What a server process started with environment_for(data_dir) reads: the schema named after the folder.
    assert backend.environment_for(settings.data_dir)["KEYLEDGER_DATABASE_SCHEMA"] == settings.database_schema
    with backend.connect(settings.data_dir) as db:
        assert db.execute("SELECT count(*) FROM keyledger_events").fetchone()[0] >= 1
