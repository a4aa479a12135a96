"""The three modes, run as users run pytest, with rows counted in the database afterwards.

Every scenario seeds a real database, runs an inner pytest in a subprocess, then
counts the rows that the plugin was (or was not) allowed to delete.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from conftest import INSERT_FIXTURE, count_rows, seed_family
from sqlalchemy import create_engine, text

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
APPLY_INI = INI + "safe_cleanup_backup = none\n"

#: inner conftest: an ``insert`` fixture that writes rows through the default engine
INNER_CONFTEST = INSERT_FIXTURE

SEEDED = {"parents": 3, "children": 3}


def counts(url: str) -> dict[str, int]:
    return {table: count_rows(url, table) for table in SEEDED}


def ids(url: str, table: str) -> set[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(text(f"SELECT id FROM {table}"))}
    finally:
        engine.dispose()


def run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--safe-cleanup-url", url, "-p", "no:cacheprovider", "--safe-cleanup-report=r.json", *args
    )


def report(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "r.json").read_text())


def by_test(doc: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    """Cleanups keyed by (test name, table)."""
    return {(c["nodeid"].split("::")[-1], c["table"]): c for c in doc["cleanups"]}


def project(pytester: pytest.Pytester, ini: str, conftest: str = "", **files: str) -> None:
    pytester.makeini(ini)
    pytester.makeconftest(INNER_CONFTEST + conftest)
    pytester.makepyfile(**files)


# -- off ------------------------------------------------------------------------------


def test_off_keeps_fixtures_usable_and_does_no_teardown_work(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    seed_family(pg_url)
    project(
        pytester,
        INI,
        test_off="""
            def test_registers(safe_cleanup, insert):
                insert("parents", {"id": 100, "name": "made"})
                safe_cleanup.delete("parents", id=100)
                safe_cleanup.delete("children", parent_id=[1, 2, 3])
                assert safe_cleanup.tag

            def test_session_registers(safe_cleanup_session):
                safe_cleanup_session.delete("parents", id=1)
        """,
    )
    result = run(pytester, pg_url, "--safe-cleanup=off")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "safe-cleanup: mode=off (--safe-cleanup)*",
            "*= safe cleanup =*",
            "mode: off (--safe-cleanup)*",
            "safe cleanup is off: no teardown work was done",
        ]
    )
    result.stdout.no_fnmatch_line("*counted*")
    doc = report(pytester)
    assert doc["mode"] == "off"
    assert doc["cleanups"] == []
    assert doc["totals"]["counted"] == 0
    assert counts(pg_url) == {"parents": 4, "children": 3}


# -- apply ----------------------------------------------------------------------------

APPLY_TESTS = """
    def test_family(safe_cleanup, insert):
        insert("parents", {"id": 100, "name": "a"}, {"id": 101, "name": "b"})
        insert("children", {"id": 100, "parent_id": 100}, {"id": 101, "parent_id": 101})
        # parents first on purpose: the plan must delete the children before them
        safe_cleanup.delete("parents", id=[100, 101])
        safe_cleanup.delete("children", parent_id=[100, 101])

    def test_single(safe_cleanup, insert):
        insert("parents", {"id": 102, "name": "c"})
        safe_cleanup.delete("parents", id=102)
