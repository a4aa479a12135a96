"""Issue 9 end to end: the guard holds on every path a user (or an attacker) takes.

Each test runs a user-style project in a pytest subprocess, as users run it, then
reads the blocked database from outside (driver alone): its rows, sequence, stamp
and existence are unchanged. Projects try several ways around each rule in one run
(a refused first connection stops the session, so one test per run) and record
what each attempt got in ``results.json``; every attempt must be refused, by the
plugin or by the database's own read-only mode, and leave the rows where they were.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from conftest import MysqlDatabases, PgDatabases
from sqlalchemy.engine import make_url

ITEMS = 6
IDS = list(range(1, ITEMS + 1))
USAGE_ERROR = 4
PRODUCTION = "production"

# -- outside views of the databases (driver alone: no engine, no watch) -------------------


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def server_keywords(url: str) -> str:
    """libpq keywords of the server, without a database (the project adds dbname=)."""
    u = make_url(url)
    return f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'}"


def name_of(url: str) -> str:
    return str(make_url(url).database)


PG_SEED = """
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO items SELECT i, 'item-' || i FROM generate_series(1, 6) AS i;
CREATE SEQUENCE seq;
CREATE FUNCTION purge() RETURNS integer LANGUAGE plpgsql AS $$
BEGIN DELETE FROM items; RETURN 1; END $$;
"""


def seed_pg(url: str, extra: str = "") -> None:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(PG_SEED + extra)


def stamp_pg(url: str, environment: str = PRODUCTION) -> None:
    """Stamp as an administrator does (the setting the plugin reads)."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        name = name_of(url).replace('"', '""')
        conn.execute(f"ALTER DATABASE \"{name}\" SET safe_cleanup.environment = '{environment}'")


def pg_state(url: str) -> dict[str, Any]:
    """Everything a write could change: the database, its rows, its sequence, its stamp."""
    u = make_url(url)
    admin = libpq(str(u.set(database="postgres")))
    with psycopg.connect(admin) as conn:
        exists = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (u.database,)
        ).fetchone()
        stamp = conn.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
            (u.database,),
        ).fetchone()
    if not exists or not exists[0]:
        return {"exists": False}
    with psycopg.connect(libpq(url)) as conn:
        try:
            ids: Any = [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")]
        except psycopg.errors.UndefinedTable:
            return {"exists": True, "ids": "table items was dropped"}
        seq = conn.execute("SELECT last_value, is_called FROM seq").fetchone()
    return {"exists": True, "ids": ids, "seq": seq, "stamp": stamp[0] if stamp else None}


def untouched_pg(stamped: bool = True) -> dict[str, Any]:
    stamp = [f"safe_cleanup.environment={PRODUCTION}"] if stamped else None
    return {"exists": True, "ids": IDS, "seq": (1, False), "stamp": stamp}


def seed_sqlite(path: Path, environment: str | None = None) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
        + "".join(f"INSERT INTO items VALUES ({i}, 'item-{i}');" for i in IDS)
    )
    if environment:
        conn.execute("CREATE TABLE safe_cleanup_stamp (environment VARCHAR(64) NOT NULL)")
        conn.execute("INSERT INTO safe_cleanup_stamp VALUES (?)", (environment,))
    conn.commit()
    conn.close()


def sqlite_ids(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")]
    finally:
        conn.close()


def mysql_connect(url: str) -> Any:
    u = make_url(url)
    return pymysql.connect(
        host=u.host,
        port=u.port or 3306,
        user=u.username,
        password=u.password or "",
        database=u.database,
        autocommit=True,
    )


def seed_mysql(url: str, environment: str | None = None) -> None:
    conn = mysql_connect(url)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL)")
        cur.execute("INSERT INTO items VALUES " + ", ".join(f"({i}, 'item-{i}')" for i in IDS))
        cur.execute("CREATE PROCEDURE purge_items() DELETE FROM items")
        if environment:
            cur.execute("CREATE TABLE safe_cleanup_stamp (environment VARCHAR(64) NOT NULL)")
            cur.execute("INSERT INTO safe_cleanup_stamp VALUES (%s)", (environment,))
    conn.close()


def mysql_state(url: str) -> dict[str, Any]:
    conn = mysql_connect(str(make_url(url).set(database="mysql")))
    name = name_of(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (name,)
        )
        if not cur.fetchone()[0]:
            return {"exists": False}
        cur.execute(f"SELECT id FROM `{name}`.items ORDER BY id")
        ids = [r[0] for r in cur.fetchall()]
        cur.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = 'safe_cleanup_stamp'",
            (name,),
        )
        stamp = None
        if cur.fetchone()[0]:
            cur.execute(f"SELECT environment FROM `{name}`.safe_cleanup_stamp")
            stamp = [r[0] for r in cur.fetchall()]
    conn.close()
    return {"exists": True, "ids": ids, "stamp": stamp}


#: how a project counts the blocked database's rows from outside (driver alone)
MYSQL_ROWS = """def rows():
    conn = pymysql.connect(**SERVER, database=B)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            return cur.fetchone()[0]
    finally:
        conn.close()
"""
SQLITE_ROWS = """def rows():
    conn = sqlite3.connect(PROD)
    try:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    finally:
        conn.close()
"""


# -- running a project -------------------------------------------------------------------

#: the top of every project: ``attempt`` runs one way around a rule and records
#: the first line of what stopped it (or "went through") and the rows left after it
PRELUDE = """
import json
import os

RESULTS = {}


def first_line(exc):
    return type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0]


def record(name, outcome, rows):
    # a conftest and a test module each have their own RESULTS: merge into one file
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
    RESULTS.clear()
    if os.path.exists(path):
        with open(path) as fh:
            RESULTS.update(json.load(fh))
    RESULTS[name] = [outcome, rows]
    with open(path, "w") as fh:
        json.dump(RESULTS, fh)


def attempt(name, fn, rows):
    try:
        fn()
        outcome = "went through"
    except Exception as exc:
        outcome = first_line(exc)
    record(name, outcome, rows())


async def attempt_async(name, fn, rows):
    try:
        await fn()
        outcome = "went through"
    except Exception as exc:
        outcome = first_line(exc)
    record(name, outcome, rows())
"""


def project(**constants: Any) -> str:
    return PRELUDE + "".join(f"{k} = {v!r}\n" for k, v in constants.items())


