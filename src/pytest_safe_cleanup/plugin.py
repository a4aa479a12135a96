"""pytest glue: options, ini keys, the marker, fixtures and hooks.

Everything that touches SQLAlchemy, files or processes lives in the modules this
one calls; here we only translate between pytest and them.
"""

from __future__ import annotations

import fnmatch
import importlib.abc
import itertools
import os
import sys
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import intent
from .guard import Level, environment_refusal, read_environment
from .report import Report
from .settings import BACKUPS, INI_HELP, LIST_INI, MODES, Settings, SettingsError, resolve

if TYPE_CHECKING:
    # SQLAlchemy and the modules built on it load only when a database is in play: a
    # suite that never touches one pays for none of it (importing them costs ~0.3 s).
    from sqlalchemy.engine import Engine

    from .backup import BackupStore
    from .plan import AsyncSafeCleanup, RegistrationBook, SafeCleanup, TableResolver
    from .providers import DisposableDatabase
    from .runner import Blocked, Conductor, Guardian, TestContext
    from .target import Target

# Captured before pytest's capture replaces the standard streams.
_TTYS = (os.isatty(0), os.isatty(1))

MARKER_DOC = (
    "safe_cleanup(confirm=None, max_rows=None, mode=None, backup=None): "
    "confirm names the database(s) a non-interactive run may clean; max_rows caps one "
    "cleanup; mode='dry' makes this test's cleanup a dry run; backup picks the strategy."
)


def _marker_signature(
    *, confirm: Any = None, max_rows: Any = None, mode: Any = None, backup: Any = None
) -> dict[str, Any]:
    """The marker's keyword arguments; calling it rejects anything else."""
    return {"confirm": confirm, "max_rows": max_rows, "mode": mode, "backup": backup}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("safe-cleanup", "safe test-data cleanup")
    group.addoption(
        "--safe-cleanup",
        dest="safe_cleanup",
        choices=MODES,
        default=None,
        help="cleanup mode: dry (default: count, delete nothing), apply, off",
    )
    group.addoption(
        "--safe-cleanup-url",
        dest="safe_cleanup_url",
        default=None,
        help="database URL of the default safe_cleanup_engine",
    )
    group.addoption(
        "--safe-cleanup-report",
        dest="safe_cleanup_report",
        default=None,
        metavar="PATH",
        help="write a JSON report of every cleanup to PATH",
    )
    group.addoption(
        "--safe-cleanup-backup-dir",
        dest="safe_cleanup_backup_dir",
        default=None,
        metavar="DIR",
        help="folder for backups (default .safe-cleanup/backups)",
    )
    for key, text in INI_HELP.items():
        if key in LIST_INI:
            parser.addini(key, text, type="linelist", default=None)
        else:
            parser.addini(key, text, type="string", default=None)


def _backup_root(config: pytest.Config, settings: Settings) -> Path:
    """The backup folder, resolved as pytest users expect.

    A relative CLI path is from the invocation folder, an ini path from the rootdir,
    and the default is ``.safe-cleanup/backups`` under the rootdir.
    """
    if settings.backup_dir is None:
        return config.rootpath / ".safe-cleanup" / "backups"
    if settings.backup_dir.is_absolute():
        return settings.backup_dir
    if settings.source("backup_dir").startswith("--"):
        return config.invocation_params.dir / settings.backup_dir
    return config.rootpath / settings.backup_dir