"""


@pytest.mark.parametrize("environment", ["test", None])
def test_apply_deletes_exactly_the_registered_rows(
    pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch, environment: str | None
) -> None:
    if environment is not None:
        monkeypatch.setenv("ENVIRONMENT", environment)
    seed_family(pg_url)
    project(pytester, APPLY_INI, test_apply=APPLY_TESTS)
    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "mode: apply (--safe-cleanup)*",
            "target * postgresql+psycopg://postgres@127.0.0.1:5432/*: ALLOW",
            "*.children * 2 * 2",
            "*.parents * 3 * 3",
            "total * 5 * 5",
        ]
    )
    doc = report(pytester)
    assert doc["totals"]["counted"] == doc["totals"]["deleted"] == 5
    assert {c["status"] for c in doc["cleanups"]} == {"deleted"}
    # the registered rows are gone, the seeded rows nobody registered are all there
    assert ids(pg_url, "parents") == {1, 2, 3}
    assert ids(pg_url, "children") == {1, 2, 3}


def test_apply_by_default_writes_a_rows_backup_first(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    seed_family(pg_url)
    project(
        pytester,
        "[pytest]\n",
        test_backup="""
            def test_deletes(safe_cleanup):
                safe_cleanup.delete("children", id=[1, 2, 3])
        """,
    )
    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["backups written: 1", "*.safe-cleanup/backups/*/main.journal#1"])
    assert ids(pg_url, "children") == set()
    root = pytester.path / ".safe-cleanup" / "backups"
    assert (root / ".gitignore").read_text().splitlines()[-1] == "*"
    backups = list(root.rglob("*.journal"))
    assert len(backups) == 1 and oct(backups[0].stat().st_mode & 0o777) == "0o600"
    audit = (root / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 1 and '"children":3' in audit[0]
    assert json.loads(audit[0])["backup"] == f"{backups[0]}#1"


def test_max_rows_from_ini_and_marker_refuses_and_deletes_nothing(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    seed_family(pg_url)
    project(
        pytester,
        APPLY_INI + "safe_cleanup_max_rows = 3\n",
        test_limits="""
            import pytest

            def test_over_ini(safe_cleanup, insert):
                insert("parents", *({"id": i, "name": "x"} for i in (110, 111, 112, 113)))
                safe_cleanup.delete("parents", id=[110, 111, 112, 113])

            @pytest.mark.safe_cleanup(max_rows=1)
            def test_over_marker(safe_cleanup, insert):
                insert("parents", {"id": 120, "name": "x"}, {"id": 121, "name": "y"})
                insert("children", {"id": 120, "parent_id": 120})
                safe_cleanup.delete("children", parent_id=[120, 121])
                safe_cleanup.delete("parents", id=[120, 121])

            @pytest.mark.safe_cleanup(max_rows=10)
            def test_marker_raises_the_limit(safe_cleanup, insert):
                insert("parents", *({"id": i, "name": "x"} for i in range(130, 135)))
                safe_cleanup.delete("parents", id=list(range(130, 135)))
        """,
    )
    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_over_ini*",
            "safe-cleanup: cleanup matches 4 rows, more than max_rows=3: nothing was deleted*",
            "*ERROR at teardown of test_over_marker*",
            "safe-cleanup: cleanup matches 3 rows, more than max_rows=1: nothing was deleted*",
        ]
    )
    cleanups = report(pytester)["cleanups"]
    status = {(c["nodeid"].split("::")[-1]): c["status"] for c in cleanups}
    # a limit refusal is recorded as "failed" ("refused" is a BLOCK target's status)
    assert status["test_over_ini"] == "failed"
    assert status["test_over_marker"] == "failed"
    assert {(c["nodeid"].split("::")[-1], c["status"]) for c in cleanups} == {
        ("test_over_ini", "failed"),
        ("test_over_marker", "failed"),
        ("test_marker_raises_the_limit", "deleted"),
    }
    assert status["test_marker_raises_the_limit"] == "deleted"
    assert ids(pg_url, "parents") == {1, 2, 3, 110, 111, 112, 113, 120, 121}
    assert ids(pg_url, "children") == {1, 2, 3, 120}


TRIGGER = """
CREATE FUNCTION refuse_parent_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id = 150 AND NOT EXISTS (SELECT 1 FROM children WHERE parent_id = OLD.id) THEN
        RAISE EXCEPTION 'parent 150 is protected (its children were already deleted)';
    END IF;
    RETURN OLD;
END $$
"""


def test_a_failure_mid_plan_rolls_back_every_table(pytester: pytest.Pytester, pg_url: str) -> None:
    seed_family(pg_url)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(TRIGGER))
        conn.execute(
            text(
                "CREATE TRIGGER protect BEFORE DELETE ON parents "
                "FOR EACH ROW EXECUTE FUNCTION refuse_parent_delete()"
            )
        )
    engine.dispose()
    project(
        pytester,
        APPLY_INI,
        test_trigger="""
            def test_family(safe_cleanup, insert):
                insert("parents", {"id": 150, "name": "a"}, {"id": 151, "name": "b"})
                insert(
                    "children",
                    {"id": 150, "parent_id": 150},
                    {"id": 151, "parent_id": 150},
                    {"id": 152, "parent_id": 151},
                )
                safe_cleanup.delete("parents", id=[150, 151])
                safe_cleanup.delete("children", parent_id=[150, 151])
        """,
    )
    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1, errors=1)
    # the trigger fires on the parent only after the children's DELETE ran: one transaction
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_family*",
            "safe-cleanup: cleanup failed and was rolled back, nothing was deleted:*"
            "parent 150 is protected (its children were already deleted)*",
        ]
    )
    statuses = {c["status"] for c in report(pytester)["cleanups"]}
    assert statuses == {"failed"}
    assert ids(pg_url, "parents") == {1, 2, 3, 150, 151}
    assert ids(pg_url, "children") == {1, 2, 3, 150, 151, 152}


# -- session scope ----------------------------------------------------------------------

SESSION_TESTS = """
    from sqlalchemy import text

    def test_first(safe_cleanup_session, insert):
        insert("parents", {"id": 200, "name": "a"})
        safe_cleanup_session.delete("parents", id=200)

    def test_second(safe_cleanup_session, insert):
        insert("parents", {"id": 201, "name": "b"})
        with safe_cleanup_session.engine.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM parents WHERE id = 200")).scalar()
        assert left == 1, "the session's cleanup waits for the end of the session"
        safe_cleanup_session.delete("parents", id=201)
