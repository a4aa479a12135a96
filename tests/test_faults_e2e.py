"""Faults during apply, as users run pytest: nothing is ever lost.

After each fault the rows are counted: either every row is still there (the
transaction never committed), or, where the fault came after the commit, the rows
are gone and every one of them is in the backup file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# Imported before any pytester snapshot of sys.modules, so it is imported once.
import sqlalchemy.dialects.postgresql  # noqa: F401
from conftest import first_id, seed_family
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.backup import read_backup
from pytest_safe_cleanup.backup.format import read_journal, split_location

#: a trigger on parents that runs ``action`` when the plan's last parent is deleted
TRIGGER = """
CREATE FUNCTION on_last_parent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id = {last} THEN
        {action};
    END IF;
    RETURN OLD;
END $$;
"""
#: ... while the DELETE runs
DURING_DELETE = """
CREATE TRIGGER on_last_parent BEFORE DELETE ON parents
    FOR EACH ROW EXECUTE FUNCTION on_last_parent();
"""
#: ... at COMMIT, after every DELETE ran and the backup was written and verified
AT_COMMIT = """
CREATE CONSTRAINT TRIGGER on_last_parent AFTER DELETE ON parents
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION on_last_parent();
"""

#: inserts three parents with two children each and registers all of them
FAMILY_TEST = """
from sqlalchemy import text


def test_family(safe_cleanup):
    with safe_cleanup.engine.begin() as conn:
        for p in {parents}:
            conn.execute(text("INSERT INTO parents VALUES (:p, 'made')"), {{"p": p}})
            for c in (2 * p, 2 * p + 1):
                conn.execute(text("INSERT INTO children VALUES (:c, :p)"), {{"c": c, "p": p}})
    # the parents first on purpose: the plan deletes the children before them
    safe_cleanup.delete("parents", id={parents})
    safe_cleanup.delete("children", parent_id={parents})
"""


# ---------------------------------------------------------------------------- helpers


def execute(url: str, script: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(script)
    finally:
        engine.dispose()


def fetch(url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query), params)]
    finally:
        engine.dispose()


def ids(url: str, table: str) -> set[int]:
    return {r[0] for r in fetch(url, f"SELECT id FROM {table}")}


def family(parents: list[int]) -> dict[str, set[int]]:
    """The rows FAMILY_TEST makes for ``parents``, per table."""
    return {
        "parents": set(parents),
        "children": {c for p in parents for c in (2 * p, 2 * p + 1)},
    }


def seeded_plus(made: dict[str, set[int]]) -> dict[str, set[int]]:
    return {table: {1, 2, 3} | rows for table, rows in made.items()}


def table_ids(url: str) -> dict[str, set[int]]:
    return {table: ids(url, table) for table in ("parents", "children")}


def project(
    pytester: pytest.Pytester, url: str, parents: list[int], action: str, when: str = DURING_DELETE
) -> None:
    seed_family(url)  # parents and children 1-3
    execute(url, TRIGGER.format(last=parents[-1], action=action) + when)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_fault=FAMILY_TEST.format(parents=parents))


def run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--safe-cleanup=apply",
        "--safe-cleanup-url",
        url,
        "-p",
        "no:cacheprovider",
        "--safe-cleanup-report=r.json",
        *args,
    )


def report(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "r.json").read_text())


def backup_root(pytester: pytest.Pytester) -> Path:
    return pytester.path / ".safe-cleanup" / "backups"


def rows_backups(root: Path) -> list[Path]:
    """Every journal record under the backup folder, named ``<journal>#N`` as reports do."""
    journals = sorted((root).rglob("*.journal"))
    return [Path(r.location) for j in journals for r in read_journal(j)]


def audit_lines(root: Path) -> list[str]:
    path = root / "audit.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_safe_cleanup.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def backed_up(path: Path) -> dict[str, set[int]]:
    """The ids a verified backup file holds, per table."""
    # PostgreSQL backups hold each row as the server printed it (text): compare the ids.
    return {t.name: {first_id(t, row) for row in t.rows} for t in read_backup(path).tables}


def assert_nothing_committed_or_audited(
    pytester: pytest.Pytester, url: str, made: dict[str, set[int]]
) -> None:
    """Every row is there; no audit line; any backup left behind is complete.

    Where the dialect returns deleted rows (PostgreSQL, SQLite), the backup is written
    from ``DELETE ... RETURNING`` after the deletes and before the commit, so a fault
    during a DELETE leaves no file; a fault after it leaves a complete, verified one.
    """
    assert table_ids(url) == seeded_plus(made)
    root = backup_root(pytester)
    for path in rows_backups(root):
        assert backed_up(path) == made
    assert audit_lines(root) == []


# ---------------------------------------------------------------------------- a, e


