"""Layer 5 as users see it: the JSON report, the GitHub summary, -v lines, logging, no secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import INSERT_FIXTURE, count_rows, seed_family
from sqlalchemy.engine import make_url

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nsafe_cleanup_backup = none\n"
PASSWORD = "s3cretPW"

INNER_CONFTEST = INSERT_FIXTURE

#: three cleanups: test_a 2 parents; test_b 1 parent and 3 children
TESTS = """
    def test_a(safe_cleanup, insert):
        insert("parents", {"id": 10, "name": "a"}, {"id": 11, "name": "b"})
        safe_cleanup.delete("parents", id=[10, 11])

    def test_b(safe_cleanup, insert):
        insert("parents", {"id": 20, "name": "c"})
        insert("children", *({"id": i, "parent_id": 20} for i in (20, 21, 22)))
        safe_cleanup.delete("parents", id=20)
        safe_cleanup.delete("children", parent_id=20)
"""
MADE = {("test_a", "parents"): 2, ("test_b", "parents"): 1, ("test_b", "children"): 3}


def project(pytester: pytest.Pytester, tests: str = TESTS) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_report=tests)


def db_name(url: str) -> str:
    return str(make_url(url).database)


def load(pytester: pytest.Pytester, name: str = "r.json") -> dict[str, Any]:
    return json.loads((pytester.path / name).read_text())


def test_json_report_has_the_schema_and_exact_counts(
    pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFE_CLEANUP_RUN_ID", "myrun123")
    monkeypatch.setenv("SAFE_CLEANUP_MODE", "dry")
    seed_family(pg_url, parents=(1,), children=False)
    project(pytester)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url", pg_url, "--safe-cleanup-report", "out/r.json"
    )
    result.assert_outcomes(passed=2)
    db = db_name(pg_url)
    result.stdout.fnmatch_lines(
        [
            "safe-cleanup: mode=dry (SAFE_CLEANUP_MODE), "
            f"target=postgresql+psycopg://postgres@127.0.0.1:5432/{db} (--safe-cleanup-url), "
            "run myrun123",
        ]
    )
    # without -v there is no line per test
    result.stdout.no_fnmatch_line("*test_report.py::test_a: *counted*")

    doc = load(pytester, "out/r.json")
    assert doc["schema_version"] == 1
    assert doc["mode"] == "dry"
    assert doc["run_id"] == "myrun123"
    (target,) = doc["targets"]
    assert target["name"] == db
    assert target["url"] == f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    assert target["verdict"] == "ALLOW"
    assert target["reasons"] and all(isinstance(r, str) for r in target["reasons"])
    for cleanup in doc["cleanups"]:
        assert set(cleanup) >= {
            "nodeid",
            "target",
            "table",
            "counted",
            "deleted",
            "backup",
            "status",
            "reason",
        }
        assert cleanup["nodeid"].startswith("test_report.py::")
        assert cleanup["target"] == db
        assert cleanup["status"] == "dry"
        assert cleanup["deleted"] is None
        assert cleanup["backup"] is None
    got = {(c["nodeid"].split("::")[1], c["table"]): c["counted"] for c in doc["cleanups"]}
    assert got == MADE
    totals = doc["totals"]
    assert totals["counted"] == 6
    assert totals["deleted"] is None
    assert totals["tables"] == {
        f"{db}.parents": {"counted": 3, "deleted": None},
        f"{db}.children": {"counted": 3, "deleted": None},
    }
    assert totals["statuses"]["dry"] == 3
    # dry: the rows the tests made are all still there
    assert count_rows(pg_url, "parents") == 4
    assert count_rows(pg_url, "children") == 3


def test_github_step_summary_is_appended(
    pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = pytester.path / "step_summary.md"
    summary.write_text("# Earlier step\n\nall good\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    seed_family(pg_url, parents=(1,), children=False)
    project(pytester)
    result = pytester.runpytest_subprocess("--safe-cleanup-url", pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=2)
    db = db_name(pg_url)
    text_ = summary.read_text()
    assert text_.startswith("# Earlier step\n\nall good\n")
    assert "### safe cleanup: apply" in text_
    assert f"`{db}`" in text_ and "**ALLOW**" in text_
    assert f"| `{db}.parents` | 3 | 3 |" in text_
    assert f"| `{db}.children` | 3 | 3 |" in text_
    assert "| **total** | 6 | 6 |" in text_
    assert count_rows(pg_url, "parents") == 1
    assert count_rows(pg_url, "children") == 0


def test_verbose_adds_one_line_per_test_and_table(pytester: pytest.Pytester, pg_url: str) -> None:
    seed_family(pg_url, parents=(1,), children=False)
    project(pytester)
    result = pytester.runpytest_subprocess("--safe-cleanup-url", pg_url, "-v")
    result.assert_outcomes(passed=2)
    db = db_name(pg_url)
    result.stdout.fnmatch_lines_random(
        [
            f"  test_report.py::test_a: {db}.parents counted 2 deleted - [dry]",
            f"  test_report.py::test_b: {db}.parents counted 1 deleted - [dry]",
            f"  test_report.py::test_b: {db}.children counted 3 deleted - [dry]",
        ]
    )
    per_test = [line for line in result.outlines if line.startswith("  test_report.py::")]
    assert len(per_test) == len(MADE)


def test_records_go_through_the_pytest_safe_cleanup_logger(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    seed_family(pg_url, parents=(1,), children=False)
    project(pytester)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url", pg_url, "--log-level=INFO", "-o", "log_cli=true"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*live log teardown*",
            "INFO * pytest_safe_cleanup:* dry test_report.py::test_a parents: "
            "counted=2 deleted=None*",
            "*live log teardown*",
            "INFO * pytest_safe_cleanup:* dry test_report.py::test_b children: "
            "counted=3 deleted=None*",
        ]
    )


PASSWORD_TESTS = """
    import pytest

    def test_held(safe_cleanup, insert):
        insert("parents", {"id": 30, "name": "held"})
        safe_cleanup.delete("parents", id=30)

    @pytest.mark.safe_cleanup(confirm=DB, max_rows=0)
    def test_too_many(safe_cleanup, insert):
        insert("parents", {"id": 31, "name": "limit"})
        safe_cleanup.delete("parents", id=31)
