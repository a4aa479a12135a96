"""`safe-cleanup delete` run as a person runs it, in a subprocess, against real databases.

Every refusal and every piece of bad input is checked against the rows themselves:
each table's rows are read before and after, value for value.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CLEARED, assert_same_rows, demo_rows, seed_demo
from sqlalchemy.engine import make_url

from pytest_safe_cleanup.backup.format import read_journal

TENANT = "demo-seed-a"  # seed_demo's tenant with 2 users and 1 asset; demo-seed-b stays
DRY_LINES = [
    r"  assets +1  \(cascade\)",
    r"  users +2  \(cascade\)",
    r"  client_accounts +1",
    r"  total +4",
]


def cli_env(**extra: str) -> dict[str, str]:
    """A clean environment without a terminal (CI set), as in a pipeline."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["CI"] = "true"
    env.update(extra)
    return env


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_safe_cleanup.cli", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a pytest config: backups go to its .safe-cleanup/backups."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return tmp_path


@pytest.fixture(params=["postgres", "sqlite"])
def demo_url(request: pytest.FixtureRequest, project: Path) -> str:
    """The example suite's schema with two seeded tenants."""
    if request.param == "sqlite":
        url = f"sqlite:///{project / 'demo.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    seed_demo(url)
    return url


@pytest.fixture
def pg_demo(pg_url: str) -> str:
    seed_demo(pg_url)
    return pg_url


def db_name(url: str) -> str:
    database = make_url(url).database or ""
    return Path(database).name if url.startswith("sqlite") else database


def backups(project: Path) -> list[Path]:
    """Every journal record under the backup folder, named ``<journal>#N`` as reports do."""
    journals = sorted((project / ".safe-cleanup" / "backups").rglob("*.journal"))
    return [Path(r.location) for j in journals for r in read_journal(j)]


def tenant_gone(before: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The seeded rows without TENANT's account, users and assets."""
    account = next(r[0] for r in before["client_accounts"] if r[1] == TENANT)
    return {
        "client_accounts": [r for r in before["client_accounts"] if r[0] != account],
        "users": [r for r in before["users"] if r[1] != account],
        "assets": [r for r in before["assets"] if r[1] != account],
    }


def delete(project: Path, url: str, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(project, "delete", url, "client_accounts", "--eq", f"name={TENANT}", *extra, **env)


def test_dry_run_prints_the_verdict_and_every_tables_count(project: Path, demo_url: str) -> None:
    before = demo_rows(demo_url)
    result = delete(project, demo_url, "--cascade")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "verdict: ALLOW" in out
    for line in DRY_LINES:
        assert re.search(line, out), (line, out)
    assert f"dry run: nothing was deleted; add --apply --confirm {db_name(demo_url)}" in out
    assert demo_rows(demo_url) == before
    assert backups(project) == []


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("no confirmation", 1, "no confirmation was given: nothing was deleted; add --confirm"),
        ("a wrong name", 1, "the confirmation 'postgres' does not name this database"),
        ("over --max-rows", 1, "cleanup matches 4 rows, more than max_rows=3"),
        ("a blocked stamp", 2, "the database is stamped 'production', a blocked environment"),
        ("a blocked environment", 2, "ENVIRONMENT='production' is a blocked environment"),
    ],
)
def test_apply_refusals_keep_every_row(
    project: Path, pg_demo: str, case: str, code: int, says: str
) -> None:
    name = db_name(pg_demo)
    args, env = ["--cascade", "--apply"], {}
    if case == "a wrong name":
        args += ["--confirm", "postgres"]
    elif case == "over --max-rows":
        args += ["--confirm", name, "--max-rows", "3"]
    elif case == "a blocked stamp":
        stamped = run(project, "stamp", pg_demo, "--environment", "production")
        assert stamped.returncode == 0, stamped.stderr
        args += ["--confirm", name]
    elif case == "a blocked environment":
        args += ["--confirm", name]
        env["ENVIRONMENT"] = "production"
    before = demo_rows(pg_demo)
    result = delete(project, pg_demo, *args, **env)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("safe-cleanup: refused: ")
    assert says in result.stderr
    assert demo_rows(pg_demo) == before, f"{case}: rows changed"
    assert backups(project) == []
    assert not (project / ".safe-cleanup" / "backups" / "audit.jsonl").exists()


