"""Section 6a end to end: statements that bypass the plugin, on engines it did not make.

A production-stamped PostgreSQL database is read-only for the whole pytest process:
an engine's first connection errors and stops the session, and every later write is
stopped before it is sent. On an allowed database, raw deletes during a test are
reported (warn), fail the test (error) or pass (ignore). Rows are counted afterwards.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import count_rows
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROWS = 3
SEED_SQL = (
    "CREATE TABLE t (id integer PRIMARY KEY, v text);"
    "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');"
    "CREATE TABLE scratch (id integer);"
    "INSERT INTO scratch VALUES (1), (2);"
)


def seed(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SEED_SQL)
    engine.dispose()


def production(pg_databases) -> str:
    url = pg_databases.create()
    seed(url)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_safe_cleanup.cli",
            "stamp",
            url,
            "--environment",
            "production",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return url


def assert_untouched(url: str) -> None:
    assert count_rows(url, "t") == ROWS
    assert count_rows(url, "scratch") == 2
    engine = create_engine(url)
    with engine.connect() as conn:
        values = conn.execute(text("SELECT v FROM t ORDER BY id")).scalars().all()
    engine.dispose()
    assert values == ["a", "b", "c"]


def output_of(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


UNCAUGHT = """
from sqlalchemy import create_engine, text


def test_own_engine():
    engine = create_engine({url!r})
    with engine.connect() as conn:          # the first connection is refused
        conn.execute(text("DELETE FROM t"))
        conn.commit()


def test_never_runs():
    raise AssertionError("the session must stop after a BLOCK")
"""


def test_first_connection_to_a_blocked_database_errors_and_stops(
    pytester: pytest.Pytester, pg_databases
) -> None:
    url = production(pg_databases)
    pytester.makepyfile(test_block=UNCAUGHT.format(url=url))
    result = pytester.runpytest_subprocess("--safe-cleanup=apply", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "test_block.py:6: safe-cleanup refused postgresql+psycopg://*: BLOCK:*production*",
            "*Interrupted: *safe-cleanup refused*",
        ]
    )
    assert "test_never_runs" not in result.stdout.str()
    assert_untouched(url)


WRITES = [
    ("DELETE FROM t", "DELETE"),
    ("UPDATE t SET v = 'x'", "UPDATE"),
    ("INSERT INTO t VALUES (9, 'z')", "INSERT"),
    ("TRUNCATE t", "TRUNCATE"),
    ("DROP TABLE t", "DROP"),
    ("/* c */ -- c\n   \n  dElEtE   FrOm t", "DELETE"),
    ("  (  delete from scratch)", "DELETE"),
    ("/* a /* nested */ b */ DELETE FROM t", "DELETE"),
    ("SELECT 1; DELETE FROM t", "DELETE"),  # psycopg sends both statements in one call
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d", "WITH ... DELETE"),
]

CAUGHT = """
import asyncio
import re

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_safe_cleanup.runner import Blocked, WriteRefused

WRITES = {writes!r}


def test_writes_are_refused_reads_work():
    engine = create_engine({url!r})
    with pytest.raises(Blocked, match="BLOCK"):
        engine.connect()                       # the first connection errors ...
    with engine.connect() as conn:             # ... later ones may read, never write
        for sql, verb in WRITES:
            print("sync:", repr(sql))
            with pytest.raises(WriteRefused, match=re.escape(f"stopped {{verb}} on")):
                conn.execute(text(sql))
            conn.rollback()
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 3
    engine.dispose()

    async def main():
        aengine = create_async_engine({aurl!r})
        with pytest.raises(Blocked, match="BLOCK"):
            async with aengine.connect():
                pass
        async with aengine.connect() as conn:
            for sql, verb in WRITES:
                print("async:", repr(sql))
                with pytest.raises(WriteRefused, match=re.escape(f"stopped {{verb}} on")):
                    await conn.execute(text(sql))
                await conn.rollback()
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 3
        await aengine.dispose()

    asyncio.run(main())


def test_never_runs():
    raise AssertionError("the session must stop after a BLOCK")
"""


def test_blocked_database_is_read_only_for_sync_and_async_engines(
    pytester: pytest.Pytester, pg_databases
) -> None:
    url = production(pg_databases)
    aurl = make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)
    pytester.makepyfile(test_writes=CAUGHT.format(url=url, aurl=aurl, writes=WRITES))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--safe-cleanup=apply")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Interrupted: *safe-cleanup refused*BLOCK*"])
    assert "test_never_runs" not in result.stdout.str()
    assert_untouched(url)


UNGUARDED = """
from sqlalchemy import create_engine, text


def test_plugin_engine(safe_cleanup_engine):
    with safe_cleanup_engine.begin() as conn:
        conn.execute(text("DELETE FROM t WHERE id = 1"))


def test_plugin_engine_with_fixture(safe_cleanup_engine, safe_cleanup):
    with safe_cleanup_engine.begin() as conn:
        conn.execute(text("TRUNCATE scratch"))


def test_own_engine():
    engine = create_engine({url!r})
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM t WHERE id = 2"))
    engine.dispose()


