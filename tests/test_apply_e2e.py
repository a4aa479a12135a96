"""The apply path as users run it: rows backups through the plugin and back with
`safe-cleanup restore`, the report and audit log, pg_dump, `none`, retention, cascade.

Each scenario runs an inner pytest in a subprocess against a real database (PostgreSQL
via ``pg_url``, SQLite as a file) and counts the rows afterwards.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Imported before any pytester snapshot of sys.modules, so it is imported once.
import sqlalchemy.dialects.postgresql  # noqa: F401
from conftest import INSERT_FIXTURE, assert_same_rows, first_id
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.backup import read_backup, restore
from pytest_safe_cleanup.backup.format import read_journal, split_location
from pytest_safe_cleanup.stamp import write_stamp

INNER_CONFTEST = INSERT_FIXTURE

FAMILY = """
CREATE TABLE parents (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE children (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parents(id));
INSERT INTO parents VALUES (1, 'seed1'), (2, 'seed2'), (3, 'seed3');
INSERT INTO children VALUES (1, 1), (2, 2), (3, 3);
"""


# ---------------------------------------------------------------------------- helpers


def execute(url: str, script: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                for statement in filter(str.strip, script.split(";")):
                    conn.exec_driver_sql(statement)
            else:
                conn.exec_driver_sql(script)
    finally:
        engine.dispose()


def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows as the driver returns them (no SQLAlchemy result types)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(query)]
    finally:
        engine.dispose()


def ids(url: str, table: str) -> set[int]:
    return {r[0] for r in fetch(url, f"SELECT id FROM {table}")}


def run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--safe-cleanup-url", url, "-p", "no:cacheprovider", "--safe-cleanup-report=r.json", *args
    )


def report(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "r.json").read_text())


def cleanups(doc: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    """Cleanup rows keyed by (test name, table)."""
    return {(c["nodeid"].split("::")[-1], c["table"]): c for c in doc["cleanups"]}


def backup_root(pytester: pytest.Pytester) -> Path:
    return pytester.path / ".safe-cleanup" / "backups"


def audit(root: Path) -> list[dict[str, Any]]:
    path = root / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rows_backups(root: Path) -> list[Path]:
    """Every journal record under the backup folder, named ``<journal>#N`` as reports do."""
    journals = sorted((root).rglob("*.journal"))
    return [Path(r.location) for j in journals for r in read_journal(j)]


def restore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_safe_cleanup.cli", "restore", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# ---------------------------------------------------------------------------- round trip

PG_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE everything (
    id integer PRIMARY KEY, i integer, bi bigint, n numeric, t text, b bytea, bo boolean,
    d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid,
    j json, jb jsonb, ia integer[], ta text[], m mood
);
INSERT INTO everything (id, t) VALUES (99, 'nobody registered this row');
"""
PG_VALUES = r"""
(1, -2147483648, 9223372036854775807, 12345678901234567890.123456789,
 E'h\u00e9llo "quotes"\n{"$dec": 1}', '\x0001ff80'::bytea, true, '1999-12-31',
 '23:59:59.999999', '12:00+05:30', '2020-02-29 01:02:03.456789', '2021-03-28 01:30-07',
 '3 days 00:00:07.000011', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 '{"$dec": "not a tag", "n": [1, 2.5, null, "x"]}', '{"a": {"$obj": 1}, "b": [true, false]}',
 '{1,NULL,3}', '{"a",NULL,"c,d"}', 'happy'),
(2, 0, -9223372036854775808, 'NaN', '', ''::bytea, false, '0001-01-01', '00:00',
 '00:00+00', '1970-01-01 00:00', '2038-01-19 03:14:07+00', '-00:00:00.000001',
 '00000000-0000-0000-0000-000000000000', '"a JSON string"', '[[1, 2], {}, null]',
 '{{1,2},{3,NULL}}', '{}', 'sad'),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL)
"""
SQLITE_SCHEMA = """
CREATE TABLE everything (
    id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n NUMERIC, d DATE, x
);
INSERT INTO everything (id, t) VALUES (99, 'nobody registered this row')
"""
SQLITE_VALUES = r"""
(1, 9223372036854775807, 1e308, 'h' || char(233) || 'llo "quotes"' || char(10) || '{"$dec": 1}',
 X'0001FF80', 1.10, '2020-02-29', 42),
