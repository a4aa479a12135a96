"""A BLOCK verdict stops the session, in every mode, with the rule named; no row changes.

Every run is a subprocess, as users run pytest. Each test seeds rows with its own
engine first and counts them afterwards: a refusal that deleted anything fails here.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import psycopg
import pytest

# Imported here, before any pytester snapshot of sys.modules, so it is imported once.
import sqlalchemy.dialects.postgresql  # noqa: F401
from conftest import (
    DEMO_SEED,
    PgDatabases,
    assert_demo_intact,
    copy_examples,
    count_rows,
    seed_demo,
)
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.stamp import write_stamp

USAGE_ERROR = 4
ITEMS = 6

# Tests that would delete every seeded row if the plugin let them.
GREEDY_TESTS = """
def test_first(safe_cleanup):
    safe_cleanup.delete("items", all_rows=True)

def test_second(safe_cleanup):
    safe_cleanup.delete("items", id=[1, 2])

def test_third(safe_cleanup):
    safe_cleanup.delete("items", name="item-3")
"""


def database_url(
    request: pytest.FixtureRequest, pytester: pytest.Pytester, backend: str, prefix: str
) -> str:
    """A fresh database of the parametrized backend."""
    if backend == "postgres":
        return str(request.getfixturevalue("pg_databases").create(prefix=prefix))
    return sqlite_url(pytester)


def sqlite_url(pytester: pytest.Pytester, name: str = "app.db") -> str:
    return f"sqlite:///{pytester.path / name}"


def raw_connect(url: str):
    """A plain DB-API connection, outside SQLAlchemy.

    This test process runs the plugin too: its watch on SQLAlchemy engines would
    (rightly) refuse a blocked database here, so seeding and counting go around it.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return sqlite3.connect(parsed.database)
    return psycopg.connect(parsed.set(drivername="postgresql").render_as_string(False))


def seed_items(url: str, n: int = ITEMS) -> None:
    conn = raw_connect(url)
    try:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40))")
        for i in range(1, n + 1):
            conn.execute(f"INSERT INTO items (id, name) VALUES ({i}, 'item-{i}')")
        conn.commit()
    finally:
        conn.close()


def count_items(url: str) -> int:
    conn = raw_connect(url)
    try:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
    finally:
        conn.close()


def item_ids(url: str) -> list[int]:
    conn = raw_connect(url)
    try:
        return [int(r[0]) for r in conn.execute("SELECT id FROM items ORDER BY id").fetchall()]
    finally:
        conn.close()


def stamp_in_process(url: str, environment: str) -> None:
    """Stamp with the library call (quicker than the command, same record)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            write_stamp(conn, environment)
    finally:
        engine.dispose()


def stamp(url: str, environment: str) -> None:
    """Stamp a database the way an administrator does: with the command."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_safe_cleanup.cli",
            "stamp",
            url,
            "--environment",
            environment,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"as {environment!r}" in done.stdout


def assert_stopped_before_tests(result: pytest.RunResult) -> None:
    """A usage error at start: no collection, no test outcome of any kind."""
    assert result.ret == USAGE_ERROR, result.stdout.str() + result.stderr.str()
    out = result.stdout.str() + result.stderr.str()
    assert "collected" not in out
    assert " passed" not in out and " failed" not in out and " error" not in out


# --------------------------------------------------------------------------- 1. environment


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("production", "dry"),
        ("production", "apply"),
        ("production", "off"),
        (" Production ", "dry"),
        ("PROD", "apply"),
        ("stg", "off"),
    ],
)
def test_blocked_environment_stops_pytest_before_any_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str, mode: str
) -> None:
    url = sqlite_url(pytester, "demo.db")
    seed_demo(url)
    copy_examples(pytester)
    if mode == "apply":
        pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")
    monkeypatch.setenv("ENVIRONMENT", value)

    result = pytester.runpytest_subprocess(
        f"--safe-cleanup={mode}", "--safe-cleanup-url", url, "-p", "no:cacheprovider"
    )

    assert_stopped_before_tests(result)
    result.stderr.fnmatch_lines(
        [
            f"ERROR: safe-cleanup: ENVIRONMENT={value.strip().lower()!r} is a blocked environment"
            "*refuses to take part in this run in any mode*"
        ]
    )
    assert_demo_intact(url)