class State:
    """Per-session objects, kept in the config's stash."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        self.is_worker = bool(worker)
        # One run id for the whole run: xdist workers take the controller's.
        workerinput = getattr(config, "workerinput", {})
        self.run_id = (
            settings.run_id
            or workerinput.get(RUN_ID_KEY)
            or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(3).hex()}"
        )
        self.worker = worker
        self.tags = itertools.count(1)
        self.report = Report(settings.mode, self.run_id, settings.source("mode"))
        self.interactive = intent.is_interactive(*_TTYS, os.environ, self.is_worker)
        self.resolvers: dict[int, TableResolver] = {}
        self.current_item: pytest.Item | None = None
        self.default_target: Target | None = None
        self._engine: Engine | None = None
        self.watching = False
        self.session: pytest.Session | None = None
        self.import_hook: SQLAlchemyImportHook | None = None

    def adopt_worker_input(self) -> None:
        """An xdist worker learns the controller's run id only after its early hooks ran."""
        run_id = getattr(self.config, "workerinput", {}).get(RUN_ID_KEY)
        if run_id and not self.settings.run_id and run_id != self.run_id:
            self.run_id = run_id
            self.report.run_id = run_id

    @cached_property
    def guardian(self) -> Guardian:
        """The verdict cache and engine watch (loads SQLAlchemy)."""
        from .runner import Guardian, target_info

        guardian = Guardian(self.settings)
        guardian.is_test_file = self.is_test_file
        guardian.on_verdict = lambda t, v: self.report.add_target(t.key, target_info(t, v))
        guardian.on_block = self._stop_session
        guardian.on_use = lambda t: self.report.use_target(t.key)
        return guardian

    @cached_property
    def store(self) -> BackupStore:
        """The backup folder of this run (created at the first backup)."""
        from .backup import BackupStore

        return BackupStore(
            _backup_root(self.config, self.settings),
            self.run_id,
            worker=self.worker or None,
            keep=self.settings.backup_keep,
        )

    @cached_property
    def conductor(self) -> Conductor:
        """Runs teardowns through the layers."""
        from .runner import Conductor

        return Conductor(
            self.settings,
            self.guardian,
            self.report,
            interactive=self.interactive,
            prompt=self.prompt,
            store=self.store,
        )

    def is_test_file(self, path: str) -> bool:
        """Test code: a test module (python_files), a conftest, or a file in a tests folder."""
        folder, name = os.path.split(path)
        if name == "conftest.py" or any(
            fnmatch.fnmatch(name, pattern) for pattern in self.config.getini("python_files")
        ):
            return True
        return bool(TEST_FOLDERS.intersection(Path(folder).parts))

    def ensure_watch(self) -> None:
        """Watch every SQLAlchemy engine from now on; called once a database is in play."""
        if self.watching:
            return
        self.watching = True
        if self.import_hook is not None:
            self.import_hook.remove()
        self.guardian.install()
        self.config.pluginmanager.register(DatabaseHooks(self), "safe_cleanup_database_hooks")

    def _stop_session(self, blocked: Blocked) -> None:
        if self.session is not None:
            self.session.shouldstop = str(blocked)

    @cached_property
    def tag_prefix(self) -> str:
        """The run's and the worker's part of every tag (hashlib loads on first use)."""
        import hashlib

        return f"{hashlib.sha1(self.run_id.encode()).hexdigest()[:6]}-{self.worker or 'm'}"

    def next_tag(self) -> str:
        """A token unique to one test in this run, across xdist workers."""
        return f"{self.tag_prefix}-{next(self.tags)}"

    def prompt(self, text: str) -> str:
        """Ask the person at the terminal, with pytest's capture suspended."""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(in_=True)
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
            return sys.stdin.readline()
        finally:
            if capman is not None:
                capman.resume_global_capture()

    def default_engine(self) -> Engine:
        """The engine of the configured URL, made once."""
        self.ensure_watch()
        if self._engine is None:
            if self.settings.url is None:
                raise RuntimeError("default_engine() needs a configured URL")
            self._engine = make_engine(self.settings.url)
        return self._engine

    @property
    def store_made(self) -> BackupStore | None:
        """The backup store, if this session has needed one yet."""
        return self.__dict__.get("store")

    def dispose(self) -> None:
        """Release the default engine, stop the backup writer and stop watching."""
        if self.store_made is not None:
            self.store_made.close()
        if self._engine is not None:
            self._engine.dispose()
        if self.watching:
            # The guard outlives the session: atexit handlers and threads still running
            # meet it (a later session in this process takes over from it).
            self.guardian.finish()
        if self.import_hook is not None:
            self.import_hook.remove()


TEST_FOLDERS = frozenset({"tests", "test", "testing"})


