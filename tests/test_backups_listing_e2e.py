"""A failed apply leaves no empty run folder for ``safe-cleanup backups`` to list.

Before, every run whose backups all failed showed up as "0 files, 0 rows", and a run
with one file as "1 files".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_faults_e2e import (
    FAMILY_TEST,
    assert_nothing_committed_or_audited,
    backup_root,
    execute,
    family,
    project,
    rows_backups,
    run,
    seeded_plus,
    table_ids,
)


def backups(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_safe_cleanup.cli", "backups", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout


def test_failed_apply_leaves_no_run_folder_and_one_file_is_one_file(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    parents = [50, 51, 52]
    project(pytester, pg_url, parents, "RAISE EXCEPTION 'parent 52 may not go'")
    root = backup_root(pytester)

    # under xdist too: each worker's folder and the run's folder go when they stay empty
    failed = run(pytester, pg_url, "-n", "2")
    failed.assert_outcomes(passed=1, errors=1)
    failed.stdout.fnmatch_lines(["*parent 52 may not go*"])
    assert_nothing_committed_or_audited(pytester, pg_url, family(parents))
    assert sorted(p.name for p in root.iterdir()) == [".gitignore"]
    assert backups(str(root)) == f"no backups in {root}\n"

    execute(pg_url, "DROP TRIGGER on_last_parent ON parents")
    pytester.makepyfile(test_fault=FAMILY_TEST.format(parents=[60, 61, 62]))
    done = run(pytester, pg_url)
    done.assert_outcomes(passed=1)
    # the second run deleted exactly its own 9 rows; the first run's rows are still there
    assert table_ids(pg_url) == seeded_plus(family(parents))
    (path,) = rows_backups(root)
    lines = backups(str(root)).splitlines()
    assert lines[0] == f"backups in {root}"
    assert lines[1].startswith(f"run {path.parent.name} ")
    assert lines[1].endswith("  1 file, 9 rows")
    assert [line.split() for line in lines[2:4]] == [["children", "6"], ["parents", "3"]]
    # the run's one journal record, and PostgreSQL's word that its delete committed
    assert lines[4:] == ["  main.journal#1  test_fault.py::test_family  9 rows  delete committed"]
    assert path.name == "main.journal#1"
