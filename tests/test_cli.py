"""The safe-cleanup command against real databases: SQLite files and a local PostgreSQL."""

from __future__ import annotations

import importlib.util
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.cli import find_config, load_config, load_settings, main, verdict_for
from pytest_safe_cleanup.guard import Level
from pytest_safe_cleanup.stamp import read_stamp

SRC = Path(__file__).resolve().parents[1] / "src"
PREFIX = "safe-cleanup: error: "
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "ENVIRONMENT",
        "SAFE_CLEANUP_MODE",
        "SAFE_CLEANUP_URL",
        "SAFE_CLEANUP_RUN_ID",
        "PGHOST",
        "PGHOSTADDR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def sqlite_url(path: Path) -> str:
    sqlite3.connect(path).close()
    return f"sqlite:///{path}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str) -> None:
    assert err.startswith(PREFIX), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_subprocess(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "pytest_safe_cleanup.cli", *argv],
        env={**os.environ, **env, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize(
    ("environment", "code", "level"),
    [("test", 0, "ALLOW"), ("qa", 1, "CONFIRM"), ("production", 2, "BLOCK")],
)
def test_check_sqlite_follows_the_process_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    environment: str,
    code: int,
    level: str,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", environment)
    got, out, err = run(capsys, "check", sqlite_url(tmp_path / "app.db"))
    assert (got, err) == (code, "")
    assert f"verdict: {level}" in out
    assert f"ENVIRONMENT={environment!r}" in out
    assert "SQLite file" in out


def test_check_blocks_a_production_file_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    code, out, _ = run(capsys, "check", sqlite_url(tmp_path / "orders_prod.db"))
    assert code == 2
    assert "contains the blocked token 'prod'" in out


def test_stamp_production_blocks_and_cannot_be_lifted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    url = sqlite_url(tmp_path / "app.db")
    code, out, err = run(capsys, "stamp", url, "--environment", "Production")
    assert (code, err) == (0, "")
    assert "as 'production' (previous stamp: none)" in out

    code, out, _ = run(capsys, "check", url)
    assert code == 2
    assert "stamp:   'production'" in out
    stamp_lines = [line.split() for line in out.splitlines() if " stamp " in line]
    assert stamp_lines and stamp_lines[0][:2] == ["BLOCK", "stamp"]

    code, out, err = run(capsys, "stamp", url, "--environment", "test")
    assert (code, out) == (3, "")
    assert_one_error_line(err)
    assert "only a database administrator removes it, by hand" in err
    with sqlite3.connect(tmp_path / "app.db") as db:
        assert db.execute("SELECT environment FROM safe_cleanup_stamp").fetchall() == [
            ("production",)
        ]

    code, out, _ = run(capsys, "stamp", url, "--environment", "production")
    assert code == 0
    assert "already stamped 'production'" in out


def test_subprocess_exit_codes_and_masked_errors(tmp_path: Path) -> None:
    blocked = run_subprocess(
        "check", sqlite_url(tmp_path / "orders_prod.db"), env={"ENVIRONMENT": "test"}
    )
    assert blocked.returncode == 2, blocked.stderr
    assert "verdict: BLOCK" in blocked.stdout

    url = f"postgresql+psycopg://admin:s3cret-pw@127.0.0.1:{closed_port()}/orders"
    failed = run_subprocess("check", url, env={"ENVIRONMENT": "test"})
    assert failed.returncode == 3
    assert failed.stdout == ""
    assert_one_error_line(failed.stderr)
    assert "could not connect to" in failed.stderr
    assert "s3cret-pw" not in failed.stderr


# ---------------------------------------------------------------------------- errors


def test_errors_are_one_line_and_exit_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = sqlite_url(tmp_path / "app.db")
    cases: list[tuple[list[str], str]] = [
        ([], "required"),
        (["check"], "required: URL"),
        (["check", app, "--bogus"], "unrecognized arguments"),
        (["stamp", app], "--environment"),
        (["check", "postgresql://u:pw-in-url@h:port/x"], "could not parse"),
        (["check", "nosuchdialect://x"], "unsupported database URL scheme"),
        (["check", f"sqlite:///{tmp_path / 'missing.db'}"], "no SQLite database file"),
        (["stamp", app, "--environment", "bad name"], "invalid environment name"),
        (["check", app, "-c", str(tmp_path / "nope.ini")], "does not exist"),
    ]
    if importlib.util.find_spec("pg8000") is None:
        cases.append((["check", "postgresql+pg8000://u@127.0.0.1/x"], "[postgres]"))
    if importlib.util.find_spec("MySQLdb") is None:
        cases.append((["check", "mysql+mysqldb://u@127.0.0.1/x"], "[mysql]"))
    for argv, expected in cases:
        code, out, err = run(capsys, *argv)
        assert (code, out) == (3, ""), argv
        assert_one_error_line(err)
        assert expected in err, (argv, err)
        assert "pw-in-url" not in err
    assert not (tmp_path / "missing.db").exists()

    monkeypatch.setenv("SAFE_CLEANUP_MODE", "bogus")
    code, _, err = run(capsys, "check", app)
    assert code == 3
    assert_one_error_line(err)
    assert "bad settings" in err and "SAFE_CLEANUP_MODE" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("safe-cleanup ")


# ---------------------------------------------------------------------------- ini


def test_pyproject_allowed_hosts_make_a_service_host_local(tmp_path: Path) -> None:
    url = "postgresql://u@db/x"
    environ = {"ENVIRONMENT": "test"}
    before = load_settings(find_config(tmp_path), environ)
    _, verdict = verdict_for(url, before, environ, None)
    assert verdict.level == Level.CONFIRM

    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nsafe_cleanup_allowed_hosts = ["db"]\n'
    )
    config = find_config(tmp_path)
    assert config.path == tmp_path / "pyproject.toml"
    target, verdict = verdict_for(url, load_settings(config, environ), environ, None)
    assert target.is_local
    assert verdict.level == Level.ALLOW
    assert "safe_cleanup_allowed_hosts" in verdict.reasons[1].text