def test_plugin_cleanup(safe_cleanup):
    safe_cleanup.delete("t", id=3)           # the plugin's own delete: never reported
"""


@pytest.mark.parametrize("unguarded", ["warn", "error", "ignore"])
def test_unguarded_deletes(pytester: pytest.Pytester, pg_url: str, unguarded: str) -> None:
    seed(pg_url)
    watch = "all" if unguarded == "error" else "plugin"
    pytester.makeini(
        f"[pytest]\nsafe_cleanup_unguarded = {unguarded}\nsafe_cleanup_watch = {watch}\n"
    )
    pytester.makepyfile(test_u=UNGUARDED.format(url=pg_url))
    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply",
        "--safe-cleanup-url",
        pg_url,
        "-p",
        "no:cacheprovider",
    )
    out = output_of(result)

    def remaining() -> list[int]:
        engine = create_engine(pg_url)
        with engine.connect() as conn:
            ids = conn.execute(text("SELECT id FROM t ORDER BY id")).scalars().all()
        engine.dispose()
        return list(ids)

    if unguarded == "warn":
        result.assert_outcomes(passed=4, warnings=2)
        result.stdout.fnmatch_lines(
            [
                "*/test_u.py:6: UnguardedStatementWarning: test_u.py::test_plugin_engine: DELETE "
                "sent outside safe_cleanup (no guard, count or backup) at test_u.py:6: "
                "DELETE FROM t WHERE id = 1; register it with safe_cleanup.delete() instead",
                "*UnguardedStatementWarning: test_u.py::test_plugin_engine_with_fixture: TRUNCATE "
                "sent outside safe_cleanup*: TRUNCATE scratch;*",
            ]
        )
        assert "id = 2" not in out  # watch = plugin: the test's own engine is not reported
        assert remaining() == []
        assert count_rows(pg_url, "scratch") == 0
    elif unguarded == "error":
        result.assert_outcomes(passed=1, failed=3)
        result.stdout.fnmatch_lines(
            [
                "*UnguardedStatement: safe-cleanup: test_u.py::test_plugin_engine: DELETE sent "
                "outside safe_cleanup*DELETE FROM t WHERE id = 1;*(safe_cleanup_unguarded = error)",
                "FAILED test_u.py::test_own_engine - "
                "*UnguardedStatement*DELETE FROM t WHERE id = 2*",
            ]
        )
        assert "test_plugin_cleanup FAILED" not in out
        # the short summary names every failed test: the plugin's own cleanup is not one
        result.stdout.fnmatch_lines(
            [
                "FAILED test_u.py::test_plugin_engine - *",
                "FAILED test_u.py::test_plugin_engine_with_fixture - *",
            ]
        )
        result.stdout.no_fnmatch_line("FAILED test_u.py::test_plugin_cleanup*")
        result.stdout.no_fnmatch_line("ERROR test_u.py::test_plugin_cleanup*")
        # nothing was sent: only the registered cleanup deleted (id 3)
        assert remaining() == [1, 2]
        assert count_rows(pg_url, "scratch") == 2
    else:
        result.assert_outcomes(passed=4)
        assert "Unguarded" not in out
        assert remaining() == []
    assert "test_plugin_cleanup" not in "".join(
        line for line in out.splitlines() if "Unguarded" in line
    )


APP_MODULE = """
from sqlalchemy import create_engine, text

engine = create_engine(URL)


def delete_item(item_id):
    # the application under test deleting its own rows (an endpoint, a service call)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM t WHERE id = :id"), {"id": item_id})
"""

APP_TESTS = """
from sqlalchemy import text

import shop.service


def test_the_application_deletes_its_own_row():
    shop.service.delete_item(1)


def test_the_test_deletes_a_row_itself():
    with shop.service.engine.begin() as conn:
        conn.execute(text("DELETE FROM t WHERE id = 2"))
"""


def test_only_deletes_sent_from_test_code_are_reported(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """The application's own DELETE is its business; a test's raw DELETE is reported at the
    test file's line, and a suite that turns warnings into errors still passes the first."""
    seed(pg_url)
    pytester.makeini("[pytest]\nsafe_cleanup_watch = all\n")
    package = pytester.mkpydir("shop")
    (package / "service.py").write_text(f"URL = {pg_url!r}\n" + APP_MODULE)
    pytester.makepyfile(test_app=APP_TESTS)

    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error::pytest_safe_cleanup.watch.UnguardedStatementWarning",
        "--safe-cleanup-url",
        pg_url,
    )

    result.assert_outcomes(passed=1, failed=1)
    out = output_of(result)
    result.stdout.fnmatch_lines(
        [
            "*UnguardedStatementWarning: test_app.py::test_the_test_deletes_a_row_itself: DELETE "
            "sent outside safe_cleanup*at test_app.py:*: DELETE FROM t WHERE id = 2*",
        ]
    )
    assert "test_the_application_deletes_its_own_row" not in out.split("FAILURES")[-1]
    assert "service.py" not in out
    # the application's delete ran; the test's, a warning turned error, was never sent
    assert count_rows(pg_url, "t") == 2
