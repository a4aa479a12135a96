"""Parallel runs: pytest-xdist workers and two pytest runs at once on one server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import DEMO_SEED, copy_examples, count_rows, demo_rows, seed_demo
from sqlalchemy import create_engine, text

from pytest_safe_cleanup.backup.format import read_journal

EXAMPLE_TABLES = ("assets", "users", "client_accounts")


def test_xdist_apply_on_the_examples(pytester: pytest.Pytester, pg_url: str) -> None:
    # Rows no example test registers: a cleanup wider than the registrations takes them too.
    seed_demo(pg_url)
    seeded = demo_rows(pg_url)
    assert {t: len(rows) for t, rows in seeded.items()} == DEMO_SEED
    copy_examples(pytester)
    result = pytester.runpytest_subprocess(
        "-n",
        "2",
        "--safe-cleanup=apply",
        "--safe-cleanup-url",
        pg_url,
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=6)
    for table in EXAMPLE_TABLES:
        assert count_rows(pg_url, table) == DEMO_SEED[table], f"{table} kept example rows"
    assert demo_rows(pg_url) == seeded, "only the registered rows go; the seeded ones stay"

    report = json.loads((pytester.path / "report.json").read_text())
    runs = [p for p in (pytester.path / ".safe-cleanup" / "backups").iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].name == report["run_id"]  # one run id for every worker
    journals = sorted(p.name for p in runs[0].rglob("*.journal"))
    assert journals == ["gw0.journal", "gw1.journal"], "one journal per worker"
    records = [r for name in journals for r in read_journal(runs[0] / name)]
    assert all(r.backup is not None for r in records)
    # every record is named by the report, and each worker numbers its own from #1
    assert {r.location for r in records} == {c["backup"] for c in report["cleanups"]}
    for name in journals:
        numbers = [r.n for r in records if r.journal.name == name]
        assert numbers == list(range(1, len(numbers) + 1)) and numbers, name
    # The controller's one report lists every cleanup exactly once.
    seen = Counter((c["nodeid"], c["table"]) for c in report["cleanups"])
    assert seen and max(seen.values()) == 1
    assert {c["status"] for c in report["cleanups"]} == {"deleted"}
    tests = {c["nodeid"] for c in report["cleanups"] if c["nodeid"] != "session"}
    assert len(tests) == 5  # every function-scoped example test; the session one is "session"
    audit = (pytester.path / ".safe-cleanup" / "backups" / "audit.jsonl").read_text()
    assert len(audit.splitlines()) == len({c["backup"] for c in report["cleanups"]})


PROJECT = """
import json, os, time
from sqlalchemy import text

def test_own_rows_only(safe_cleanup_engine, safe_cleanup, disposable_postgres):
    with safe_cleanup_engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS notes (id serial primary key, run text)"))
        conn.execute(text("INSERT INTO notes (run) VALUES (:r), (:r)"), {"r": os.environ["RUN"]})
    safe_cleanup.delete("notes", run=os.environ["RUN"])
    time.sleep(1.5)  # the other run works on its own database meanwhile
    with safe_cleanup_engine.connect() as conn:
        runs = conn.execute(text("SELECT DISTINCT run FROM notes")).scalars().all()
    assert runs == [os.environ["RUN"]]
    with open(f"seen-{os.environ['RUN']}.json", "w") as fh:
        json.dump({"url": disposable_postgres.url}, fh)
"""


def test_two_runs_at_once_on_one_server(tmp_path: Path, pg_server_url: str) -> None:
    (tmp_path / "test_notes.py").write_text(PROJECT)
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nsafe_cleanup_postgres = {pg_server_url}\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYTEST")}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:asyncio",
                "--safe-cleanup=apply",
                "--safe-cleanup-backup-dir",
                f"backups-{name}",
            ],
            cwd=tmp_path,
            env={**env, "RUN": name, "CI": "true"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("one", "two")
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    urls = {json.loads((tmp_path / f"seen-{n}.json").read_text())["url"] for n in ("one", "two")}
    assert len(urls) == 2, "each run had its own disposable database"
    engine = create_engine(pg_server_url)
    try:
        with engine.connect() as conn:
            names = {u.rsplit("/", 1)[-1] for u in urls}
            left = conn.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = ANY(:n)"), {"n": list(names)}
            ).scalar_one()
    finally:
        engine.dispose()
    assert left == 0, "both disposable databases were dropped"


BLOCKED_UNDER_XDIST = """
from sqlalchemy import create_engine, text

engine = create_engine(URL)


def test_{n}():
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM t"))
"""


def test_a_refusal_under_xdist_is_one_line_per_test(
    pytester: pytest.Pytester, pg_databases
) -> None:
    """A BLOCK database reached in workers: each failure is one line at the test's line, with
    no traceback through the plugin or SQLAlchemy, and every row stays."""
    from test_watch_e2e import production

    url = production(pg_databases)
    for n in range(4):
        pytester.makepyfile(**{f"test_w{n}": f"URL = {url!r}\n" + BLOCKED_UNDER_XDIST.format(n=n)})

    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")

    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out and "sqlalchemy/engine" not in out, out
    assert "pytest_safe_cleanup/" not in out, out
    refusals = [line for line in out.splitlines() if "safe-cleanup refused" in line]
    assert refusals, out
    assert all(line.startswith(("test_w", "FAILED", "!")) for line in refusals), refusals
    assert count_rows(url, "t") == 3
