"""The pipeline of one teardown: plan -> verdict -> intent -> executor -> outcomes.

``Conductor`` runs a test's registrations through the layers in order, with the
verdicts that ``watch.Guardian`` keeps for every database a connection reached. It
does not import pytest: the plugin hands it what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from . import blast, executor
from .backup import BackupError, BackupStore, dump_database
from .guard import Level, Verdict
from .intent import IntentBook, Policy
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
from .target import Target, first_line, reached_url
from .watch import Blocked, Guardian, WriteRefused

__all__ = ["Blocked", "Conductor", "Guardian", "TestContext", "WriteRefused"]


def _dbapi_error(engine: AnyEngine) -> type[Exception]:
    """The driver's own error class (the COPY path talks to psycopg directly)."""
    dbapi = getattr(sync_engine_of(engine).dialect, "loaded_dbapi", None)
    error = getattr(dbapi, "Error", None)
    return error if isinstance(error, type) and issubclass(error, Exception) else SQLAlchemyError


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
        policy: Policy | None = None,
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self.guardian = guardian
        self.report = report
        self.interactive = interactive
        self.prompt = prompt
        self.store = store
        #: how intent is asked (the plugin's default; Cleanup asks whatever the verdict)
        self.intents = IntentBook(policy=policy or Policy())
        #: told of the error behind each failed cleanup (a caller acts on its kind)
        self.on_failure = on_failure
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
        if self.on_failure is not None:
            self.on_failure(exc)
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
        # After the database's own cascades joined: a table in another database is judged there.
        self.guardian.check_schemas(
            conn, target, {(s.table.schema, s.table.name) for s in plan.steps}
        )
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
            target,
            verdict,
            interactive=self.interactive,
            confirms=confirms,
            prompt=self.prompt,
            preview=lambda: [(c.table, c.counted) for c in counted()],
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
                return store.begin(c.dialect.name, p, nodeid=ctx.nodeid, target=target, conn=c)

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
            url = reached_url(conn.engine.url, target)
            self._dumps[target.key] = str(dump_database(url, store.ensure_folder()))
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
