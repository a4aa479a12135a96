"""The pipeline of one teardown: plan -> verdict -> intent -> executor -> outcomes.

``Guardian`` holds the session's verdicts (one per target) and watches every
SQLAlchemy engine in the process: an engine's first connection to a target that
the guard blocks is refused, and every later statement that writes to it is
stopped before it reaches the database, wherever the engine came from.
``Conductor`` runs a test's registrations through the layers in order. Neither
imports pytest: the plugin hands them what they need.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from . import blast, executor
from .backup import BackupError, BackupStore, dump_database
from .guard import Level, Reason, Verdict, evaluate, read_environment
from .intent import IntentBook
from .plan import (
    AnyEngine,
    Plan,
    Registration,
    RegistrationError,
    build_plan,
    sync_engine_of,
)
from .report import Outcome, Report, TargetInfo
from .settings import Settings
from .stamp import read_stamp
from .statements import classify, shorten
from .target import Target, first_line, from_url, target_key


class Blocked(RuntimeError):
    """A BLOCK verdict: the target is refused; nothing was sent to it."""

    def __init__(self, target: Target, verdict: Verdict) -> None:
        self.target = target
        self.verdict = verdict
        super().__init__(
            f"safe-cleanup refused {target.masked_url}: BLOCK: {verdict.explain()} "
            "(no flag, marker or mode overrides a BLOCK)"
        )


class WriteRefused(RuntimeError):
    """A statement that writes to a BLOCK target, stopped before it was sent."""


class UnguardedStatement(RuntimeError):
    """A DELETE, TRUNCATE or DROP that bypassed the plugin (safe_cleanup_unguarded = error)."""


class UnguardedStatementWarning(UserWarning):
    """A DELETE, TRUNCATE or DROP that bypassed the plugin (safe_cleanup_unguarded = warn)."""


_INTERNAL = (os.sep + "sqlalchemy" + os.sep, os.path.dirname(__file__) + os.sep)


def _caller_level() -> int:
    """The stack level of the first frame outside SQLAlchemy and this package.

    So a warning points at the user's line that sent the statement.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and any(part in frame.f_code.co_filename for part in _INTERNAL):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def _dbapi_error(engine: AnyEngine) -> type[Exception]:
    """The driver's own error class (the COPY path talks to psycopg directly)."""
    dbapi = getattr(sync_engine_of(engine).dialect, "loaded_dbapi", None)
    error = getattr(dbapi, "Error", None)
    return error if isinstance(error, type) and issubclass(error, Exception) else SQLAlchemyError


