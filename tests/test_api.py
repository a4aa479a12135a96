"""``Cleanup`` and ``AsyncCleanup`` in scripts, run as subprocesses against real databases.

The scripts are what a team writes instead of a hand-made cleanup: the rows are read
before and after each run, value for value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import CLEARED, EXAMPLES, assert_same_rows, demo_rows, seed_demo
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from pytest_safe_cleanup import Cleanup, CleanupRefused
from pytest_safe_cleanup.api import CleanupFailed
from pytest_safe_cleanup.backup.format import read_journal
from pytest_safe_cleanup.stamp import write_stamp

TENANT = "demo-seed-a"
SCRIPT = EXAMPLES / "cleanup_demo_tenant.py"


def env(**extra: str) -> dict[str, str]:
    """No terminal (CI set) and no stray settings, as in a pipeline."""
    clean = {k: v for k, v in os.environ.items() if k not in CLEARED}
    clean["CI"] = "true"
    clean.update(extra)
    return clean


def python(cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env(**extra), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def script(cwd: Path, body: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    path = cwd / "job.py"
    path.write_text(textwrap.dedent(body))
    return python(cwd, str(path), *args, **extra)


def db_name(url: str) -> str:
    database = make_url(url).database or ""
    return Path(database).name if url.startswith("sqlite") else database


def tenant_gone(before: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    account = next(r[0] for r in before["client_accounts"] if r[1] == TENANT)
    return {
        "client_accounts": [r for r in before["client_accounts"] if r[0] != account],
        "users": [r for r in before["users"] if r[1] != account],
        "assets": [r for r in before["assets"] if r[1] != account],
    }


def backups(cwd: Path) -> list[Path]:
    """Every journal record under the backup folder, named ``<journal>#N`` as reports do."""
    journals = sorted((cwd / ".safe-cleanup" / "backups").rglob("*.journal"))
    return [Path(r.location) for j in journals for r in read_journal(j)]


@pytest.fixture(params=["postgres", "sqlite"])
def demo_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'demo.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    seed_demo(url)
    return url


@pytest.fixture
def pg_demo(pg_url: str) -> str:
    seed_demo(pg_url)
    return pg_url


