"""``projections.store.copy_rows``: a table's rows copied from an attached SQLite database (a bulk pass's
side file) into the main one, by column name whatever the columns' order, whole rows at once when the
two tables have the same columns in the same order."""

from __future__ import annotations

import sqlite3

from projections.store import copy_rows


def _pair(tmp_path, main_ddl: str, side_ddl: str | None) -> sqlite3.Connection:
    side = sqlite3.connect(tmp_path / "side.sqlite")
    if side_ddl is not None:
        side.execute(side_ddl)
        side.executemany("INSERT INTO t (id, name, score) VALUES (?, ?, ?)",
                         [(1, "a", 1.5), (2, None, None), (3, "c\x00d", -2.0)])
        side.commit()
    side.close()
    db = sqlite3.connect(tmp_path / "main.sqlite", isolation_level=None)
    db.execute(main_ddl)
    db.execute("ATTACH DATABASE ? AS side", (str(tmp_path / "side.sqlite"),))
    return db


def _rows(db: sqlite3.Connection) -> list[tuple]:
    return db.execute("SELECT id, name, score FROM main.t ORDER BY id").fetchall()


WANTED = [(1, "a", 1.5), (2, None, None), (3, "c\x00d", -2.0)]


def test_the_same_columns_are_copied_whole(tmp_path):
    ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)"
    db = _pair(tmp_path, ddl, ddl)
    assert copy_rows(db, "side", "t") is True
    assert _rows(db) == WANTED


def test_columns_in_another_order_are_copied_by_name(tmp_path):
    db = _pair(tmp_path, "CREATE TABLE t (score REAL, name TEXT, id INTEGER PRIMARY KEY)",
               "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
    assert copy_rows(db, "side", "t") is True
    assert _rows(db) == WANTED


def test_a_conflict_is_left_to_the_row_already_there(tmp_path):
    ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)"
    db = _pair(tmp_path, ddl, ddl)
    db.execute("INSERT INTO main.t VALUES (2, 'mine', 9.0)")
    assert copy_rows(db, "side", "t", conflict="(id) DO NOTHING") is True
    assert _rows(db) == [(1, "a", 1.5), (2, "mine", 9.0), (3, "c\x00d", -2.0)]


def test_a_table_missing_there_copies_nothing(tmp_path):
    db = _pair(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)", None)
    assert copy_rows(db, "side", "t") is False
    assert _rows(db) == []
