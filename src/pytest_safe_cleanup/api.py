"""``Cleanup`` and ``AsyncCleanup``: the five layers for scripts, outside pytest.

The pattern comes from a cleanup script that deleted real data. A script registers
rows exactly as a test does (``delete``, ``track``, ``on``, cascades); when the
``with`` block ends without an exception the registrations go through the same
``Conductor`` the plugin uses, so the guard, intent, dry run, backup, counts, audit
log and report are the plugin's own, not a copy. Only intent differs: a script is run
by a person, so apply asks for the database name whatever the verdict (on a terminal
at a prompt that shows the counts first, elsewhere through ``confirm=``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Table, create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from .backup import BackupStore
from .executor import LimitExceeded
from .intent import Policy, is_interactive
from .plan import (
    AsyncSafeCleanup,
    RegistrationBook,
    RegistrationError,
    SafeCleanup,
    is_async_engine,
)
from .report import Outcome, Report
from .runner import Conductor, TestContext, target_info
from .settings import BACKUPS, MODES, Settings, resolve
from .target import Target, first_line
from .watch import Blocked, Guardian

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .guard import Verdict

#: exit codes of ``safe-cleanup delete``, carried by the exceptions below
EXIT_DONE, EXIT_REFUSED, EXIT_BLOCKED, EXIT_FAILED = 0, 1, 2, 3
DEFAULT_BACKUP_DIR = ".safe-cleanup/backups"
# A library logs and lets the application choose handlers: no stderr lines by default.
logging.getLogger("pytest_safe_cleanup").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class TableOutcome:
    """What happened to one table (``table`` None: the whole cleanup of a database)."""

    target: str
    table: str | None
    counted: int | None
    deleted: int | None
    updated: int | None
    status: str
    backup: str | None
    reason: str


class CleanupError(RuntimeError):
    """A cleanup that did not run as asked; ``outcomes`` and ``report`` say what happened."""

    def __init__(
        self,
        message: str,
        outcomes: list[TableOutcome],
        report: dict[str, Any],
        exit_code: int = EXIT_FAILED,
    ) -> None:
        super().__init__(message)
        self.outcomes = outcomes
        self.report = report
        self.exit_code = exit_code


class CleanupRefused(CleanupError):
    """BLOCK, missing intent or over ``max_rows``: rolled back, nothing was deleted there."""


class CleanupFailed(CleanupError):
    """The cleanup failed (database, backup) and was rolled back."""


def _validated(
    base: Settings, mode: str | None, max_rows: int | None, backup: str
) -> tuple[Settings, str]:
    """The settings with this cleanup's arguments, and where the mode came from."""
    source = "argument" if mode is not None else base.source("mode")
    mode = base.mode if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {', '.join(MODES)}")
    if backup not in BACKUPS:
        raise ValueError(f"backup={backup!r}: use one of {', '.join(BACKUPS)}")
    if max_rows is None:
        max_rows = base.max_rows
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise ValueError(f"max_rows={max_rows!r}: give a whole number of rows")
    return replace(base, mode=mode, max_rows=max_rows, backup=backup), source


def _ask(text: str) -> str:
    """Ask the person at the terminal; end of input is no answer."""
    sys.stdout.write(text)
    sys.stdout.flush()
    return sys.stdin.readline()


def _on_terminal(environ: Mapping[str, str]) -> bool:
    try:
        ttys = sys.stdin.isatty(), sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
    return is_interactive(*ttys, environ, False)


def _api_hint(target: Target) -> str:
    return f'pass confirm="{target.name}" to Cleanup'