class Guardian:
    """Verdicts computed once per target per session, and the watch on connections."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.environment = read_environment(settings.env_vars, self.environ)
        self.disposable: set[str] = set()
        self.verdicts: dict[str, tuple[Target, Verdict]] = {}
        self.on_verdict: Callable[[Target, Verdict], None] | None = None
        self.on_block: Callable[[Blocked], None] | None = None
        self.on_use: Callable[[Target], None] | None = None
        #: the nodeid of the test whose body runs now, None between tests
        self.current_test: str | None = None
        self._engines: WeakKeyDictionary[Engine, tuple[Target, Verdict]] = WeakKeyDictionary()
        self._refused: WeakSet[Engine] = WeakSet()
        self._watched: WeakSet[Engine] = WeakSet()
        self._reported: set[tuple[str, str]] = set()
        self._installed = False

    # -- pure parts ----------------------------------------------------------
    def target(self, url: object) -> Target:
        """A Target for a URL, marked disposable when a provider made it."""
        target = from_url(url, self.settings.allowed_hosts, self.environ)  # type: ignore[arg-type]
        return replace(target, disposable=True) if target.key in self.disposable else target

    def static_verdict(self, target: Target) -> Verdict:
        """Environment, host and name rules: everything known without connecting."""
        return evaluate(self.environment, target, None, self.settings)

    def mark_disposable(self, url: object) -> None:
        """A provider made this database in this run."""
        key = self.target(url).key
        self.disposable.add(key)
        self.verdicts.pop(key, None)

    # -- verdicts from a live connection --------------------------------------
    def verdict_for(self, conn: Connection) -> tuple[Target, Verdict]:
        """The cached verdict of the connection's target, reading its stamp the first time."""
        key = target_key(conn.engine.url)
        cached = self.verdicts.get(key)
        if cached is not None:
            return cached
        target = self.target(conn.engine.url)
        try:
            stamp = read_stamp(conn)
            verdict = evaluate(self.environment, target, stamp, self.settings)
        except SQLAlchemyError as exc:
            base = self.static_verdict(target)
            reason = Reason(
                Level.CONFIRM, "stamp", f"the stamp could not be read: {first_line(exc)}"
            )
            verdict = Verdict(max(base.level, Level.CONFIRM), (*base.reasons, reason))
        finally:
            if conn.in_transaction():
                conn.rollback()
        self.verdicts[key] = (target, verdict)
        if self.on_verdict is not None:
            self.on_verdict(target, verdict)
        return target, verdict

    def check_connection(self, conn: Connection) -> tuple[Target, Verdict]:
        """The verdict of an open connection's target (computed when it connected)."""
        return self._used(*self.verdict_for(conn))

    def check(self, engine: Engine) -> tuple[Target, Verdict]:
        """Connect once (the watch computes the verdict) and return it; BLOCK raises."""
        key = target_key(engine.url)
        if key not in self.verdicts:
            with engine.connect() as conn:
                if not self._installed:
                    self._on_connect(conn)
        return self._used(*self.verdicts[key])

    def _used(self, target: Target, verdict: Verdict) -> tuple[Target, Verdict]:
        """A target about to be used: the report hears of it; BLOCK raises."""
        if self.on_use is not None:
            self.on_use(target)
        if verdict.level is Level.BLOCK:
            raise Blocked(target, verdict)
        return target, verdict

    def watch(self, engine: Engine) -> None:
        """An engine the plugin handed out: its unguarded deletes are reported."""
        self._watched.add(engine)

    def _on_connect(self, conn: Connection) -> None:
        __tracebackhide__ = True
        target, verdict = self.verdict_for(conn)
        engine = conn.engine
        self._engines[engine] = (target, verdict)
        if verdict.level is Level.BLOCK and engine not in self._refused:
            # The engine's first connection errors (the test stops, the session stops);
            # anything later on this engine may read, never write.
            self._refused.add(engine)
            conn.close()
            blocked = Blocked(target, verdict)
            if self.on_block is not None:
                self.on_block(blocked)
            raise blocked

    def _before_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        __tracebackhide__ = True
        known = self._engines.get(conn.engine)
        blocked = known is not None and known[1].level is Level.BLOCK
        test = self.current_test
        watched = (
            test is not None
            and self.settings.unguarded != "ignore"
            and (self.settings.watch == "all" or conn.engine in self._watched)
        )
        if not blocked and not watched:
            return
        kind = classify(statement)
        if blocked and kind.writes and known is not None:
            target, verdict = known
            raise WriteRefused(
                f"safe-cleanup stopped {kind.keyword} on {target.masked_url} before it was sent"
                f"{f' (test {test})' if test else ''}: the target is read-only, BLOCK: "
                f"{verdict.explain()}: {shorten(statement)}"
            )
        if not (watched and kind.destructive) or test is None:
            return
        if conn.get_execution_options().get(executor.EXECUTOR_OPTION):
            return
        message = (
            f"{test}: {kind.keyword} sent outside safe_cleanup (no guard, count or backup): "
            f"{shorten(statement)}; register it with safe_cleanup.delete() instead"
        )
        if self.settings.unguarded == "error":
            raise UnguardedStatement(f"safe-cleanup: {message} (safe_cleanup_unguarded = error)")
        if (test, statement) not in self._reported:
            self._reported.add((test, statement))
            warnings.warn(UnguardedStatementWarning(message), stacklevel=_caller_level())

    def install(self) -> None:
        """Watch every engine in the process, made by the plugin or not."""
        if not self._installed:
            event.listen(Engine, "engine_connect", self._on_connect)
            event.listen(Engine, "before_cursor_execute", self._before_execute)
            self._installed = True

    def uninstall(self) -> None:
        """Stop watching (end of the pytest session)."""
        if self._installed:
            event.remove(Engine, "engine_connect", self._on_connect)
            event.remove(Engine, "before_cursor_execute", self._before_execute)
            self._installed = False