def test_trigger_raising_on_the_last_row_rolls_back_everything(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    parents = [50, 51, 52]
    project(pytester, pg_url, parents, "RAISE EXCEPTION 'parent 52 may not go'")
    # e (max_rows, also in test_modes_e2e): refused before any backup is written
    pytester.makepyfile(
        test_limit="""
        import pytest

        @pytest.mark.safe_cleanup(max_rows=2)
        def test_over_the_limit(safe_cleanup):
            safe_cleanup.delete("children", id=[1, 2, 3])
        """
    )

    result = run(pytester, pg_url)
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "safe-cleanup: cleanup failed and was rolled back, nothing was deleted: "
            "parent 52 may not go",
            "safe-cleanup: cleanup matches 3 rows, more than max_rows=2: nothing was deleted*",
        ]
    )
    # the children's DELETE and two parents' rows had gone inside the transaction
    assert_nothing_committed_or_audited(pytester, pg_url, family(parents))
    assert {c["status"] for c in report(pytester)["cleanups"]} == {"failed"}


# ---------------------------------------------------------------------------- b


def test_backend_terminated_between_backup_and_commit_loses_nothing(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    parents = [60, 61, 62]
    kill = "PERFORM pg_terminate_backend(pg_backend_pid())"
    project(pytester, pg_url, parents, kill, AT_COMMIT)
    # the next test gets a fresh connection from the pool and its cleanup proceeds
    pytester.makepyfile(
        test_zafter="""
        from sqlalchemy import text

        def test_after(safe_cleanup):
            with safe_cleanup.engine.begin() as conn:
                conn.execute(text("INSERT INTO parents VALUES (70, 'after')"))
            safe_cleanup.delete("parents", id=70)
        """
    )

    result = run(pytester, pg_url)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_family*",
            "safe-cleanup: cleanup failed and was rolled back, nothing was deleted: "
            "*terminating connection due to administrator command*",
        ]
    )
    assert table_ids(pg_url) == seeded_plus(family(parents))
    got = {(c["nodeid"].split("::")[-1], c["status"]) for c in report(pytester)["cleanups"]}
    assert got == {("test_family", "failed"), ("test_after", "deleted")}
    # test_family's backup was written and verified before the COMMIT that lost the
    # connection, and stays; the audit log has no line for it (nothing was committed),
    # only test_after's line.
    root = backup_root(pytester)
    files = {next(iter(backed_up(p))): p for p in rows_backups(root)}
    assert set(files) == {"children", "parents"}
    assert backed_up(files["children"]) == family(parents)
    assert backed_up(files["parents"]) == {"parents": {70}}
    (line,) = audit_lines(root)
    assert json.loads(line)["nodeid"].endswith("test_after")
    # one journal, two records: PostgreSQL says which delete committed
    assert sorted(p.name for p in files.values()) == ["main.journal#1", "main.journal#2"]
    listed = cli("backups", str(root))
    lines = listed.stdout.splitlines()
    assert any(
        line.startswith("  main.journal#1  test_fault.py::test_family  ")
        and line.endswith("  delete aborted")
        for line in lines
    ), lines
    assert "  main.journal#2  test_zafter.py::test_after  1 row  delete committed" in lines
    # restoring the journal skips the record whose delete never committed
    restored = cli("restore", str(split_location(files["parents"])[0]))
    assert restored.returncode == 0, restored.stderr
    assert "its delete did not commit (transaction aborted)" in restored.stdout
    assert "restored 1 rows" in restored.stdout  # test_after's parent 70, nothing else
    expected = seeded_plus(family(parents))
    assert table_ids(pg_url) == {**expected, "parents": expected["parents"] | {70}}