def test_blocked_environment_from_a_custom_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(pytester)
    seed_items(url)
    pytester.makepyfile(test_greedy=GREEDY_TESTS)
    pytester.makeini("[pytest]\nsafe_cleanup_env_vars = APP_ENV\nsafe_cleanup_backup = none\n")
    monkeypatch.setenv("APP_ENV", "production")

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply", "--safe-cleanup-url", url, "-p", "no:cacheprovider"
    )

    assert_stopped_before_tests(result)
    result.stderr.fnmatch_lines(["*APP_ENV='production' is a blocked environment*"])
    assert count_items(url) == ITEMS


# --------------------------------------------------------------------------- 2. name token


@pytest.mark.parametrize("source", ["option", "env", "ini"])
def test_blocked_name_token_stops_pytest_before_any_test(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    pg_databases: PgDatabases,
    source: str,
) -> None:
    url = pg_databases.create(prefix="orders_prod")
    name = url.rsplit("/", 1)[1]
    assert name.startswith("orders_prod_")  # tokens: orders, prod, <hex>
    seed_items(url)
    pytester.makepyfile(test_greedy=GREEDY_TESTS)
    ini = "[pytest]\nsafe_cleanup_backup = none\n"
    args = ["--safe-cleanup=apply", "-p", "no:cacheprovider"]
    monkeypatch.setenv("ENVIRONMENT", "test")
    if source == "option":
        args += ["--safe-cleanup-url", url]
    elif source == "env":
        monkeypatch.setenv("SAFE_CLEANUP_URL", url)
    else:
        ini += f"safe_cleanup_url = {url}\n"
    pytester.makeini(ini)

    result = pytester.runpytest_subprocess(*args)

    assert_stopped_before_tests(result)
    where = {
        "option": "--safe-cleanup-url",
        "env": "SAFE_CLEANUP_URL",
        "ini": "ini safe_cleanup_url",
    }
    result.stderr.fnmatch_lines(
        [
            f"ERROR: safe-cleanup: refusing *{name} ({where[source]}): BLOCK: database name "
            f"{name!r} contains the blocked token 'prod'"
        ]
    )
    assert count_items(url) == ITEMS


# --------------------------------------------------------------------------- 3. stamp at start


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_production_stamp_stops_pytest_before_any_test(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    url = database_url(request, pytester, backend, "billing")
    seed_items(url)
    stamp(url, "production")
    pytester.makepyfile(test_greedy=GREEDY_TESTS)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")
    # The database's own record wins over a process that says it is a test run.
    monkeypatch.setenv("ENVIRONMENT", "test")

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply", "--safe-cleanup-url", url, "-p", "no:cacheprovider"
    )

    assert_stopped_before_tests(result)
    result.stderr.fnmatch_lines(
        [
            "*safe-cleanup*refused*BLOCK: the database is stamped 'production', "
            "a blocked environment*(--safe-cleanup-url)*"
        ]
    )
    assert count_items(url) == ITEMS


# --------------------------------------------------------------------------- 4. found later

ENGINE_CONFTEST = """
import pytest
from sqlalchemy import create_engine

@pytest.fixture(scope="session")
def safe_cleanup_engine():
    engine = create_engine({url!r})
    yield engine
    engine.dispose()
"""


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_blocked_engine_fixture_errors_first_test_and_stops_session(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    url = database_url(request, pytester, backend, "ledger")
    seed_items(url)
    stamp_in_process(url, "production")
    pytester.makeconftest(ENGINE_CONFTEST.format(url=url))
    pytester.makepyfile(test_greedy=GREEDY_TESTS)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")
    monkeypatch.setenv("ENVIRONMENT", "test")

    result = pytester.runpytest_subprocess("--safe-cleanup=apply", "-p", "no:cacheprovider")

    assert result.ret != 0
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_first*",
            "*safe-cleanup refused * BLOCK: the database is stamped 'production'*",
            "*Interrupted*safe-cleanup*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_second*")
    result.stdout.no_fnmatch_line("*test_third*")
    # One clear refusal, not the same text twice through a chained exception.
    result.stdout.no_fnmatch_line("*During handling of the above exception*")
    assert count_items(url) == ITEMS


OWN_ENGINE_TESTS = """
from sqlalchemy import create_engine, text

def test_deletes_behind_the_plugins_back():
    engine = create_engine({url!r})
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items"))

def test_after():
    pass
"""