@dataclass(frozen=True)
class TestContext:
    """What the plugin knows of the test whose cleanup runs."""

    __test__ = False  # not a pytest test class

    nodeid: str
    failed: bool = False
    mode: str | None = None  # the marker's mode
    max_rows: int | None = None
    backup: str | None = None


def effective_mode(session_mode: str, marker_mode: str | None) -> str:
    """A marker may make cleanup safer than the session's mode, never stronger."""
    order = {"off": 0, "dry": 1, "apply": 2}
    if marker_mode is None:
        return session_mode
    return min(session_mode, marker_mode, key=order.__getitem__)


class Conductor:
    """Runs one cleanup's registrations through the five layers and records outcomes.

    The layers run on one sync Connection: an AsyncEngine's connection hands it over
    through ``run_sync``, so the async path is the same code, not a copy.
    """

    def __init__(
        self,
        settings: Settings,
        guardian: Guardian,
        report: Report,
        *,
        interactive: bool,
        prompt: Callable[[str], str] | None,
        store: BackupStore | None = None,
    ) -> None:
        self.settings = settings
        self.guardian = guardian
        self.report = report
        self.interactive = interactive
        self.prompt = prompt
        self.store = store
        self.intents = IntentBook()
        #: whole-database dumps made this session, per target
        self._dumps: dict[str, str] = {}
        self._hinted: set[tuple[str, str]] = set()
        #: foreign keys into planned tables, per target (blast radius)
        self._references = blast.References()

    def finish(
        self, entries: list[tuple[AnyEngine, list[Registration]]], ctx: TestContext
    ) -> list[str]:
        """Clean every engine's registrations; return the errors that fail the teardown."""
        mode = effective_mode(self.settings.mode, ctx.mode)
        if mode == "off":
            return []
        sync = [(engine, regs) for engine, regs in entries if isinstance(engine, Engine)]
        if len(sync) < len(entries):
            # Checked before any engine is cleaned: no database loses rows for a
            # teardown that cannot finish.
            wrong = RegistrationError(
                "an AsyncEngine's cleanup reached safe_cleanup: use async_safe_cleanup; "
                "nothing was deleted on any database of this test"
            )
            return self._record([o for e, _ in entries for o in self._failure(wrong, e, ctx)])
        outcomes: list[Outcome] = []
        for engine, registrations in sync:
            outcomes += self._on_engine(engine, registrations, ctx, mode)
        return self._record(outcomes)

    def _on_engine(
        self, engine: Engine, registrations: list[Registration], ctx: TestContext, mode: str
    ) -> list[Outcome]:
        try:
            with engine.connect() as conn:
                return self.run_on(conn, registrations, ctx, mode)
        except Exception as exc:
            return self._failure(exc, engine, ctx)

    async def finish_async(
        self, entries: list[tuple[AnyEngine, list[Registration]]], ctx: TestContext
    ) -> list[str]:
        """The same for async engines, on the running loop (sync engines run inline)."""
        mode = effective_mode(self.settings.mode, ctx.mode)
        if mode == "off":
            return []
        outcomes: list[Outcome] = []
        for engine, registrations in entries:
            if isinstance(engine, Engine):
                outcomes += self._on_engine(engine, registrations, ctx, mode)
                continue
            try:
                async with engine.connect() as aconn:
                    outcomes += await aconn.run_sync(self.run_on, registrations, ctx, mode)
            except Exception as exc:
                outcomes += self._failure(exc, engine, ctx)
        return self._record(outcomes)

    def _record(self, outcomes: list[Outcome]) -> list[str]:
        self.report.add(outcomes)
        errors = [
            f"safe-cleanup: {o.reason}"
            for o in outcomes
            if o.status in ("held", "refused", "failed") and o.reason
        ]
        return list(dict.fromkeys(errors))

    def _failure(self, exc: Exception, engine: AnyEngine, ctx: TestContext) -> list[Outcome]:
        if isinstance(exc, Blocked):
            return [Outcome(ctx.nodeid, exc.target.name, None, None, None, "refused", str(exc))]
        name = self.guardian.target(engine.url).name
        if isinstance(exc, RegistrationError | executor.ExecutionError | BackupError):
            reason = str(exc)
            if isinstance(exc, BackupError):
                reason = f"the backup could not be written, nothing was deleted: {exc}"
        elif isinstance(exc, SQLAlchemyError | _dbapi_error(engine)):
            reason = f"cleanup failed and was rolled back, nothing was deleted: {first_line(exc)}"
        else:
            reason = (
                f"cleanup failed and was rolled back, nothing was deleted: "
                f"{type(exc).__name__}: {first_line(exc)}"
            )
        return [Outcome(ctx.nodeid, name, None, None, None, "failed", reason)]

    def run_on(
        self, conn: Connection, registrations: list[Registration], ctx: TestContext, mode: str
    ) -> list[Outcome]:
        """Plan, verdict, intent and execution for one database, on one connection."""
        plan = build_plan(registrations)
        target, verdict = self.guardian.check_connection(conn)
        plan = blast.extend(conn, plan, self._references, target.key)
        self._hint(conn, target, plan)

        def outcomes(
            counts: list[executor.TableCount],
            status: str,
            reason: str = "",
            backup: str | None = None,
        ) -> list[Outcome]:
            return [
                Outcome(
                    ctx.nodeid,
                    target.name,
                    c.table,
                    c.counted,
                    c.deleted,
                    status,
                    reason or (c.reason if status in ("deleted", "dry") else ""),
                    backup,
                    c.updated,
                )
                for c in counts
            ]

        def counted() -> list[executor.TableCount]:
            # One statement needs no transaction: in autocommit the count is one
            # round-trip, with no BEGIN before it and no ROLLBACK after.
            if not conn.in_transaction():
                conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                return executor.count(conn, plan)
            finally:
                if conn.in_transaction():
                    conn.rollback()

        if self.settings.keep == "failed" and ctx.failed:
            return outcomes(
                counted(),
                "kept",
                "the test failed: its data is kept for inspection (safe_cleanup_keep = failed)",
            )
        if mode == "dry":
            reason = ""
            if verdict.level is Level.CONFIRM:
                reason = f"apply would need explicit intent: {verdict.explain()}"
            return outcomes(counted(), "dry", reason)

        confirms = frozenset.intersection(*(r.confirms for r in registrations))
        decision = self.intents.decide(
            target, verdict, interactive=self.interactive, confirms=confirms, prompt=self.prompt
        )
        if not decision.proceed:
            info = self.report.targets.get(target.key)
            if decision.status == "dry" and info is not None and not info.note:
                # declined at the prompt: the target's summary line says it stayed dry
                self.report.targets[target.key] = replace(info, note=decision.reason)
            return outcomes(counted(), decision.status, decision.reason)

        strategy = ctx.backup or self.settings.backup
        self._check_backup(strategy, conn)
        max_rows = ctx.max_rows if ctx.max_rows is not None else self.settings.max_rows
        before: executor.BackupHook | None = None
        capture: executor.CaptureHook | None = None
        if strategy == "rows" and self.store is not None:
            store = self.store

            def before(c: Connection, p: Plan, counts: list[executor.TableCount]) -> str | None:
                return str(store.write_rows(c, p, counts, nodeid=ctx.nodeid, target=target).path)

            def capture(c: Connection, p: Plan) -> executor.Capture:
                return store.begin(c.dialect.name, p, nodeid=ctx.nodeid, target=target)

        elif strategy == "pg_dump" and self.store is not None:
            folder = self.store

            def before(c: Connection, p: Plan, counts: list[executor.TableCount]) -> str | None:
                return self._dump_once(c, target, folder)

        done, location = executor.apply(
            conn,
            plan,
            verdict=verdict,
            max_rows=max_rows,
            backup=before,
            capture=capture,
            triggers=self.settings.triggers,
        )
        try:
            self._audit(ctx, target, verdict, done, location, strategy)
        except BackupError as exc:
            # After the commit: the rows are gone, so "nothing was deleted" would be false.
            saved = f"backed up to {location}" if location else "not backed up"
            reason = f"the rows were deleted and {saved}, but the audit log could not be written"
            return outcomes(done, "failed", f"{reason}: {exc}", location)
        return outcomes(done, "deleted", decision.reason, location)

    def _hint(self, conn: Connection, target: Target, plan: Plan) -> None:
        """Name unindexed foreign keys into the plan's tables, once per table a session."""
        fresh = [s.table for s in plan.steps if (target.key, s.name) not in self._hinted]
        if not fresh:
            return
        self._hinted.update((target.key, t.fullname) for t in fresh)
        try:
            hints = executor.unindexed_references(conn, fresh)
        except SQLAlchemyError:
            hints = []  # a hint never stops a cleanup
        finally:
            if conn.in_transaction():
                conn.rollback()
        for hint in hints:
            if hint not in self.report.hints:
                self.report.hints.append(hint)

    def _check_backup(self, strategy: str, conn: Connection) -> None:
        """Refuse a strategy that cannot run here, before anything is counted or deleted."""
        if strategy == "none":
            warning = "safe_cleanup_backup = none: deletions had no backup"
            if warning not in self.report.warnings:
                self.report.warnings.append(warning)
            return
        if self.store is None:
            raise executor.ExecutionError("no backup folder is configured: nothing was deleted")
        if strategy == "pg_dump" and conn.dialect.name != "postgresql":
            raise executor.ExecutionError(
                f"safe_cleanup_backup = pg_dump needs PostgreSQL, not {conn.dialect.name}: "
                "nothing was deleted; use rows"
            )

    def _dump_once(self, conn: Connection, target: Target, store: BackupStore) -> str:
        """The session's whole-database dump of this target, made before its first delete.

        Called by the executor after the count and the limit, only when rows will go.
        """
        if target.key not in self._dumps:
            self._dumps[target.key] = str(dump_database(conn.engine.url, store.ensure_folder()))
        return self._dumps[target.key]

    def _audit(
        self,
        ctx: TestContext,
        target: Target,
        verdict: Verdict,
        done: list[executor.TableCount],
        location: str | None,
        strategy: str,
    ) -> None:
        if self.store is None:
            return
        self.store.audit(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "run_id": self.report.run_id,
                "nodeid": ctx.nodeid,
                "target": target.masked_url,
                "verdict": verdict.level.name,
                "rows": {c.table: c.deleted for c in done},
                **(
                    {"updated": {c.table: c.updated for c in done if c.updated}}
                    if any(c.updated for c in done)
                    else {}
                ),
                "backup": location,
                "strategy": strategy,
            }
        )


def target_info(target: Target, verdict: Verdict, note: str = "") -> TargetInfo:
    """A target's line in the report."""
    return TargetInfo(
        target.name,
        target.masked_url,
        verdict.level.name,
        tuple(r.text for r in verdict.reasons),
        note,
    )
