"""Bad input, as users make it: one clear line that says what to do, and no row changes."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import count_rows, seed_family

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nsafe_cleanup_backup = none\n"


def test_bad_registrations_fail_the_test_at_the_call(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """Run in apply, so a registration that slipped through would really delete."""
    seed_family(pg_url)
    pytester.makeini(INI)
    pytester.makepyfile(
        test_bad="""
            import pytest

            def test_no_condition(safe_cleanup):
                safe_cleanup.delete("children")

            @pytest.mark.safe_cleanup(mode="dry")
            def test_all_rows_is_accepted(safe_cleanup):
                safe_cleanup.delete("children", all_rows=True)

            def test_missing_table(safe_cleanup):
                safe_cleanup.delete("no_such_table", id=1)

            def test_unknown_column(safe_cleanup):
                safe_cleanup.delete("parents", nmae="seed")
        """
    )
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url", pg_url, "--safe-cleanup=apply", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "E * refusing to register a cleanup of every row of 'children': add a condition*"
            "or pass all_rows=True",
            "E * table 'no_such_table' does not exist in postgresql+psycopg://*: check the name*",
            "E * table 'parents' has no column 'nmae' (columns: id, name)",
            # the short summary names the failing line too
            "FAILED test_bad.py::test_no_condition - *all_rows=True*",
        ]
    )
    # all_rows=True is accepted: counted every child, deleted none (the marker made it dry)
    result.stdout.fnmatch_lines(["*.children * 3 * -"])
    assert count_rows(pg_url, "parents") == 3
    assert count_rows(pg_url, "children") == 3


MALFORMED = {
    "not a url": "could not parse 'not a url' as a database URL*",
    "postgresql://u:pwSECRET@[bad": "could not parse 'postgresql://u:***@[bad' as a database URL*",
}


@pytest.mark.parametrize("url", list(MALFORMED))
def test_malformed_url_is_one_line_and_exit_4(pytester: pytest.Pytester, url: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_never_runs(safe_cleanup):\n    pass\n")
    result = pytester.runpytest_subprocess("--safe-cleanup-url", url, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: safe-cleanup: --safe-cleanup-url: {MALFORMED[url]}"])
    said = [line for line in result.errlines if "safe-cleanup" in line]
    assert len(said) == 1, said
    assert "Traceback" not in result.stderr.str()
    assert "pwSECRET" not in result.stdout.str() + result.stderr.str()


@pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is not None, reason="MySQLdb is installed here"
)
def test_missing_driver_names_the_extra(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_never_runs(safe_cleanup):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        "mysql+mysqldb://u:pwSECRET@127.0.0.1/app_test",
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: safe-cleanup: *'MySQLdb' is not installed: pip install*"])
    assert "pip install 'pytest-safe-cleanup[mysql]'" in result.stderr.str()
    assert "pwSECRET" not in result.stdout.str() + result.stderr.str()


def test_unreachable_database_is_a_clear_setup_error(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    seed_family(pg_url)
    pytester.makeini(INI)
    pytester.makepyfile(
        test_unreachable=f"""
            from sqlalchemy import create_engine

            def test_first(safe_cleanup):
                safe_cleanup.delete("parents", id=1)

            def test_second(safe_cleanup):
                # never reached: the fixture refuses to set up
                engine = create_engine({pg_url!r})
                safe_cleanup.on(engine).delete("parents", id=[1, 2, 3])
        """
    )
    url = "postgresql+psycopg://postgres:pwUNREACH@127.0.0.1:1/x"
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url", url, "--safe-cleanup=apply", "-p", "no:cacheprovider"
    )
    # the start check only warns; each test errors when its fixture sets up
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=2)
    message = (
        "safe-cleanup: cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/x: "
        "connection failed:*; check the URL and that the database is running"
    )
    result.stdout.fnmatch_lines(["*ERROR at setup of test_first*", message])
    result.stdout.fnmatch_lines(["*ERROR at setup of test_second*", message])
    result.stdout.fnmatch_lines(
        ["warning: postgresql+psycopg://postgres:***@127.0.0.1:1/x could not be reached at start*"]
    )
    # the plugin's own source lines are not part of the error
    result.stdout.no_fnmatch_line("*pytest_safe_cleanup/*.py:*")
    assert "pwUNREACH" not in result.stdout.str() + result.stderr.str()
    assert count_rows(pg_url, "parents") == 3
