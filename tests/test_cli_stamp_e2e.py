"""``safe-cleanup stamp`` and ``check`` end to end: the console script, in a subprocess, as run.

Every refusal is read back from the database itself: the stamp a blocked database carries
must still be there, on PostgreSQL and on SQLite, whatever options and config were given.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PgDatabases
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.stamp import read_stamp

SECRET = "Hunter2-pw"


def console_script() -> str:
    """The installed ``safe-cleanup`` entry point, next to this interpreter."""
    script = Path(sys.executable).with_name("safe-cleanup")
    found = str(script) if script.is_file() else shutil.which("safe-cleanup")
    if found is None:
        pytest.fail("the safe-cleanup console script is not installed in this environment")
    return found


def safe_cleanup(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cleared = ("ENVIRONMENT", "APP_ENV", "ENV", "SAFE_CLEANUP_MODE", "SAFE_CLEANUP_URL")
    environ = {k: v for k, v in os.environ.items() if k not in cleared}
    return subprocess.run(
        [console_script(), *argv],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("safe-cleanup: error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def stamp_of(url: str) -> str | None:
    """The stamp, read back through a fresh connection."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return read_stamp(conn)
    finally:
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend: a scratch PostgreSQL database or a SQLite file."""
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        sqlite3.connect(path).close()
        return f"sqlite:///{path}"
    databases: PgDatabases = request.getfixturevalue("pg_databases")
    return databases.create("sc_stamp")


LAX_INI = (
    "[pytest]\n"
    "safe_cleanup_blocked_environments = none\n"
    "safe_cleanup_allowed_environments = test qa\n"
)
# A config that tries to allow a blocked name is itself a usage error.
ALLOWING_INI = "[pytest]\nsafe_cleanup_allowed_environments = production prod stage\n"

LOWERING = [
    # (id, the blocked stamp, argv after the URL, config file text or None)
    ("to-disposable", "production", ["--environment", "disposable"], None),
    ("to-qa-lax-config", "production", ["--environment", "qa", "-c", "lax.ini"], LAX_INI),
    ("token-stamp-lax-config", "prod-eu", ["--environment", "test", "-c", "lax.ini"], LAX_INI),
    ("digit-stamp", "stage2", ["--environment", "Test"], None),
    ("allowing-config", "production", ["--environment", "test", "-c", "lax.ini"], ALLOWING_INI),
]


@pytest.mark.parametrize(
    ("blocked", "argv", "ini"), [c[1:] for c in LOWERING], ids=[c[0] for c in LOWERING]
)
def test_a_blocked_stamp_is_never_lowered(
    database: str, tmp_path: Path, blocked: str, argv: list[str], ini: str | None
) -> None:
    stamped = safe_cleanup("stamp", database, "--environment", blocked, cwd=tmp_path)
    assert stamped.returncode == 0, stamped.stderr
    assert stamp_of(database) == blocked
    if ini is not None:
        (tmp_path / "lax.ini").write_text(ini)

    result = safe_cleanup("stamp", database, *argv, cwd=tmp_path, env={"ENVIRONMENT": "test"})
    assert_one_error_line(result)
    if ini is ALLOWING_INI:
        assert "safe_cleanup_allowed_environments" in result.stderr
    else:
        assert f"is stamped {blocked!r}, a blocked environment" in result.stderr
        assert "no option or config lowers a blocked stamp" in result.stderr
    assert stamp_of(database) == blocked

    check = safe_cleanup("check", database, cwd=tmp_path, env={"ENVIRONMENT": "test"})
    assert check.returncode == 2, check.stdout + check.stderr
    assert "verdict: BLOCK" in check.stdout


def test_a_project_blocked_stamp_is_not_lowered_under_its_config(
    database: str, tmp_path: Path
) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nsafe_cleanup_blocked_environments = preprod\n")
    assert safe_cleanup("stamp", database, "--environment", "preprod", cwd=tmp_path).returncode == 0
    result = safe_cleanup("stamp", database, "--environment", "test", cwd=tmp_path)
    assert_one_error_line(result)
    assert stamp_of(database) == "preprod"


RAISING = [
    # (id, first stamp or None, stamp written over it)
    ("none-to-production", None, "production"),
    ("test-to-prod", "test", "prod"),
    ("production-to-prod-eu", "production", "prod-eu"),
    ("disposable-to-staging", "disposable", "staging"),
]


@pytest.mark.parametrize(("first", "then"), [c[1:] for c in RAISING], ids=[c[0] for c in RAISING])
def test_stamping_a_blocked_name_over_anything_is_allowed(
    database: str, tmp_path: Path, first: str | None, then: str
) -> None:
    if first is not None:
        assert safe_cleanup("stamp", database, "--environment", first, cwd=tmp_path).returncode == 0
    result = safe_cleanup("stamp", database, "--environment", then, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"as {then!r}" in result.stdout
    assert stamp_of(database) == then


def test_a_non_blocked_stamp_may_change(database: str, tmp_path: Path) -> None:
    assert safe_cleanup("stamp", database, "--environment", "qa", cwd=tmp_path).returncode == 0
    result = safe_cleanup("stamp", database, "--environment", "test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stamp_of(database) == "test"


def test_a_hand_edited_stamp_table_with_a_blocked_row_blocks(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE safe_cleanup_stamp (environment VARCHAR(64) NOT NULL)")
        db.executemany("INSERT INTO safe_cleanup_stamp VALUES (?)", [("test",), ("Production",)])
    url = f"sqlite:///{path}"
    check = safe_cleanup("check", url, cwd=tmp_path, env={"ENVIRONMENT": "test"})
    assert check.returncode == 2, check.stdout
    lowered = safe_cleanup("stamp", url, "--environment", "test", cwd=tmp_path)
    assert_one_error_line(lowered)
    with sqlite3.connect(path) as db:
        rows = sorted(r[0] for r in db.execute("SELECT environment FROM safe_cleanup_stamp"))
    assert rows == ["Production", "test"]


# --------------------------------------------------------------------------- check


UNPARSEABLE: list[tuple[str, Callable[[str], str]]] = [
    ("no-at", lambda host: f"postgresql+psycopg://admin:{SECRET}/{host}/orders"),
    ("no-at-no-path", lambda host: f"postgresql://admin:{SECRET}"),
    ("no-scheme", lambda host: f"admin:{SECRET}@{host}/orders"),
    ("bad-port", lambda host: f"postgresql://admin:{SECRET}@{host}:port/orders"),
    ("query-password-bad-port", lambda host: f"postgresql://a@{host}:x/o?password={SECRET}"),
]


@pytest.mark.parametrize("make", [c[1] for c in UNPARSEABLE], ids=[c[0] for c in UNPARSEABLE])
def test_check_never_echoes_a_password_of_a_url_it_cannot_parse(
    tmp_path: Path, make: Callable[[str], str]
) -> None:
    result = safe_cleanup("check", make("127.0.0.1"), cwd=tmp_path, env={"ENVIRONMENT": "test"})
    assert_one_error_line(result)
    assert SECRET not in result.stderr
    assert "could not parse" in result.stderr


def test_check_reads_a_full_width_production_stamp_as_blocked(
    pg_databases: PgDatabases, tmp_path: Path
) -> None:
    url = pg_databases.create("sc_check")
    name = url.rsplit("/", 1)[1]
    wide = "".join(chr(ord(c) + 0xFEE0) for c in "PROD")
    with pg_databases.admin.connect() as conn:
        conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET safe_cleanup.environment = '{wide}'")
    result = safe_cleanup("check", url, cwd=tmp_path, env={"ENVIRONMENT": "test"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "verdict: BLOCK" in result.stdout
    assert "the database is stamped 'prod', a blocked environment" in result.stdout
    lowered = safe_cleanup("stamp", url, "--environment", "test", cwd=tmp_path)
    assert_one_error_line(lowered)
    assert stamp_of(url) == wide.lower()


def test_check_judges_the_postgres_database_the_connection_reached(
    pg_databases: PgDatabases, tmp_path: Path
) -> None:
    reached = pg_databases.create("sc_orders_prod").rsplit("/", 1)[1]
    allowed = pg_databases.create("sc_app_test")
    url = f"{allowed}?dbname={reached}"  # psycopg connects to the query's dbname
    result = safe_cleanup("check", url, cwd=tmp_path, env={"ENVIRONMENT": "test"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"reached: {reached!r}" in result.stdout
    assert f"database name {reached!r} contains the blocked token 'prod'" in result.stdout


def test_check_judges_the_sqlite_file_a_link_points_to(tmp_path: Path) -> None:
    real = tmp_path / "orders_prod.db"
    sqlite3.connect(real).close()
    (tmp_path / "app_test.db").symlink_to(real)
    result = safe_cleanup(
        "check", f"sqlite:///{tmp_path / 'app_test.db'}", cwd=tmp_path, env={"ENVIRONMENT": "test"}
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "reached: 'orders_prod.db'" in result.stdout


def test_a_url_naming_another_database_cannot_lower_the_stamp_it_reaches(
    pg_databases: PgDatabases, tmp_path: Path
) -> None:
    blocked = pg_databases.create("sc_stamped")
    other = pg_databases.create("sc_other")
    assert (
        safe_cleanup("stamp", blocked, "--environment", "production", cwd=tmp_path).returncode == 0
    )
    url = f"{other}?dbname={blocked.rsplit('/', 1)[1]}"
    result = safe_cleanup("stamp", url, "--environment", "test", cwd=tmp_path)
    assert_one_error_line(result)
    assert stamp_of(blocked) == "production"
    assert stamp_of(other) is None
