"""The watch reads a stamp table whole: every row counts, whichever comes first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pytest_safe_cleanup.settings import resolve
from pytest_safe_cleanup.watch import Blocked, Guardian, WriteRefused


def test_a_stamp_table_with_several_rows_blocks_on_any_blocked_one(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO items VALUES (?)", [(1,), (2,)])
        conn.execute("CREATE TABLE safe_cleanup_stamp (environment TEXT)")
        conn.executemany("INSERT INTO safe_cleanup_stamp VALUES (?)", [("test",), ("prod",)])
    conn.close()
    guardian = Guardian(resolve({}, {}, {}), environ={})
    guardian.install()
    engine = create_engine(f"sqlite:///{path}")
    try:
        with pytest.raises(Blocked, match="BLOCK"):
            engine.connect().close()
        with pytest.raises(WriteRefused), engine.begin() as conn:
            conn.execute(text("DELETE FROM items"))
    finally:
        guardian.uninstall()
        engine.dispose()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM items").fetchone() == (2,)
    check.close()