"""


@pytest.mark.parametrize("mode", ["dry", "apply"])
def test_session_registrations_run_at_session_end(
    pytester: pytest.Pytester, pg_url: str, mode: str
) -> None:
    seed_family(pg_url)
    project(pytester, APPLY_INI, test_session=SESSION_TESTS)
    result = run(pytester, pg_url, f"--safe-cleanup={mode}")
    result.assert_outcomes(passed=2)
    deleted = "2" if mode == "apply" else "-"
    result.stdout.fnmatch_lines(["*= safe cleanup =*", f"*.parents * 2 * {deleted}"])
    (cleanup,) = report(pytester)["cleanups"]
    assert cleanup["table"] == "parents"
    assert cleanup["counted"] == 2
    assert cleanup["status"] == ("deleted" if mode == "apply" else "dry")
    expected = {1, 2, 3} if mode == "apply" else {1, 2, 3, 200, 201}
    assert ids(pg_url, "parents") == expected


# -- two databases ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dry", "apply"])
def test_on_engine_makes_one_plan_per_database(
    pytester: pytest.Pytester, pg_url: str, mode: str
) -> None:
    seed_family(pg_url)
    side = pytester.path / "side.db"
    with sqlite3.connect(side) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, "seed") for i in (1, 2, 3)])
    conn.close()
    project(
        pytester,
        APPLY_INI,
        conftest=f"""
from sqlalchemy import create_engine


@pytest.fixture(scope="session")
def side_engine():
    engine = create_engine({f"sqlite:///{side}"!r})
    yield engine
    engine.dispose()
""",
        test_two_databases="""
            from sqlalchemy import text

            def test_both(safe_cleanup, insert, side_engine):
                insert("parents", {"id": 300, "name": "pg"})
                with side_engine.begin() as conn:
                    conn.execute(text("INSERT INTO notes VALUES (10, 'a'), (11, 'b')"))
                safe_cleanup.delete("parents", id=300)
                safe_cleanup.on(side_engine).delete("notes", id=[10, 11])
        """,
    )
    result = run(pytester, pg_url, f"--safe-cleanup={mode}")
    result.assert_outcomes(passed=1)
    deleted = mode == "apply"
    result.stdout.fnmatch_lines_random(
        [
            f"*.parents * 1 * {'1' if deleted else '-'}",
            f"side.db.notes * 2 * {'2' if deleted else '-'}",
        ]
    )
    doc = report(pytester)
    pg_name = pg_url.rsplit("/", 1)[-1]
    got = {(c["target"], c["table"]): (c["counted"], c["deleted"]) for c in doc["cleanups"]}
    assert got == {
        (pg_name, "parents"): (1, 1 if deleted else None),
        ("side.db", "notes"): (2, 2 if deleted else None),
    }
    assert {t["name"] for t in doc["targets"]} == {pg_name, "side.db"}
    assert ids(pg_url, "parents") == ({1, 2, 3} if deleted else {1, 2, 3, 300})
    with sqlite3.connect(side) as conn:
        notes = {r[0] for r in conn.execute("SELECT id FROM notes")}
    conn.close()
    assert notes == ({1, 2, 3} if deleted else {1, 2, 3, 10, 11})


# -- keep failed ------------------------------------------------------------------------


def test_keep_failed_keeps_the_failing_tests_rows(pytester: pytest.Pytester, pg_url: str) -> None:
    seed_family(pg_url)
    project(
        pytester,
        APPLY_INI + "safe_cleanup_keep = failed\n",
        test_keep="""
            def test_passes(safe_cleanup, insert):
                insert("parents", {"id": 400, "name": "ok"})
                safe_cleanup.delete("parents", id=400)

            def test_fails(safe_cleanup, insert):
                insert("parents", {"id": 401, "name": "broken"})
                insert("children", {"id": 401, "parent_id": 401})
                safe_cleanup.delete("children", parent_id=401)
                safe_cleanup.delete("parents", id=401)
                assert False, "the test itself fails"
        """,
    )
    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1, failed=1)
    pg_name = pg_url.rsplit("/", 1)[-1]
    result.stdout.fnmatch_lines(
        [
            f"KEPT test_keep.py::test_fails ({pg_name}): "
            "the test failed*safe_cleanup_keep = failed*",
        ]
    )
    result.stdout.no_fnmatch_line("KEPT test_keep.py::test_passes*")
    got = by_test(report(pytester))
    assert got["test_passes", "parents"]["status"] == "deleted"
    assert got["test_passes", "parents"]["deleted"] == 1
    assert got["test_fails", "parents"]["status"] == "kept"
    assert got["test_fails", "parents"]["counted"] == 1
    assert got["test_fails", "children"]["status"] == "kept"
    assert got["test_fails", "parents"]["deleted"] is None
    assert ids(pg_url, "parents") == {1, 2, 3, 401}
    assert ids(pg_url, "children") == {1, 2, 3, 401}