# ---------------------------------------------------------------------------- c


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("when", [DURING_DELETE, AT_COMMIT], ids=["during-delete", "at-commit"])
def test_pytest_killed_during_apply_loses_nothing(
    pytester: pytest.Pytester, pg_url: str, when: str
) -> None:
    parents = [80, 81, 82]
    project(pytester, pg_url, parents, "PERFORM pg_sleep(30)", when)
    database = pg_url.rsplit("/", 1)[1]
    log = pytester.path / "inner.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "--safe-cleanup=apply",
                "--safe-cleanup-url",
                pg_url,
            ],
            cwd=pytester.path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def sleeping() -> list[int]:
            if proc.poll() is not None:
                pytest.fail(f"pytest ended before the kill:\n{log.read_text()}")
            return [
                r[0]
                for r in fetch(
                    pg_url,
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = :db AND wait_event = 'PgSleep'",
                    db=database,
                )
            ]

        (backend,) = wait_for("the cleanup's DELETE to reach the sleeping trigger", sleeping)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The server notices the lost client only when the sleep ends: end the backend now.
    def gone() -> bool:
        fetch(pg_url, "SELECT pg_terminate_backend(:pid)", pid=backend)
        rows = fetch(pg_url, "SELECT 1 FROM pg_stat_activity WHERE pid = :pid", pid=backend)
        return not rows

    wait_for("the killed run's backend to go away", gone)
    assert_nothing_committed_or_audited(pytester, pg_url, family(parents))
    if when == AT_COMMIT:
        (record,) = rows_backups(backup_root(pytester))
        journal = split_location(record)[0]
        listed = cli("backups", str(backup_root(pytester))).stdout.splitlines()
        assert any(
            line.startswith("  main.journal#1  test_fault.py::test_family  ")
            and line.endswith("  delete aborted")
            for line in listed
        ), listed
        # a crash that had cut the record short: it is skipped, its delete did not commit
        journal.write_bytes(journal.read_bytes()[:-25])
        done = cli("restore", str(journal))
        assert done.returncode == 3
        assert (
            f"skipped {record}: truncated while it was written, and its delete did not "
            "commit (transaction aborted)" in done.stderr
        ), done.stderr
        assert table_ids(pg_url) == seeded_plus(family(parents))


# ---------------------------------------------------------------------------- d


def test_backup_folder_under_a_regular_file_stops_the_delete(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    parents = [90]
    project(pytester, pg_url, parents, "NULL")
    blocker = pytester.path / "blocker"
    blocker.write_text("a regular file, not a folder\n")
    folder = blocker / "backups"

    result = run(pytester, pg_url, "--safe-cleanup-backup-dir", str(folder))
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_family*",
            "safe-cleanup: the backup could not be written, nothing was deleted: cannot create the "
            f"backup folder {folder}: Not a directory*",
        ]
    )
    assert table_ids(pg_url) == seeded_plus(family(parents))
    assert blocker.is_file()


def mount_namespaces_work(mountpoint: Path) -> str | None:
    """Why a private tmpfs cannot be mounted here, or None when it can."""
    if shutil.which("unshare") is None:
        return "the unshare command is missing"
    mountpoint.mkdir()
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stderr.strip() or f"exit {probe.returncode}" if probe.returncode else None


def test_disk_full_while_writing_the_backup_stops_the_delete(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """A real ENOSPC: the backup folder is a 64 KiB tmpfs, mounted in a mount namespace
    of the inner pytest's own (so nothing outlives the run)."""
    full = pytester.path / "full"
    why = mount_namespaces_work(full)
    if why is not None:
        pytest.skip(f"needs root and mount namespaces for a tiny tmpfs (unshare -m): {why}")
    seed_family(pg_url)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_big="""
        from sqlalchemy import text

        def test_big_rows(safe_cleanup):
            with safe_cleanup.engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO parents SELECT g, repeat('x', 2000) "
                         "FROM generate_series(100, 199) g")
                )
            safe_cleanup.delete("parents", id=list(range(100, 200)))
        """
    )
    mount = 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"'
    result = pytester.run(
        "unshare", "-m", "sh", "-c", mount, str(full),
        sys.executable, "-m", "pytest", "--safe-cleanup=apply", "--safe-cleanup-url", pg_url,
        "-p", "no:cacheprovider", "--safe-cleanup-backup-dir", str(full),
    )  # fmt: skip
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_big_rows*",
            "safe-cleanup: the backup could not be written, nothing was deleted: could not write "
            f"backup {full}/*/main.journal: No space left on device; nothing was deleted",
        ]
    )
    assert ids(pg_url, "parents") == {1, 2, 3, *range(100, 200)}


def test_audit_log_on_a_full_disk_after_the_commit_says_what_happened(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """ENOSPC through /dev/full: audit.jsonl is a symlink to it. The audit line is written
    after the commit, so the rows are gone: the error must say so, and the backup holds
    every one of them."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is missing")
    parents = [95, 96]
    project(pytester, pg_url, parents, "NULL")
    root = backup_root(pytester)
    root.mkdir(parents=True)
    (root / "audit.jsonl").symlink_to("/dev/full")

    result = run(pytester, pg_url)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_family*",
            "safe-cleanup: the rows were deleted and backed up to *main.journal#1, but the audit "
            "log could "
            f"not be written: cannot append to the audit log {root}/audit.jsonl: "
            "No space left on device*",
        ]
    )
    result.stdout.no_fnmatch_line("*nothing was deleted*")
    assert table_ids(pg_url) == seeded_plus({"parents": set(), "children": set()})
    (path,) = rows_backups(root)
    assert backed_up(path) == family(parents)
    got = {
        c["table"]: (c["status"], c["deleted"], c["backup"]) for c in report(pytester)["cleanups"]
    }
    assert got == {"children": ("failed", 4, str(path)), "parents": ("failed", 2, str(path))}