class _Run:
    """One cleanup's settings, guard, report and conductor: what both classes share."""

    def __init__(
        self,
        *,
        mode: str | None,
        confirm: str | None,
        max_rows: int | None,
        backup: str,
        backup_dir: str | os.PathLike[str],
        settings: Settings | None,
        label: str | None,
        report_path: str | os.PathLike[str] | None,
        interactive: bool | None,
        prompt: Callable[[str], str] | None,
        confirm_hint: Callable[[Target], str] | None,
    ) -> None:
        if confirm is not None and (not isinstance(confirm, str) or not confirm.strip()):
            raise ValueError(
                f'confirm={confirm!r}: give the database name, e.g. confirm="app_test"'
            )
        environ = dict(os.environ)
        # Environment only: the guard a script gets is the guard pytest gets without an ini.
        base = settings if settings is not None else resolve(cli={}, env=environ, ini={})
        self.settings, source = _validated(base, mode, max_rows, backup)
        self.mode = self.settings.mode
        self.confirms = frozenset({confirm.strip()}) if confirm else frozenset()
        script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-", "-c") else ""
        self.label = label or script or "cleanup"
        run_id = base.run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(3).hex()}"
        self.report = Report(self.mode, run_id, source)
        self.report_path = Path(report_path) if report_path is not None else None
        self.guardian = Guardian(self.settings, environ)
        self.guardian.on_verdict = lambda t, v: self.report.add_target(t.key, target_info(t, v))
        self.guardian.on_use = lambda t: self.report.use_target(t.key)
        self.store = BackupStore(Path(backup_dir), run_id, keep=base.backup_keep)
        self.limits: list[str] = []
        #: the database the cleanup's engine reached, and its verdict, once connected
        self.main: tuple[Target, Verdict] | None = None
        self.conductor = Conductor(
            self.settings,
            self.guardian,
            self.report,
            interactive=_on_terminal(environ) if interactive is None else interactive,
            prompt=prompt or _ask,
            store=self.store,
            policy=Policy(
                always=True,
                subject="rows",
                question="to delete these rows, anything else to delete nothing",
                how=confirm_hint or _api_hint,
            ),
            on_failure=self._failed,
        )
        self.book = RegistrationBook()
        self.entered = False
        self.ctx = TestContext(nodeid=self.label)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, LimitExceeded):
            self.limits.append(str(exc))

    @staticmethod
    def _limit_text(reason: str) -> str:
        """The executor's words, with a script's way to raise the limit."""
        head, sep, _ = reason.partition(": nothing was deleted")
        if not sep:
            return reason
        return f"{head}: nothing was deleted; narrow the condition or raise max_rows (--max-rows)"

    def context(self) -> tuple[str, frozenset[str]]:
        """Who registers (the audit log's and the backups' name) and the confirmed names."""
        if not self.entered:
            raise RegistrationError(
                "register rows inside the with block: with Cleanup(url) as c: c.delete(...)"
            )
        return self.label, self.confirms

    def blocked(self, exc: Blocked) -> CleanupRefused:
        """A BLOCK seen on entering: recorded like the conductor records one."""
        self.report.add(
            [Outcome(self.label, exc.target.name, None, None, None, "refused", str(exc))]
        )
        self.close()
        return CleanupRefused(str(exc), self.outcomes(), self.report.to_json(), EXIT_BLOCKED)

    def outcomes(self) -> list[TableOutcome]:
        """Every table's outcome as the report records it."""
        return [
            TableOutcome(
                o.target,
                o.table,
                o.counted,
                o.deleted,
                getattr(o, "updated", None),
                o.status,
                o.backup,
                o.reason,
            )
            for o in self.report.cleanups
        ]

    def close(self) -> None:
        """Wait for the backup writer, then write the JSON report if one was asked for."""
        for problem in self.store.flush():
            if problem not in self.report.warnings:
                self.report.warnings.append(problem)
        self.store.close()
        if self.report_path is not None:
            self.report.write_json(self.report_path)

    def conclude(self) -> None:
        """Raise for anything that did not run as asked, the gravest first."""
        blocked, failed, refused = [], [], []
        for o in self.report.cleanups:
            if o.status == "refused":
                blocked.append(o.reason)
            elif o.status == "failed" and o.reason in self.limits:
                refused.append(self._limit_text(o.reason))
            elif o.status == "failed":
                failed.append(o.reason)
            elif o.status == "held" or (o.status == "dry" and self.mode == "apply"):
                refused.append(o.reason)
        for reasons, kind, code in (
            (blocked, CleanupRefused, EXIT_BLOCKED),
            (failed, CleanupFailed, EXIT_FAILED),
            (refused, CleanupRefused, EXIT_REFUSED),
        ):
            if reasons:
                message = "; ".join(dict.fromkeys(reasons))
                raise kind(message, self.outcomes(), self.report.to_json(), code)


