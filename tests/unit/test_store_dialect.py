"""The dialect layer: one portable subset of SQL, adapted mechanically per store."""

from __future__ import annotations

import sqlite3

import pytest

from projections.store import _sqlite_sql, advisory_key, postgres_sql, upsert

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)


def test_upsert_is_insert_on_conflict_update_of_every_other_column():
    assert upsert("t", ("id", "a", "b"), ("id",)) == (
        "INSERT INTO t (id, a, b) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET a = excluded.a, b = excluded.b")
    assert upsert("t", ("id", "a"), ("id",), update=()) == "INSERT INTO t (id, a) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
    assert upsert("t", ("id", "a"), ("id",), select="SELECT ?, a FROM t WHERE id = ?").startswith(
        "INSERT INTO t (id, a) SELECT ?, a FROM t WHERE id = ? ON CONFLICT (id)")


def test_postgres_words_for_types_placeholders_and_percent_signs():
    ddl = "CREATE TABLE IF NOT EXISTS v (d BLOB PRIMARY KEY, t TEXT NOT NULL, n INTEGER, r REAL) WITHOUT ROWID"
    assert postgres_sql(ddl) == ('CREATE TABLE IF NOT EXISTS v (d BYTEA PRIMARY KEY, t TEXT COLLATE "C" NOT NULL, '
                                 "n BIGINT, r DOUBLE PRECISION)")
    assert postgres_sql("SELECT a FROM t WHERE b = ? AND c LIKE '5%'") == "SELECT a FROM t WHERE b = %s AND c LIKE '5%%'"
    assert postgres_sql("UPDATE text_table SET integer_col = ?") == "UPDATE text_table SET integer_col = %s"


def test_sqlite_speaks_the_same_upsert_and_least_greatest():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, a REAL, n INTEGER)")
    sql = upsert("t", ("id", "a", "n"), ("id",))
    db.execute(sql, ("x", 2.0, 1))
    db.execute(sql, ("x", 3.0, 2))
    db.execute(_sqlite_sql("UPDATE t SET a = LEAST(COALESCE(a, ?), ?), n = GREATEST(n, ?)"), (9, 1.5, 7))
    assert db.execute("SELECT * FROM t").fetchall() == [("x", 1.5, 7)]


def test_advisory_keys_are_stable_signed_64_bit_and_distinct():
    keys = {advisory_key(f"keyledger:views:{schema}") for schema in ("public", "a", "b", "t_1")}
    assert len(keys) == 4 and all(-(1 << 63) <= k < (1 << 63) for k in keys)
    assert advisory_key("keyledger:views:public") == advisory_key("keyledger:views:public")
