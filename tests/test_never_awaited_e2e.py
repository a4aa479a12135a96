"""A registration coroutine never awaited fails its test at teardown, naming the line.

``async_safe_cleanup.delete(...)`` without ``await`` registers nothing; before, the test
passed and its rows stayed. What was awaited is still cleaned.
"""

from __future__ import annotations

import json

import pytest
from conftest import count_rows
from sqlalchemy import create_engine
from test_async_e2e import async_url
from test_orm_e2e import SCHEMA_SQL, SEED

TESTS = """
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.asyncio


async def insert(engine, *emails):
    async with engine.begin() as conn:
        for email in emails:
            await conn.execute(
                text("INSERT INTO users (account_id, email) VALUES (1, :e)"), {{"e": email}}
            )


async def test_forgot_one_await(safe_cleanup_async_engine, async_safe_cleanup):
    await insert(safe_cleanup_async_engine, "awaited", "forgotten")
    await async_safe_cleanup.delete("users", email="awaited")
    async_safe_cleanup.delete("users", email="forgotten")  # LINE-FORGOTTEN


async def test_all_awaited(safe_cleanup_async_engine, async_safe_cleanup):
    await insert(safe_cleanup_async_engine, "fine")
    await async_safe_cleanup.delete("users", email="fine")
"""

CONFTEST = """
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


@pytest.fixture(scope="session")
def safe_cleanup_async_engine():
    return create_async_engine({url!r}, poolclass=NullPool)
"""


def test_a_forgotten_await_fails_the_test_naming_its_line(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SCHEMA_SQL)
    engine.dispose()
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(CONFTEST.format(url=async_url(pg_url)))
    written = pytester.makepyfile(test_forgot=TESTS.format()).read_text()
    line = next(n for n, text in enumerate(written.splitlines(), 1) if "LINE-FORGOTTEN" in text)
    where = f"test_forgot.py:{line}"
    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply",
        "--safe-cleanup-backup-dir",
        "bk",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgot_one_await*",
            f"*safe-cleanup: async_safe_cleanup.delete() at {where} was never awaited, so it "
            "registered nothing: write `await async_safe_cleanup.delete(...)`",
            "ERROR test_forgot.py::test_forgot_one_await - *never awaited*",
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    assert "RuntimeWarning" not in output  # the coroutine was closed, not left to the GC
    # what was awaited was deleted; the forgotten row is still there for the person to see
    cleanups = json.loads((pytester.path / "report.json").read_text())["cleanups"]
    assert sorted((c["nodeid"].split("::")[1], c["counted"], c["deleted"]) for c in cleanups) == [
        ("test_all_awaited", 1, 1),
        ("test_forgot_one_await", 1, 1),
    ]
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        emails = conn.exec_driver_sql("SELECT email FROM users ORDER BY id").scalars().all()
    engine.dispose()
    assert emails == ["seed-1", "seed-2", "forgotten"]
    assert count_rows(pg_url, "users") == SEED["users"] + 1