class SQLAlchemyImportHook(importlib.abc.MetaPathFinder):
    """Calls back once the ``sqlalchemy`` package has been imported, by anyone.

    It finds nothing itself: for ``sqlalchemy`` it asks the other finders for the real
    spec and wraps its loader, so the callback runs right after the package's own code.
    """

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def remove(self) -> None:
        """Stop looking (the watch is installed, or the session ends)."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        """The real spec of ``sqlalchemy`` with a loader that calls back; None otherwise."""
        if fullname != "sqlalchemy":
            return None
        self.remove()
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _CallbackLoader(spec.loader, self.callback)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self.loader = loader
        self.callback = callback

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class DatabaseHooks:
    """Per-test hooks that only matter once SQLAlchemy is loaded (registered then)."""

    def __init__(self, state: State) -> None:
        self.state = state

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        """Statements sent while this test's body runs are attributed to it."""
        guardian = self.state.guardian
        guardian.current_test = item.nodeid
        try:
            return (yield)
        finally:
            guardian.current_test = None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: Any
    ) -> Generator[None, Any, Any]:
        """The engine fixtures hand out watched engines, used alone or with safe_cleanup."""
        value = yield
        if fixturedef.argname in ("safe_cleanup_engine", "safe_cleanup_async_engine"):
            engine = getattr(value, "sync_engine", value)
            from sqlalchemy.engine import Engine

            if isinstance(engine, Engine):
                self.state.guardian.watch(engine)
        return value


RUN_ID_KEY = "safe_cleanup_run_id"
WORKER_OUTPUT_KEY = "safe_cleanup_report"


class XdistController:
    """Registered on the xdist controller only.

    It hands workers the run id and gathers their outcomes, so one summary and one
    JSON report cover the whole run.
    """

    def __init__(self, state: State) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        """Give the worker the controller's run id."""
        node.workerinput[RUN_ID_KEY] = self.state.run_id

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Merge a finished worker's report."""
        wire = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if wire:
            self.state.report.merge(wire)


state_key = pytest.StashKey[State]()
report_key = pytest.StashKey[dict[str, pytest.TestReport]]()
options_key = pytest.StashKey[tuple[frozenset[str], dict[str, Any]]]()


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """An engine for a URL, with a one-line error for a missing driver."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    from .target import TargetError, first_line

    try:
        return create_engine(url) if pooled else create_engine(url, poolclass=NullPool)
    except ModuleNotFoundError as exc:
        extra = "mysql" if "mysql" in url.split(":", 1)[0] else "postgres"
        raise TargetError(
            f"the database driver {exc.name!r} is not installed: "
            f"pip install 'pytest-safe-cleanup[{extra}]'"
        ) from None
    except (SQLAlchemyError, ValueError) as exc:
        raise TargetError(f"cannot use database URL: {first_line(exc)}") from None


def get_settings(config: pytest.Config) -> Settings:
    """The resolved settings of a pytest run (for conftest files that build engines)."""
    return config.stash[state_key].settings


def _state(config: pytest.Config) -> State:
    return config.stash[state_key]


def _ini(config: pytest.Config) -> dict[str, Any]:
    return {key: config.getini(key) for key in INI_HELP}


def _cli(config: pytest.Config) -> dict[str, Any]:
    """The plugin's command-line values; before pytest_configure only the known args exist."""
    namespace = getattr(config, "known_args_namespace", None) or config.option
    return {dest: getattr(namespace, dest, None) for dest in CLI_DESTS}


CLI_DESTS = ("safe_cleanup", "safe_cleanup_url", "safe_cleanup_report", "safe_cleanup_backup_dir")


def _start(config: pytest.Config) -> State:
    """Resolve settings, refuse a blocked environment, and start the watch.

    Runs before any conftest file or test module is imported (pytest_load_initial_conftests),
    so user code that connects at import time meets the guard like any other.
    """
    known = config.stash.get(state_key, None)
    if known is not None:
        return known
    try:
        settings = resolve(_cli(config), os.environ, _ini(config))
    except SettingsError as exc:
        raise pytest.UsageError(f"safe-cleanup: {exc}") from None
    refusal = environment_refusal(read_environment(settings.env_vars, os.environ), settings)
    if refusal:
        raise pytest.UsageError(f"safe-cleanup: {refusal}")
    state = State(config, settings)
    config.stash[state_key] = state
    if "sqlalchemy" in sys.modules:
        state.ensure_watch()
    else:
        # A suite that never imports SQLAlchemy pays nothing: the watch starts when
        # something first imports it (a conftest's module-level create_engine included).
        state.import_hook = SQLAlchemyImportHook(state.ensure_watch)
        sys.meta_path.insert(0, state.import_hook)
    if settings.url is not None:
        _check_start_target(state, settings.url)
    return state


