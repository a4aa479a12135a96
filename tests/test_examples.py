"""The example suite, run as a user runs it: counts in the summary equal the rows made."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO_SEED, EXAMPLES, copy_examples, count_rows, demo_rows, seed_demo

#: test_tenants.py 4/10/5, test_orm_tracked.py 1/2/1, test_async_tenants.py 1/2/1
EXPECTED = {"client_accounts": 6, "users": 14, "assets": 7}
TESTS = 6


def _run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    copy_examples(pytester)
    return pytester.runpytest_subprocess(
        "--safe-cleanup-url", url, "--safe-cleanup-report", "report.json", *args
    )


def _tables(pytester: pytest.Pytester) -> dict[str, dict[str, int]]:
    report = json.loads((pytester.path / "report.json").read_text())
    return {k.split(".")[-1]: v for k, v in report["totals"]["tables"].items()}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_dry_run_counts_what_the_tests_made_and_keeps_it(
    pytester: pytest.Pytester, backend: str, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{pytester.path / 'demo.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    result = _run(pytester, url, "--safe-cleanup=dry")
    result.assert_outcomes(passed=TESTS)
    result.stdout.fnmatch_lines(
        [
            "*= safe cleanup =*",
            "mode: dry (--safe-cleanup)*",
            "*.assets * 7 * -",
            "*.users * 14 * -",
            "*.client_accounts * 6 * -",
            "total * 27 * -",
        ]
    )
    assert {k: v["counted"] for k, v in _tables(pytester).items()} == EXPECTED
    for table, n in EXPECTED.items():
        assert count_rows(url, table) == n, f"dry run must not delete from {table}"


def test_dry_is_the_default(pytester: pytest.Pytester) -> None:
    url = f"sqlite:///{pytester.path / 'demo.db'}"
    result = _run(pytester, url)
    result.assert_outcomes(passed=TESTS)
    result.stdout.fnmatch_lines(["safe-cleanup: mode=dry (default)*", "mode: dry (default)*"])
    assert count_rows(url, "users") == EXPECTED["users"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_apply_removes_exactly_the_registered_rows(
    pytester: pytest.Pytester, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{pytester.path / 'demo.db'}"  # with the default rows backup
    else:
        url = request.getfixturevalue("pg_url")
        pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")
    # Rows no example test registers: a cleanup wider than the registrations takes them too.
    seed_demo(url)
    seeded = demo_rows(url)
    assert {t: len(rows) for t, rows in seeded.items()} == DEMO_SEED
    copy_examples(pytester)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        url,
        "--safe-cleanup=apply",
        "--safe-cleanup-report",
        "r.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=TESTS)
    tables = json.loads((pytester.path / "r.json").read_text())["totals"]["tables"]
    assert {k.split(".")[-1]: v for k, v in tables.items()} == {
        t: {"counted": n, "deleted": n} for t, n in EXPECTED.items()
    }
    for table in EXPECTED:
        assert count_rows(url, table) == DEMO_SEED[table], table
    assert demo_rows(url) == seeded, "only the registered rows go; the seeded ones stay"


#: conftest_examples/adopted: an application with its own engine and global sessionmaker,
#: adopted with one autouse fixture; what each test leaves, found without registering a row
ADOPTED = {
    "adopted/test_adopted_app.py::test_sign_up": {"assets": 1, "users": 2, "client_accounts": 1},
    "adopted/test_adopted_app.py::test_the_application_deletes_a_user_itself": {
        "assets": 1,
        "users": 1,  # the user the application deleted itself is looked for and not there
        "client_accounts": 1,
    },
}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_adopted_application_rows_are_cleaned_where_it_wrote_them(
    pytester: pytest.Pytester, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{pytester.path / 'demo.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    seed_demo(url)  # rows of nobody's test: they must stay
    seeded = demo_rows(url)
    copy_examples(pytester)
    adopted = pytester.mkdir("adopted")
    for name in ("signup_app.py", "test_adopted_app.py"):
        (adopted / name).write_text((EXAMPLES / "adopted" / name).read_text())

    dry = pytester.runpytest_subprocess(
        "adopted",
        "--safe-cleanup-url",
        url,
        "--safe-cleanup-report",
        "dry.json",
        "-p",
        "no:cacheprovider",
    )
    dry.assert_outcomes(passed=2)
    made = {t: sum(tables[t] for tables in ADOPTED.values()) for t in DEMO_SEED}
    for table, n in made.items():
        assert count_rows(url, table) == DEMO_SEED[table] + n, table

    result = pytester.runpytest_subprocess(
        "adopted",
        "--safe-cleanup-url",
        url,
        "--safe-cleanup=apply",
        "--safe-cleanup-report",
        "r.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    for path, deleted in (("dry.json", None), ("r.json", True)):
        found: dict[str, dict[str, tuple[int, int | None]]] = {}
        for c in json.loads((pytester.path / path).read_text())["cleanups"]:
            found.setdefault(c["nodeid"], {})[c["table"].split(".")[-1]] = (
                c["counted"],
                c["deleted"],
            )
        assert found == {
            nodeid: {table: (n, n if deleted else None) for table, n in tables.items()}
            for nodeid, tables in ADOPTED.items()
        }, path
    # the dry run's rows stay for the person to see; apply took exactly its own run's rows
    for table, n in made.items():
        assert count_rows(url, table) == DEMO_SEED[table] + n, table
    rows = demo_rows(url)
    for table, before in seeded.items():
        assert rows[table][: len(before)] == before, f"seeded {table} rows changed"