def test_the_example_script_counts_then_deletes_exactly_the_tenant(
    tmp_path: Path, demo_url: str
) -> None:
    before = demo_rows(demo_url)
    dry = python(tmp_path, str(SCRIPT), demo_url, TENANT)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "assets: counted 1, deleted None (dry)",
        "users: counted 2, deleted None (dry)",
        "client_accounts: counted 1, deleted None (dry)",
    ]
    assert demo_rows(demo_url) == before

    unconfirmed = python(tmp_path, str(SCRIPT), demo_url, TENANT, "--apply")
    assert unconfirmed.returncode == 1
    assert f'pass confirm="{db_name(demo_url)}" to Cleanup' in unconfirmed.stderr
    assert demo_rows(demo_url) == before

    applied = python(
        tmp_path, str(SCRIPT), demo_url, TENANT, "--apply", "--confirm", db_name(demo_url)
    )
    assert applied.returncode == 0, applied.stderr
    assert "users: counted 2, deleted 2 (deleted)" in applied.stdout
    assert demo_rows(demo_url) == tenant_gone(before)
    [backup] = backups(tmp_path)
    restored = python(tmp_path, "-m", "pytest_safe_cleanup.cli", "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    after = demo_rows(demo_url)
    for table in before:
        assert_same_rows(before[table], after[table])


RAISES = """
    import sys
    from pytest_safe_cleanup import Cleanup

    url, name = sys.argv[1:]
    with Cleanup(url, mode="apply", confirm=name) as c:
        c.delete("client_accounts", name="demo-seed-a", cascade=True)
        raise RuntimeError("the script broke after registering")
"""


def test_an_exception_in_the_block_deletes_nothing(tmp_path: Path, demo_url: str) -> None:
    before = demo_rows(demo_url)
    result = script(tmp_path, RAISES, demo_url, db_name(demo_url))
    assert result.returncode == 1
    assert "RuntimeError: the script broke after registering" in result.stderr
    assert demo_rows(demo_url) == before
    assert not (tmp_path / ".safe-cleanup").exists(), "no backup, no audit line"


OUTCOMES = """
    import json, sys
    from pytest_safe_cleanup import Cleanup

    url, name = sys.argv[1:]
    with Cleanup(url, confirm=name, report_path="report.json") as c:
        users = c.table("users")
        c.delete(users, users.c.email.like("%seed-a%"))
    print(json.dumps({"mode": c.mode, "verdict": c.verdict.level.name, "outcomes": [
        [o.target, o.table, o.counted, o.deleted, o.updated, o.status, o.backup is not None]
        for o in c.outcomes], "report": c.report}))
"""


@pytest.mark.parametrize("mode", ["dry", "apply"])
def test_outcomes_and_report_follow_the_mode_from_the_environment(
    tmp_path: Path, demo_url: str, mode: str
) -> None:
    before = demo_rows(demo_url)
    extra = {"SAFE_CLEANUP_MODE": mode} if mode == "apply" else {}
    result = script(tmp_path, OUTCOMES, demo_url, db_name(demo_url), **extra)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    name = db_name(demo_url)
    assert (seen["mode"], seen["verdict"]) == (mode, "ALLOW")
    deleted = 2 if mode == "apply" else None
    status = "deleted" if mode == "apply" else "dry"
    assert seen["outcomes"] == [[name, "users", 2, deleted, None, status, mode == "apply"]]
    report = seen["report"]
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["mode"] == mode and report["schema_version"] == 1
    assert report["cleanups"][0]["nodeid"] == "job.py"
    expected = tenant_gone(before)["users"] if mode == "apply" else before["users"]
    assert demo_rows(demo_url) == {**before, "users": expected}


ASYNC = """
    import asyncio, sys
    from pytest_safe_cleanup import AsyncCleanup, CleanupRefused

    url, name, how = sys.argv[1:]

    async def main():
        if how == "raise":
            async with AsyncCleanup(url, mode="apply", confirm=name) as c:
                await c.delete("client_accounts", name="demo-seed-a", cascade=True)
                raise RuntimeError("boom")
        if how == "unconfirmed":
            try:
                async with AsyncCleanup(url, mode="apply") as c:
                    await c.delete("client_accounts", name="demo-seed-a", cascade=True)
            except CleanupRefused as exc:
                print("refused", exc.exit_code, [o.status for o in exc.outcomes])
            return
        async with AsyncCleanup(url, mode=how, confirm=name) as c:
            await c.delete("client_accounts", name="demo-seed-a", cascade=True)
        print([(o.table, o.counted, o.deleted, o.status) for o in c.outcomes])

    asyncio.run(main())
"""


def test_async_cleanup_on_asyncpg(tmp_path: Path, pg_demo: str) -> None:
    url = make_url(pg_demo).set(drivername="postgresql+asyncpg").render_as_string(False)
    name = db_name(pg_demo)
    before = demo_rows(pg_demo)
    dry = script(tmp_path, ASYNC, url, name, "dry")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == (
        "[('assets', 1, None, 'dry'), ('users', 2, None, 'dry'), "
        "('client_accounts', 1, None, 'dry')]"
    )
    raised = script(tmp_path, ASYNC, url, name, "raise")
    assert raised.returncode == 1 and "RuntimeError: boom" in raised.stderr
    unconfirmed = script(tmp_path, ASYNC, url, name, "unconfirmed")
    assert unconfirmed.stdout.strip() == "refused 1 ['held', 'held', 'held']", unconfirmed.stderr
    assert demo_rows(pg_demo) == before
    applied = script(tmp_path, ASYNC, url, name, "apply")
    assert applied.returncode == 0, applied.stderr
    assert "('users', 2, 2, 'deleted')" in applied.stdout
    assert demo_rows(pg_demo) == tenant_gone(before)
    assert len(backups(tmp_path)) == 1


# --- refusals, in process: no terminal, the environment cleared ------------------------------


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def _apply(url: str, **options: Any) -> Cleanup:
    with Cleanup(url, mode="apply", interactive=False, **options) as c:
        c.delete("client_accounts", name=TENANT, cascade=True)
    return c


@pytest.mark.usefixtures("quiet_env")
@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("no confirm", 1, "no confirmation was given"),
        ("wrong confirm", 1, "does not name this database"),
        ("max_rows", 1, "more than max_rows=3: nothing was deleted; narrow the condition"),
        ("stamped production", 2, "stamped 'production'"),
    ],
)
def test_refusals_raise_cleanup_refused_and_keep_every_row(
    pg_demo: str, case: str, code: int, says: str
) -> None:
    name = db_name(pg_demo)
    options: dict[str, Any] = {"confirm": name}
    if case == "no confirm":
        options = {}
    elif case == "wrong confirm":
        options["confirm"] = "postgres"
    elif case == "max_rows":
        options["max_rows"] = 3
    else:
        engine = create_engine(pg_demo)
        with engine.begin() as conn:
            write_stamp(conn, "production")
        engine.dispose()
    before = demo_rows(pg_demo)
    with pytest.raises(CleanupRefused) as refused:
        _apply(pg_demo, **options)
    assert refused.value.exit_code == code
    assert says in str(refused.value)
    assert refused.value.report["mode"] == "apply"
    assert all(o.deleted is None for o in refused.value.outcomes)
    assert demo_rows(pg_demo) == before
    assert backups(Path.cwd()) == []


