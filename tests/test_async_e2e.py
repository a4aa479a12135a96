"""``async_safe_cleanup`` end to end on asyncpg, under pytest-asyncio's modes and loop scopes.

One inner run covers both ways a project defines ``safe_cleanup_async_engine`` (a sync
fixture returning ``create_async_engine(...)`` and a pytest-asyncio async fixture), one
folder each; the outer test parametrizes strict/auto mode and function/session loops.
"""

from __future__ import annotations

import pytest
from conftest import count_rows
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from test_orm_e2e import MODELS, SCHEMA_SQL, SEED, cleanups_by_test

LOOP_ERRORS = (
    "attached to a different loop",
    "Event loop is closed",
    "was never awaited",
    "MissingGreenlet",
    "Task was destroyed",
)


def async_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def seed(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SCHEMA_SQL)
    engine.dispose()


SYNC_FIXTURE = """
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


@pytest.fixture(scope="session")
def safe_cleanup_async_engine():
    # a plain sync fixture: no loop to dispose a pool on, so no pool
    return create_async_engine({url!r}, poolclass=NullPool)
"""

ASYNC_FIXTURE = """
import pytest_asyncio
from sqlalchemy.ext.asyncio import create_async_engine


@pytest_asyncio.fixture(scope="{scope}", loop_scope="{scope}")
async def safe_cleanup_async_engine():
    engine = create_async_engine({url!r})   # pooled: connections belong to this loop
    yield engine
    await engine.dispose()
"""

TESTS = """
import asyncio

import pytest
from models import Account, Asset, User
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

{mark}
LOOPS = []  # the loops the tests ran on: one for session scope, one per test otherwise


async def test_graph(safe_cleanup_async_engine, async_safe_cleanup):
    LOOPS.append(asyncio.get_running_loop())
    async with AsyncSession(safe_cleanup_async_engine, expire_on_commit=False) as session:
        async_safe_cleanup.track_session(session)
        account = Account(name="graph", users=[User(email="a"), User(email="b")])
        session.add(account)
        await session.flush()
        session.add(User(email="c", account_id=account.id))
        await session.commit()
        session.add_all([Asset(name=f"x{{i}}", account_id=account.id) for i in range(3)])
        await session.commit()
        session.add_all([Asset(name=f"y{{i}}", account_id=account.id) for i in range(2)])
        await session.flush()
        await session.commit()
        count = select(func.count()).select_from(Asset).filter_by(account_id=account.id)
        assert await session.scalar(count) == 5


async def test_deleted_and_rolled_back(safe_cleanup_async_engine, async_safe_cleanup):
    LOOPS.append(asyncio.get_running_loop())
    async with AsyncSession(safe_cleanup_async_engine, expire_on_commit=False) as session:
        async_safe_cleanup.track_session(session)
        account = Account(name="mixed", users=[User(email="keep"), User(email="gone")])
        session.add(account)
        await session.commit()
        await session.delete(account.users[1])
        await session.commit()
        session.add(Account(name="rolled back", users=[User(email="rb")]))
        await session.flush()
        await session.rollback()


async def test_delete_by_name(safe_cleanup_async_engine, async_safe_cleanup):
    LOOPS.append(asyncio.get_running_loop())
    assert len(set(LOOPS)) == {loops}
    async with AsyncSession(safe_cleanup_async_engine, expire_on_commit=False) as session:
        account = Account(name="named")
        session.add(account)
        await session.commit()
        session.add_all([User(email=f"n{{i}}", account_id=account.id) for i in range(2)])
        await session.commit()
    await async_safe_cleanup.delete("users", account_id=account.id)  # reflected via asyncpg
    await async_safe_cleanup.delete(Account, id=account.id)
"""

PER_TEST = {
    "test_graph": {"accounts": 1, "users": 3, "assets": 5},
    "test_deleted_and_rolled_back": {"accounts": 1, "users": 1},
    "test_delete_by_name": {"accounts": 1, "users": 2},
}
MADE = {"accounts": 3, "users": 6, "assets": 5}  # rows one folder's tests leave for cleanup
#: one folder per (way of defining safe_cleanup_async_engine, loop scope)
FOLDERS = [(kind, loop) for kind in ("sync", "async") for loop in ("function", "session")]

