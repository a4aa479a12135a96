"""Layer 2 at a real terminal: pytest runs in a pty and a person types (or not) the name."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CLEARED, count_rows
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pexpect = pytest.importorskip("pexpect")

PROMPT = "Type the database name"
TESTS = """\
def test_one(safe_cleanup):
    safe_cleanup.delete("items", id=1)


def test_two(safe_cleanup):
    safe_cleanup.delete("items", id=2)
"""


def make_project(root: Path) -> Path:
    project = root / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nsafe_cleanup_backup = none\n"
    )
    (project / "test_items.py").write_text(TESTS)
    return project


def seed_sqlite(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"i{i}") for i in range(1, 6)])
    conn.close()
    return f"sqlite:///{path}"


def seed_pg(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, name text)"))
        conn.execute(text("INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 5) g"))
    engine.dispose()


def item_ids(url: str) -> set[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT id FROM items"))}
    finally:
        engine.dispose()


def spawn(project: Path, url: str, *, ci: bool = False) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED and k != "CI"}
    env["ENVIRONMENT"] = "qa"  # neither allowed nor blocked: CONFIRM
    if ci:
        env["CI"] = "true"
    args = [
        "-m",
        "pytest",
        str(project),
        "--safe-cleanup=apply",
        "--safe-cleanup-url",
        url,
        "-p",
        "no:cacheprovider",
        f"--basetemp={project.parent / 'basetemp'}",
    ]
    return pexpect.spawn(
        sys.executable, args, cwd=str(project), env=env, timeout=60, encoding="utf-8"
    )


def finish(child: Any) -> str:
    child.expect(pexpect.EOF)
    child.close()
    return str(child.before)


def test_typing_the_name_confirms_and_deletes(tmp_path: Path, pg_databases: Any) -> None:
    plain = pg_databases.create()
    seed_pg(plain)
    db = make_url(plain).database
    url = make_url(plain).set(password="s3cretPW").render_as_string(hide_password=False)
    child = spawn(make_project(tmp_path), url)
    child.expect(
        f"about to delete test data in postgresql\\+psycopg://postgres@127.0.0.1:5432/{db}"
    )
    child.expect("ENVIRONMENT='qa'")
    child.expect(f"{PROMPT} \\({db}\\)")
    before = item_ids(plain)
    assert before == {1, 2, 3, 4, 5}, "the prompt comes before anything is deleted"
    child.sendline(db)
    rest = finish(child)
    assert child.exitstatus == 0, rest
    assert PROMPT not in rest, "the prompt is asked once per session and target"
    assert "2 passed" in rest
    assert "s3cretPW" not in rest
    assert item_ids(plain) == {3, 4, 5}
    assert count_rows(plain, "items") == 3


def test_a_wrong_name_keeps_the_target_dry_for_the_session(tmp_path: Path) -> None:
    url = seed_sqlite(tmp_path / "app.db")
    child = spawn(make_project(tmp_path), url)
    # the database reached, as the connection reports it: the file's real path
    reached = url.replace("sqlite:///", "sqlite+pysqlite:///")
    child.expect(f"about to delete test data in {re.escape(reached)}")
    child.expect(f"{PROMPT} \\(app.db\\)")
    child.sendline("app")
    rest = finish(child)
    assert PROMPT not in rest, "two tests on one target: the prompt appears only once"
    assert "2 passed" in rest
    assert "not confirmed at the prompt" in rest, rest
    assert item_ids(url) == {1, 2, 3, 4, 5}


def test_ci_never_prompts_and_holds_the_cleanup(tmp_path: Path) -> None:
    url = seed_sqlite(tmp_path / "app.db")
    child = spawn(make_project(tmp_path), url, ci=True)
    output = finish(child)
    assert PROMPT not in output
    assert child.exitstatus == 1, output
    assert "HELD test_items.py::test_one (app.db)" in output
    assert '@pytest.mark.safe_cleanup(confirm="app.db")' in output
    assert item_ids(url) == {1, 2, 3, 4, 5}