@pytest.mark.usefixtures("quiet_env")
def test_a_declined_prompt_refuses_and_a_backup_failure_fails(pg_demo: str) -> None:
    before = demo_rows(pg_demo)
    asked: list[str] = []

    def no(text: str) -> str:
        asked.append(text)
        return "nope\n"

    with (
        pytest.raises(CleanupRefused, match="not confirmed at the prompt"),
        Cleanup(pg_demo, mode="apply", interactive=True, prompt=no) as c,
    ):
        c.delete("client_accounts", name=TENANT, cascade=True)
    [text] = asked
    assert "verdict: ALLOW" in text and "client_accounts" in text and "total" in text
    Path("blocker").write_text("")
    with pytest.raises(CleanupFailed, match="the backup could not be written") as failed:
        _apply(pg_demo, confirm=db_name(pg_demo), backup_dir="blocker")
    assert failed.value.exit_code == 3
    assert demo_rows(pg_demo) == before


@pytest.mark.usefixtures("quiet_env")
def test_bad_arguments_are_one_clear_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for options, says in (
        ({"mode": "wipe"}, "mode='wipe': use one of dry, apply, off"),
        ({"backup": "tape"}, "backup='tape': use one of rows, pg_dump, none"),
        ({"max_rows": -1}, "max_rows=-1: give a whole number of rows"),
        ({"confirm": True}, 'confirm=True: give the database name, e.g. confirm="app_test"'),
    ):
        with pytest.raises(ValueError) as bad:
            Cleanup(url, **options)
        assert str(bad.value) == says


ON_A_TERMINAL = """
    import sys
    from pytest_safe_cleanup import Cleanup

    url, name = sys.argv[1:]
    with Cleanup(url, mode="apply", confirm=name) as c:
        c.delete("client_accounts", name="demo-seed-a", cascade=True)
    print("statuses:", [o.status for o in c.outcomes])
"""


def test_a_script_on_a_terminal_asks_even_with_confirm(tmp_path: Path, pg_demo: str) -> None:
    """The name typed at the keyboard is the intent; confirm= serves runs without a person."""
    pexpect = pytest.importorskip("pexpect")
    name = db_name(pg_demo)
    before = demo_rows(pg_demo)
    (tmp_path / "job.py").write_text(textwrap.dedent(ON_A_TERMINAL))
    child = pexpect.spawn(
        sys.executable, [str(tmp_path / "job.py"), pg_demo, name], cwd=str(tmp_path),
        env={k: v for k, v in env().items() if k != "CI"}, timeout=60, encoding="utf-8",
    )  # fmt: skip
    child.expect("verdict: ALLOW")
    child.expect(r"users +2")
    child.expect(f"Type the database name \\({name}\\)")
    assert demo_rows(pg_demo) == before
    child.sendline(name)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "statuses: ['deleted', 'deleted', 'deleted']" in str(child.before)
    assert demo_rows(pg_demo) == tenant_gone(before)