(2, -9223372036854775808, -0.5, '', X'', '12345678901234567890', '0001-01-01', X'01'),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(4, 0, 0.0, '0', X'00', 7, 20200229, 'text')
"""
ROUND_TRIP = {
    "postgresql": (PG_SCHEMA, PG_VALUES, "SELECT * FROM everything WHERE id < 99 ORDER BY id"),
    # typeof(): SQLite's storage class of every value must come back as it was
    "sqlite": (
        SQLITE_SCHEMA,
        SQLITE_VALUES,
        "SELECT *, typeof(i), typeof(r), typeof(t), typeof(b), typeof(n), typeof(d), typeof(x) "
        "FROM everything WHERE id < 99 ORDER BY id",
    ),
}
ROUND_TRIP_TEST = """
import pickle

VALUES = {values!r}
QUERY = {query!r}


def test_inserts_then_registers(safe_cleanup):
    with safe_cleanup.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO everything VALUES " + VALUES)
        rows = [tuple(r) for r in conn.exec_driver_sql(QUERY)]
    with open("before.pkl", "wb") as fh:
        pickle.dump(rows, fh)
    safe_cleanup.delete("everything", id=[r[0] for r in rows])
"""


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_every_type_round_trips_through_the_plugin_and_restore(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, backend: str
) -> None:
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{pytester.path / 'app.db'}"
    schema, values, query = ROUND_TRIP[backend]
    execute(url, schema)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_round_trip=ROUND_TRIP_TEST.format(values=values, query=query))

    result = run(pytester, url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1)
    before = pickle.loads((pytester.path / "before.pkl").read_bytes())
    n = len(before)
    assert n >= 3 and before[-1 if backend == "postgresql" else 2][1:8] == (None,) * 7
    assert ids(url, "everything") == {99}
    (cleanup,) = report(pytester)["cleanups"]
    assert (cleanup["status"], cleanup["counted"], cleanup["deleted"]) == ("deleted", n, n)
    path = cleanup["backup"]
    assert path and path.endswith("main.journal#1") and split_location(path)[0].is_file()
    assert read_backup(Path(path)).counts == {"everything": n}

    restored = restore_cli(path, "--url", url)
    assert restored.returncode == 0, restored.stderr
    assert f"restored {n} rows" in restored.stdout
    after = fetch(url, query)
    assert_same_rows(before, after)
    assert ids(url, "everything") == {99, *(r[0] for r in before)}


def test_interval_with_months_round_trips_through_the_plugin(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    execute(pg_url, "CREATE TABLE spans (id int PRIMARY KEY, iv interval)")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_spans="""
        def test_span(safe_cleanup):
            with safe_cleanup.engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO spans VALUES (1, '1 year 2 mons 3 days')")
            safe_cleanup.delete("spans", id=1)
        """
    )
    run(pytester, pg_url, "--safe-cleanup=apply").assert_outcomes(passed=1)
    assert ids(pg_url, "spans") == set()
    (path,) = rows_backups(backup_root(pytester))
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        assert restore(path, engine).restored == {"spans": 1}  # in-process: what the CLI runs
    finally:
        engine.dispose()
    assert fetch(pg_url, "SELECT iv::text FROM spans") == [("1 year 2 mons 3 days",)]


# ---------------------------------------------------------------------------- report, audit

REPORT_TESTS = """
import pytest


def test_one(safe_cleanup, insert):
    insert("parents", {"id": 10, "name": "one"})
    insert("children", {"id": 10, "parent_id": 10}, {"id": 11, "parent_id": 10})
    safe_cleanup.delete("parents", id=10)
    safe_cleanup.delete("children", parent_id=10)


def test_two(safe_cleanup, insert):
    insert("parents", {"id": 20, "name": "two"})
    safe_cleanup.delete("parents", id=20)


def test_three(safe_cleanup, insert):
    insert("children", {"id": 30, "parent_id": 1}, {"id": 31, "parent_id": 2})
    safe_cleanup.delete("children", id=[30, 31])


@pytest.mark.safe_cleanup(mode="dry")
def test_marker_dry(safe_cleanup, insert):
    insert("parents", {"id": 40, "name": "dry"})
    safe_cleanup.delete("parents", id=40)


def test_held(safe_cleanup, side_engine):
    safe_cleanup.on(side_engine).delete("notes", id=[1, 2])


@pytest.mark.safe_cleanup(backup="none")
def test_no_backup(safe_cleanup, insert):
    insert("parents", {"id": 50, "name": "no backup"})
    safe_cleanup.delete("parents", id=50)
