"""disposable_postgres as users meet it: a real throwaway PostgreSQL, gone after the run."""

from __future__ import annotations

# Imported before any pytester snapshot of sys.modules, so each is imported once: a
# driver imported again inside a test raises errors SQLAlchemy no longer recognises.
import psycopg  # noqa: F401
import pytest
import sqlalchemy.dialects.postgresql  # noqa: F401
from conftest import DISPOSABLE_PROJECT
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

PROJECT = DISPOSABLE_PROJECT


def _database_exists(server_url: str, url: str) -> bool:
    name = url.rsplit("/", 1)[-1]
    engine = create_engine(server_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            return found is not None
    finally:
        engine.dispose()


@pytest.mark.parametrize("mode,left", [("dry", 4), ("apply", 2)])
def test_local_cluster_default_engine(pytester: pytest.Pytester, mode: str, left: int) -> None:
    import json

    pytester.makeconftest("")
    pytester.makepyfile(test_notes=PROJECT)
    pytester.makeini("[pytest]\nsafe_cleanup_backup = none\nsafe_cleanup_postgres = local\n")
    result = pytester.runpytest_subprocess(f"--safe-cleanup={mode}", "-p", "no:asyncio")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*disposable_postgres: local cluster*", "*the database is disposable*"]
    )
    seen = json.loads((pytester.path / "seen.json").read_text())
    assert seen["kind"] == "local"
    assert seen["async_url"].startswith("postgresql+asyncpg://")
    assert (pytester.path / "after.txt").read_text() == str(left)
    # The cluster is gone with the session: nothing listens on its port any more.
    engine = create_engine(seen["url"], connect_args={"connect_timeout": 2})
    with pytest.raises(OperationalError, match="Connection refused"), engine.connect():
        pass
    engine.dispose()


def test_server_provider_creates_and_drops(pytester: pytest.Pytester, pg_server_url: str) -> None:
    import json

    pytester.makepyfile(test_notes=PROJECT)
    pytester.makeini(f"[pytest]\nsafe_cleanup_postgres = {pg_server_url}\n")
    result = pytester.runpytest_subprocess("-p", "no:asyncio")
    result.assert_outcomes(passed=2)
    seen = json.loads((pytester.path / "seen.json").read_text())
    assert seen["kind"] == "server"
    assert not _database_exists(pg_server_url, seen["url"])


def test_nothing_available_skips_with_one_reason(
    pytester: pytest.Pytester, tmp_path, monkeypatch
) -> None:
    empty = tmp_path / "no-bin"
    empty.mkdir()
    monkeypatch.setenv("SAFE_CLEANUP_PG_BINDIR", str(empty))
    monkeypatch.delenv("SAFE_CLEANUP_POSTGRES_URL", raising=False)
    monkeypatch.delenv("SAFE_CLEANUP_REQUIRE_POSTGRES", raising=False)
    pytester.makepyfile(test_notes=PROJECT)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:asyncio")
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped") == 2 and "passed" not in outcomes
    result.stdout.fnmatch_lines(["*no disposable PostgreSQL*initdb*SAFE_CLEANUP_POSTGRES_URL*"])

    monkeypatch.setenv("SAFE_CLEANUP_REQUIRE_POSTGRES", "1")
    result = pytester.runpytest_subprocess("-p", "no:asyncio")
    assert result.parseoutcomes().get("errors") == 2
    result.stdout.fnmatch_lines(["*SAFE_CLEANUP_REQUIRE_POSTGRES=1*"])