def output_of(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def results_of(pytester: pytest.Pytester, result: pytest.RunResult) -> dict[str, Any]:
    path = pytester.path / "results.json"
    assert path.exists(), output_of(result)
    return dict(json.loads(path.read_text()))


def check_attempts(
    results: dict[str, Any], expected: dict[str, tuple[str, int | list[int]]]
) -> None:
    """Every attempt ran, was refused as expected, and left the rows it found."""
    wrong = []
    for name, (pattern, rows) in expected.items():
        got = results.get(name)
        if got is None:
            wrong.append(f"{name}: never ran")
        elif not fnmatch(got[0], pattern) or got[1] != rows:
            wrong.append(f"{name}: got {got[0]!r} with rows {got[1]!r}; want {pattern!r}, {rows}")
    assert not wrong, "\n".join(wrong)


def refused(database: str, rule: str) -> str:
    """The plugin's one-line BLOCK refusal naming the database reached and the rule."""
    return f"Blocked: safe-cleanup refused *{database}*: BLOCK: *{rule}*"


STAMPED = "the database is stamped 'production', a blocked environment"
PG_READ_ONLY = "*cannot execute * in a read-only transaction*"


@pytest.fixture
def env_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test run: only the databases' own stamps and names can block."""
    monkeypatch.setenv("ENVIRONMENT", "test")


# ==================================================================== 1. the database reached

REACH_PG = """
import asyncio

import psycopg
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


def rows_of(db):
    def rows():
        with psycopg.connect(f"{SERVER} dbname={db}") as c:
            return c.execute("SELECT count(*) FROM items").fetchone()[0]
    return rows


def retry_then_delete(name, engine, db):
    # A retry helper swallows the refused first connect; the test then deletes.
    def first():
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def delete():
        with engine.connect() as conn:
            conn.execute(text("DELETE FROM items"))
            conn.commit()

    attempt(name + ": first connect", first, rows_of(db))
    attempt(name + ": delete", delete, rows_of(db))
    engine.dispose()


def creator(db):
    return lambda: psycopg.connect(f"{SERVER} dbname={db}")


def test_reach():
    retry_then_delete("connect_args", create_engine(ALLOWED, connect_args={"dbname": B}), B)
    retry_then_delete("?dbname=", create_engine(ALLOWED + "?dbname=" + B), B)
    retry_then_delete("?service=", create_engine("postgresql+psycopg://?service=sct_reach"), B)

    allowed = create_engine("postgresql+psycopg://", creator=creator(A))
    with allowed.connect() as conn:      # the first creator engine is allowed ...
        record("creator to A", "read", conn.execute(text("SELECT count(*) FROM items")).scalar())
    retry_then_delete("creator to PROD", create_engine("postgresql+psycopg://",
                                                       creator=creator(PROD)), PROD)
    retry_then_delete("creator to B", create_engine("postgresql+psycopg://",
                                                    creator=creator(B)), B)

    os.environ["PGDATABASE"] = B       # a URL without a database: libpq reads PGDATABASE
    retry_then_delete("PGDATABASE", create_engine(NO_DATABASE), B)
    del os.environ["PGDATABASE"]

    own = create_engine(ALLOWED)

    @event.listens_for(own, "do_connect")
    def redirect(dialect, record, cargs, cparams):
        cparams["dbname"] = B

    retry_then_delete("own do_connect listener", own, B)
    retry_then_delete(
        "NullPool pool_pre_ping",
        create_engine(ALLOWED, poolclass=NullPool, pool_pre_ping=True,
                      connect_args={"dbname": B}),
        B,
    )
    retry_then_delete(
        "execution_options AUTOCOMMIT",
        create_engine(ALLOWED, connect_args={"dbname": B}).execution_options(
            isolation_level="AUTOCOMMIT"),
        B,
    )

    async def main():
        engine = create_async_engine(ASYNC_ALLOWED, connect_args={"database": B})

        async def first():
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        async def delete():
            async with engine.connect() as conn:
                await conn.exec_driver_sql("DELETE FROM items")
                await conn.commit()

        await attempt_async("asyncpg connect_args: first connect", first, rows_of(B))
        await attempt_async("asyncpg connect_args: delete", delete, rows_of(B))
        await engine.dispose()

    asyncio.run(main())
"""


def test_verdict_belongs_to_the_database_reached_postgres(
    pytester: pytest.Pytester,
    pg_databases: PgDatabases,
    monkeypatch: pytest.MonkeyPatch,
    env_test: None,
) -> None:
    allowed = pg_databases.create("sct_ok")
    blocked = pg_databases.create("sct_ledger")
    prod = pg_databases.create("orders-prod2")  # tokens: orders, prod
    for url in (allowed, blocked, prod):
        seed_pg(url)
    stamp_pg(blocked)
    a, b, p = name_of(allowed), name_of(blocked), name_of(prod)
    server = server_keywords(allowed)
    (pytester.path / "pg_service.conf").write_text(
        f"[sct_reach]\n{server.replace(' ', chr(10))}\ndbname={b}\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(pytester.path / "pg_service.conf"))
    no_database = str(make_url(allowed).set(database="")).rsplit("/", 1)[0]
    pytester.makepyfile(
        test_reach=project(
            ALLOWED=allowed,
            ASYNC_ALLOWED=make_url(allowed)
            .set(drivername="postgresql+asyncpg")
            .render_as_string(hide_password=False),
            NO_DATABASE=no_database,
            SERVER=server,
            A=a,
            B=b,
            PROD=p,
        )
        + REACH_PG
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    expected: dict[str, tuple[str, Any]] = {"creator to A": ("read", ITEMS)}
    for name, db, rule in [
        ("connect_args", b, STAMPED),
        ("?dbname=", b, STAMPED),
        ("?service=", b, STAMPED),
        ("creator to PROD", p, "database name * contains the blocked token 'prod'"),
        ("creator to B", b, STAMPED),
        ("PGDATABASE", b, STAMPED),
        ("own do_connect listener", b, STAMPED),
        ("NullPool pool_pre_ping", b, STAMPED),
        ("execution_options AUTOCOMMIT", b, STAMPED),
        ("asyncpg connect_args", b, STAMPED),
    ]:
        expected[f"{name}: first connect"] = (refused(f"/{db}", rule), ITEMS)
        stopped = f"WriteRefused: safe-cleanup stopped DELETE on *{db}*"
        expected[f"{name}: delete"] = (stopped, ITEMS)
    check_attempts(results_of(pytester, result), expected)
    # the summary names the databases reached, not the URL's text
    result.stdout.fnmatch_lines([f"target {b} *: BLOCK"])
    result.stdout.fnmatch_lines([f"target {p} *: BLOCK"])
    assert pg_state(blocked) == untouched_pg()
    assert pg_state(prod) == untouched_pg(stamped=False)
    assert pg_state(allowed) == untouched_pg(stamped=False)


PG_DUMP_CONFTEST = """
import pytest
from sqlalchemy import create_engine


@pytest.fixture(scope="session")
def safe_cleanup_engine():
    engine = create_engine(URL, **KWARGS)
    yield engine
    engine.dispose()
"""

PG_DUMP_TEST = """
from sqlalchemy import text


def test_cleans(safe_cleanup, safe_cleanup_engine):
    with safe_cleanup_engine.begin() as conn:
        conn.execute(text("INSERT INTO items VALUES (100, 'made')"))
    safe_cleanup.delete("items", id=100)
"""


@pytest.mark.parametrize("how", ["connect_args", "?dbname="])
def test_pg_dump_backup_is_of_the_database_reached(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None, how: str
) -> None:
    named = pg_databases.create("sct_named")  # the URL's text names this one ...
    reached = pg_databases.create("sct_reached")  # ... the engine reaches this one
    seed_pg(named, "CREATE TABLE only_in_named (id int);")
    seed_pg(reached, "CREATE TABLE only_in_reached (id int);")
    if how == "connect_args":
        url, kwargs = named, {"connect_args": {"dbname": name_of(reached)}}
    else:
        url, kwargs = f"{named}?dbname={name_of(reached)}", {}
    pytester.makeconftest(project(URL=url, KWARGS=kwargs) + PG_DUMP_CONFTEST)
    pytester.makepyfile(test_dump=PG_DUMP_TEST)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = pg_dump\n")

    result = pytester.runpytest_subprocess("--safe-cleanup=apply", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"target {name_of(reached)} *: ALLOW*"])
    assert name_of(named) not in result.stdout.str()
    dumps = sorted(pytester.path.rglob("*.dump"))
    assert len(dumps) == 1, output_of(result)
    assert dumps[0].name.startswith(name_of(reached))
    listing = subprocess.run(
        ["pg_restore", "--list", str(dumps[0])], capture_output=True, text=True, check=True
    ).stdout
    assert "only_in_reached" in listing
    assert "only_in_named" not in listing
    assert pg_state(reached) == untouched_pg(stamped=False)  # only the test's row went
    assert pg_state(named) == untouched_pg(stamped=False)


# ==================================================================== 2. before the plugin acts

DROP_ALL_CONFTEST = """
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine

engine = create_engine(BLOCKED)
metadata = MetaData()
Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String))
"""

CONFTEST_WAYS = {
    # the classic module-level drop_all
    "drop_all": ("conftest", "metadata.drop_all(engine)\n"),
    # a retry helper swallows the refusal, then drops again
    "retry": (
        "conftest",
        "try:\n    metadata.drop_all(engine)\nexcept Exception:\n    pass\n"
        "metadata.drop_all(engine)\n",
    ),
}


@pytest.mark.parametrize("way", list(CONFTEST_WAYS))
def test_module_level_drop_all_is_refused(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None, way: str
) -> None:
    blocked = pg_databases.create("sct_ledger")
    seed_pg(blocked)
    stamp_pg(blocked)
    module, code = CONFTEST_WAYS[way]
    source = project(BLOCKED=blocked) + DROP_ALL_CONFTEST + code
    if module == "conftest":
        pytester.makeconftest(source)
    else:
        pytester.makepyfile(**{module: source})
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    args = ["-p", "no:cacheprovider"] + (["-p", module] if module != "conftest" else [])

    result = pytester.runpytest_subprocess(*args)

    assert pg_state(blocked) == untouched_pg()
    assert result.ret != 0, output_of(result)
    line = (
        "*safe-cleanup stopped DROP on *{b}*BLOCK*stamped 'production'*"
        if way == "retry"
        else "*safe-cleanup refused *{b}: BLOCK: *stamped 'production'*"
    ).format(b=name_of(blocked))
    assert any(fnmatch(x, line) for x in output_of(result).splitlines()), output_of(result)
    assert " passed" not in output_of(result)


IMPORT_TIME_MODULE = """
from sqlalchemy import create_engine, delete, text, Table, MetaData, Column, Integer
from sqlalchemy.orm import Session
import psycopg


def rows():
    with psycopg.connect(LIBPQ) as c:
        return c.execute("SELECT count(*) FROM items").fetchone()[0]


engine = create_engine(BLOCKED)


def delete_rows():
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items"))


def raw_delete():
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("DELETE FROM items")
        raw.commit()
    finally:
        raw.close()


def session_delete():
    items = Table("items", MetaData(), Column("id", Integer, primary_key=True))
    with Session(engine) as session:
        session.execute(delete(items))
        session.commit()


attempt("import-time delete", delete_rows, rows)
attempt("import-time raw delete after the refusal", raw_delete, rows)
attempt("import-time Session delete", session_delete, rows)


def test_after_import():
    pass
"""


def test_test_module_writing_at_import_time_is_refused(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None
) -> None:
    blocked = pg_databases.create("sct_ledger")
    seed_pg(blocked)
    stamp_pg(blocked)
    pytester.makepyfile(
        test_import_time=project(BLOCKED=blocked, LIBPQ=libpq(blocked)) + IMPORT_TIME_MODULE
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    b = name_of(blocked)
    check_attempts(
        results_of(pytester, result),
        {
            "import-time delete": (refused(f"/{b}", STAMPED), ITEMS),
            "import-time raw delete after the refusal": (PG_READ_ONLY, ITEMS),
            "import-time Session delete": (
                f"WriteRefused: safe-cleanup stopped DELETE on *{b}*",
                ITEMS,
            ),
        },
    )
    assert pg_state(blocked) == untouched_pg()


BLOCKED_ENV_CONFTEST = """
import psycopg
from sqlalchemy import create_engine, text

with create_engine(ALLOWED).begin() as conn:  # at import time
    conn.execute(text("DELETE FROM items WHERE id = 1"))
with psycopg.connect(LIBPQ) as raw:  # and with the driver alone
    raw.execute("DELETE FROM items WHERE id = 2")
"""

BLOCKED_ENV_TEST = """
import pytest


@pytest.mark.safe_cleanup(confirm=NAME)
def test_cleans_everything(safe_cleanup):
    safe_cleanup.delete("items", all_rows=True)
"""

#: (variables, extra arguments, the line that must say why)
BLOCKED_ENVIRONMENTS = {
    "ENVIRONMENT=production": (
        {"ENVIRONMENT": "production"},
        [],
        "ERROR: safe-cleanup: ENVIRONMENT='production' is a blocked environment*",
    ),
    # class 6: read as words, a confirm marker must not unlock them
    "production-eu": (
        {"ENVIRONMENT": "production-eu"},
        [],
        "ERROR: safe-cleanup: ENVIRONMENT=* holds the blocked environment name 'production'*",
    ),
    "prod1": (
        {"ENVIRONMENT": "prod1"},
        [],
        "ERROR: safe-cleanup: ENVIRONMENT=* holds the blocked environment name 'prod'*",
    ),
    "full-width PROD": (
        {"ENVIRONMENT": "\uff30\uff32\uff2f\uff24"},
        [],
        "ERROR: safe-cleanup: ENVIRONMENT=* blocked environment*",
    ),
    # ways around: another stack's variable, the ini naming another variable
    "APP_ENV=Staging2": (
        {"ENVIRONMENT": "test", "APP_ENV": "Staging2"},
        [],
        "ERROR: safe-cleanup: APP_ENV=* holds the blocked environment name 'staging'*",
    ),
    "env_vars hides ENVIRONMENT": (
        {"ENVIRONMENT": "production", "APP_ENV": "test"},
        ["-o", "safe_cleanup_env_vars=APP_ENV"],
        "ERROR: safe-cleanup: ENVIRONMENT='production' is a blocked environment*",
    ),
}


def run_blocked_environment(
    pytester: pytest.Pytester,
    pg_databases: PgDatabases,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    args: list[str],
    line: str,
) -> None:
    allowed = pg_databases.create("sct_ok")
    seed_pg(allowed)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    pytester.makeconftest(project(ALLOWED=allowed, LIBPQ=libpq(allowed)) + BLOCKED_ENV_CONFTEST)
    pytester.makepyfile(test_all=project(NAME=name_of(allowed)) + BLOCKED_ENV_TEST)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply", "--safe-cleanup-url", allowed, "-p", "no:cacheprovider", *args
    )

    assert result.ret == USAGE_ERROR, output_of(result)
    result.stderr.fnmatch_lines([line])
    assert "collected" not in output_of(result)
    # refused before the conftest was imported: even its driver-alone delete never ran
    assert pg_state(allowed) == untouched_pg(stamped=False)


@pytest.mark.parametrize("case", list(BLOCKED_ENVIRONMENTS))
def test_blocked_environment_refuses_before_conftest_import(
    pytester: pytest.Pytester,
    pg_databases: PgDatabases,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    run_blocked_environment(pytester, pg_databases, monkeypatch, *BLOCKED_ENVIRONMENTS[case])


# ==================================================================== 4. configuration

UNBLOCKING = {
    "-o blocked=none allowed=production": (
        [
            "-o",
            "safe_cleanup_blocked_environments=none",
            "-o",
            "safe_cleanup_allowed_environments=production",
        ],
        "ERROR: safe-cleanup: *safe_cleanup_allowed_environments*production*",
    ),
    # ways around: a blocked name among allowed ones, the -c ini file of another project
    "-o allowed=test prod": (
        ["-o", "safe_cleanup_allowed_environments=test prod"],
        "ERROR: safe-cleanup: *safe_cleanup_allowed_environments*prod*",
    ),
    "-c other.ini": (
        ["-c", "other.ini"],
        "ERROR: safe-cleanup: *safe_cleanup_allowed_environments*production*",
    ),
}


@pytest.mark.parametrize("case", list(UNBLOCKING))
def test_configuration_never_unblocks_production(
    pytester: pytest.Pytester,
    pg_databases: PgDatabases,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    args, line = UNBLOCKING[case]
    (pytester.path / "other.ini").write_text(
        "[pytest]\nsafe_cleanup_blocked_environments = none\n"
        "safe_cleanup_allowed_environments = production\nsafe_cleanup_backup = none\n"
    )
    run_blocked_environment(
        pytester, pg_databases, monkeypatch, {"ENVIRONMENT": "production"}, args, line
    )


# ==================================================================== 3. read-only at the server

READ_ONLY_PG = """
import asyncio

import psycopg
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool


def rows():
    with psycopg.connect(LIBPQ) as c:
        n = c.execute("SELECT count(*) FROM items").fetchone()[0]
        seq = c.execute("SELECT last_value, is_called FROM seq").fetchone()
    return [n, list(seq)]


def swallow(engine):
    # a retry helper: the refused first connect is swallowed
    try:
        engine.connect().close()
    except Exception as exc:
        record("first connect " + str(id(engine)), first_line(exc), rows())


def raw(engine, *statements):
    def run():
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            for sql in statements:
                cur.execute(sql)
            conn.commit()
        finally:
            conn.close()
    return run


def through(engine, sql, driver_sql=False):
    def run():
        with engine.connect() as conn:
            if driver_sql:
                conn.exec_driver_sql(sql)
            else:
                conn.execute(text(sql))
            conn.commit()
    return run


def test_writes_fail_at_the_server():
    engine = create_engine(BLOCKED)
    swallow(engine)
    record("first connect", RESULTS.pop("first connect " + str(id(engine)))[0], rows())
    attempt("raw_connection DELETE", raw(engine, "DELETE FROM items"), rows)
    attempt("SELECT purge()", through(engine, "SELECT purge()"), rows)
    attempt("setval", through(engine, "SELECT setval('seq', 100)"), rows)
    attempt("exec_driver_sql purge", through(engine, "SELECT purge()", True), rows)
    attempt("multi-statement with comment",
            through(engine, "SELECT 1; /* read */ SELECT purge()", True), rows)

    def session_purge():
        with Session(engine) as session:
            session.execute(text("SELECT purge()"))
            session.commit()

    attempt("Session.execute purge", session_purge, rows)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    swallow(autocommit)  # a derived engine's first connection is refused once more
    attempt("AUTOCOMMIT purge", through(autocommit, "SELECT purge()"), rows)
    attempt("AUTOCOMMIT raw DELETE", raw(autocommit, "DELETE FROM items"), rows)

    unpooled = create_engine(BLOCKED, poolclass=NullPool, pool_pre_ping=True)
    swallow(unpooled)
    attempt("NullPool pre_ping raw setval", raw(unpooled, "SELECT setval('seq', 50)"), rows)

    # the user's own listeners, on connections the pool just made
    own = create_engine(BLOCKED)

    @event.listens_for(own, "connect", insert=True)
    def on_connect(dbapi_connection, record):
        cur = dbapi_connection.cursor()
        cur.execute("DELETE FROM items")
        dbapi_connection.commit()

    attempt("own connect listener", lambda: own.connect().close(), rows)

    def lift_then_purge(sql):
        # no raw cursor: a statement that lifts read-only, then a function that writes
        def run():
            with engine.connect() as conn:
                conn.execute(text(sql))
                conn.commit()
                conn.execute(text("SELECT purge()"))
                conn.commit()
        return run

    def readonly_false_purge():
        # SQLAlchemy's own execution option: psycopg then sends BEGIN READ WRITE
        with engine.connect().execution_options(postgresql_readonly=False) as conn:
            conn.execute(text("SELECT purge()"))
            conn.commit()

    attempt("postgresql_readonly=False purge", readonly_false_purge, rows)

    for sql in (
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "RESET ALL",
        "/* x */ set default_transaction_read_only to default",
    ):
        attempt("text " + sql, lift_then_purge(sql), rows)

    async def main():
        aengine = create_async_engine(ASYNC_BLOCKED)
        try:
            async with aengine.connect():
                pass
        except Exception:
            pass

        async def driver_delete():
            async with aengine.connect() as conn:
                raw_conn = await conn.get_raw_connection()
                await raw_conn.driver_connection.execute("DELETE FROM items")

        async def purge():
            async with aengine.connect() as conn:
                await conn.exec_driver_sql("SELECT purge()")
                await conn.commit()

        await attempt_async("asyncpg driver_connection DELETE", driver_delete, rows)
        await attempt_async("asyncpg purge", purge, rows)
        await aengine.dispose()

    asyncio.run(main())
"""


def blocked_pg(pg_databases: PgDatabases) -> str:
    url = pg_databases.create("sct_ledger")
    seed_pg(url)
    stamp_pg(url)
    return url


def test_blocked_database_is_read_only_at_the_server_postgres(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None
) -> None:
    blocked = blocked_pg(pg_databases)
    pytester.makepyfile(
        test_ro=project(
            BLOCKED=blocked,
            ASYNC_BLOCKED=make_url(blocked)
            .set(drivername="postgresql+asyncpg")
            .render_as_string(hide_password=False),
            LIBPQ=libpq(blocked),
        )
        + READ_ONLY_PG
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    b = name_of(blocked)
    same = [ITEMS, [1, False]]
    check_attempts(
        results_of(pytester, result),
        {
            "first connect": (refused(f"/{b}", STAMPED), same),
            "raw_connection DELETE": (PG_READ_ONLY, same),
            "SELECT purge()": (PG_READ_ONLY, same),
            "setval": (PG_READ_ONLY, same),
            "exec_driver_sql purge": (PG_READ_ONLY, same),
            "multi-statement with comment": (PG_READ_ONLY, same),
            "Session.execute purge": (PG_READ_ONLY, same),
            "AUTOCOMMIT purge": (PG_READ_ONLY, same),
            "postgresql_readonly=False purge": (
                f"WriteRefused: *{b}*read-only (the driver was set to open read-write*",
                same,
            ),
            **{
                "text " + sql: (f"WriteRefused: safe-cleanup stopped * on *{b}*read-only*", same)
                for sql in (
                    "SELECT set_config('default_transaction_read_only', 'off', false)",
                    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                    "RESET ALL",
                    "/* x */ set default_transaction_read_only to default",
                )
            },
            "AUTOCOMMIT raw DELETE": (PG_READ_ONLY, same),
            "NullPool pre_ping raw setval": (PG_READ_ONLY, same),
            "own connect listener": (PG_READ_ONLY, same),
            "asyncpg driver_connection DELETE": ("*read-only transaction*", same),
            "asyncpg purge": ("*read-only transaction*", same),
        },
    )
    result.stdout.fnmatch_lines([f"*Interrupted: safe-cleanup refused *{b}: BLOCK*"])
    assert pg_state(blocked) == untouched_pg()


# ==================================================================== 5. another database

#: what a write to another database would change: its stamp, whether it exists
OTHER_PG_STATE = """
import psycopg


def state():
    with psycopg.connect(ADMIN) as c:
        stamp = c.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0", (B,)
        ).fetchone()
        names = c.execute(
            "SELECT datname FROM pg_database WHERE datname IN (%s, %s) ORDER BY datname",
            (B, PROD),
        ).fetchall()
    return [stamp[0] if stamp else None, [r[0] for r in names]]
"""

OTHER_PG_CONFTEST = """
import pytest
from sqlalchemy import create_engine, text


@pytest.fixture(scope="session")
def worker_database():
    # the per-worker database pattern: drop whatever has this name, then recreate it
    admin = create_engine(ALLOWED, isolation_level="AUTOCOMMIT")

    def recreate():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{PROD}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{PROD}"'))

    attempt("worker fixture DROP DATABASE IF EXISTS", recreate, state)
    yield
    admin.dispose()
"""

OTHER_PG_TEST = """
from sqlalchemy import create_engine, text


def test_reaches_other_databases(worker_database):
    engine = create_engine(ALLOWED, isolation_level="AUTOCOMMIT")

    def send(sql, driver_sql=False):
        def run():
            with engine.connect() as conn:
                if driver_sql:
                    conn.exec_driver_sql(sql)
                else:
                    conn.execute(text(sql))
        return run

    for name, sql in [
        ("RESET stamp", f'ALTER DATABASE "{B}" RESET safe_cleanup.environment'),
        ("SET stamp test", f"ALTER DATABASE \\"{B}\\" SET safe_cleanup.environment = 'test'"),
        ("DROP DATABASE", f'DROP DATABASE "{B}"'),
        ("RESET ALL", f'ALTER DATABASE "{B}" RESET ALL'),
        ("ROLE ALL IN DATABASE RESET ALL", f'ALTER ROLE ALL IN DATABASE "{B}" RESET ALL'),
        ("RENAME prod", f'ALTER DATABASE "{PROD}" RENAME TO "{PROD}_renamed"'),
        ("catalog DELETE", "DELETE FROM pg_catalog.pg_db_role_setting WHERE setdatabase = "
                           f"(SELECT oid FROM pg_database WHERE datname = '{B}')"),
        ("DO format()", "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET ALL', "
                        f"'{B}'); END $$"),
    ]:
        attempt(name, send(sql), state)
    attempt("comment trick, exec_driver_sql",
            send(f'DROP/**/DATABASE/* x */"{B}"', driver_sql=True), state)
    attempt("multi-statement", send(f'SELECT 1; ALTER DATABASE "{B}" RESET ALL', True),
            state)
"""


def test_writes_that_reach_another_database_postgres(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None
) -> None:
    allowed = pg_databases.create("sct_ok")
    blocked = blocked_pg(pg_databases)
    prod = pg_databases.create("sct_x_prod")
    seed_pg(allowed)
    seed_pg(prod)
    b, p = name_of(blocked), name_of(prod)
    pg_databases.created.append(f"{p}_renamed")
    constants = project(ALLOWED=allowed, B=b, PROD=p, ADMIN=libpq(pg_databases.server_url))
    constants += OTHER_PG_STATE
    pytester.makeconftest(constants + OTHER_PG_CONFTEST)
    pytester.makepyfile(test_other=constants + OTHER_PG_TEST)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    same = [[f"safe_cleanup.environment={PRODUCTION}"], sorted([b, p])]
    reaches_b = f"WriteRefused: safe-cleanup stopped * through *: it reaches *{b}*, BLOCK*"
    stamp_change = "WriteRefused: safe-cleanup stopped a change to a database's stamp*"
    check_attempts(
        results_of(pytester, result),
        {
            "worker fixture DROP DATABASE IF EXISTS": (
                f"WriteRefused: safe-cleanup stopped * through *: it reaches *{p}*, BLOCK: "
                "database name * contains the blocked token 'prod'*",
                same,
            ),
            "RESET stamp": (stamp_change, same),
            "SET stamp test": (stamp_change, same),
            "DROP DATABASE": (reaches_b, same),
            "RESET ALL": ("WriteRefused: *", same),
            "ROLE ALL IN DATABASE RESET ALL": ("WriteRefused: *", same),
            "RENAME prod": (f"WriteRefused: *{p}*BLOCK*", same),
            "catalog DELETE": ("WriteRefused: *", same),
            "DO format()": ("WriteRefused: *", same),
            "comment trick, exec_driver_sql": (reaches_b, same),
            "multi-statement": ("WriteRefused: *", same),
        },
    )
    assert pg_state(blocked) == untouched_pg()
    assert pg_state(prod) == untouched_pg(stamped=False)


# ==================================================================== SQLite: 1, 3 and 5

SQLITE_PROJECT = """
import sqlite3

from sqlalchemy import create_engine, event, text


def rows_of(path):
    def rows():
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT count(*) FROM items").fetchone()[0]
        finally:
            conn.close()
    return rows


rows = rows_of(PROD)


def send(engine, *statements):
    def run():
        with engine.connect() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
            conn.commit()
    return run


def raw(engine, *statements, script=False):
    def run():
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            for sql in statements:
                cur.executescript(sql) if script else cur.execute(sql)
            conn.commit()
        finally:
            conn.close()
    return run


def test_sqlite():
    # 1. the file reached decides, whatever the URL says
    for name, engine in [
        ("creator", create_engine("sqlite://", creator=lambda: sqlite3.connect(PROD))),
        ("uri", create_engine(f"sqlite:///file:{PROD}?mode=rw&uri=true")),
    ]:
        attempt(name + ": first connect", lambda: engine.connect().close(), rows)
        attempt(name + ": delete", send(engine, "DELETE FROM items"), rows)
    own = create_engine(f"sqlite:///{OK}")

    @event.listens_for(own, "do_connect")
    def redirect(dialect, record, cargs, cparams):
        cargs[0] = PROD

    attempt("own do_connect: first connect", lambda: own.connect().close(), rows)
    # 3. the stamped file is read-only after a swallowed refusal
    engine = create_engine(f"sqlite:///{PROD}")
    attempt("first connect", lambda: engine.connect().close(), rows)
    attempt("raw_connection DELETE", raw(engine, "DELETE FROM items"), rows)
    attempt("raw executescript", raw(engine, "DELETE FROM items;", script=True), rows)
    attempt("text DELETE", send(engine, "DELETE FROM items"), rows)
    attempt("PRAGMA query_only = 0 via text", send(engine, "PRAGMA query_only = 0",
                                                    "DELETE FROM items"), rows)
    attempt("PRAGMA main.query_only = false via text",
            send(engine, "PRAGMA main.query_only = false", "DELETE FROM items"), rows)
    # 5. an allowed file attaching the stamped one
    ok = create_engine(f"sqlite:///{OK}")
    link = PROD + ".link"
    os.symlink(PROD, link)
    for name, statements in [
        ("ATTACH then DELETE", (f"ATTACH DATABASE '{PROD}' AS s", "DELETE FROM s.items")),
        ("ATTACH symlink then UPDATE", (f"ATTACH '{link}' AS s", "UPDATE s.items SET id = -id")),
        ("ATTACH with comment", (f"/* c */ attach /* c */ '{PROD}' as \\"s\\"",
                                 'DELETE FROM "s"."items"')),
    ]:
        attempt(name, send(ok, *statements), rows)
"""


def sqlite_files(pytester: pytest.Pytester) -> tuple[Path, Path]:
    ok, prod = pytester.path / "ok.db", pytester.path / "prod.db"
    seed_sqlite(ok)
    seed_sqlite(prod, PRODUCTION)
    return ok, prod


def test_sqlite_reached_file_read_only_and_attach(
    pytester: pytest.Pytester, env_test: None
) -> None:
    ok, prod = sqlite_files(pytester)
    pytester.makepyfile(test_sqlite=project(OK=str(ok), PROD=str(prod)) + SQLITE_PROJECT)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    blocked = refused("prod.db", STAMPED)
    stopped = "WriteRefused: safe-cleanup stopped * on *prod.db*"
    reaches = "WriteRefused: safe-cleanup stopped * through *ok.db*: it reaches *prod.db*, BLOCK*"
    read_only = "*: not authorized"  # the read-only authorizer on the driver's connection
    check_attempts(
        results_of(pytester, result),
        {
            "creator: first connect": (blocked, ITEMS),
            "creator: delete": (stopped, ITEMS),
            "uri: first connect": (blocked, ITEMS),
            "uri: delete": (stopped, ITEMS),
            "own do_connect: first connect": (blocked, ITEMS),
            "first connect": (blocked, ITEMS),
            "raw_connection DELETE": (read_only, ITEMS),
            "raw executescript": (read_only, ITEMS),
            "text DELETE": (stopped, ITEMS),
            "PRAGMA query_only = 0 via text": (stopped, ITEMS),
            "PRAGMA main.query_only = false via text": (stopped, ITEMS),
            "ATTACH then DELETE": (reaches, ITEMS),
            "ATTACH symlink then UPDATE": (reaches, ITEMS),
            "ATTACH with comment": (reaches, ITEMS),
        },
    )
    assert sqlite_ids(prod) == IDS
    assert sqlite_ids(ok) == IDS


# ==================================================================== MariaDB: 1, 3 and 5

MYSQL_BLOCKED = (
    """
import pymysql
from sqlalchemy import create_engine, event, text


"""
    + MYSQL_ROWS
    + """

def retry_then(name, engine, *statements, raw=False):
    def first():
        engine.connect().close()

    def write():
        if raw:
            conn = engine.raw_connection()
            try:
                cur = conn.cursor()
                for sql in statements:
                    cur.execute(sql)
                conn.commit()
            finally:
                conn.close()
        else:
            with engine.connect() as conn:
                for sql in statements:
                    conn.execute(text(sql))
                conn.commit()

    attempt(name + ": first connect", first, rows)
    attempt(name + ": write", write, rows)
    engine.dispose()


def test_blocked_mariadb():
    # 1. the database reached decides
    retry_then("?database=", create_engine(ALLOWED + "?database=" + B), "DELETE FROM items")
    retry_then("connect_args", create_engine(ALLOWED, connect_args={"database": B}),
               "DELETE FROM items")
    retry_then("creator", create_engine("mysql+pymysql://",
                                        creator=lambda: pymysql.connect(**SERVER, database=B)),
               "DELETE FROM items")
    retry_then("init_command USE", create_engine(ALLOWED,
                                                 connect_args={"init_command": f"USE `{B}`"}),
               "DELETE FROM items")
    # 3. read-only at the server
    retry_then("raw cursor", create_engine(ALLOWED + "?database=" + B), "DELETE FROM items",
               raw=True)
    retry_then("CALL purge_items()", create_engine(ALLOWED + "?database=" + B),
               "CALL purge_items()")
    retry_then("raw CALL purge_items()", create_engine(ALLOWED + "?database=" + B),
               "CALL purge_items()", raw=True)
    # statements that would lift read-only are stopped; the raw DELETE after them never runs
    engine = create_engine(ALLOWED + "?database=" + B)
    try:
        engine.connect().close()
    except Exception:
        pass

    def text_lift(sql):
        def run():
            with engine.connect() as conn:
                conn.execute(text(sql))
                conn.commit()
                conn.connection.dbapi_connection.cursor().execute("DELETE FROM items")
                conn.commit()
        return run

    for sql in MYSQL_TEXT_LIFTS:
        attempt("text " + sql, text_lift(sql), rows)
"""
)

MYSQL_TEXT_LIFTS = (
    "SET @@session.tx_read_only = 0",
    "SET SESSION transaction_read_only = OFF",
    "SET SESSION TRANSACTION READ WRITE",
    "START TRANSACTION READ WRITE",
    "/*!40101 SET SESSION TRANSACTION READ WRITE */",
)


def mysql_server(url: str) -> dict[str, Any]:
    u = make_url(url)
    return {
        "host": u.host,
        "port": u.port or 3306,
        "user": u.username,
        "password": u.password or "",
    }


def test_verdict_and_read_only_mariadb(
    pytester: pytest.Pytester, mysql_databases: MysqlDatabases, env_test: None
) -> None:
    allowed = mysql_databases.create("sct_ok")
    blocked = mysql_databases.create("sct_ledger")
    seed_mysql(allowed)
    seed_mysql(blocked, PRODUCTION)
    b = name_of(blocked)
    pytester.makepyfile(
        test_m=project(
            ALLOWED=allowed, B=b, SERVER=mysql_server(allowed), MYSQL_TEXT_LIFTS=MYSQL_TEXT_LIFTS
        )
        + MYSQL_BLOCKED
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    blocked_line = refused(f"/{b}", STAMPED)
    stopped = f"WriteRefused: safe-cleanup stopped * on *{b}*"
    read_only = "*1792*READ ONLY*"
    expected: dict[str, tuple[str, Any]] = {}
    for name in ("?database=", "connect_args", "creator", "init_command USE"):
        expected[f"{name}: first connect"] = (blocked_line, ITEMS)
        expected[f"{name}: write"] = (stopped, ITEMS)
    for name in ("raw cursor", "CALL purge_items()", "raw CALL purge_items()"):
        expected[f"{name}: first connect"] = (blocked_line, ITEMS)
        expected[f"{name}: write"] = (read_only, ITEMS)
    expected["CALL purge_items(): write"] = (stopped, ITEMS)  # the watch stops CALL first
    for sql in MYSQL_TEXT_LIFTS:
        expected["text " + sql] = (f"WriteRefused: *stopped * on *{b}*read-only*", ITEMS)
    check_attempts(results_of(pytester, result), expected)
    result.stdout.fnmatch_lines([f"target {b} *: BLOCK"])
    assert mysql_state(blocked) == {"exists": True, "ids": IDS, "stamp": [PRODUCTION]}


MYSQL_OTHER = (
    """
import pymysql
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, text


"""
    + MYSQL_ROWS
    + """

def test_statements(safe_cleanup_engine):
    engine = safe_cleanup_engine

    def send(*statements, driver_sql=False):
        def run():
            with engine.connect() as conn:
                for sql in statements:
                    conn.exec_driver_sql(sql) if driver_sql else conn.execute(text(sql))
                conn.commit()
        return run

    for name, statements in [
        ("db.table", (f"DELETE FROM {B}.items",)),
        ("backquoted", (f"DELETE FROM `{B}`.`items`",)),
        ("USE then DELETE", (f"USE {B}", "DELETE FROM items")),
        ("spaces around the dot", (f"DELETE FROM `{B}` . items",)),
        ("multi-table DELETE", (f"DELETE i FROM {B}.items AS i",)),
        ("UPDATE", (f"UPDATE {B}.items SET name = 'x'",)),
        ("comment trick", (f"/* c */ # c\\n DELETE FROM /*x*/ `{B}`.items",)),
    ]:
        attempt(name, send(*statements), rows)
    attempt("exec_driver_sql TRUNCATE", send(f"TRUNCATE TABLE `{B}`.items", driver_sql=True),
            rows)


@pytest.mark.safe_cleanup(confirm=[A, B])
def test_plan(safe_cleanup):
    if PLAN == "string":
        safe_cleanup.delete(f"{B}.items", id=[1, 2])
    else:
        items = Table("items", MetaData(), Column("id", Integer, primary_key=True), schema=B)
        safe_cleanup.delete(items, id=[3, 4])
"""
)


@pytest.mark.parametrize("plan", ["string", "Table(schema=)"])
def test_writes_that_reach_another_database_mariadb(
    pytester: pytest.Pytester, mysql_databases: MysqlDatabases, env_test: None, plan: str
) -> None:
    allowed = mysql_databases.create("sct_ok")
    blocked = mysql_databases.create("sct_ledger")
    seed_mysql(allowed)
    seed_mysql(blocked, PRODUCTION)
    a, b = name_of(allowed), name_of(blocked)
    pytester.makepyfile(
        test_other=project(A=a, B=b, PLAN=plan, SERVER=mysql_server(allowed)) + MYSQL_OTHER
    )
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply", "--safe-cleanup-url", allowed, "-p", "no:cacheprovider"
    )

    reaches = f"WriteRefused: safe-cleanup stopped * through *{a}*: it reaches *{b}*, BLOCK*"
    results = results_of(pytester, result)
    check_attempts(
        results,
        {
            name: (reaches, ITEMS)
            for name in (
                "db.table",
                "backquoted",
                "USE then DELETE",
                "spaces around the dot",
                "multi-table DELETE",
                "UPDATE",
                "comment trick",
                "exec_driver_sql TRUNCATE",
            )
        },
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_plan*",
            f"*safe-cleanup refused *{b}: BLOCK: *stamped 'production'*",
        ]
    )
    assert f"{a}.{b}" not in output_of(result)
    assert mysql_state(blocked) == {"exists": True, "ids": IDS, "stamp": [PRODUCTION]}
    assert mysql_state(allowed)["ids"] == IDS


# ==================================================================== 6. hosts


def non_loopback_address() -> str | None:
    """This machine's first non-loopback IPv4 address (hostname -I), if any."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    for word in out.stdout.split():
        if "." in word and not word.startswith("127."):
            return word
    return None


def listens(address: str | None, port: int) -> bool:
    if address is None:
        return False
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


REMOTE_PG = """
import psycopg
import pytest
from sqlalchemy import create_engine, text


@pytest.fixture(scope="session")
def safe_cleanup_engine():
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(host=HOST, port=PORT, user="postgres", dbname=DB),
    )
    yield engine
    engine.dispose()


def test_cleans_remote(safe_cleanup):
    safe_cleanup.delete("items", all_rows=True)
"""


def test_remote_host_through_creator_is_confirm(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None
) -> None:
    address = non_loopback_address()
    port = make_url(pg_databases.server_url).port or 5432
    if not listens(address, port):
        pytest.skip(f"PostgreSQL does not listen on a non-loopback address ({address}:{port})")
    url = pg_databases.create("sct_remote")
    seed_pg(url)
    pytester.makepyfile(test_remote=project(HOST=address, PORT=port, DB=name_of(url)) + REMOTE_PG)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")

    result = pytester.runpytest_subprocess("--safe-cleanup=apply", "-p", "no:cacheprovider")

    result.stdout.fnmatch_lines([f"target {name_of(url)} *: CONFIRM", f"*{address}*not local*"])
    assert "unix socket" not in result.stdout.str()
    assert pg_state(url) == untouched_pg(stamped=False)


def test_mariadb_query_host_is_confirm(
    pytester: pytest.Pytester, mysql_databases: MysqlDatabases, env_test: None
) -> None:
    address = non_loopback_address()
    port = make_url(mysql_databases.server_url).port or 3306
    if not listens(address, port):
        pytest.skip(f"MariaDB does not listen on a non-loopback address ({address}:{port})")
    url = mysql_databases.create("sct_remote")
    seed_mysql(url)
    remote = f"{url}?host={address}"
    pytester.makepyfile(
        test_remote="def test_x(safe_cleanup):\n    safe_cleanup.delete('items', all_rows=True)\n"
    )
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply", "--safe-cleanup-url", remote, "-p", "no:cacheprovider"
    )

    result.stdout.fnmatch_lines([f"target {name_of(url)} *: CONFIRM"])
    assert mysql_state(url)["ids"] == IDS


# ==================================================================== holes
# Ways around the rules found by trying: each now holds. (What stays out of reach by design,
# a raw DBAPI cursor that lifts read-only itself or reaches another database, and code that
# runs while pytest loads plugins before this one, is said in the README.)

LIFT_PG = """
import psycopg
from sqlalchemy import create_engine, event


def rows():
    with psycopg.connect(LIBPQ) as c:
        return c.execute("SELECT count(*) FROM items").fetchone()[0]


def test_raw_access_cannot_write():
    # the user's own first_connect listener, on an engine's first DBAPI connection
    first = create_engine(BLOCKED)

    @event.listens_for(first, "first_connect")
    def on_first_connect(dbapi_connection, record):
        dbapi_connection.cursor().execute("DELETE FROM items WHERE id = 4")
        dbapi_connection.commit()

    attempt("own first_connect listener", lambda: first.connect().close(), rows)
"""


def test_raw_access_cannot_write_to_a_blocked_database_postgres(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None
) -> None:
    """A user's first_connect listener on a BLOCK database runs after the watch made it
    read-only (a raw cursor that lifts read-only itself is out of reach: see the README)."""
    blocked = blocked_pg(pg_databases)
    pytester.makepyfile(test_lift=project(BLOCKED=blocked, LIBPQ=libpq(blocked)) + LIFT_PG)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    check_attempts(
        results_of(pytester, result),
        {
            "own first_connect listener": ("*", ITEMS),
        },
    )
    assert pg_state(blocked) == untouched_pg()


SQLITE_LIFT = (
    """
import sqlite3

from sqlalchemy import create_engine


"""
    + SQLITE_ROWS
    + """

def raw(engine, *statements):
    def run():
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            for sql in statements:
                cur.execute(sql)
            conn.commit()
        finally:
            conn.close()
    return run


def test_raw_sqlite():
    engine = create_engine(f"sqlite:///{PROD}")
    try:
        engine.connect().close()
    except Exception:
        pass
    attempt("raw PRAGMA query_only = 0", raw(engine, "PRAGMA query_only = 0",
                                               "DELETE FROM items WHERE id = 1"), rows)
    ok = create_engine(f"sqlite:///{OK}")
    attempt("raw ATTACH on an allowed file", raw(ok, f"ATTACH '{PROD}' AS s",
                                                   "DELETE FROM s.items WHERE id = 2"), rows)
"""
)


def test_sqlite_raw_cursor_cannot_lift_read_only_or_attach(
    pytester: pytest.Pytester, env_test: None
) -> None:
    """A raw cursor sets PRAGMA query_only = 0, or attaches a stamped file."""
    ok, prod = sqlite_files(pytester)
    pytester.makepyfile(test_lift=project(OK=str(ok), PROD=str(prod)) + SQLITE_LIFT)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    check_attempts(
        results_of(pytester, result),
        {
            # the sqlite3 authorizer: on the stamped file, and judging the allowed file's ATTACH
            "raw PRAGMA query_only = 0": ("*not authorized*", ITEMS),
            "raw ATTACH on an allowed file": ("*not authorized*", ITEMS),
        },
    )
    assert sqlite_ids(prod) == IDS


MYSQL_SELECT_DB = (
    """
import pymysql
from sqlalchemy import create_engine, text


"""
    + MYSQL_ROWS
    + """

def test_switch_without_a_statement():
    engine = create_engine(ALLOWED)

    def select_db():
        with engine.connect() as conn:
            conn.connection.driver_connection.select_db(B)
            conn.execute(text("DELETE FROM items WHERE id = 1"))
            conn.commit()

    attempt("pymysql select_db then DELETE", select_db, rows)
"""
)


def test_switching_database_without_a_statement_mariadb(
    pytester: pytest.Pytester, mysql_databases: MysqlDatabases, env_test: None
) -> None:
    """pymysql's select_db() switches database without a statement the watch sees."""
    allowed = mysql_databases.create("sct_ok")
    blocked = mysql_databases.create("sct_ledger")
    seed_mysql(allowed)
    seed_mysql(blocked, PRODUCTION)
    pytester.makepyfile(
        test_switch=project(ALLOWED=allowed, B=name_of(blocked), SERVER=mysql_server(allowed))
        + MYSQL_SELECT_DB
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    check_attempts(
        results_of(pytester, result),
        {
            "pymysql select_db then DELETE": ("*", ITEMS),
        },
    )
    assert mysql_state(blocked) == {"exists": True, "ids": IDS, "stamp": [PRODUCTION]}


# ============================================================ found by the review's attacker

ATTACKS_PG = """
import atexit

from sqlalchemy import create_engine, text

engine = create_engine(BLOCKED)


def rows():
    import psycopg

    with psycopg.connect(LIBPQ) as c:
        return c.execute("SELECT count(*) FROM items").fetchone()[0]


@atexit.register
def after_the_session():
    # runs after pytest's session ended: the guard must still be there
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM items WHERE id = 4"))
    except Exception:
        pass


def test_functions_that_write_in_a_read_only_transaction():
    try:
        engine.connect().close()
    except Exception:
        pass

    def through(sql):
        def run():
            with engine.connect() as conn:
                conn.execute(text(sql))
                conn.commit()
        return run

    attempt("lo_unlink", through("SELECT lo_unlink(424242)"), rows)
    attempt("lo_put", through("SELECT lo_put(424243, 0, 'x')"), rows)
    attempt("pg_terminate_backend", through("SELECT pg_terminate_backend(0)"), rows)
"""


def test_large_objects_other_sessions_and_atexit_on_a_blocked_database(
    pytester: pytest.Pytester, pg_databases: PgDatabases, env_test: None
) -> None:
    """PostgreSQL runs large-object and session functions in read-only transactions; code
    registered with atexit runs after the session: the guard holds for both."""
    blocked = pg_databases.create("sct_ledger")
    seed_pg(blocked, "SELECT lo_from_bytea(424242, 'keep'); SELECT lo_from_bytea(424243, 'keep');")
    stamp_pg(blocked)
    pytester.makepyfile(test_lo=project(BLOCKED=blocked, LIBPQ=libpq(blocked)) + ATTACKS_PG)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    refused_here = f"WriteRefused: safe-cleanup stopped * on *{name_of(blocked)}*read-only*"
    check_attempts(
        results_of(pytester, result),
        {
            "lo_unlink": (refused_here, ITEMS),
            "lo_put": (refused_here, ITEMS),
            "pg_terminate_backend": (refused_here, ITEMS),
        },
    )
    assert pg_state(blocked) == untouched_pg()
    with psycopg.connect(libpq(blocked)) as conn:
        objects = conn.execute(
            "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()
    assert objects == [("keep",), ("keep",)]


ATTACKS_SQLITE = (
    """
import sqlite3

from sqlalchemy import create_engine, text


"""
    + SQLITE_ROWS
    + """

def test_an_alias_attached_before_the_watch_saw_the_connection():
    def make():
        conn = sqlite3.connect(OK)
        conn.execute(f"ATTACH DATABASE '{PROD}' AS reporting")
        return conn

    engine = create_engine("sqlite://", creator=make)

    def delete():
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM reporting.items WHERE id <= 2"))

    attempt("creator ATTACH then reporting.items", delete, rows)
"""
)


def test_sqlite_attached_alias_is_judged_by_its_file(
    pytester: pytest.Pytester, env_test: None
) -> None:
    """``reporting.items`` is an attached alias: judged by the file it stands for."""
    ok, prod = sqlite_files(pytester)
    pytester.makepyfile(test_alias=project(OK=str(ok), PROD=str(prod)) + ATTACKS_SQLITE)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    check_attempts(
        results_of(pytester, result),
        {
            "creator ATTACH then reporting.items": (
                "WriteRefused: safe-cleanup stopped DELETE through *ok.db*: it reaches "
                "*prod.db*, BLOCK*",
                ITEMS,
            )
        },
    )
    assert sqlite_ids(prod) == IDS


ATTACKS_MYSQL = (
    """
from sqlalchemy import create_engine, text


import pymysql


"""
    + MYSQL_ROWS
    + """

engine = create_engine(ALLOWED)


def test_a_view_into_a_blocked_database(safe_cleanup):
    def make_view():
        with engine.begin() as conn:
            conn.execute(text(f"CREATE OR REPLACE VIEW recent AS SELECT * FROM {B}.items"))
            conn.execute(text("DELETE FROM recent WHERE id <= 2"))

    attempt("CREATE VIEW over the blocked database", make_view, rows)
    # a view made before the run (here by an administrator): the plugin's own cleanup
    safe_cleanup.on(engine).delete("archive", all_rows=True)
"""
)


def test_mysql_views_into_a_blocked_database_are_judged_there(
    pytester: pytest.Pytester, mysql_databases: MysqlDatabases, env_test: None
) -> None:
    """A MySQL view in an allowed database can delete rows of another: its text and its
    stored definition name that database, which is judged."""
    allowed = mysql_databases.create("sct_ok")
    blocked = mysql_databases.create("sct_ledger")
    seed_mysql(allowed)
    seed_mysql(blocked, PRODUCTION)
    conn = mysql_connect(allowed)
    with conn.cursor() as cur:
        cur.execute(f"CREATE VIEW archive AS SELECT * FROM `{name_of(blocked)}`.items")
    conn.close()
    pytester.makepyfile(
        test_view=project(ALLOWED=allowed, B=name_of(blocked), SERVER=mysql_server(allowed))
        + ATTACKS_MYSQL
    )

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--safe-cleanup=apply", "--safe-cleanup-url", allowed
    )

    check_attempts(
        results_of(pytester, result),
        {
            "CREATE VIEW over the blocked database": (
                f"WriteRefused: *the view it makes reads *{name_of(blocked)}*BLOCK*",
                ITEMS,
            )
        },
    )
    result.stdout.fnmatch_lines([f"*refused *{name_of(blocked)}: BLOCK*"])
    assert mysql_state(blocked) == {"exists": True, "ids": IDS, "stamp": [PRODUCTION]}