class _Results:
    """``outcomes``, ``report``, ``target`` and ``verdict`` of a finished cleanup."""

    _run: _Run
    _main: Engine

    @property
    def outcomes(self) -> list[TableOutcome]:
        """One entry per table (and per refused or failed database), in deletion order."""
        return self._run.outcomes()

    @property
    def report(self) -> dict[str, Any]:
        """The same JSON document as ``--safe-cleanup-report``."""
        return self._run.report.to_json()

    @property
    def mode(self) -> str:
        """dry, apply or off: the argument, else SAFE_CLEANUP_MODE, else dry."""
        return self._run.mode

    def _known(self) -> tuple[Target, Verdict] | None:
        return self._run.main

    @property
    def target(self) -> Target | None:
        """The database of the engine the cleanup was made with, once connected."""
        known = self._known()
        return known[0] if known else None

    @property
    def verdict(self) -> Verdict | None:
        """The guard's verdict on that database, once connected."""
        known = self._known()
        return known[1] if known else None


def _sync_engine(url_or_engine: Any) -> tuple[Engine, bool]:
    if is_async_engine(url_or_engine):
        raise TypeError("Cleanup takes a URL or an Engine; use AsyncCleanup for an AsyncEngine")
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    try:
        return create_engine(url_or_engine, poolclass=NullPool), True
    except ModuleNotFoundError as exc:
        raise ValueError(f"the database driver {exc.name!r} is not installed") from None


class Cleanup(SafeCleanup, _Results):
    """``with Cleanup(url) as c: c.delete(...)``: the fixture's API for a script.

    Registrations run through the five layers when the block ends without an
    exception; an exception in the block deletes nothing. A refusal raises
    ``CleanupRefused`` and a failure ``CleanupFailed``, after rolling back.

    ``mode`` is dry, apply or off (default: SAFE_CLEANUP_MODE, else dry); ``confirm``
    names the database where no person is at a terminal; ``max_rows`` caps the rows
    deleted (default 10000); ``backup`` is rows, pg_dump or none; ``backup_dir`` holds
    backups and the audit log; ``report_path`` writes the JSON report; ``label`` names
    the cleanup in the audit log and backups (default: the script's file name).
    """

    def __init__(
        self,
        url_or_engine: str | Engine | Any,
        mode: str | None = None,
        confirm: str | None = None,
        max_rows: int | None = None,
        backup: str = "rows",
        backup_dir: str | os.PathLike[str] = DEFAULT_BACKUP_DIR,
        *,
        report_path: str | os.PathLike[str] | None = None,
        label: str | None = None,
        settings: Settings | None = None,
        interactive: bool | None = None,
        prompt: Callable[[str], str] | None = None,
        confirm_hint: Callable[[Target], str] | None = None,
    ) -> None:
        run = _Run(
            mode=mode,
            confirm=confirm,
            max_rows=max_rows,
            backup=backup,
            backup_dir=backup_dir,
            settings=settings,
            label=label,
            report_path=report_path,
            interactive=interactive,
            prompt=prompt,
            confirm_hint=confirm_hint,
        )
        engine, self._own = _sync_engine(url_or_engine)
        super().__init__(engine, book=run.book, tag=os.urandom(4).hex(), context=run.context)
        self._run, self._main = run, engine

    def __enter__(self) -> Self:
        self._run.entered = True
        if self._run.mode == "off":
            return self
        try:
            # a BLOCK refuses before the block runs
            self._run.main = self._run.guardian.check(self.engine)
        except Blocked as exc:
            self._dispose()
            raise self._run.blocked(exc) from None
        except BaseException:
            self._dispose()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run = self._run
        run.entered = False  # a registration after the block would never run: refused
        entries = run.book.drain()
        try:
            if exc_type is None:
                run.conductor.finish(entries, run.ctx)
        finally:
            run.close()
            self._dispose()
        if exc_type is None:
            run.conclude()

    def table(self, name: str) -> Table:
        """The reflected Table of a (``schema.``)table name, to build conditions on its columns."""
        return self._run.book.resolver(self.engine).resolve(name)

    def _dispose(self) -> None:
        if self._own:
            self.engine.dispose()