def _refusal_in(exc: BaseException) -> str | None:
    """The plugin's refusal behind an error (a conftest that failed to import, say)."""
    from .runner import Blocked, WriteRefused

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Blocked | WriteRefused):
            return str(current)
        cause = getattr(current, "cause", None)
        current = (
            cause
            if isinstance(cause, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Generator[None, None, None]:
    """Start the guard before pytest imports the first conftest file.

    A conftest refused at import time (a module-level engine on a BLOCK database) ends the
    run with the refusal in one line, not a traceback through the conftest.
    """
    _start(early_config)
    try:
        return (yield)
    except Exception as exc:
        refusal = _refusal_in(exc) if "sqlalchemy" in sys.modules else None
        if refusal is None:
            raise
        raise pytest.UsageError(f"{refusal} (while loading conftest files)") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    state = _start(config)
    state.adopt_worker_input()
    if state.settings.keep == "failed":
        config.pluginmanager.register(FailureTracker(), "safe_cleanup_failures")
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(XdistController(state), "safe_cleanup_xdist")


def _check_start_target(state: State, url: str) -> None:
    """A target known at start: refuse a BLOCK before any test runs."""
    from sqlalchemy.exc import SQLAlchemyError

    from .runner import Blocked
    from .target import TargetError, first_line

    state.ensure_watch()
    where = state.settings.source("url")
    try:
        target = state.guardian.target(url)
    except TargetError as exc:
        raise pytest.UsageError(f"safe-cleanup: {where}: {exc}") from None
    state.default_target = target
    verdict = state.guardian.static_verdict(target)
    if verdict.level is Level.BLOCK:
        raise pytest.UsageError(
            f"safe-cleanup: refusing {target.masked_url} ({where}): BLOCK: {verdict.explain()}"
        )
    try:
        # A connection of its own, closed at once: this runs before the conftest files,
        # whose connect listeners (PRAGMA foreign_keys, search_path) the default engine's
        # pooled connections must not miss.
        probe = make_engine(url, pooled=False)
    except TargetError as exc:
        raise pytest.UsageError(f"safe-cleanup: {where}: {exc}") from None
    try:
        state.guardian.check(probe)
    except Blocked as blocked:
        raise pytest.UsageError(f"safe-cleanup: {blocked} ({where})") from None
    except SQLAlchemyError as exc:
        # Unreachable now: the stamp is read when a test first connects instead.
        state.report.warnings.append(
            f"{target.masked_url} could not be reached at start ({first_line(exc)}); "
            "its stamp is checked at first connection"
        )
    finally:
        probe.dispose()


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = _state(config)
    s = state.settings
    target = (
        state.default_target.masked_url
        if state.default_target
        else "the safe_cleanup_engine fixture (default: disposable_postgres)"
    )
    return [
        f"safe-cleanup: mode={s.mode} ({s.source('mode')}), target={target} "
        f"({s.source('url')}), run {state.run_id}"
    ]


def _validate_marker(item: pytest.Item) -> None:
    for marker in item.iter_markers("safe_cleanup"):
        if marker.args:
            raise pytest.UsageError(
                f"{item.nodeid}: safe_cleanup marker takes keyword arguments only: {MARKER_DOC}"
            )
        try:
            values = _marker_signature(**marker.kwargs)
        except TypeError as exc:
            raise pytest.UsageError(
                f"{item.nodeid}: invalid safe_cleanup marker: {exc}; accepted: {MARKER_DOC}"
            ) from None
        try:
            intent.confirm_names(values["confirm"])
        except intent.IntentError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        if values["mode"] is not None and values["mode"] not in MODES:
            raise pytest.UsageError(
                f"{item.nodeid}: safe_cleanup(mode={values['mode']!r}): "
                f"use one of {', '.join(MODES)}"
            )
        if values["backup"] is not None and values["backup"] not in BACKUPS:
            raise pytest.UsageError(
                f"{item.nodeid}: safe_cleanup(backup={values['backup']!r}): use one of "
                f"{', '.join(BACKUPS)}"
            )
        rows = values["max_rows"]
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise pytest.UsageError(
                f"{item.nodeid}: safe_cleanup(max_rows={rows!r}): give a whole number of rows"
            )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _validate_marker(item)


def _marker_options(node: pytest.Item | None) -> tuple[frozenset[str], dict[str, Any]]:
    """Confirm names from every level's marker; other options from the closest one.

    Read once per test and kept on the item: setup and teardown both need them.
    """
    if node is None:
        return frozenset(), {}
    cached = node.stash.get(options_key, None)
    if cached is not None:
        return cached
    confirms: set[str] = set()
    options: dict[str, Any] = {}
    for marker in node.iter_markers("safe_cleanup"):
        values = _marker_signature(**marker.kwargs)
        confirms |= intent.confirm_names(values["confirm"])
        for key in ("max_rows", "mode", "backup"):
            if values[key] is not None:
                options.setdefault(key, values[key])
    node.stash[options_key] = (frozenset(confirms), options)
    return node.stash[options_key]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = _state(item.config)
    state.current_item = item
    if not state.watching and "sqlalchemy" in sys.modules:
        state.ensure_watch()


def pytest_collection_finish(session: pytest.Session) -> None:
    state = _state(session.config)
    if not state.watching and "sqlalchemy" in sys.modules:
        state.ensure_watch()  # engines made at import time are watched before any test


class FailureTracker:
    """Keeps each test's reports (safe_cleanup_keep = failed needs to know it failed)."""

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Store the report of each phase on the item."""
        rep = yield
        item.stash.setdefault(report_key, {})[rep.when] = rep
        return rep


def _one_line(report: pytest.CollectReport | pytest.TestReport, excinfo: Any) -> None:
    """A refusal reads as one line, at the user's line, in every phase and under xdist."""
    if report.failed and excinfo is not None and "sqlalchemy" in sys.modules:
        refusal = _refusal_in(excinfo.value)
        if refusal is not None:
            where = ""
            for entry in reversed(excinfo.traceback):
                path = str(entry.path)
                if not any(part in path for part in LIBRARY_PARTS):
                    where = f"{Path(path).name}:{entry.lineno + 1}: "
                    break
            report.longrepr = where + refusal


LIBRARY_PARTS = (
    f"{os.sep}sqlalchemy{os.sep}",
    f"{os.sep}pytest_safe_cleanup{os.sep}",
    "-packages",
    os.path.dirname(os.__file__) + os.sep,  # the standard library (contextlib, asyncio)
)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.failed and "sqlalchemy" in sys.modules:
        # The collector's error is gone by now; its repr still names the exception.
        text = str(report.longrepr)
        for kind in ("Blocked: ", "WriteRefused: "):
            if f"pytest_safe_cleanup.watch.{kind}" in text:
                message = text.split(f"pytest_safe_cleanup.watch.{kind}", 1)[1]
                first = text.splitlines()[0]
                where = first.split(": in ", 1)[0] + ": " if ": in " in first else ""
                report.longrepr = where + message.splitlines()[0]
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _one_line(report, call.excinfo)
    return report


def pytest_sessionstart(session: pytest.Session) -> None:
    _state(session.config).session = session


def _guard_engine(state: State, engine: Engine) -> None:
    """Refuse a BLOCK target before the test touches it, and stop the session."""
    __tracebackhide__ = True
    from sqlalchemy.exc import SQLAlchemyError

    from .runner import Blocked
    from .target import first_line

    state.ensure_watch()
    state.guardian.watch(engine)
    # pytest.fail is called outside the except blocks: inside, pytest would print the
    # refusal twice ("During handling of the above exception, another exception occurred").
    message = None
    try:
        state.guardian.check(engine)
    except Blocked as blocked:
        message = str(blocked)
    except SQLAlchemyError as exc:
        message = (
            f"safe-cleanup: cannot connect to {state.guardian.target(engine.url).masked_url}: "
            f"{first_line(exc)}; check the URL and that the database is running"
        )
    if message is not None:
        pytest.fail(message, pytrace=False)


def _test_context(node: pytest.Item | None) -> TestContext:
    reports = node.stash.get(report_key, {}) if node is not None else {}
    from .runner import TestContext

    _, options = _marker_options(node)
    return TestContext(
        nodeid=node.nodeid if node is not None else "session",
        failed=any(r.failed for r in reports.values()),
        mode=options.get("mode"),
        max_rows=options.get("max_rows"),
        backup=options.get("backup"),
    )


def _finish(state: State, book: RegistrationBook, node: pytest.Item | None) -> None:
    __tracebackhide__ = True
    entries = book.drain()
    if _has_async_engine(entries):  # rows an AsyncSession wrote, tracked by track_sessions()
        errors = _run_async(state, entries, _test_context(node), None)
    else:
        errors = state.conductor.finish(entries, _test_context(node))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


def _has_async_engine(entries: list[tuple[Any, Any]]) -> bool:
    from .plan import is_async_engine

    return any(is_async_engine(engine) for engine, _ in entries)


def _finish_async(state: State, book: RegistrationBook, node: pytest.Item | None) -> None:
    """Run an async cleanup on the loop the test registered on.

    That loop holds the engine's pooled connections and is idle between a test and
    its fixtures' teardown; only when it is gone does a fresh loop with unpooled
    connections do the work.
    """
    __tracebackhide__ = True
    missed = _never_awaited(book)
    entries = book.drain()
    errors = _run_async(state, entries, _test_context(node), book.loop) if entries else []
    if missed or errors:
        pytest.fail("\n".join([*missed, *errors]), pytrace=False)


def _never_awaited(book: RegistrationBook) -> list[str]:
    """A registration coroutine never awaited registered nothing: say where, fail the test.

    What was awaited is still cleaned; the missed rows are named, never silently left.
    """
    return [
        f"safe-cleanup: async_safe_cleanup.delete() at {where} was never awaited, so it "
        "registered nothing: write `await async_safe_cleanup.delete(...)`"
        for where in book.never_awaited()
    ]


def _run_async(state: State, entries: list[Any], ctx: TestContext, loop: Any) -> list[str]:
    """The async teardown on ``loop`` where it can run, else on a fresh one."""
    if loop is not None and not loop.is_closed() and not loop.is_running():
        errors: list[str] = loop.run_until_complete(state.conductor.finish_async(entries, ctx))
    else:
        import asyncio

        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        from .plan import is_async_engine

        fresh = asyncio.new_event_loop()
        unpooled = [
            (create_async_engine(e.url, poolclass=NullPool) if is_async_engine(e) else e, regs)
            for e, regs in entries
        ]
        try:
            errors = fresh.run_until_complete(state.conductor.finish_async(unpooled, ctx))
            for e, _ in unpooled:
                if is_async_engine(e):
                    fresh.run_until_complete(e.dispose())
        finally:
            fresh.close()
    return errors


@pytest.fixture(scope="session")
def disposable_postgres(pytestconfig: pytest.Config) -> Iterator[DisposableDatabase]:
    """A throwaway PostgreSQL database for this session (see safe_cleanup_postgres)."""
    from .providers import ProviderUnavailable, start_disposable

    state = _state(pytestconfig)
    state.ensure_watch()
    try:
        database, provider, why = start_disposable(
            state.settings.postgres, os.environ, image=state.settings.postgres_image
        )
    except ProviderUnavailable as exc:
        message = f"safe-cleanup: no disposable PostgreSQL: {exc}"
        if os.environ.get("SAFE_CLEANUP_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{message} (SAFE_CLEANUP_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(message)
    marker = make_engine(database.url, pooled=False)
    try:
        state.guardian.mark_disposable(marker)
    finally:
        marker.dispose()
    state.report.notes.append(f"disposable_postgres: {database.detail} ({why})")
    try:
        yield database
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def safe_cleanup_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The default engine: the configured URL, else a disposable PostgreSQL."""
    from .target import TargetError

    state = _state(request.config)
    state.ensure_watch()
    if state.settings.url is not None:
        try:
            yield state.default_engine()
        except TargetError as exc:
            pytest.fail(f"safe-cleanup: {exc}", pytrace=False)
        return
    database: DisposableDatabase = request.getfixturevalue("disposable_postgres")
    try:
        engine = make_engine(database.url)
    except TargetError as exc:
        pytest.skip(f"safe-cleanup: {exc}")
    try:
        yield engine
    finally:
        engine.dispose()


def _make_cleanup(
    state: State, engine: Engine, book: RegistrationBook, node: pytest.Item | None
) -> SafeCleanup:
    if node is not None:
        confirms = _marker_options(node)[0]
        nodeid = node.nodeid

        def context() -> tuple[str, frozenset[str]]:
            return nodeid, confirms
    else:

        def context() -> tuple[str, frozenset[str]]:
            item = state.current_item
            if item is None:
                return "session", frozenset()
            return item.nodeid, _marker_options(item)[0]

    from .plan import SafeCleanup

    return SafeCleanup(engine, book=book, tag=state.next_tag(), context=context)


def _cleanup_fixture(request: pytest.FixtureRequest, engine: Engine) -> Iterator[SafeCleanup]:
    """The body of safe_cleanup and safe_cleanup_session: guard, hand out, clean."""
    __tracebackhide__ = True
    from .plan import RegistrationBook

    state = _state(request.config)
    _guard_engine(state, engine)
    book = RegistrationBook(state.resolvers, state.guardian.watch)
    node = request.node if isinstance(request.node, pytest.Item) else None
    cleanup = _make_cleanup(state, engine, book, node)
    _track_by_default(state, cleanup, node)
    yield cleanup
    _finish(state, book, node)


def _track_by_default(state: State, cleanup: SafeCleanup | AsyncSafeCleanup, node: Any) -> None:
    """Ini ``safe_cleanup_track = sessions``: each test's fixture tracks every ORM session.

    Function scope only: ``safe_cleanup_session`` tracks when asked, so rows that
    session-scoped fixtures make for the whole run are never claimed by default.
    """
    if node is not None and state.settings.track == "sessions":
        cleanup.track_sessions()


@pytest.fixture
def safe_cleanup(
    request: pytest.FixtureRequest, safe_cleanup_engine: Engine
) -> Iterator[SafeCleanup]:
    """Register this test's data for cleanup; it runs through the five layers at teardown."""
    yield from _cleanup_fixture(request, safe_cleanup_engine)


@pytest.fixture(scope="session")
def safe_cleanup_session(
    request: pytest.FixtureRequest, safe_cleanup_engine: Engine
) -> Iterator[SafeCleanup]:
    """The same API at session scope: the cleanup runs at session end."""
    yield from _cleanup_fixture(request, safe_cleanup_engine)


@pytest.fixture
def async_safe_cleanup(request: pytest.FixtureRequest) -> Iterator[AsyncSafeCleanup]:
    """The safe_cleanup API for AsyncEngine/AsyncSession: ``await async_safe_cleanup.delete()``.

    Bound to your ``safe_cleanup_async_engine`` fixture where one is defined, else use
    ``.on(async_engine)``. A plain fixture on purpose: it works under pytest-asyncio's
    strict and auto modes alike, and its teardown runs on the test's own loop.
    """
    from .plan import AsyncSafeCleanup, RegistrationBook

    state = _state(request.config)
    state.ensure_watch()
    try:
        engine: Any = request.getfixturevalue("safe_cleanup_async_engine")
    except pytest.FixtureLookupError:
        engine = None
    if engine is not None:
        _guard_async_engine(state, engine)
    book = RegistrationBook(state.resolvers, state.guardian.watch)
    node = request.node if isinstance(request.node, pytest.Item) else None
    nodeid, confirms = (node.nodeid, _marker_options(node)[0]) if node else ("session", frozenset())
    cleanup = AsyncSafeCleanup(
        engine, book=book, tag=state.next_tag(), context=lambda: (nodeid, confirms)
    )
    _track_by_default(state, cleanup, node)
    yield cleanup
    _finish_async(state, book, node)


def _guard_async_engine(state: State, engine: Any) -> None:
    """The sync engine behind it is what the watch and the guard see."""
    __tracebackhide__ = True
    from .plan import is_async_engine
    from .runner import Blocked

    if not is_async_engine(engine):
        pytest.fail(
            f"safe_cleanup_async_engine must return an AsyncEngine, not {type(engine).__name__}",
            pytrace=False,
        )
    state.guardian.watch(engine.sync_engine)
    # Its database is judged when it first connects (in the test's loop); what the URL
    # alone already says is refused here.
    target = state.guardian.target(engine.url)
    verdict = state.guardian.static_verdict(target)
    if verdict.level is Level.BLOCK:
        pytest.fail(str(Blocked(target, verdict)), pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(state_key, None)
    if state is None:
        return
    if state.store_made is not None:  # wait for the backup writer's last fsync
        for problem in state.store_made.flush():
            if problem not in state.report.warnings:
                state.report.warnings.append(problem)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # An xdist worker: the controller reports for the whole run.
        workeroutput[WORKER_OUTPUT_KEY] = state.report.to_wire()
        return
    if state.settings.report is not None:
        state.report.write_json(Path(state.settings.report))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        state.report.append_github_summary(Path(summary))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is None:
        return
    terminalreporter.section("safe cleanup")
    for line in state.report.terminal_lines(verbose=config.get_verbosity() > 0):
        terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is not None:
        state.dispose()