def test_engine_made_in_a_test_is_refused_before_its_delete(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_databases: PgDatabases
) -> None:
    url = pg_databases.create(prefix="ledger")
    seed_items(url)
    stamp_in_process(url, "production")
    pytester.makepyfile(test_own_engine=OWN_ENGINE_TESTS.format(url=url))
    monkeypatch.setenv("ENVIRONMENT", "test")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*safe-cleanup refused * BLOCK: the database is stamped 'production'*",
            "*Interrupted*safe-cleanup*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_own_engine.py::test_deletes_behind_the_plugins_back*"]
    )
    assert count_items(url) == ITEMS


# --------------------------------------------------------------------------- 5. dry reports


def test_dry_run_reports_a_confirm_target_and_deletes_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_databases: PgDatabases
) -> None:
    url = pg_databases.create(prefix="orders")
    name = url.rsplit("/", 1)[1]
    seed_demo(url)
    copy_examples(pytester)
    monkeypatch.setenv("ENVIRONMENT", "qa")

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=dry", "--safe-cleanup-url", url, "-p", "no:cacheprovider"
    )

    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(
        [
            "*= safe cleanup =*",
            "mode: dry (--safe-cleanup)*",
            "dry run: nothing was deleted*",
            f"target {name} *: CONFIRM",
            "  - ENVIRONMENT='qa' is neither allowed nor blocked*",
            "*.client_accounts * 6 * -",
        ]
    )
    # The seeded rows and the rows the six example tests made (6 accounts, 14 users, 7 assets).
    made = {"client_accounts": 6, "users": 14, "assets": 7}
    for table, n in DEMO_SEED.items():
        assert count_rows(url, table) == n + made[table], table


# --------------------------------------------------------------------------- 6. at teardown

#: registers on a production-stamped database through ``on()`` with a Table object, so
#: nothing connects to it until teardown; test_second would delete from it again
BLOCKED_AT_TEARDOWN_TESTS = """
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, text

ITEMS = Table(
    "items", MetaData(), Column("id", Integer, primary_key=True), Column("name", String(40))
)
BLOCKED = create_engine({blocked!r})  # creating an engine does not connect


def test_first(safe_cleanup):
    with safe_cleanup.engine.begin() as conn:
        conn.execute(text("INSERT INTO items (id, name) VALUES (100, 'made')"))
    safe_cleanup.delete("items", id=100)
    safe_cleanup.on(BLOCKED).delete(ITEMS, id=[1, 2])


def test_second(safe_cleanup):
    safe_cleanup.on(BLOCKED).delete(ITEMS, all_rows=True)
"""


def test_blocked_target_found_at_teardown_is_refused_and_stops_the_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_databases: PgDatabases
) -> None:
    allowed = pg_databases.create(prefix="orders")
    blocked = pg_databases.create(prefix="ledger")
    seed_items(allowed)
    seed_items(blocked)
    stamp_in_process(blocked, "production")
    pytester.makepyfile(test_later=BLOCKED_AT_TEARDOWN_TESTS.format(blocked=blocked))
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")
    monkeypatch.setenv("ENVIRONMENT", "test")

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply",
        "--safe-cleanup-url",
        allowed,
        "--safe-cleanup-report",
        "r.json",
        "-p",
        "no:cacheprovider",
    )

    # The test body passed; its teardown errors with the refusal and the session stops.
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_first*",
            "safe-cleanup: safe-cleanup refused * BLOCK: the database is stamped 'production'*",
            "*Interrupted*safe-cleanup*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_second*")
    result.stdout.fnmatch_lines(
        [
            "*= safe cleanup =*",
            f"target {blocked.rsplit('/', 1)[1]} *: BLOCK",
            "REFUSED test_later.py::test_first (ledger_*): safe-cleanup refused *BLOCK*",
        ]
    )
    report = json.loads((pytester.path / "r.json").read_text())
    got = [
        (c["nodeid"].split("::")[-1], c["target"], c["table"], c["deleted"], c["status"])
        for c in report["cleanups"]
    ]
    assert sorted(got, key=str) == sorted(
        [
            ("test_first", allowed.rsplit("/", 1)[1], "items", 1, "deleted"),
            ("test_first", blocked.rsplit("/", 1)[1], None, None, "refused"),
        ],
        key=str,
    )
    # The allowed database lost only the row test_first made; the blocked one lost nothing.
    assert count_items(allowed) == ITEMS
    assert count_items(blocked) == ITEMS
    assert item_ids(allowed) == item_ids(blocked) == list(range(1, ITEMS + 1))
