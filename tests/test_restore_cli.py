"""`safe-cleanup restore` and `safe-cleanup backups` against a real PostgreSQL database:
the guard decides first, and every refusal leaves the rows where they were."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup import executor, plan
from pytest_safe_cleanup.backup import BackupStore
from pytest_safe_cleanup.backup.format import split_location
from pytest_safe_cleanup.cli import main
from pytest_safe_cleanup.guard import Level, Verdict
from pytest_safe_cleanup.stamp import write_stamp
from pytest_safe_cleanup.target import from_url

PREFIX = "safe-cleanup: "


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("ENVIRONMENT", "SAFE_CLEANUP_RUN_ID", "PGHOST", "PGHOSTADDR", "PGPASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


class Deleted:
    """A database whose accounts and users were cleaned up with a rows backup."""

    def __init__(self, url: str, root: Path, *, backup_url: str | None = None) -> None:
        self.url = url
        self.name = url.rsplit("/", 1)[1]
        self.engine = create_engine(url, poolclass=NullPool)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE accounts (id int PRIMARY KEY, name text);"
                "CREATE TABLE users (id int PRIMARY KEY, account_id int REFERENCES accounts);"
                "INSERT INTO accounts VALUES (1, 'a'), (2, 'b');"
                "INSERT INTO users VALUES (1, 1), (2, 1), (3, 2);"
            )
        resolver = plan.TableResolver(self.engine)
        users, accounts = resolver.resolve("users"), resolver.resolve("accounts")
        built = plan.build_plan(
            [
                plan.Registration(accounts, accounts.c.id.in_([1, 2])),
                plan.Registration(users, users.c.account_id.in_([1, 2])),
            ]
        )
        store = BackupStore(root, "run-7")
        target = from_url(backup_url or url)

        def hook(conn: Any, p: plan.Plan, counts: list[executor.TableCount]) -> str:
            return str(store.write_rows(conn, p, counts, nodeid="t::x", target=target).path)

        _, location = executor.apply(
            self.engine, built, verdict=Verdict(Level.ALLOW, ()), max_rows=100, backup=hook
        )
        assert location is not None
        self.path = location
        assert self.rows() == (0, 0)

    def rows(self) -> tuple[int, int]:
        return count(self.engine, "accounts"), count(self.engine, "users")


@pytest.fixture
def deleted(pg_url: str, tmp_path: Path) -> Iterator[Deleted]:
    d = Deleted(pg_url, tmp_path / "backups")
    yield d
    d.engine.dispose()


def test_restore_allowed_target_dry_run_then_restore(
    deleted: Deleted, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "restore", deleted.path, "--dry-run")
    assert (code, err) == (0, "")
    assert "dry run:" in out and "accounts  would restore 2" in out
    assert "users     would restore 3" in out and "(nothing changed)" in out
    assert deleted.rows() == (0, 0)

    code, out, err = run(capsys, "restore", deleted.path)  # URL taken from the backup
    assert (code, err) == (0, "")
    assert "accounts  restored 2" in out and "users     restored 3" in out
    assert deleted.rows() == (2, 3)

    code, out, err = run(capsys, "restore", deleted.path)
    assert code == 3 and err.count("\n") == 1 and err.startswith(PREFIX + "error: ")
    assert "already exist" in err and "--skip-existing" in err
    assert deleted.rows() == (2, 3)
    code, out, _ = run(capsys, "restore", deleted.path, "--skip-existing", "--url", deleted.url)
    assert code == 0 and "restored 0, skipped 3 existing" in out
    assert deleted.rows() == (2, 3)


def test_restore_confirm_target_needs_the_database_name(
    deleted: Deleted, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "qa")
    code, out, err = run(capsys, "restore", deleted.path)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "needs confirmation" in err
    assert "ENVIRONMENT='qa'" in err and err.rstrip().endswith(f"add --confirm {deleted.name}")
    assert deleted.rows() == (0, 0)
    code, _, err = run(capsys, "restore", deleted.path, "--confirm", "other_db")
    assert code == 1 and "names another database" in err
    assert deleted.rows() == (0, 0)

    code, out, err = run(capsys, "restore", deleted.path, "--confirm", deleted.name)
    assert (code, err) == (0, "")
    assert "restored 5 rows" in out
    assert deleted.rows() == (2, 3)


def test_restore_into_a_production_stamped_database_is_refused(deleted: Deleted) -> None:
    with deleted.engine.connect() as conn:
        write_stamp(conn, "production")
        conn.commit()
    # a subprocess, as users run it: this pytest process's own guard would refuse the
    # stamped database before the command could
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_safe_cleanup.cli",
            "restore",
            deleted.path,
            "--confirm",
            deleted.name,
        ],
        env={**os.environ, "ENVIRONMENT": "test"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert "refused: restore into" in done.stderr and "BLOCK" in done.stderr
    assert "stamped 'production'" in done.stderr
    assert deleted.rows() == (0, 0)


def test_restore_needs_url_when_the_source_had_a_password(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_password = pg_url.replace("postgres@", "postgres:s3cret@")
    d = Deleted(pg_url, tmp_path / "backups", backup_url=with_password)
    try:
        code, out, err = run(capsys, "restore", d.path)
        assert code == 3 and err.count("\n") == 1
        assert "has a password that backups never store: give the target with --url" in err
        journal = split_location(d.path)[0]
        assert "s3cret" not in err + d.path.__str__() + journal.read_text()
        assert d.rows() == (0, 0)
        code, out, err = run(capsys, "restore", d.path, "--url", with_password)
        assert (code, err) == (0, "") and "s3cret" not in out
        assert d.rows() == (2, 3)
    finally:
        d.engine.dispose()


def test_restore_errors_are_one_line(
    deleted: Deleted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged.journal"
    damaged.write_bytes(split_location(deleted.path)[0].read_bytes()[:-20])
    for argv in (
        ["restore", str(damaged)],
        ["restore", f"{damaged}#1"],
        ["restore", str(tmp_path / "missing.jsonl")],
        ["restore", str(tmp_path / "missing.journal")],
        ["restore", deleted.path, "--url", "not a url"],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 3 and out == "", argv
        assert err.startswith(PREFIX + "error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    # cut short, but PostgreSQL says its delete committed: refused, named, never skipped
    for path in (str(damaged), f"{damaged}#1"):
        assert f"record {damaged}#1 is truncated" in run(capsys, "restore", path)[2]
    assert deleted.rows() == (0, 0)


def test_backups_lists_runs(deleted: Deleted, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "backups", str(tmp_path / "backups"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"backups in {tmp_path / 'backups'}"
    assert lines[1].startswith("run run-7 ") and lines[1].endswith("1 file, 5 rows")
    assert lines[2].split() == ["users", "3"] and lines[3].split() == ["accounts", "2"]

    (tmp_path / "pytest.ini").write_text("[pytest]\nsafe_cleanup_backup_dir = backups\n")
    code, out, _ = run(capsys, "backups")  # the folder the ini names, next to the ini
    assert code == 0 and "run run-7 " in out
    code, out, _ = run(capsys, "backups", str(tmp_path / "none"))
    assert (code, out) == (0, f"no backups in {tmp_path / 'none'}\n")


def test_journal_restore_by_table_and_test_then_backups_verify(
    deleted: Deleted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = split_location(deleted.path)[0]
    assert deleted.path == f"{tmp_path / 'backups' / 'run-7' / 'main.journal'}#1"
    code, out, err = run(capsys, "restore", str(journal), "--test", "t::other")
    assert code == 3 and "nothing to restore" in err and "--test t::other" in err
    assert deleted.rows() == (0, 0)
    code, out, err = run(capsys, "restore", str(journal), "--table", "accounts")
    assert (code, err) == (0, "") and "restored 2 rows" in out
    assert deleted.rows() == (2, 0)
    code, out, err = run(capsys, "restore", deleted.path, "--test", "t::x", "--table", "users")
    assert (code, err) == (0, "") and "restored 3 rows" in out
    assert deleted.rows() == (2, 3)

    # the record's transaction id tells PostgreSQL's answer: the delete committed
    code, out, err = run(capsys, "backups", str(tmp_path / "backups"))
    assert (code, err) == (0, "")
    assert "  main.journal#1  t::x  5 rows  delete committed" in out.splitlines()
    code, out, err = run(capsys, "backups", "--verify", str(tmp_path / "backups"))
    assert (code, err) == (0, "")
    assert f"  {journal}#1  t::x  5 rows  delete committed  checksum ok" in out.splitlines()
    assert out.splitlines()[-1] == "verified 1 record: all intact"

    data = journal.read_bytes()
    i = data.index(b'"a"')
    journal.write_bytes(data[:i] + b'"z"' + data[i + 3 :])  # one value changed on disk
    code, out, err = run(capsys, "backups", "--verify", str(tmp_path / "backups"))
    assert code == 1 and f"  damaged: {journal}#1" in out.splitlines()
    assert f"  {journal}#1  t::x  0 rows  delete committed  DAMAGED" in out.splitlines()
    assert out.splitlines()[-1] == "verified 1 record: 1 damaged"
    with deleted.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM users; DELETE FROM accounts")
    code, out, err = run(capsys, "restore", str(journal))
    assert code == 3 and f"backup {journal}#1 is damaged or truncated (checksum" in err
    assert deleted.rows() == (0, 0)


def test_a_record_whose_transaction_aborted_is_listed_and_skipped(
    deleted: Deleted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = deleted.engine
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO accounts VALUES (9, 'z')")
    resolver = plan.TableResolver(engine)
    accounts = resolver.resolve("accounts")
    built = plan.build_plan([plan.Registration(accounts, accounts.c.id == 9)])
    store = BackupStore(tmp_path / "backups", "run-7")  # the same run: the same journal
    with engine.connect() as conn:
        transaction = conn.begin()
        counts = executor.count(conn, built)
        info = store.write_rows(conn, built, counts, nodeid="t::y", target=from_url(engine.url))
        conn.exec_driver_sql("DELETE FROM accounts WHERE id = 9")
        transaction.rollback()  # flushed, then the commit never came
    store.close()
    journal = split_location(deleted.path)[0]
    assert str(info.path) == f"{journal}#2"
    assert count(engine, "accounts") == 1
    code, out, err = run(capsys, "backups", str(tmp_path / "backups"))
    lines = out.splitlines()
    assert "  main.journal#1  t::x  5 rows  delete committed" in lines
    assert "  main.journal#2  t::y  1 row  delete aborted" in lines
    code, out, err = run(capsys, "restore", str(journal))
    assert (code, err) == (0, ""), err
    assert f"skipped {journal}#2: its delete did not commit (transaction aborted)" in out
    assert "restored 5 rows" in out
    assert deleted.rows() == (3, 3)


def old_backup_file(path: Path, url: str) -> None:
    """A per-teardown backup file as earlier versions wrote them (header, rows, footer)."""
    lines = [
        {
            "kind": "header",
            "format": "pytest-safe-cleanup rows",
            "version": 1,
            "dialect": "postgresql",
            "url": url,
            "restore_url": url,
            "nodeid": "t::old",
            "tables": ["users", "accounts"],
        },
        {
            "kind": "table",
            "name": "users",
            "table": "users",
            "schema": None,
            "columns": ["id", "account_id"],
        },
        {"kind": "rows", "rows": [[1, 1], [2, 1], [3, 2]]},
        {
            "kind": "table",
            "name": "accounts",
            "table": "accounts",
            "schema": None,
            "columns": ["id", "name"],
        },
        {"kind": "rows", "rows": [[1, "a"], [2, "b"]]},
    ]
    body = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
    footer = {
        "kind": "footer",
        "rows": {"users": 3, "accounts": 2},
        "total": 5,
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + json.dumps(footer).encode() + b"\n")


def test_an_old_per_teardown_backup_file_still_restores_and_lists(
    deleted: Deleted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old-backups" / "run-1" / "0001-t-old-1234abcd.jsonl"
    old_backup_file(old, deleted.url)
    code, out, err = run(capsys, "backups", str(tmp_path / "old-backups"))
    assert (code, err) == (0, "") and "1 file, 5 rows" in out
    code, out, err = run(capsys, "restore", str(old))
    assert (code, err) == (0, "") and "restored 5 rows" in out
    assert deleted.rows() == (2, 3)
    code, out, err = run(capsys, "restore", str(old), "--test", "t::old")
    assert code == 3 and "--test and --table select records of a journal" in err
    assert deleted.rows() == (2, 3)
