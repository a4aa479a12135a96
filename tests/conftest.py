"""Shared test fixtures: a real PostgreSQL server, throwaway databases, example projects.

Every pytester run is a subprocess, as users run pytest, so that the plugin's
process-wide watch on engines never leaks between runs.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "conftest_examples"
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: variables that would change the plugin's decisions inside a pytester run
CLEARED = (
    "ENVIRONMENT",
    "SAFE_CLEANUP_MODE",
    "SAFE_CLEANUP_URL",
    "SAFE_CLEANUP_RUN_ID",
    "PYTEST_ADDOPTS",
    "GITHUB_STEP_SUMMARY",
    "PYTEST_XDIST_WORKER",
)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Runs in a clean environment: CI as in CI, no stray plugin settings."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CI", "true")
    return pytester


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A PostgreSQL server where tests may create databases."""
    url = os.environ.get("SAFE_CLEANUP_POSTGRES_URL", DEFAULT_SERVER)
    engine = create_engine(url)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        if os.environ.get("SAFE_CLEANUP_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but unreachable at {url}: {exc}")
        pytest.skip(f"no PostgreSQL server at {url}")
    finally:
        engine.dispose()
    return url


class PgDatabases:
    """Creates throwaway databases on the server and drops them afterwards."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def create(self, prefix: str = "sct") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture
def pg_databases(pg_server_url: str) -> Iterator[PgDatabases]:
    dbs = PgDatabases(pg_server_url)
    yield dbs
    dbs.drop_all()


@pytest.fixture
def pg_url(pg_databases: PgDatabases) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return pg_databases.create()


MYSQL_ENV = "SAFE_CLEANUP_MYSQL_URL"


@pytest.fixture(scope="session")
def mysql_server_url() -> str:
    """A MySQL/MariaDB server named by SAFE_CLEANUP_MYSQL_URL (required in CI)."""
    url = os.environ.get(MYSQL_ENV)
    required = os.environ.get("SAFE_CLEANUP_REQUIRE_MYSQL") == "1"
    if not url:
        message = f"set {MYSQL_ENV} (e.g. mysql+pymysql://root@127.0.0.1:3306/test) for MariaDB"
        if required:
            pytest.fail(f"{message} (SAFE_CLEANUP_REQUIRE_MYSQL=1)", pytrace=False)
        pytest.skip(message)
    engine = create_engine(MysqlDatabases.server_only(url))
    try:
        with engine.connect():
            pass
    except (OperationalError, ModuleNotFoundError) as exc:
        if required:
            pytest.fail(f"MariaDB required but unreachable at {url}: {exc}", pytrace=False)
        pytest.skip(f"no MariaDB server at {url} ({MYSQL_ENV})")
    finally:
        engine.dispose()
    return url


class MysqlDatabases:
    """Creates uniquely named MariaDB databases and drops them afterwards."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.admin = create_engine(self.server_only(server_url), isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    @staticmethod
    def server_only(url: str) -> str:
        """The server's URL without a database (the named one may not exist)."""
        u = make_url(url)
        return URL.create(u.drivername, u.username, u.password, u.host, u.port).render_as_string(
            hide_password=False
        )

    def create(self, prefix: str = "sct") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE `{name}`"))
        self.created.append(name)
        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        self.admin.dispose()


@pytest.fixture
def mysql_databases(mysql_server_url: str) -> Iterator[MysqlDatabases]:
    dbs = MysqlDatabases(mysql_server_url)
    yield dbs
    dbs.drop_all()


#: an inner conftest's ``insert(table, *rows)`` fixture, writing through the test's engine
INSERT_FIXTURE = """
import pytest
from sqlalchemy import text


@pytest.fixture
def insert(safe_cleanup):
    def insert(table, *rows):
        with safe_cleanup.engine.begin() as conn:
            for row in rows:
                cols = ", ".join(row)
                marks = ", ".join(":" + c for c in row)
                conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({marks})"), row)
    return insert
"""


def copy_examples(pytester: pytest.Pytester) -> Path:
    """The example suite copied into the pytester project, as a user would have it."""
    for item in EXAMPLES.iterdir():
        if item.suffix == ".py":
            shutil.copy(item, pytester.path / item.name)
    return pytester.path


