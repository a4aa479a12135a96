"""``track_sessions()`` end to end: the application's own sessions, tracked where they wrote.

The inner project is an application module with its own engine and ``sessionmaker``
(sync) and ``async_sessionmaker`` (async), and tests that only call it: the plugin must
find every row the application inserted, count exactly the rows still there, delete
them on the application's database and leave background rows and other databases alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import count_rows
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

SCHEMA = """
CREATE TABLE app_users (id {pk}, email text NOT NULL);
CREATE TABLE app_items (
    id {pk},
    owner_id integer NOT NULL REFERENCES app_users (id),
    name text NOT NULL
);
CREATE INDEX app_items_owner ON app_items (owner_id);
INSERT INTO app_users (email) VALUES ('background-1'), ('background-2');
INSERT INTO app_items (owner_id, name) VALUES (1, 'background-item');
"""
BACKGROUND = {"app_users": 2, "app_items": 1}
TABLES = ("app_items", "app_users")

APP = '''
"""A small application: its own engines and session factories, as a web app has them."""
import os

from sqlalchemy import ForeignKey, create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import NullPool


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "app_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    items: Mapped[list["Item"]] = relationship(cascade="all, delete-orphan")


class Item(Base):
    __tablename__ = "app_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("app_users.id"))
    name: Mapped[str]


engine = create_engine(os.environ["APP_URL"])
SessionLocal = sessionmaker(engine, expire_on_commit=False)
async_engine = create_async_engine(os.environ["APP_ASYNC_URL"], poolclass=NullPool)
AsyncSessionLocal = async_sessionmaker(async_engine, expire_on_commit=False)


def get_db():
    """The request-scoped session of a FastAPI dependency."""
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


def create_user(email, items=()):
    db = next(dependency := get_db())
    user = User(email=email, items=[Item(name=n) for n in items])
    db.add(user)
    db.commit()
    dependency.close()
    return user.id


def delete_user(user_id):
    with SessionLocal() as db:
        db.delete(db.get(User, user_id))
        db.commit()


def failed_signup(email):
    with SessionLocal() as db:
        db.add(User(email=email, items=[Item(name="never")]))
        db.flush()
        db.rollback()


async def create_user_async(email, items=()):
    async with AsyncSessionLocal() as db:
        db.add(User(email=email, items=[Item(name=n) for n in items]))
        await db.commit()


async def delete_user_async(email):
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    async with AsyncSessionLocal() as db:
        query = select(User).filter_by(email=email).options(selectinload(User.items))
        await db.delete((await db.execute(query)).scalar_one())
        await db.commit()
'''

#: the same scenario three ways: sync app with explicit call, by the ini, async app
TESTS = """
import asyncio

import pytest

import app


def test_explicit(safe_cleanup):
    safe_cleanup.track_sessions()
    app.create_user("kept", items=("x", "y"))
    gone = app.create_user("gone", items=("z",))
    app.delete_user(gone)                 # inserted and deleted again by the app itself
    app.failed_signup("rolled-back")      # inserted, then rolled back: never there


def test_sync_test_of_an_async_app(safe_cleanup):
    safe_cleanup.track_sessions()
    asyncio.run(app.create_user_async("async-from-sync", items=("a",)))


@pytest.mark.asyncio
async def test_async_app(async_safe_cleanup):
    async_safe_cleanup.track_sessions()   # unbound: rows go to the app's engine
    await app.create_user_async("async", items=("b", "c"))
    await app.create_user_async("async-gone", items=("d",))
    await app.delete_user_async("async-gone")


def test_not_tracked(safe_cleanup):
    app.create_user("untracked", items=("u",))