def test_apply_with_the_name_deletes_the_tenant_and_restore_puts_it_back(
    project: Path, demo_url: str
) -> None:
    name = db_name(demo_url)
    before = demo_rows(demo_url)
    result = delete(
        project, demo_url, "--cascade", "--apply", "--confirm", name, "--report", "r.json"
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"deleted:\n  assets +1  \(cascade\)\n  users +2", result.stdout)
    assert demo_rows(demo_url) == tenant_gone(before), "exactly the tenant is deleted"

    [backup] = backups(project)
    assert f"backup:  {backup}" in result.stdout
    assert f"restore: safe-cleanup restore {backup}" in result.stdout
    report = json.loads((project / "r.json").read_text())
    assert report["mode"] == "apply" and report["schema_version"] == 1
    assert [(c["table"], c["counted"], c["deleted"], c["status"]) for c in report["cleanups"]] == [
        ("assets", 1, 1, "deleted"),
        ("users", 2, 2, "deleted"),
        ("client_accounts", 1, 1, "deleted"),
    ]
    assert report["targets"][0]["name"] == name and report["totals"]["deleted"] == 4
    [audit] = (project / ".safe-cleanup" / "backups" / "audit.jsonl").read_text().splitlines()
    line = json.loads(audit)
    assert line["nodeid"] == "safe-cleanup delete" and line["verdict"] == "ALLOW"
    assert line["rows"] == {"assets": 1, "users": 2, "client_accounts": 1}
    assert line["backup"] == str(backup)

    restored = run(project, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    after = demo_rows(demo_url)
    for table in before:
        assert_same_rows(before[table], after[table])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["no_such_table", "--eq", "id=1"], "table 'no_such_table' does not exist"),
        (["users", "--eq", "emial=x"], "table 'users' has no column 'emial'"),
        (["users", "--eq", "id=one"], "--eq id='one': not a valid int for column users.id"),
        (["users", "--eq", "id"], "--eq 'id': give COLUMN=VALUE"),
        (["users", "--where", "email = = 'x'"], "is not a condition on users"),
        (["users", "--where", "no_column = 1"], "is not a condition on users"),
        (["users"], "give --where SQL or --eq COLUMN=VALUE"),
        (["users", "--eq", "id=1", "--max-rows", "-1"], "--max-rows -1"),
        (["users", "--eq", "id=1", "--backup", "tape"], "invalid choice: 'tape'"),
        (["users", "--eq", "id=1", "--bogus"], "unrecognized arguments: --bogus"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_bad_input_is_one_line_exit_4_and_changes_nothing(
    project: Path, pg_demo: str, args: list[str], says: str
) -> None:
    before = demo_rows(pg_demo)
    result = run(project, "delete", pg_demo, *args, "--apply", "--confirm", db_name(pg_demo))
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("safe-cleanup: error: ")
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert demo_rows(pg_demo) == before
    assert backups(project) == []


def test_a_where_that_would_write_is_refused_read_only(project: Path, pg_demo: str) -> None:
    """The condition is tried in a read-only transaction first: nextval() cannot run."""
    before = demo_rows(pg_demo)
    where = "id > 0 AND nextval('client_accounts_id_seq') > 0"
    result = run(project, "delete", pg_demo, "client_accounts", "--where", where)
    assert result.returncode == 4, result.stdout
    assert "read-only transaction" in result.stderr and result.stderr.count("\n") == 1
    assert demo_rows(pg_demo) == before


def test_values_are_bound_never_spliced_into_sql(project: Path, pg_demo: str) -> None:
    before = demo_rows(pg_demo)
    name = db_name(pg_demo)
    # A value that would widen the condition if it were pasted into the SQL text.
    sneaky = run(
        project, "delete", pg_demo, "client_accounts", "--eq", "name=x' OR '1'='1",
        "--cascade", "--apply", "--confirm", name,
    )  # fmt: skip
    assert sneaky.returncode == 0, sneaky.stderr
    assert re.search(r"deleted:\n  assets +0", sneaky.stdout), sneaky.stdout
    # --where is literal SQL: a colon is text, never a parameter to fill in.
    colon = run(project, "delete", pg_demo, "users", "--where", "email = 'a:b'")
    assert colon.returncode == 0, colon.stderr
    assert re.search(r"  users +0", colon.stdout)
    # --where stays one condition: its OR does not escape the AND with --eq.
    account = next(r[0] for r in before["client_accounts"] if r[1] == TENANT)
    other = next(r[0] for r in before["client_accounts"] if r[1] != TENANT)
    where = f"account_id = {account} OR account_id = {other}"
    grouped = run(project, "delete", pg_demo, "users", "--where", where, "--eq", "id=0")
    assert grouped.returncode == 0, grouped.stderr
    assert re.search(r"  users +0", grouped.stdout), grouped.stdout
    assert demo_rows(pg_demo) == before


def test_a_backup_that_cannot_be_written_fails_and_deletes_nothing(
    project: Path, pg_demo: str
) -> None:
    before = demo_rows(pg_demo)
    (project / "not-a-folder").write_text("")
    result = delete(
        project, pg_demo, "--cascade", "--apply", "--confirm", db_name(pg_demo),
        "--backup-dir", "not-a-folder",
    )  # fmt: skip
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stderr.startswith("safe-cleanup: failed: the backup could not be written")
    assert demo_rows(pg_demo) == before


pexpect = pytest.importorskip("pexpect")


@pytest.mark.parametrize("answer", ["wrong", "right"])
def test_a_person_sees_the_counts_before_typing_the_name(
    project: Path, pg_demo: str, answer: str
) -> None:
    name = db_name(pg_demo)
    before = demo_rows(pg_demo)
    env = {k: v for k, v in cli_env().items() if k != "CI"}
    args = ["-m", "pytest_safe_cleanup.cli", "delete", pg_demo, "client_accounts"]
    args += ["--eq", f"name={TENANT}", "--cascade", "--apply"]
    child = pexpect.spawn(
        sys.executable, args, cwd=str(project), env=env, timeout=60, encoding="utf-8"
    )
    child.expect("verdict: ALLOW")
    child.expect("rows to delete:")
    child.expect(r"assets +1")
    child.expect(r"users +2")
    child.expect(r"client_accounts +1")
    child.expect(f"Type the database name \\({name}\\) to delete these rows")
    assert demo_rows(pg_demo) == before, "the question comes before anything is deleted"
    child.sendline(name if answer == "right" else name + "x")
    child.expect(pexpect.EOF)
    child.close()
    rest = str(child.before)
    if answer == "wrong":
        assert child.exitstatus == 1, rest
        assert "not confirmed at the prompt: nothing was deleted" in rest
        assert demo_rows(pg_demo) == before
        assert backups(project) == []
    else:
        assert child.exitstatus == 0, rest
        assert demo_rows(pg_demo) == tenant_gone(before)
        assert len(backups(project)) == 1