"""


def test_report_summary_and_one_audit_line_per_applied_cleanup(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    execute(pg_url, FAMILY)
    side = pytester.path / "side.db"
    side_url = f"sqlite:///{side}"
    execute(side_url, "CREATE TABLE notes (id INTEGER PRIMARY KEY); INSERT INTO notes VALUES (1)")
    execute(side_url, "INSERT INTO notes VALUES (2); INSERT INTO notes VALUES (3)")
    engine = create_engine(side_url, poolclass=NullPool)
    with engine.begin() as conn:
        write_stamp(conn, "qa")  # CONFIRM: in CI, held without the marker
    engine.dispose()
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(
        INNER_CONFTEST
        + f"""
from sqlalchemy import create_engine


@pytest.fixture(scope="session")
def side_engine():
    engine = create_engine({side_url!r})
    yield engine
    engine.dispose()
"""
    )
    pytester.makepyfile(test_report=REPORT_TESTS)
    pg = pg_url.rsplit("/", 1)[1]
    root = backup_root(pytester)

    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=6, errors=1)
    doc = report(pytester)
    got = cleanups(doc)
    files = {}
    for test, tables in {
        "test_one": {"children": 2, "parents": 1},
        "test_two": {"parents": 1},
        "test_three": {"children": 2},
    }.items():
        rows = [got[test, table] for table in tables]
        assert [(c["status"], c["counted"], c["deleted"]) for c in rows] == [
            ("deleted", n, n) for n in tables.values()
        ]
        # one backup file per cleanup, shared by its tables, holding exactly its rows
        (files[test],) = {c["backup"] for c in rows}
        assert read_backup(Path(files[test])).counts == tables
    assert len(set(files.values())) == 3
    assert (got["test_marker_dry", "parents"]["status"], got["test_held", "notes"]["status"]) == (
        "dry",
        "held",
    )
    assert got["test_marker_dry", "parents"]["backup"] is None
    assert got["test_held", "notes"]["backup"] is None
    # marker backup="none" in a rows session: deleted, no file, and the summary warns
    no_backup = got["test_no_backup", "parents"]
    assert (no_backup["status"], no_backup["deleted"], no_backup["backup"]) == ("deleted", 1, None)
    assert doc["totals"]["tables"] == {
        f"{pg}.children": {"counted": 4, "deleted": 4},
        f"{pg}.parents": {"counted": 4, "deleted": 3},
        "side.db.notes": {"counted": 2, "deleted": None},
    }
    result.stdout.fnmatch_lines(
        [
            "*= safe cleanup =*",
            f"{pg}.children * 4 * 4",
            f"{pg}.parents * 4 * 3",
            "side.db.notes * 2 * -",
            "total * 10 * 7",
            "backups written: 3",
            *(f"  {f}" for f in sorted(files.values())),
            "HELD test_report.py::test_held (side.db): *",
            "warning: safe_cleanup_backup = none: deletions had no backup",
        ]
    )
    # one line per applied cleanup: none for the dry or the held one
    lines = audit(root)
    assert len(lines) == 4
    assert {(a["nodeid"].split("::")[-1], a["backup"]) for a in lines} == {
        *files.items(),
        ("test_no_backup", None),
    }
    assert all(a["run_id"] == doc["run_id"] and a["verdict"] == "ALLOW" for a in lines)
    assert {a["nodeid"].split("::")[-1]: (a["strategy"], a["rows"]) for a in lines} == {
        "test_one": ("rows", {"children": 2, "parents": 1}),
        "test_two": ("rows", {"parents": 1}),
        "test_three": ("rows", {"children": 2}),
        "test_no_backup": ("none", {"parents": 1}),
    }
    assert ids(pg_url, "parents") == {1, 2, 3, 40}
    assert ids(pg_url, "children") == {1, 2, 3}
    assert ids(side_url, "notes") == {1, 2, 3}

    # a dry run writes no audit line and no backup, and deletes nothing
    result = run(pytester, pg_url, "--safe-cleanup=dry", "-k", "test_one or test_two")
    result.assert_outcomes(passed=2)
    assert {c["status"] for c in report(pytester)["cleanups"]} == {"dry"}
    assert len(audit(root)) == 4
    assert len(rows_backups(root)) == 3
    assert ids(pg_url, "parents") == {1, 2, 3, 10, 20, 40}
    assert ids(pg_url, "children") == {1, 2, 3, 10, 11}


# ---------------------------------------------------------------------------- pg_dump, none

TWO_TESTS = """
def test_first(safe_cleanup, insert):
    insert("parents", {"id": 10, "name": "first"})
    insert("children", {"id": 10, "parent_id": 10})
    safe_cleanup.delete("children", parent_id=10)
    safe_cleanup.delete("parents", id=10)