"""
#: what each test leaves for cleanup, per table (rows the app deleted or rolled back: none)
PER_TEST = {
    "test_app.py::test_explicit": {"app_items": 2, "app_users": 1},
    "test_app.py::test_sync_test_of_an_async_app": {"app_items": 1, "app_users": 1},
    "test_app.py::test_async_app": {"app_items": 2, "app_users": 1},
}
UNTRACKED = {"app_items": 1, "app_users": 1}  # test_not_tracked, without the ini

INI_TESTS = '''
import pytest

import app


@pytest.fixture(autouse=True)
def _cleanup(safe_cleanup):
    """The whole adoption: every test cleans what the application inserted."""


def test_one():
    app.create_user("one", items=("x", "y"))


def test_two():
    gone = app.create_user("two", items=("z",))
    app.delete_user(gone)
    app.create_user("three")
'''
INI_PER_TEST = {
    "test_ini.py::test_one": {"app_items": 2, "app_users": 1},
    # the item the app deleted again is looked for, and counted 0: never an error
    "test_ini.py::test_two": {"app_items": 0, "app_users": 1},
}


def execute(url: str, script: str) -> None:
    pk = "integer PRIMARY KEY" if url.startswith("sqlite") else "serial PRIMARY KEY"
    script = script.replace("{pk}", pk)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for statement in filter(str.strip, script.split(";")):
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def async_url_of(url: str) -> str:
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    parsed = make_url(url)
    return parsed.set(drivername=driver[parsed.get_backend_name()]).render_as_string(
        hide_password=False
    )


def cleanups(path: Path) -> dict[str, dict[str, tuple[int, int | None, str, str]]]:
    found: dict[str, dict[str, tuple[int, int | None, str, str]]] = {}
    for c in json.loads(path.read_text())["cleanups"]:
        found.setdefault(c["nodeid"], {})[c["table"]] = (
            c["counted"],
            c["deleted"],
            c["status"],
            c["target"],
        )
    return found


def database_url(backend: str, pytester: pytest.Pytester, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{pytester.path / 'app.db'}"
    return str(request.getfixturevalue("pg_databases").create())


def make_app(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    execute(url, SCHEMA)
    monkeypatch.setenv("APP_URL", url)
    monkeypatch.setenv("APP_ASYNC_URL", async_url_of(url))
    pytester.makepyfile(app=APP)


def name_of(url: str) -> str:
    database = make_url(url).database or ""
    return Path(database).name if database.endswith(".db") else database


@pytest.mark.parametrize("mode", ["dry", "apply"])
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_track_sessions_cleans_the_applications_own_rows(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
    mode: str,
) -> None:
    url = database_url(backend, pytester, request)
    make_app(pytester, monkeypatch, url)
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_app=TESTS)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        url,
        f"--safe-cleanup={mode}",
        "--safe-cleanup-backup-dir",
        "bk",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=4)
    status = "deleted" if mode == "apply" else "dry"
    target = next(
        c["target"] for c in json.loads((pytester.path / "report.json").read_text())["cleanups"]
    )
    assert cleanups(pytester.path / "report.json") == {
        nodeid: {
            table: (n, n if mode == "apply" else None, status, target)
            for table, n in tables.items()
        }
        for nodeid, tables in PER_TEST.items()
    }
    made = {t: sum(tables.get(t, 0) for tables in PER_TEST.values()) for t in TABLES}
    for table in TABLES:
        left = BACKGROUND[table] + UNTRACKED[table] + (0 if mode == "apply" else made[table])
        assert count_rows(url, table) == left, table
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        emails = conn.exec_driver_sql("SELECT email FROM app_users ORDER BY id").scalars().all()
    engine.dispose()
    expected = ["background-1", "background-2"]
    if mode == "dry":
        expected += ["kept", "async-from-sync", "async"]
    assert emails == [*expected, "untracked"]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_ini_setting_tracks_every_test_that_uses_the_fixture(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    url = database_url(backend, pytester, request)
    make_app(pytester, monkeypatch, url)
    pytester.makeini(
        "[pytest]\nsafe_cleanup_track = sessions\nsafe_cleanup_mode = apply\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_ini=INI_TESTS)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        url,
        "--safe-cleanup-backup-dir",
        "bk",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    found = cleanups(pytester.path / "report.json")
    assert {
        nodeid: {table: row[:3] for table, row in tables.items()}
        for nodeid, tables in found.items()
    } == {
        nodeid: {table: (n, n, "deleted") for table, n in tables.items()}
        for nodeid, tables in INI_PER_TEST.items()
    }
    for table in TABLES:
        assert count_rows(url, table) == BACKGROUND[table], table


def test_bad_track_value_is_one_line(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsafe_cleanup_track = everything\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: safe-cleanup: ini safe_cleanup_track: invalid track 'everything'; "
            "choose one of: none, sessions"
        ]
    )


OTHER_ENGINE_TESTS = """
import app


