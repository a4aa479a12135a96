"""Explicit intent in a non-interactive run: a CONFIRM target is cleaned only with the marker.

The ``pytester`` fixture sets ``CI=true``, so no run here can prompt. Each test seeds
rows with its own engine first and counts them afterwards.
"""

from __future__ import annotations

import json

import pytest

# Imported here, before any pytester snapshot of sys.modules, so it is imported once.
import sqlalchemy.dialects.postgresql  # noqa: F401
from sqlalchemy import create_engine, text

USAGE_ERROR = 4
ITEMS = 6
APPLY_INI = "[pytest]\nsafe_cleanup_backup = none\n"


def database(pytester: pytest.Pytester, request: pytest.FixtureRequest, backend: str) -> str:
    """A URL with six rows in ``items``: PostgreSQL or the SQLite file ``app.db``."""
    if backend == "postgres":
        url = request.getfixturevalue("pg_databases").create(prefix="shop")
    else:
        url = f"sqlite:///{pytester.path / 'app.db'}"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40))"))
            conn.execute(
                text("INSERT INTO items (id, name) VALUES (:id, :name)"),
                [{"id": i, "name": f"item-{i}"} for i in range(1, ITEMS + 1)],
            )
    finally:
        engine.dispose()
    return url


def db_name(url: str) -> str:
    """The name the marker must carry: the database name, or the SQLite file's name."""
    return url.rsplit("/", 1)[1]


def remaining_ids(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT id FROM items ORDER BY id")).scalars())
    finally:
        engine.dispose()


def statuses(pytester: pytest.Pytester) -> dict[str, set[str]]:
    """Each test's cleanup statuses from the JSON report."""
    report = json.loads((pytester.path / "report.json").read_text())
    found: dict[str, set[str]] = {}
    for c in report["cleanups"]:
        found.setdefault(c["nodeid"].split("::")[-1], set()).add(c["status"])
    return found


def run_apply(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    pytester.makeini(APPLY_INI)
    return pytester.runpytest_subprocess(
        "--safe-cleanup=apply",
        "--safe-cleanup-url",
        url,
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
        *args,
    )


HELD_TESTS = """
import pytest

def test_unmarked(safe_cleanup):
    safe_cleanup.delete("items", id=[1, 2])

@pytest.mark.safe_cleanup(confirm="some_other_db")
def test_other_database(safe_cleanup):
    safe_cleanup.delete("items", id=3)
"""


# --------------------------------------------------------------------------- 1, 3, 5: held


@pytest.mark.parametrize(
    ("backend", "environment"), [("postgres", "qa"), ("sqlite", "qa"), ("sqlite", "uat")]
)
def test_confirm_target_without_the_marker_is_held(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
    environment: str,
) -> None:
    url = database(pytester, request, backend)
    name = db_name(url)
    if backend == "sqlite":
        assert name == "app.db"
    pytester.makepyfile(test_hold=HELD_TESTS)
    monkeypatch.setenv("ENVIRONMENT", environment)

    result = run_apply(pytester, url)

    # Both tests pass their own body and error at teardown: the cleanup was held.
    result.assert_outcomes(passed=2, errors=2)
    hint = f'@pytest.mark.safe_cleanup(confirm="{name}")'
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_unmarked*",
            f"*ENVIRONMENT='{environment}' is neither allowed nor blocked*nothing was deleted. "
            f"Add {hint} to the test, class or module",
            "*ERROR at teardown of test_other_database*",
            f"*Add {hint} to the test*",
            "*= safe cleanup =*",
            f"target {name} *: CONFIRM",
            f"HELD test_hold.py::test_unmarked ({name}*): *Add {hint}*",
            f"HELD test_hold.py::test_other_database ({name}*): *",
        ]
    )
    assert statuses(pytester) == {"test_unmarked": {"held"}, "test_other_database": {"held"}}
    assert remaining_ids(url) == list(range(1, ITEMS + 1))


# --------------------------------------------------------------------------- 2, 3: marker