def test_second(safe_cleanup, insert):
    insert("parents", {"id": 20, "name": "second"}, {"id": 21, "name": "second"})
    safe_cleanup.delete("parents", id=[20, 21])
"""


def test_pg_dump_makes_one_readable_dump_per_session_and_target(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    execute(pg_url, FAMILY)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = pg_dump\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_dump=TWO_TESTS)

    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=2)
    root = backup_root(pytester)
    (dump,) = root.rglob("*.dump")
    assert rows_backups(root) == []
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    listed = subprocess.run(
        ["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "TABLE public parents" in listed.stdout
    # Taken once, before the session's first delete: it holds test_first's rows, and
    # test_second's rows (inserted after the dump) are in no backup.
    data = subprocess.run(
        ["pg_restore", "--data-only", "--table=parents", "-f", "-", str(dump)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "10\tfirst" in data and "second" not in data
    doc = report(pytester)
    assert {(c["status"], c["backup"]) for c in doc["cleanups"]} == {("deleted", str(dump))}
    assert doc["totals"]["deleted"] == 4
    result.stdout.fnmatch_lines(["backups written: 1", f"  {dump}"])
    lines = audit(root)
    assert [(a["strategy"], a["backup"]) for a in lines] == [("pg_dump", str(dump))] * 2
    assert ids(pg_url, "parents") == {1, 2, 3}
    assert ids(pg_url, "children") == {1, 2, 3}


PG_DUMP_NOT_NEEDED = """
import pytest


@pytest.mark.safe_cleanup(max_rows=1)
def test_over_the_limit(safe_cleanup, insert):
    insert("parents", {"id": 10, "name": "big"}, {"id": 11, "name": "big"})
    safe_cleanup.delete("parents", id=[10, 11])


def test_matches_nothing(safe_cleanup):
    safe_cleanup.delete("parents", id=999)