def test_rows_go_where_the_session_wrote(safe_cleanup):
    safe_cleanup.track_sessions()
    app.create_user("elsewhere", items=("e1", "e2"))
    safe_cleanup.delete("app_users", email="fixture-row")   # the fixture's own database
"""


def test_tracked_rows_are_deleted_on_the_database_their_session_wrote_to(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    pg_databases: object,
    tmp_path: Path,
) -> None:
    fixture_url = pg_databases.create()  # type: ignore[attr-defined]
    execute(fixture_url, SCHEMA)
    execute(fixture_url, "INSERT INTO app_users (email) VALUES ('fixture-row')")
    app_url = f"sqlite:///{tmp_path / 'app.db'}"  # another database, another backend even
    make_app(pytester, monkeypatch, app_url)
    pytester.makepyfile(test_other=OTHER_ENGINE_TESTS)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        fixture_url,
        "--safe-cleanup=apply",
        "--safe-cleanup-backup-dir",
        "bk",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert "does not exist" not in output and "no cleanup was registered" not in output
    found = json.loads((pytester.path / "report.json").read_text())["cleanups"]
    by_target: dict[str, dict[str, tuple[int, int]]] = {}
    for c in found:
        by_target.setdefault(c["target"], {})[c["table"]] = (c["counted"], c["deleted"])
    assert by_target == {
        name_of(app_url): {"app_items": (2, 2), "app_users": (1, 1)},
        name_of(fixture_url): {"app_users": (1, 1)},
    }
    # each database lost exactly its test rows: the app's its two items and user, the
    # fixture's its one registered row; background rows stay on both
    for table in TABLES:
        assert count_rows(app_url, table) == BACKGROUND[table], table
        assert count_rows(fixture_url, table) == BACKGROUND[table], table


SESSION_SCOPE_TESTS = """
import pytest

import app


@pytest.fixture(scope="session", autouse=True)
def run_wide(safe_cleanup_session):
    safe_cleanup_session.track_sessions()    # rows no test's fixture claims: at session end


def test_without_the_fixture():
    app.create_user("run-wide", items=("r",))


def test_with_the_fixture(safe_cleanup):
    safe_cleanup.track_sessions()            # innermost: the test's own rows, deleted once
    app.create_user("test-owned", items=("t1", "t2"))
"""


def test_session_scope_tracking_and_the_test_fixture_taking_its_own_rows(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_databases: object
) -> None:
    url = pg_databases.create()  # type: ignore[attr-defined]
    make_app(pytester, monkeypatch, url)
    pytester.makepyfile(test_scope=SESSION_SCOPE_TESTS)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        url,
        "--safe-cleanup=apply",
        "--safe-cleanup-backup-dir",
        "bk",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    found = cleanups(pytester.path / "report.json")
    assert {
        nodeid: {t: row[:3] for t, row in tables.items()} for nodeid, tables in found.items()
    } == {
        "test_scope.py::test_with_the_fixture": {
            "app_items": (2, 2, "deleted"),
            "app_users": (1, 1, "deleted"),
        },
        "session": {"app_items": (1, 1, "deleted"), "app_users": (1, 1, "deleted")},
    }
    for table in TABLES:
        assert count_rows(url, table) == BACKGROUND[table], table
