"""No configuration unblocks a production run: each way around it, run as a user runs pytest.

Every run is a subprocess on a project whose tests would delete every seeded row, and
whose conftest deletes rows itself; the rows are counted afterwards.
"""

from __future__ import annotations

import pytest
from test_block_e2e import (
    GREEDY_TESTS,
    ITEMS,
    assert_stopped_before_tests,
    count_items,
    database_url,
    seed_items,
)

# A conftest that deletes with its own engine as soon as a test runs.
DELETING_CONFTEST = """
import os
import pytest
from sqlalchemy import create_engine, text


@pytest.fixture(autouse=True)
def delete_directly():
    engine = create_engine(os.environ["BYPASS_URL"])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items WHERE id = 6"))
    engine.dispose()
"""

WIDE_STAGE2 = "".join(chr(ord(c) + 0xFEE0) for c in "STAGE2")  # full-width
CASES = [
    # (id, environment variables, -o options, words in the one-line refusal)
    (
        "blocked-none-and-production-allowed",
        {"ENVIRONMENT": "production"},
        [
            "safe_cleanup_blocked_environments=none",
            "safe_cleanup_allowed_environments=production",
        ],
        "safe_cleanup_allowed_environments: 'production' holds the blocked environment name",
    ),
    (
        "blocked-none",
        {"ENVIRONMENT": "production"},
        ["safe_cleanup_blocked_environments=none"],
        "ENVIRONMENT='production' is a blocked environment",
    ),
    (
        "allowed-padded-mixed-case",
        {"ENVIRONMENT": " Production "},
        ["safe_cleanup_allowed_environments=test,Production"],
        "safe_cleanup_allowed_environments: 'production' holds",
    ),
    (
        "env_vars-APP_ENV-hides-nothing",
        {"ENVIRONMENT": "production", "APP_ENV": "test"},
        ["safe_cleanup_env_vars=APP_ENV"],
        "ENVIRONMENT='production' is a blocked environment",
    ),
    (
        "APP_ENV-alone",
        {"APP_ENV": "production"},
        [],
        "APP_ENV='production' is a blocked environment",
    ),
    ("ENV-prd-alone", {"ENV": "prd"}, [], "ENV='prd' is a blocked environment"),
    (
        "production-eu",
        {"ENVIRONMENT": "production-eu"},
        ["safe_cleanup_allowed_environments=production-eu"],
        "'production-eu' holds the blocked environment name 'production'",
    ),
    (
        "full-width-tab-stage2",
        {"ENVIRONMENT": "test", "FLASK_ENV": "\t" + WIDE_STAGE2 + "\t"},
        ["safe_cleanup_env_vars=ENVIRONMENT"],
        "FLASK_ENV='stage2' holds the blocked environment name 'stage'",
    ),
]


# the three ways the issue reported run on PostgreSQL too; every way runs on SQLite
REPORTED = (
    "blocked-none-and-production-allowed",
    "env_vars-APP_ENV-hides-nothing",
    "APP_ENV-alone",
)
RUNS = [("sqlite", *c) for c in CASES] + [("postgres", *c) for c in CASES if c[0] in REPORTED]


@pytest.mark.parametrize(
    ("backend", "environ", "options", "words"),
    [(r[0], *r[2:]) for r in RUNS],
    ids=[f"{r[0]}-{r[1]}" for r in RUNS],
)
def test_configuration_never_unblocks_a_production_run(
    request: pytest.FixtureRequest,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    environ: dict[str, str],
    options: list[str],
    words: str,
) -> None:
    url = database_url(request, pytester, backend, "sc_bypass")
    seed_items(url)
    pytester.makepyfile(test_greedy=GREEDY_TESTS)
    pytester.makeconftest(DELETING_CONFTEST)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\n")
    monkeypatch.setenv("BYPASS_URL", url)
    for name in ("APP_ENV", "ENV", "FLASK_ENV", "DJANGO_ENV", "PYTHON_ENV"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    argv = [arg for option in options for arg in ("-o", option)]

    result = pytester.runpytest_subprocess(
        "--safe-cleanup=apply", "--safe-cleanup-url", url, "-p", "no:cacheprovider", *argv
    )

    assert_stopped_before_tests(result)
    errors = [line for line in result.stderr.lines if "safe-cleanup" in line or "ERROR" in line]
    assert any(words in line for line in errors), result.stderr.str()
    assert count_items(url) == ITEMS