CONFIGS = {
    # pytest-asyncio mode: (ini, module mark per loop scope)
    "strict": (
        "asyncio_mode = strict\nasyncio_default_fixture_loop_scope = function",
        {
            "function": "pytestmark = pytest.mark.asyncio",
            "session": 'pytestmark = pytest.mark.asyncio(loop_scope="session")',
        },
    ),
    "auto": (
        "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session",
        {"function": 'pytestmark = pytest.mark.asyncio(loop_scope="function")', "session": ""},
    ),
}


def make_project(pytester: pytest.Pytester, url: str, config: str) -> None:
    ini, marks = CONFIGS[config]
    aurl = async_url(url)
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(models=MODELS)
    for kind, loop in FOLDERS:
        sub = pytester.mkdir(f"{kind}_{loop}")
        fixture = (
            SYNC_FIXTURE.format(url=aurl)
            if kind == "sync"
            else ASYNC_FIXTURE.format(url=aurl, scope=loop)
        )
        (sub / "conftest.py").write_text(fixture)
        tests = TESTS.format(mark=marks[loop], loops=1 if loop == "session" else 3)
        (sub / f"test_{kind}_{loop}.py").write_text(tests)


def expected(status: str) -> dict[str, dict[str, tuple[int, int | None, str]]]:
    return {
        f"{kind}_{loop}/test_{kind}_{loop}.py::{name}": {
            table: (n, n if status == "deleted" else None, status) for table, n in tables.items()
        }
        for kind, loop in FOLDERS
        for name, tables in PER_TEST.items()
    }