"""


def test_pg_dump_is_not_taken_for_a_cleanup_that_deletes_nothing(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """The dump comes after the count and the limit: refused or empty cleanups make none."""
    execute(pg_url, FAMILY)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = pg_dump\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_dump=PG_DUMP_NOT_NEEDED)

    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*cleanup matches 2 rows, more than max_rows=1: nothing was*"])
    result.stdout.no_fnmatch_line("backups written*")
    assert list(pytester.path.rglob("*.dump")) == []
    got = cleanups(report(pytester))
    over = got["test_over_the_limit", None]
    assert (over["status"], over["backup"]) == ("failed", None)
    nothing = got["test_matches_nothing", "parents"]
    assert (nothing["status"], nothing["counted"], nothing["deleted"], nothing["backup"]) == (
        "deleted",
        0,
        0,
        None,
    )
    assert all(a["backup"] is None for a in audit(backup_root(pytester)))
    assert ids(pg_url, "parents") == {1, 2, 3, 10, 11}
    assert ids(pg_url, "children") == {1, 2, 3}


@pytest.mark.parametrize("where", ["sqlite", "no-pg_dump-on-path"])
def test_pg_dump_that_cannot_run_refuses_and_deletes_nothing(
    pytester: pytest.Pytester,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    if where == "sqlite":
        url = f"sqlite:///{pytester.path / 'app.db'}"
        reason = "*safe_cleanup_backup = pg_dump needs PostgreSQL, not sqlite: nothing was deleted*"
    else:
        url = request.getfixturevalue("pg_url")
        empty = pytester.mkdir("empty-bin")
        monkeypatch.setenv("PATH", str(empty))  # the inner run finds no pg_dump
        reason = "*nothing was deleted: pg_dump was not found on PATH*"
    execute(url, FAMILY)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = pg_dump\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_dump=TWO_TESTS)

    result = run(pytester, url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([reason, reason])  # each test's teardown says why
    assert {c["status"] for c in report(pytester)["cleanups"]} == {"failed"}
    assert list(pytester.path.rglob("*.dump")) == []
    assert audit(backup_root(pytester)) == []
    assert ids(url, "parents") == {1, 2, 3, 10, 20, 21}
    assert ids(url, "children") == {1, 2, 3, 10}


def test_backup_none_in_the_ini_deletes_and_warns(pytester: pytest.Pytester, pg_url: str) -> None:
    """(The marker ``backup="none"`` in a rows session is in the report test.)"""
    execute(pg_url, FAMILY)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_none=TWO_TESTS)

    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["warning: safe_cleanup_backup = none: deletions had no backup"])
    result.stdout.no_fnmatch_line("backups written*")
    doc = report(pytester)
    assert {(c["status"], c["backup"]) for c in doc["cleanups"]} == {("deleted", None)}
    assert doc["totals"]["deleted"] == 4
    root = backup_root(pytester)
    assert rows_backups(root) == []
    assert [(a["strategy"], a["backup"]) for a in audit(root)] == [("none", None)] * 2
    assert ids(pg_url, "parents") == {1, 2, 3}
    assert ids(pg_url, "children") == {1, 2, 3}


# ---------------------------------------------------------------------------- retention


def test_backup_keep_prunes_the_oldest_runs(pytester: pytest.Pytester) -> None:
    url = f"sqlite:///{pytester.path / 'app.db'}"
    execute(url, "CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    pytester.makeini("[pytest]\nsafe_cleanup_backup_keep = 2\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        test_keep="""
        def test_note(safe_cleanup, insert):
            insert("notes", {"id": 1})
            safe_cleanup.delete("notes", id=1)
        """
    )
    root = backup_root(pytester)
    runs = []
    for _ in range(3):
        run(pytester, url, "--safe-cleanup=apply").assert_outcomes(passed=1)
        runs.append(report(pytester)["run_id"])
        assert ids(url, "notes") == set()
    assert len(set(runs)) == 3
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted(runs[1:])
    assert len(rows_backups(root)) == 2
    assert len(audit(root)) == 3  # the audit log is never pruned or rewritten


# ---------------------------------------------------------------------------- cascade

CASCADE_SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, name text);
CREATE TABLE users (
    id int PRIMARY KEY, account_id int NOT NULL REFERENCES accounts(id),
    manager_id int REFERENCES users(id)
);
CREATE TABLE assets (
    id int PRIMARY KEY, account_id int NOT NULL REFERENCES accounts(id),
    user_id int REFERENCES users(id)
);
CREATE INDEX ON users (account_id);
CREATE INDEX ON users (manager_id);
CREATE INDEX ON assets (account_id);
CREATE INDEX ON assets (user_id);
INSERT INTO accounts VALUES (1, 'tenant'), (2, 'other');
INSERT INTO users VALUES (10, 1, NULL), (11, 1, 10), (12, 1, 11), (20, 2, NULL), (21, 2, 20);
-- user 22 of the other account reports to user 11: the foreign key takes it along
INSERT INTO users VALUES (22, 2, 11);
INSERT INTO assets VALUES (100, 1, 10), (101, 1, NULL), (104, 1, 12), (102, 2, 22), (103, 2, 20);
"""


def test_cascade_counts_every_table_then_deletes_exactly_those_rows(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    execute(pg_url, CASCADE_SCHEMA)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_tenant="""
        def test_tenant(safe_cleanup):
            safe_cleanup.delete("accounts", id=1, cascade=True)
        """
    )
    pg = pg_url.rsplit("/", 1)[1]
    expected = {"assets": {100, 101, 102, 104}, "users": {10, 11, 12, 22}, "accounts": {1}}
    everything = {
        "accounts": {1, 2},
        "users": {10, 11, 12, 20, 21, 22},
        "assets": {100, 101, 102, 103, 104},
    }

    result = run(pytester, pg_url, "--safe-cleanup=dry")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"{pg}.assets * 4 * -",
            f"{pg}.users * 4 * -",
            f"{pg}.accounts * 1 * -",
            "total * 9 * -",
        ]
    )
    assert {t: ids(pg_url, t) for t in everything} == everything

    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"{pg}.assets * 4 * 4",
            f"{pg}.users * 4 * 4",
            f"{pg}.accounts * 1 * 1",
            "total * 9 * 9",
        ]
    )
    got = cleanups(report(pytester))
    assert {
        t: (got["test_tenant", t]["counted"], got["test_tenant", t]["deleted"]) for t in expected
    } == {t: (len(v), len(v)) for t, v in expected.items()}
    assert {t: ids(pg_url, t) for t in everything} == {
        t: everything[t] - expected[t] for t in everything
    }
    (path,) = {c["backup"] for c in got.values()}
    backup = read_backup(Path(path))
    assert backup.order == ["assets", "users", "accounts"]  # children first
    assert {t.name: {first_id(t, r) for r in t.rows} for t in backup.tables} == expected