def test_config_discovery_follows_pytest(tmp_path: Path) -> None:
    sub = tmp_path / "pkg" / "tests"
    sub.mkdir(parents=True)
    (tmp_path / "setup.cfg").write_text(
        "[tool:pytest]\nsafe_cleanup_allowed_environments =\n    qa\n    uat  # comment\n"
    )
    (tmp_path / "pkg" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    config = find_config(sub)  # a pyproject.toml without a pytest table does not count
    assert config.path == tmp_path / "setup.cfg"
    assert load_settings(config, {}).allowed_environments == {"qa", "uat"}

    (tmp_path / "tox.ini").write_text("[pytest]\nsafe_cleanup_env_vars = APP_ENV\n")
    assert find_config(sub).path == tmp_path / "tox.ini"  # tox.ini comes before setup.cfg
    (tmp_path / "pkg" / "pytest.ini").write_text("")  # pytest.ini counts even when empty
    assert find_config(sub) == load_config(config_file=tmp_path / "pkg" / "pytest.ini")
    assert find_config(sub).ini == {}


def test_config_values_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = sqlite_url(tmp_path / "app.db")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nsafe_cleanup_mode = ["dry"]\n'
    )
    code, _, err = run(capsys, "check", app)
    assert code == 3
    assert_one_error_line(err)
    assert "safe_cleanup_mode must be a single value" in err

    (tmp_path / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\nsafe_cleanup_max_rows = 'many'\nsafe_cleanup_typo = 1\n"
    )
    code, _, err = run(capsys, "check", app)
    assert code == 3
    assert "unknown ini key safe_cleanup_typo" in err
    assert "ini safe_cleanup_max_rows" in err and "pyproject.toml" in err