def seed_family(url: str, parents: tuple[int, ...] = (1, 2, 3), children: bool = True) -> None:
    """Two related tables, ``parents`` and ``children``, with rows nobody registers."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE parents (id int PRIMARY KEY, name text NOT NULL)"))
        conn.execute(
            text(
                "CREATE TABLE children (id int PRIMARY KEY, "
                "parent_id int NOT NULL REFERENCES parents(id))"
            )
        )
        for i in parents:
            conn.execute(text("INSERT INTO parents VALUES (:i, :n)"), {"i": i, "n": f"seed{i}"})
            if children:
                conn.execute(text("INSERT INTO children VALUES (:i, :i)"), {"i": i})
    engine.dispose()


def same(a: Any, b: Any) -> bool:
    """Exact equality: same types, NaN equal to NaN, the same UTC offsets and zones."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float | Decimal):
        return repr(a) == repr(b)
    if isinstance(a, dt.datetime | dt.time):
        return a == b and a.utcoffset() == b.utcoffset() and a.tzinfo == b.tzinfo
    return bool(a == b)


def assert_same_rows(before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]) -> None:
    """Restored rows equal the originals value for value."""
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        for i, (x, y) in enumerate(zip(old, new, strict=True)):
            assert same(x, y), f"row {old[0]} column {i}: {x!r} != {y!r}"


#: a project on ``disposable_postgres``: keeps two rows, makes and registers two more,
#: writes what it saw to seen.json and the rows left after the first test to after.txt
DISPOSABLE_PROJECT = """
import json
import pytest
from sqlalchemy import text

@pytest.fixture(scope="session", autouse=True)
def schema(safe_cleanup_engine):
    with safe_cleanup_engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS notes (id serial primary key, body text)"))
        conn.execute(text("INSERT INTO notes (body) VALUES ('keep-1'), ('keep-2')"))

def test_makes_rows(safe_cleanup_engine, safe_cleanup, disposable_postgres):
    with safe_cleanup_engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (body) VALUES (:b), (:b)"), {"b": safe_cleanup.tag})
    safe_cleanup.delete("notes", body=safe_cleanup.tag)
    with open("seen.json", "w") as fh:
        json.dump({"url": disposable_postgres.url, "kind": disposable_postgres.kind,
                   "async_url": disposable_postgres.async_url,
                   "detail": disposable_postgres.detail}, fh)

def test_after(safe_cleanup_engine):
    with safe_cleanup_engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM notes")).scalar_one()
    with open("after.txt", "w") as fh:
        fh.write(str(rows))
"""


def first_id(table: Any, row: tuple[Any, ...]) -> int:
    """The first column of a backed-up row, whole-row text (PostgreSQL) or values."""
    if table.encoding == "postgresql-row":
        return int(row[0].strip("()").split(",")[0])
    return int(row[0])


def count_rows(url: str, table: str) -> int:
    engine: Engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


#: the rows ``seed_demo`` makes, per table of the example suite
DEMO_SEED = {"client_accounts": 2, "users": 3, "assets": 1}
#: the example suite's tables, children first
DEMO_TABLES = ("assets", "users", "client_accounts")


def _demo_app() -> Any:
    """The example suite's models, loaded under a private module name."""
    name = "_sct_demo_app_seed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "demo_app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def seed_demo(url: str) -> None:
    """The example suite's schema with rows that no example test made."""
    demo = _demo_app()
    engine = create_engine(url)
    try:
        demo.Base.metadata.create_all(engine)
        with Session(engine) as session:
            demo.create_tenant(session, "seed-a", users=2, assets=1)
            demo.create_tenant(session, "seed-b", users=1, assets=0)
    finally:
        engine.dispose()


def assert_demo_intact(url: str) -> None:
    for table, n in DEMO_SEED.items():
        assert count_rows(url, table) == n, f"{table} changed"


def demo_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the example suite's tables, ordered by id, per table."""
    engine: Engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
                for table in DEMO_TABLES
            }
    finally:
        engine.dispose()