"""


def test_passwords_never_appear(
    pytester: pytest.Pytester, pg_databases: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = pg_databases.create()
    url = make_url(plain).set(password=PASSWORD).render_as_string(hide_password=False)
    assert PASSWORD in url
    db = db_name(plain)
    seed_family(plain, parents=(1,), children=False)
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("ENVIRONMENT", "qa")  # CONFIRM, and CI=true: cleanup is held
    project(pytester, f"    DB = {db!r}\n" + PASSWORD_TESTS)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        url,
        "--safe-cleanup=apply",
        "-v",
        "--safe-cleanup-report",
        "r.json",
        "--log-level=INFO",
        "-o",
        "log_cli=true",
    )
    result.assert_outcomes(passed=2, errors=2)
    doc = load(pytester)
    statuses = {c["nodeid"].split("::")[1]: c["status"] for c in doc["cleanups"]}
    assert statuses == {"test_held": "held", "test_too_many": "failed"}
    result.stdout.fnmatch_lines(
        [
            "safe-cleanup: mode=apply*target=postgresql+psycopg://postgres:***@127.0.0.1:5432/*",
            # the database reached, as the connection reports it: no password to mask there
            f"target {db} postgresql+psycopg://postgres@127.0.0.1:5432/{db}: CONFIRM",
        ]
    )
    outputs = {
        "stdout": result.stdout.str(),
        "stderr": result.stderr.str(),
        "json": (pytester.path / "r.json").read_text(),
        "markdown": summary.read_text(),
    }
    assert "held" in outputs["markdown"]
    for where, content in outputs.items():
        assert PASSWORD not in content, f"the password leaked into {where}"
    assert count_rows(plain, "parents") == 3


def test_password_hidden_when_a_registration_cannot_connect(
    pytester: pytest.Pytester, pg_databases: Any
) -> None:
    plain = pg_databases.create()
    url = make_url(plain).set(password=PASSWORD).render_as_string(hide_password=False)
    seed_family(plain, parents=(1,), children=False)
    project(
        pytester,
        """
        from sqlalchemy import create_engine

        def test_unreachable_second_database(safe_cleanup):
            other = create_engine(safe_cleanup.engine.url.set(port=1))
            safe_cleanup.on(other).delete("parents", id=1)
        """,
    )
    result = pytester.runpytest_subprocess("--safe-cleanup-url", url)
    result.assert_outcomes(failed=1)
    # the plugin names the database it could not reach (psycopg 3.1's own message does not)
    result.stdout.fnmatch_lines(
        [
            "*cannot reach postgresql+psycopg://postgres:[*][*][*]@127.0.0.1:1/* to look up table "
            "'parents': *"
        ]
    )
    assert PASSWORD not in result.stdout.str() + result.stderr.str()
    assert count_rows(plain, "parents") == 1