class AsyncCleanup(AsyncSafeCleanup, _Results):
    """``async with AsyncCleanup(url) as c: await c.delete(...)``: the same for an AsyncEngine.

    The layers run on the engine's connection through ``run_sync``: the same code.
    The options are Cleanup's.
    """

    def __init__(
        self,
        url_or_engine: str | AsyncEngine | Any,
        mode: str | None = None,
        confirm: str | None = None,
        max_rows: int | None = None,
        backup: str = "rows",
        backup_dir: str | os.PathLike[str] = DEFAULT_BACKUP_DIR,
        *,
        report_path: str | os.PathLike[str] | None = None,
        label: str | None = None,
        settings: Settings | None = None,
        interactive: bool | None = None,
        prompt: Callable[[str], str] | None = None,
        confirm_hint: Callable[[Target], str] | None = None,
    ) -> None:
        run = _Run(
            mode=mode,
            confirm=confirm,
            max_rows=max_rows,
            backup=backup,
            backup_dir=backup_dir,
            settings=settings,
            label=label,
            report_path=report_path,
            interactive=interactive,
            prompt=prompt,
            confirm_hint=confirm_hint,
        )
        engine, self._own = self._async_engine(url_or_engine)
        super().__init__(engine, book=run.book, tag=os.urandom(4).hex(), context=run.context)
        self._run, self._main = run, engine.sync_engine

    @staticmethod
    def _async_engine(url_or_engine: Any) -> tuple[AsyncEngine, bool]:
        if is_async_engine(url_or_engine):
            return url_or_engine, False
        if isinstance(url_or_engine, Engine):
            raise TypeError("AsyncCleanup takes a URL or an AsyncEngine; use Cleanup for an Engine")
        from sqlalchemy.exc import InvalidRequestError
        from sqlalchemy.ext.asyncio import create_async_engine

        try:
            return create_async_engine(url_or_engine, poolclass=NullPool), True
        except ModuleNotFoundError as exc:
            raise ValueError(f"the database driver {exc.name!r} is not installed") from None
        except InvalidRequestError as exc:
            raise ValueError(
                f"AsyncCleanup needs an async driver (postgresql+asyncpg://, "
                f"sqlite+aiosqlite://): {first_line(exc)}"
            ) from None

    async def __aenter__(self) -> Self:
        self._run.entered = True
        if self._run.mode == "off":
            return self
        guardian = self._run.guardian

        def check(conn: Connection) -> None:
            self._run.main = guardian.check_connection(conn)

        try:
            async with self.engine.connect() as aconn:
                await aconn.run_sync(check)
        except Blocked as exc:
            await self._dispose()
            raise self._run.blocked(exc) from None
        except BaseException:
            await self._dispose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run = self._run
        run.entered = False  # a registration after the block would never run: refused
        entries = run.book.drain()
        try:
            if exc_type is None:
                await run.conductor.finish_async(entries, run.ctx)
        finally:
            run.close()
            await self._dispose()
        if exc_type is None:
            run.conclude()

    async def table(self, name: str) -> Table:
        """The reflected Table of a (``schema.``)table name, to build conditions on its columns."""
        resolver = self._run.book.resolver(self.engine.sync_engine)

        def resolve(conn: Connection) -> Table:
            with resolver.using(conn):
                return resolver.resolve(name)

        async with self.engine.connect() as aconn:
            return await aconn.run_sync(resolve)

    async def _dispose(self) -> None:
        if self._own:
            await self.engine.dispose()


__all__ = [
    "AsyncCleanup",
    "Cleanup",
    "CleanupError",
    "CleanupFailed",
    "CleanupRefused",
    "TableOutcome",
]