def test_explicit_config_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "qa")
    app = sqlite_url(tmp_path / "app.db")
    custom = tmp_path / "ci.ini"
    custom.write_text("[pytest]\nsafe_cleanup_blocked_environments = qa\n")
    assert run(capsys, "check", app, "-c", str(custom))[0] == 2
    assert run(capsys, "--config-file", str(custom), "check", app)[0] == 2

    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\nsafe_cleanup_allowed_environments = qa\n")
    assert run(capsys, "check", app)[0] == 1
    code, out, _ = run(capsys, "check", app, "--rootdir", str(project))
    assert code == 0
    assert f"config:  {project / 'pytest.ini'}" in out


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_database() -> Iterator[str]:
    admin_url = make_url(os.environ.get("SAFE_CLEANUP_POSTGRES_URL", DEFAULT_POSTGRES))
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    admin = create_engine(
        admin_url,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": 3},
    )
    try:
        with admin.connect():
            pass
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL unreachable at {admin_url!r}: {str(exc.orig).splitlines()[0]}"
        if os.environ.get("SAFE_CLEANUP_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"sc_cli_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_postgres_stamp_is_seen_by_open_connections(
    pg_database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    engine = create_engine(pg_database, poolclass=NullPool)
    try:
        with engine.connect() as early:
            assert read_stamp(early) is None
            code, out, err = run(capsys, "stamp", pg_database, "--environment", "production")
            assert (code, err) == (0, "")
            assert "as 'production'" in out
            assert read_stamp(early) == "production"
    finally:
        engine.dispose()

    code, out, _ = run(capsys, "check", pg_database)
    assert code == 2
    assert "the database is stamped 'production'" in out

    code, _, err = run(capsys, "stamp", pg_database, "--environment", "test")
    assert code == 3
    assert_one_error_line(err)
    assert "ALTER DATABASE" in err and "RESET safe_cleanup.environment" in err


# ---------------------------------------------------------------------------- backups, restore


def sqlite_backup(tmp_path: Path, root: Path) -> tuple[str, Path]:
    """A SQLite database whose three rows were deleted with a rows backup under ``root``."""
    from typing import Any

    from sqlalchemy import Column, Integer, MetaData, Table

    from pytest_safe_cleanup import executor, plan
    from pytest_safe_cleanup.backup import BackupStore
    from pytest_safe_cleanup.guard import Verdict
    from pytest_safe_cleanup.target import from_url

    url = sqlite_url(tmp_path / "app.db")
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)")
        conn.exec_driver_sql("INSERT INTO things VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    things = Table("things", MetaData(), Column("id", Integer, primary_key=True))
    built = plan.build_plan([plan.Registration(things, things.c.id.in_([1, 2, 3]))])
    store = BackupStore(root, "run-1")
    target = from_url(url)

    def hook(conn: Any, p: plan.Plan, counts: list[Any]) -> str:
        return str(store.write_rows(conn, p, counts, nodeid="t::x", target=target).path)

    _, location = executor.apply(
        engine, built, verdict=Verdict(Level.ALLOW, ()), max_rows=100, backup=hook
    )
    engine.dispose()
    assert location is not None
    return url, Path(location)


def things(url: str) -> int:
    with sqlite3.connect(make_url(url).database or "") as conn:
        return int(conn.execute("SELECT count(*) FROM things").fetchone()[0])


def test_backups_default_folder_is_under_the_given_rootdir_without_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project"
    sqlite_backup(tmp_path, project / ".safe-cleanup" / "backups")
    assert find_config(project).path is None  # no config file anywhere above
    code, out, err = run(capsys, "backups", "--rootdir", str(project))
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"backups in {project / '.safe-cleanup' / 'backups'}"
    assert "run run-1 " in out
    # without --rootdir the cwd is the rootdir, as in pytest
    code, out, _ = run(capsys, "backups")
    assert (code, out) == (0, f"no backups in {tmp_path / '.safe-cleanup' / 'backups'}\n")


def test_backups_rootdir_beats_the_config_folder_and_bases_the_ini_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nsafe_cleanup_backup_dir = kept\n")
    project = tmp_path / "project"
    sqlite_backup(tmp_path, project / "kept")
    code, out, _ = run(capsys, "backups", "--rootdir", str(project))  # config found above
    assert code == 0 and out.splitlines()[0] == f"backups in {project / 'kept'}"
    code, out, _ = run(capsys, "backups")
    assert (code, out) == (0, f"no backups in {tmp_path / 'kept'}\n")


def test_restore_makes_one_engine_for_the_stamp_and_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_safe_cleanup import cli

    url, path = sqlite_backup(tmp_path, tmp_path / "backups")
    made: list[object] = []
    real = cli._engine

    def counting(u: object) -> object:
        engine = real(u)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    monkeypatch.setattr(cli, "_engine", counting)
    code, out, err = run(capsys, "restore", str(path))
    assert (code, err) == (0, ""), err
    assert "restored 3 rows" in out
    assert len(made) == 1
    assert things(url) == 3


def test_restore_into_a_target_without_a_name_cannot_be_confirmed_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from pytest_safe_cleanup import cli

    url, path = sqlite_backup(tmp_path, tmp_path / "backups")
    monkeypatch.setenv("ENVIRONMENT", "qa")  # CONFIRM
    real = cli.verdict_for

    def nameless(*args: object, **kwargs: object) -> object:
        target, verdict = real(*args, **kwargs)  # type: ignore[arg-type]
        return dataclasses.replace(target, name=""), verdict

    monkeypatch.setattr(cli, "verdict_for", nameless)
    for argv in (("--confirm", ""), ()):
        code, out, err = run(capsys, "restore", str(path), *argv)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and "needs confirmation" in err
        assert "--url that names the database" in err
    assert things(url) == 0