@pytest.mark.parametrize("mode", ["dry", "apply"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_async_cleanup_under_each_mode_and_loop_scope(
    pytester: pytest.Pytester, pg_url: str, config: str, mode: str
) -> None:
    seed(pg_url)
    make_project(pytester, pg_url, config)
    result = pytester.runpytest_subprocess(
        f"--safe-cleanup={mode}",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",
    )
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines([f"asyncio: mode=Mode.{config.upper()}*"])
    for text_ in LOOP_ERRORS:
        assert text_ not in output, text_
    status = "dry" if mode == "dry" else "deleted"
    assert cleanups_by_test(str(pytester.path / "report.json")) == expected(status)
    for table, n in SEED.items():
        left = n + len(FOLDERS) * MADE[table] if mode == "dry" else n
        assert count_rows(pg_url, table) == left, table
    db = make_url(pg_url).database
    deleted = "24" if mode == "apply" else "-"
    result.stdout.fnmatch_lines([f"{db}.users * 24 * {deleted}"])


ON_AND_UNBOUND = """
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_safe_cleanup.plan import RegistrationError

pytestmark = pytest.mark.asyncio


async def test_on_other_engine(async_safe_cleanup):
    other = create_async_engine({other!r})
    async with other.begin() as conn:
        await conn.execute(text("INSERT INTO users (account_id, email) VALUES (1, 'other')"))
    await async_safe_cleanup.on(other).delete("users", email="other")
    await other.dispose()


async def test_unbound_is_refused_clearly(async_safe_cleanup):
    with pytest.raises(RegistrationError, match="async_safe_cleanup has no engine"):
        await async_safe_cleanup.delete("users", email="seed-1")
    with pytest.raises(RegistrationError, match="async_safe_cleanup has no engine"):
        async_safe_cleanup.track_session(object())


async def test_unbound_message(async_safe_cleanup):
    await async_safe_cleanup.delete("users", email="seed-1")


async def test_on_takes_an_async_engine(async_safe_cleanup):
    from sqlalchemy import create_engine

    with pytest.raises(RegistrationError, match="on.. takes an AsyncEngine"):
        async_safe_cleanup.on(create_engine("sqlite://"))
"""


def test_on_other_engine_and_unbound_error(
    pytester: pytest.Pytester, pg_url: str, pg_databases
) -> None:
    other = pg_databases.create()
    seed(pg_url)
    seed(other)
    pytester.makeini("[pytest]\nasyncio_mode = strict\n")
    pytester.makepyfile(test_on=ON_AND_UNBOUND.format(other=async_url(other)))
    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*RegistrationError: async_safe_cleanup has no engine: define a "
            "safe_cleanup_async_engine fixture or call async_safe_cleanup.on(async_engine)",
            "FAILED test_on.py::test_unbound_message - *async_safe_cleanup has no engine*",
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    for text_ in LOOP_ERRORS:
        assert text_ not in output, text_
    found = cleanups_by_test(str(pytester.path / "report.json"))
    assert found == {"test_on.py::test_on_other_engine": {"users": (1, 1, "deleted")}}
    # the other database lost exactly its inserted row; the unbound tests changed nothing
    assert count_rows(other, "users") == SEED["users"]
    assert count_rows(pg_url, "users") == SEED["users"]
    engine = create_engine(other)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE email = 'other'")).scalar() == 0
    engine.dispose()


SYNC_ON_ASYNC = """
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.plan import RegistrationError

OTHER = {other!r}
MESSAGE = {message!r}


def test_refused_clearly(safe_cleanup):
    other = create_async_engine(OTHER, poolclass=NullPool)
    with pytest.raises(RegistrationError) as caught:
        safe_cleanup.on(other)
    assert str(caught.value) == MESSAGE


def test_refusal_fails_the_test(safe_cleanup):
    other = create_async_engine(OTHER, poolclass=NullPool)
    safe_cleanup.on(other).delete("users", email="seed-1")
    safe_cleanup.delete("users", email="seed-2")  # never reached: nothing is registered
"""
SYNC_ON_ASYNC_MESSAGE = (
    "safe_cleanup.on() takes an Engine; use async_safe_cleanup.on() for an AsyncEngine"
)


def test_sync_cleanup_refuses_an_async_engine_and_deletes_nothing(
    pytester: pytest.Pytester, pg_url: str, pg_databases
) -> None:
    other = pg_databases.create()
    seed(pg_url)
    seed(other)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_on=SYNC_ON_ASYNC.format(other=async_url(other), message=SYNC_ON_ASYNC_MESSAGE)
    )
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        pg_url,
        "--safe-cleanup=apply",
        "--safe-cleanup-backup-dir",
        "bk",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"FAILED test_on.py::test_refusal_fails_the_test - *RegistrationError: "
            f"{SYNC_ON_ASYNC_MESSAGE}",
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    assert "TypeError" not in output
    assert "error" not in result.parseoutcomes()  # no teardown error either
    assert cleanups_by_test(str(pytester.path / "report.json")) == {}
    for url in (pg_url, other):
        assert {table: count_rows(url, table) for table in SEED} == SEED, url


def test_finish_checks_every_engine_before_cleaning_any(pg_url: str, pg_databases) -> None:
    """An async engine that reaches the sync teardown anyway: no database is touched."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from pytest_safe_cleanup.plan import RegistrationBook, SafeCleanup
    from pytest_safe_cleanup.report import Report
    from pytest_safe_cleanup.runner import Conductor, Guardian, TestContext
    from pytest_safe_cleanup.settings import Settings

    other = pg_databases.create()
    seed(pg_url)
    seed(other)
    settings = Settings(mode="apply", backup="none")  # nothing else would stop the delete
    report = Report("apply", "run")
    conductor = Conductor(
        settings, Guardian(settings, environ={}), report, interactive=False, prompt=None
    )
    engine = create_engine(pg_url, poolclass=NullPool)
    async_engine = create_async_engine(async_url(other), poolclass=NullPool)
    book = RegistrationBook()
    cleanup = SafeCleanup(engine, book=book, tag="t", context=lambda: ("t.py::t", frozenset()))
    cleanup.delete("users", email="seed-1")
    ((_, registrations),) = book.drain()
    try:
        errors = conductor.finish(
            [(engine, registrations), (async_engine, registrations)], TestContext("t.py::t")
        )
    finally:
        engine.dispose()
    assert errors == [
        "safe-cleanup: an AsyncEngine's cleanup reached safe_cleanup: use async_safe_cleanup; "
        "nothing was deleted on any database of this test"
    ]
    assert [(o.target, o.status) for o in report.cleanups] == [
        (make_url(pg_url).database, "failed"),
        (make_url(other).database, "failed"),
    ]
    for url in (pg_url, other):
        assert {table: count_rows(url, table) for table in SEED} == SEED, url