MARKED_TESTS = """
import pytest

@pytest.mark.safe_cleanup(confirm={name!r})
def test_function_marker(safe_cleanup):
    safe_cleanup.delete("items", id=1)

@pytest.mark.safe_cleanup(confirm={name!r})
class TestClassMarker:
    def test_in_class(self, safe_cleanup):
        safe_cleanup.delete("items", id=2)

@pytest.mark.safe_cleanup(confirm=["other_db", {name!r}])
def test_list_marker(safe_cleanup):
    safe_cleanup.delete("items", id=3)

@pytest.mark.safe_cleanup(confirm="other_db")
def test_other_database(safe_cleanup):
    safe_cleanup.delete("items", id=5)
"""

MODULE_MARKED_TESTS = """
import pytest

pytestmark = pytest.mark.safe_cleanup(confirm={name!r})

def test_module_marker(safe_cleanup):
    safe_cleanup.delete("items", id=4)
"""


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_marker_naming_the_database_lets_cleanup_proceed(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    url = database(pytester, request, backend)
    name = db_name(url)
    pytester.makepyfile(
        test_marked=MARKED_TESTS.format(name=name),
        test_module_marked=MODULE_MARKED_TESTS.format(name=name),
    )
    monkeypatch.setenv("ENVIRONMENT", "qa")

    # The marker is registered: --strict-markers accepts it.
    result = run_apply(pytester, url, "--strict-markers")

    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_other_database*",
            f'*Add @pytest.mark.safe_cleanup(confirm="{name}") to the test*',
        ]
    )
    assert statuses(pytester) == {
        "test_function_marker": {"deleted"},
        "test_in_class": {"deleted"},
        "test_list_marker": {"deleted"},
        "test_module_marker": {"deleted"},
        "test_other_database": {"held"},
    }
    # Rows 1-4 were confirmed and deleted; 5 was held (wrong name); 6 was never registered.
    assert remaining_ids(url) == [5, 6]


# --------------------------------------------------------------------------- 4: bad markers


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("confirm=True", "*confirm=True is not accepted: name the database you mean*"),
        ('confrim="app.db"', "*invalid safe_cleanup marker*confrim*"),
        ('"app.db"', "*safe_cleanup marker takes keyword arguments only*"),
    ],
    ids=["confirm-true", "unknown-keyword", "positional"],
)
def test_bad_marker_is_a_usage_error_at_collection(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    marker: str,
    message: str,
) -> None:
    url = database(pytester, request, "sqlite")
    pytester.makepyfile(
        test_bad=f"""
import pytest

@pytest.mark.safe_cleanup({marker})
def test_wipes(safe_cleanup):
    safe_cleanup.delete("items", all_rows=True)
"""
    )
    # An allowed environment: without the usage error, apply would delete every row.
    monkeypatch.setenv("ENVIRONMENT", "test")

    result = run_apply(pytester, url)

    assert result.ret == USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines([f"ERROR: test_bad.py::test_wipes: {message}"])
    assert " passed" not in result.stdout.str()
    assert remaining_ids(url) == list(range(1, ITEMS + 1))


# --------------------------------------------------------------------------- 5, 6: allow, dry


ALLOWED_TESTS = """
import pytest

def test_unmarked(safe_cleanup):
    safe_cleanup.delete("items", id=[1, 2])

@pytest.mark.safe_cleanup(mode="dry")
def test_kept_dry(safe_cleanup):
    safe_cleanup.delete("items", id=[3, 4])
"""


def test_allowed_environment_deletes_without_marker_and_dry_marker_keeps(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    url = database(pytester, request, "postgres")
    name = db_name(url)
    pytester.makepyfile(test_allowed=ALLOWED_TESTS)
    monkeypatch.setenv("ENVIRONMENT", "test")

    result = run_apply(pytester, url)

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "mode: apply (--safe-cleanup)*",
            f"target {name} *: ALLOW",
            "  - ENVIRONMENT='test' is an allowed environment",
        ]
    )
    report = json.loads((pytester.path / "report.json").read_text())
    rows = {c["nodeid"].split("::")[-1]: c for c in report["cleanups"]}
    assert rows["test_unmarked"]["status"] == "deleted"
    assert (rows["test_unmarked"]["counted"], rows["test_unmarked"]["deleted"]) == (2, 2)
    assert rows["test_kept_dry"]["status"] == "dry"
    assert (rows["test_kept_dry"]["counted"], rows["test_kept_dry"]["deleted"]) == (2, None)
    assert remaining_ids(url) == [3, 4, 5, 6]
