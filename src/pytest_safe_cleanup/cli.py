"""The ``safe-cleanup`` command: check, stamp, restore, list backups and delete rows.

It reads the same ini keys as the plugin from the config file pytest would find, so a
verdict seen here is the verdict a test run gets. Exit codes are part of the contract:
``check`` exits 0/1/2 for ALLOW/CONFIRM/BLOCK, ``restore`` exits 2 on a BLOCK target and
1 when a CONFIRM target lacks ``--confirm``, and every error (usage errors included)
exits 3 with one line on stderr, never a traceback. ``delete`` exits 0 done (or dry),
1 refused (intent, limit), 2 BLOCK, 3 failed and rolled back, 4 usage.
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import decimal
import importlib.util
import os
import sys
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any, NoReturn, TypeVar

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import Grouping

from .api import EXIT_BLOCKED, Cleanup, CleanupError, CleanupRefused
from .backup import Backup, BackupError, list_runs, read_backup, restore_backup
from .backup.format import JournalRecord, is_journal, read_journal, split_location
from .backup.journal import UNKNOWN, audited, same_server, statuses, xact_status
from .backup.journal import select as journal_select
from .guard import Level, Verdict, evaluate, read_environment
from .plan import RegistrationError
from .settings import BACKUPS, INI_HELP, LIST_INI, Settings, SettingsError, blocked_name, resolve
from .stamp import SETTING, STAMP_TABLE, StampError, read_stamp, validate, write_stamp
from .target import Target, TargetError, first_line, from_url, mask_text, mask_url, parse_url

PROG = "safe-cleanup"
EXIT_ERROR = 3
EXIT_CODES = {Level.ALLOW: 0, Level.CONFIRM: 1, Level.BLOCK: 2}
CONNECT_TIMEOUT = 5

# Config files in pytest's order of precedence, with the table that holds its options.
CONFIG_NAMES = (
    "pytest.toml",
    ".pytest.toml",
    "pytest.ini",
    ".pytest.ini",
    "pyproject.toml",
    "tox.ini",
    "setup.cfg",
)
_ALWAYS_PYTEST = {"pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini"}

# The sync driver to use for an async one: the stamp is the same whatever the driver.
_SYNC_DRIVERS = {
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
    "aiosqlite": "pysqlite",
}
_TIMEOUT_ARGS = {
    "psycopg": "connect_timeout",
    "psycopg2": "connect_timeout",
    "pymysql": "connect_timeout",
    "mysqldb": "connect_timeout",
    "pg8000": "timeout",
    "mysqlconnector": "connection_timeout",
}
# backend -> (extra that installs a driver, the driver it installs)
_EXTRAS = {
    "postgresql": ("postgres", "psycopg"),
    "mysql": ("mysql", "pymysql"),
    "mariadb": ("mysql", "pymysql"),
}

_T = TypeVar("_T")


class CliError(Exception):
    """An error the command reports as one line and exit code 3."""


@dataclass(frozen=True)
class Config:
    """The ``safe_cleanup_*`` keys of the config file pytest would use, and where it is."""

    path: Path | None = None
    ini: Mapping[str, Any] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()


# --------------------------------------------------------------------------- config


class _IniParser(configparser.RawConfigParser):
    """Keep key case, as pytest's ini parser does, so the CLI reads exactly its keys."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _read_ini(path: Path, section: str) -> dict[str, Any] | None:
    parser = _IniParser(
        strict=False,
        allow_no_value=True,
        inline_comment_prefixes=("#", ";"),
        default_section="\x00no default section",
    )
    parser.read_string(path.read_text(encoding="utf-8-sig"), source=str(path))
    return dict(parser.items(section)) if parser.has_section(section) else None


def _tool_pytest(document: Mapping[str, Any]) -> dict[str, Any] | None:
    tool = document.get("tool")
    table = tool.get("pytest") if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        return None
    native = {k: v for k, v in table.items() if k != "ini_options"}
    ini_options = table.get("ini_options")
    if native:
        return native
    return dict(ini_options) if isinstance(ini_options, dict) else None


def _pytest_table(document: Mapping[str, Any]) -> dict[str, Any] | None:
    table = document.get("pytest")
    return dict(table) if isinstance(table, dict) else None


def read_config_section(path: Path) -> dict[str, Any] | None:
    """Return a file's pytest options, or None when it has no pytest section.

    Files are read by name first and by suffix otherwise, like pytest does for ``-c``.
    """
    name, suffix = path.name, path.suffix
    try:
        if suffix == ".toml":
            with path.open("rb") as handle:
                document = tomllib.load(handle)
            if name == "pyproject.toml":
                return _tool_pytest(document)
            section = _pytest_table(document)
            if section is None and name not in _ALWAYS_PYTEST:
                section = _tool_pytest(document)
        elif name == "setup.cfg" or suffix == ".cfg":
            section = _read_ini(path, "tool:pytest")
        elif suffix == ".ini":
            section = _read_ini(path, "pytest")
        else:
            raise CliError(f"cannot read {path} as a pytest config: use a .ini, .cfg or .toml file")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, configparser.Error) as exc:
        raise CliError(f"cannot read {path}: {first_line(exc)}") from None
    if section is None and name in _ALWAYS_PYTEST:
        return {}
    return section


def _ini_value(key: str, value: Any, path: Path) -> Any:
    """Check one value's shape: list keys take a string or a list, others one value."""
    if key in LIST_INI:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
            return [str(v) for v in value]
        raise CliError(f"{path}: {key} must be a list of names or a space-separated string")
    if isinstance(value, list | dict):
        raise CliError(f"{path}: {key} must be a single value, not {type(value).__name__}")
    if isinstance(value, bool):
        return str(value).lower()
    return value


def config_from_section(path: Path, section: Mapping[str, Any]) -> Config:
    """Keep the ``safe_cleanup_*`` keys of a pytest section; note the ones not known."""
    ini: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in section.items():
        if not key.startswith("safe_cleanup_"):
            continue
        if key not in INI_HELP:
            unknown.append(key)
        elif value is not None:
            ini[key] = _ini_value(key, value, path)
    return Config(path, ini, tuple(unknown))


def find_config(start: Path) -> Config:
    """Find the config pytest would use from ``start`` upward: the first with a pytest section.

    A pyproject.toml without one only counts when nothing else is found, and then it
    holds no options, just as in pytest.
    """
    start = start.resolve()
    for base in (start, *start.parents):
        for name in CONFIG_NAMES:
            path = base / name
            if path.is_file():
                section = read_config_section(path)
                if section is not None:
                    return config_from_section(path, section)
    return Config()


def load_config(rootdir: Path | None = None, config_file: Path | None = None) -> Config:
    """Read ``config_file`` if given, else search from ``rootdir`` (or the cwd) upward."""
    if config_file is not None:
        if not config_file.is_file():
            raise CliError(f"config file {config_file} does not exist")
        return config_from_section(config_file, read_config_section(config_file) or {})
    if rootdir is not None and not rootdir.is_dir():
        raise CliError(f"rootdir {rootdir} is not a directory")
    return find_config(rootdir if rootdir is not None else Path.cwd())


def load_settings(config: Config, environ: Mapping[str, str]) -> Settings:
    """Resolve settings as the plugin does, with no command-line values."""
    try:
        return resolve(cli={}, env=environ, ini=config.ini)
    except SettingsError as exc:
        where = f" (in {config.path})" if config.path and "ini safe_cleanup_" in str(exc) else ""
        raise CliError(f"bad settings: {exc}{where}") from None


# --------------------------------------------------------------------------- guard


def verdict_for(
    url: str | URL, settings: Settings, environ: Mapping[str, str], stamp: str | None
) -> tuple[Target, Verdict]:
    """Evaluate the guard for ``url`` without connecting; the caller supplies the stamp."""
    target = from_url(url, settings.allowed_hosts, environ)
    environment = read_environment(settings.env_vars, environ)
    return target, evaluate(environment, target, stamp, settings)


# --------------------------------------------------------------------------- database


def _scrub(text: str, url: URL) -> str:
    """Hide the URL's password wherever a driver message might repeat it."""
    text = mask_text(text)
    password = url.password
    if password:
        text = text.replace(str(password), "***")
    return text


def _driver_url(url: URL) -> URL:
    """Pick a sync driver that is installed: the stamp does not depend on the driver."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if driver in _SYNC_DRIVERS:
        return url.set(drivername=f"{backend}+{_SYNC_DRIVERS[driver]}")
    if "+" not in url.drivername and backend in _EXTRAS:
        # SQLAlchemy's default drivers (psycopg2, MySQLdb) are not what the extras install.
        preferred = _EXTRAS[backend][1]
        default = url.get_dialect().driver
        module = {"psycopg2": "psycopg2", "mysqldb": "MySQLdb"}.get(default, default)
        if importlib.util.find_spec(module) is None and importlib.util.find_spec(preferred):
            return url.set(drivername=f"{backend}+{preferred}")
    return url


def _missing_driver(url: URL, exc: ImportError) -> CliError:
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend not in _EXTRAS:
        return CliError(f"the {driver} driver for {backend} is not installed ({exc})")
    extra, provided = _EXTRAS[backend]
    hint = f"install pytest-safe-cleanup[{extra}]"
    if driver != provided and "+" in url.drivername:
        hint += f" and use {backend}+{provided}://, or install the {driver} driver"
    return CliError(f"the {driver} driver for {backend} is not installed ({exc}); {hint}")


def _engine(url: URL) -> Engine:
    try:
        url = _driver_url(url)
        driver = url.get_driver_name()
    except NoSuchModuleError:
        raise CliError(f"unsupported database URL scheme {url.drivername!r}") from None
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        uri = str(url.query.get("uri", "")).lower() in ("true", "1")
        if database and database != ":memory:" and not uri and not Path(database).is_file():
            # sqlite3 would create an empty file and judge that instead of the typo'd one.
            raise CliError(f"no SQLite database file at {database}")
    connect_args: dict[str, Any] = {}
    timeout = _TIMEOUT_ARGS.get(driver)
    if timeout and timeout not in url.query:
        connect_args[timeout] = CONNECT_TIMEOUT
    try:
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except NoSuchModuleError:
        raise CliError(f"unsupported database URL scheme {url.drivername!r}") from None
    except ImportError as exc:
        raise _missing_driver(url, exc) from None


def _db_message(exc: SQLAlchemyError, url: URL) -> str:
    return _scrub(first_line(exc), url)


def with_connection(url: URL, work: Callable[[Connection], _T], engine: Engine | None = None) -> _T:
    """Run ``work`` on a fresh connection, turning database errors into one-line errors.

    Without ``engine`` one is made for ``url`` and disposed of afterwards; a given engine
    is the caller's to dispose of.
    """
    masked = mask_url(url)
    own = engine is None
    if engine is None:
        engine = _engine(url)
    try:
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise CliError(f"could not connect to {masked}: {_db_message(exc, url)}") from None
        with conn:
            try:
                return work(conn)
            except SQLAlchemyError as exc:
                raise CliError(f"database error on {masked}: {_db_message(exc, url)}") from None
    finally:
        if own:
            engine.dispose()


def reached_name(conn: Connection) -> str | None:
    """The name of the database the connection reached, as the guard names it."""
    backend = conn.dialect.name
    if backend == "postgresql":
        return str(conn.exec_driver_sql("SELECT current_database()").scalar_one())
    if backend in ("mysql", "mariadb"):
        current = conn.exec_driver_sql("SELECT DATABASE()").scalar()
        return str(current) if current else None
    if backend == "sqlite":
        for _, schema, path in conn.exec_driver_sql("PRAGMA database_list").all():
            if schema == "main":
                return PurePath(os.path.realpath(path)).name if path else "memory"
    return None


def reset_hint(target: Target) -> str:
    """Say how an administrator removes a stamp by hand, since this command never will."""
    if target.backend == "postgresql":
        name = target.database or target.name
        return f'on PostgreSQL: ALTER DATABASE "{name}" RESET {SETTING}'
    return f"drop the {STAMP_TABLE} table"


# --------------------------------------------------------------------------- commands


def _settings(args: argparse.Namespace) -> tuple[Config, Settings]:
    config = load_config(getattr(args, "rootdir", None), getattr(args, "config_file", None))
    for key in config.unknown:
        print(f"{PROG}: warning: unknown ini key {key} in {config.path}", file=sys.stderr)
    return config, load_settings(config, os.environ)


def _parse(url: str) -> URL:
    try:
        return parse_url(url)
    except TargetError as exc:
        raise CliError(str(exc)) from None


def cmd_check(args: argparse.Namespace) -> int:
    """Print the verdict and every reason; the exit code is the level."""
    config, settings = _settings(args)
    url = _parse(args.url)
    stamp, reached = with_connection(url, lambda conn: (read_stamp(conn), reached_name(conn)))
    target = from_url(url, settings.allowed_hosts, os.environ)
    named = target.name
    if reached and reached != named:
        # Query arguments (?dbname=, ?database=), service files and PG* variables can take
        # a connection elsewhere: the verdict is about the database the connection reached.
        target = replace(target, name=reached, database=reached)
    verdict = evaluate(read_environment(settings.env_vars, os.environ), target, stamp, settings)
    print(f"target:  {target.masked_url}")
    if target.name != named:
        print(f"reached: {target.name!r} (the URL names {named!r})")
    print(f"config:  {config.path or 'none found'}")
    print(f"stamp:   {stamp!r}" if stamp else "stamp:   none")
    print(f"verdict: {verdict.level.name}")
    for reason in verdict.reasons:
        print(f"  {reason.level.name:<8} {reason.rule:<12} {reason.text}")
    return EXIT_CODES[verdict.level]


def cmd_stamp(args: argparse.Namespace) -> int:
    """Write the stamp, refusing to lift a blocked one: that is an administrator's job."""
    try:
        name = validate(args.environment)
    except StampError as exc:
        raise CliError(str(exc)) from None
    _, settings = _settings(args)
    url = _parse(args.url)
    target = from_url(url, settings.allowed_hosts, os.environ)
    blocked = settings.blocked_environments

    def work(conn: Connection) -> str | None:
        # The stamp read and the stamp written are the connected database's own, so no
        # URL form can read one database and write another.
        current = read_stamp(conn)
        if current == name:
            return current
        held = blocked_name(current, blocked) if current else None
        # The built-in names are always in the list, so no config or option lowers them.
        if held is not None and blocked_name(name, blocked) is None:
            raise CliError(
                f"{target.masked_url} is stamped {current!r}, a blocked environment "
                f"({held!r}), and will not be restamped {name!r}: no option or config "
                "lowers a blocked stamp; only a database administrator removes it, by hand "
                f"({reset_hint(target)})"
            )
        write_stamp(conn, name)
        conn.commit()
        return current

    previous = with_connection(url, work)
    if previous == name:
        print(f"{target.masked_url} is already stamped {name!r}; nothing changed")
    else:
        was = repr(previous) if previous else "none"
        print(f"stamped {target.masked_url} as {name!r} (previous stamp: {was})")
    return 0


def _restore_url(args: argparse.Namespace, recorded: str | None, source: str) -> str:
    if args.url:
        return str(args.url)
    if recorded is None:
        raise CliError(
            f"the backup came from {source}, whose URL has a password that backups never "
            "store: give the target with --url URL"
        )
    return recorded


def cmd_restore(args: argparse.Namespace) -> int:
    """Put a rows backup back, after the guard's verdict on the target allows it."""
    journal = is_journal(args.path)
    if not journal and (args.test is not None or args.table is not None):
        raise CliError(f"--test and --table select records of a journal, not of {args.path}")
    try:
        if journal:
            # where the rows came from: any record whose first line can be read says it
            records = [r for r in read_journal(split_location(args.path)[0]) if r.header]
            if not records:
                raise BackupError(
                    f"journal {split_location(args.path)[0]} holds no readable record"
                )
            source = Backup(Path(args.path), records[0].header or {}, [], "")
        else:
            source = read_backup(args.path)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    url = _parse(_restore_url(args, source.restore_url, source.url))
    _, settings = _settings(args)
    engine = _engine(url)  # one engine for the stamp and the restore
    try:
        backup, notes = source, list[str]()
        if journal:
            backup, notes = _journal_selection(args, engine)
        for note in notes:
            print(note)
        return _restore(args, backup, url, settings, engine)
    finally:
        engine.dispose()


def _journal_selection(args: argparse.Namespace, engine: Engine) -> tuple[Backup, list[str]]:
    """The journal records ``args`` select; whether their deletes committed decides skips."""
    path = split_location(args.path)[0]
    audit_keys = audited(path.parent.parent)

    def status_of(records: list[JournalRecord]) -> dict[int, str]:
        xids = [
            r.xid
            for r in records
            if r.xid is not None and same_server(engine, str((r.header or {}).get("url", "")))
        ]
        try:
            answers = xact_status(engine, xids) if xids else {}
        except SQLAlchemyError:
            answers = {}
        return statuses(records, audit_keys, answers)

    try:
        chosen = journal_select(args.path, test=args.test, table=args.table, status_of=status_of)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    return chosen.backup, chosen.notes


def _restore(
    args: argparse.Namespace, backup: Backup, url: URL, settings: Settings, engine: Engine
) -> int:
    stamp = with_connection(url, read_stamp, engine)
    target, verdict = verdict_for(url, settings, os.environ, stamp)
    if verdict.level is Level.BLOCK:
        print(
            f"{PROG}: refused: restore into {target.masked_url} is blocked (BLOCK: "
            f"{verdict.explain()}); no flag overrides a BLOCK",
            file=sys.stderr,
        )
        return EXIT_CODES[Level.BLOCK]
    if verdict.level is Level.CONFIRM and not (target.name and args.confirm == target.name):
        given = f" (--confirm {args.confirm!r} names another database)" if args.confirm else ""
        # An empty name must not be confirmable by an empty --confirm.
        how = (
            f"add --confirm {target.name}"
            if target.name
            else "give a --url that names the database, then --confirm with that name"
        )
        print(
            f"{PROG}: restore into {target.masked_url} needs confirmation "
            f"({verdict.explain()}){given}: {how}",
            file=sys.stderr,
        )
        return EXIT_CODES[Level.CONFIRM]
    try:
        result = restore_backup(
            backup, engine, dry_run=args.dry_run, skip_existing=args.skip_existing
        )
    except BackupError as exc:
        raise CliError(_scrub(str(exc), url)) from None
    except SQLAlchemyError as exc:
        raise CliError(
            f"restore into {target.masked_url} failed and was rolled back, nothing was "
            f"restored: {_db_message(exc, url)}"
        ) from None
    verb = "would restore" if result.dry_run else "restored"
    print(f"{'dry run: ' if result.dry_run else ''}{args.path} -> {target.masked_url}")
    width = max((len(name) for name in result.restored), default=5)
    for name, n in result.restored.items():
        line = f"  {name:<{width}}  {verb} {n}"
        if result.skipped.get(name):
            line += f", skipped {result.skipped[name]} existing"
        if result.conflicts.get(name):
            line += f", {result.conflicts[name]} conflicting (need --skip-existing)"
        print(line)
    print(f"{verb} {result.total} rows" + (" (nothing changed)" if result.dry_run else ""))
    return 0


def _backup_dir(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    config, settings = _settings(args)
    # pytest's rootdir: --rootdir when given, else the config file's folder, else the cwd.
    rootdir: Path | None = getattr(args, "rootdir", None)
    if rootdir is not None:
        base = rootdir
    elif config.path is not None:
        base = config.path.parent
    else:
        base = Path.cwd()
    if settings.backup_dir is not None:
        return base / settings.backup_dir
    return base / ".safe-cleanup" / "backups"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cmd_backups(args: argparse.Namespace) -> int:
    """List runs, oldest first, with their tables and row counts."""
    folder = _backup_dir(args)
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{folder} is not a directory")
    runs = list_runs(folder)
    if not runs:
        print(f"no backups in {folder}")
        return 0
    print(f"backups in {folder}")
    checked = sum(len(run.records) for run in runs)
    bad = 0
    for run in runs:
        when = run.modified.strftime("%Y-%m-%d %H:%M:%S UTC")
        dumps = f", {len(run.dumps)} pg_dump" if run.dumps else ""
        files, rows = _plural(run.files, "file"), _plural(run.rows, "row")
        print(f"run {run.run_id}  {when}  {files}{dumps}, {rows}")
        for name, n in run.tables.items():
            print(f"  {name:<32} {n:>8}")
        status = _record_statuses(folder, run.records)
        for record in run.records:
            rows = _plural(sum(record.backup.counts.values()) if record.backup else 0, "row")
            check = "checksum ok" if record.backup is not None else "DAMAGED"
            shown = record.location if args.verify else f"{record.journal.name}#{record.n}"
            print(
                f"  {shown}  {record.nodeid or '?'}  {rows}  "
                f"delete {status.get(record.location, UNKNOWN)}"
                + (f"  {check}" if args.verify else "")
            )
        for path in run.damaged:
            print(f"  damaged: {path}")
            bad += 1
    if args.verify:
        print(
            f"verified {_plural(checked, 'record')}: " + (f"{bad} damaged" if bad else "all intact")
        )
        return 1 if bad else 0
    return 0


def _record_statuses(folder: Path, records: Sequence[JournalRecord]) -> dict[str, str]:
    """Whether each record's delete committed: PostgreSQL's answer, else the audit log's."""
    keys = audited(folder)
    by_url: dict[str, list[JournalRecord]] = {}
    for record in records:
        url = (record.header or {}).get("restore_url")
        if record.xid is not None and isinstance(url, str) and url.startswith("postgresql"):
            by_url.setdefault(url, []).append(record)
    answers: dict[str, str] = {}
    for url, group in by_url.items():
        try:
            engine = _engine(_parse(url))
        except CliError:
            continue
        try:
            found = xact_status(engine, [r.xid for r in group if r.xid])
        except SQLAlchemyError:
            found = {}
        finally:
            engine.dispose()
        answers.update({f"{url} {xid}": v for xid, v in found.items()})
    result: dict[str, str] = {}
    for record in records:
        url = str((record.header or {}).get("restore_url"))
        xacts = (
            {record.xid: answers[f"{url} {record.xid}"]}
            if f"{url} {record.xid}" in answers and record.xid
            else {}
        )
        result[record.location] = statuses([record], keys, xacts)[record.n]
    return result


# --------------------------------------------------------------------------- parser


class ArgumentParser(argparse.ArgumentParser):
    """Exit 3 with one line on usage errors, since 2 means BLOCK for ``check``."""

    #: ``delete`` keeps 3 for "failed and rolled back" and reports usage errors as 4
    usage_exit = EXIT_ERROR

    def error(self, message: str) -> NoReturn:
        """Report a usage error the way every other error is reported."""
        self.exit(self.usage_exit, f"{PROG}: error: {message} (see '{PROG} --help')\n")


def version() -> str:
    """Return the installed package version, or "unknown" when run from a source tree."""
    try:
        return metadata.version("pytest-safe-cleanup")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> ArgumentParser:
    """Build the parser; config options work before or after the sub-command."""
    config_options = ArgumentParser(add_help=False)
    config_options.add_argument(
        "--rootdir",
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="look for the pytest config from DIR upward instead of the current directory",
    )
    config_options.add_argument(
        "-c",
        "--config-file",
        dest="config_file",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read the safe_cleanup_* ini keys from FILE",
    )
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Check or stamp a database, restore or list backups, delete rows (pytest-safe-cleanup)."
        ),
        parents=[config_options],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        parents=[config_options],
        help="print the guard's verdict (exit 0 ALLOW, 1 CONFIRM, 2 BLOCK, 3 error)",
        description="Print the guard's verdict for URL: exit 0 ALLOW, 1 CONFIRM, 2 BLOCK, 3 error.",
    )
    check.add_argument("url", metavar="URL", help="database URL (SQLAlchemy form)")
    check.set_defaults(func=cmd_check)
    stamp = commands.add_parser(
        "stamp",
        parents=[config_options],
        help="record the database's own environment name in it",
        description="Record the database's environment; a blocked stamp is never lifted.",
    )
    stamp.add_argument("url", metavar="URL", help="database URL (SQLAlchemy form)")
    stamp.add_argument(
        "--environment", required=True, metavar="NAME", help="e.g. production, staging, test"
    )
    stamp.set_defaults(func=cmd_stamp)
    restore = commands.add_parser(
        "restore",
        parents=[config_options],
        help="put the rows of a backup back (exit 2 on a BLOCK target, 1 without --confirm)",
        description="Insert a rows backup parent-first in one transaction, guarded like cleanup.",
    )
    restore.add_argument(
        "path",
        metavar="PATH[#N]",
        type=Path,
        help="a journal (all its records, or record N), or an older .jsonl rows backup",
    )
    restore.add_argument("--test", metavar="NODEID", help="only the journal records of this test")
    restore.add_argument("--table", metavar="NAME", help="only this table's rows")
    restore.add_argument(
        "--url", metavar="URL", help="target database (default: the backup's, without password)"
    )
    restore.add_argument(
        "--dry-run", action="store_true", help="report what would be restored, change nothing"
    )
    restore.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep rows whose primary key exists and restore the rest (default: abort)",
    )
    restore.add_argument(
        "--confirm", metavar="NAME", help="the database name, where the guard asks for it"
    )
    restore.set_defaults(func=cmd_restore)
    backups = commands.add_parser(
        "backups",
        parents=[config_options],
        help="list backup runs with their tables and row counts",
        description="List backup runs (default folder: .safe-cleanup/backups next to the config).",
    )
    backups.add_argument("dir", metavar="DIR", nargs="?", type=Path, default=None)
    backups.add_argument(
        "--verify",
        action="store_true",
        help="re-read every journal record, check its checksum (exit 1 if any is damaged)",
    )
    backups.set_defaults(func=cmd_backups)
    add_delete_parser(commands, config_options)
    return parser


# --------------------------------------------------------------------------- delete

EXIT_USAGE = 4
DELETE_LABEL = "safe-cleanup delete"


class UsageError(CliError):
    """Bad input to ``delete``: one line, exit 4, nothing was changed."""


def _eq_pairs(items: Sequence[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--eq {item!r}: give COLUMN=VALUE")
        pairs[name.strip()] = value
    return pairs


_TRUE, _FALSE = ("true", "t", "yes", "y", "1", "on"), ("false", "f", "no", "n", "0", "off")


def _coerce(table: Any, name: str, raw: str) -> Any:
    """``raw`` as the column's Python type, so it is bound as that type (never spliced)."""
    if name not in table.c:
        columns = ", ".join(c.name for c in table.c)
        raise UsageError(
            f"--eq {name}: table {table.fullname!r} has no column {name!r} (columns: {columns})"
        )
    try:
        kind = table.c[name].type.python_type
    except NotImplementedError:
        return raw
    try:
        if kind is bool:
            word = raw.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(word)
            return word in _TRUE
        if kind in (int, float, decimal.Decimal, uuid.UUID):
            return kind(raw.strip())
        if kind in (dt.date, dt.datetime, dt.time):
            return kind.fromisoformat(raw.strip())
    except (ValueError, ArithmeticError):
        raise UsageError(
            f"--eq {name}={raw!r}: not a valid {kind.__name__} for column {table.fullname}.{name}"
        ) from None
    return raw


def _where_clause(where: str) -> Any:
    """The condition as literal SQL: every colon escaped, so no value can bind into it."""
    return text(where.replace(":", "\\:"))


def _check_where(engine: Engine, table: Any, where: str, clause: Any) -> None:
    """Run the condition once on every row, before the layers count anything.

    On PostgreSQL this count runs in a read-only transaction, so a condition that
    would write (``nextval()``, a function that deletes) is refused as bad input.
    """
    statement = select(func.count()).select_from(table).where(clause)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.execute(statement).all()
            conn.rollback()
    except SQLAlchemyError as exc:
        raise UsageError(
            f"--where {where!r} is not a condition on {table.fullname}: "
            f"{_db_message(exc, engine.url)}"
        ) from None


def _table_lines(rows: Sequence[tuple[str, int | None]], marks: Mapping[str, str]) -> list[str]:
    width = max([len(name) for name, _ in rows] + [5])
    lines = [
        f"  {name.ljust(width)}  {'-' if n is None else n:>8}{marks.get(name, '')}"
        for name, n in rows
    ]
    total = sum(n or 0 for _, n in rows)
    lines.append(f"  {'total'.ljust(width)}  {total:>8}")
    return lines


def _print_verdict(cleanup: Cleanup) -> None:
    target, verdict = cleanup.target, cleanup.verdict
    if target is None or verdict is None:
        return
    print(f"target:  {target.masked_url}")
    print(f"verdict: {verdict.level.name}")
    for reason in verdict.reasons:
        print(f"  {reason.level.name:<8} {reason.rule:<12} {reason.text}")


def _report_outcomes(cleanup: Cleanup | CleanupError, table: str, cascade: bool) -> None:
    """Each table's counted (dry) or deleted rows, the cascade's tables marked."""
    outcomes = [o for o in cleanup.outcomes if o.table is not None]
    if not outcomes:
        return
    marks = {o.table: "  (cascade)" for o in outcomes if cascade and o.table and o.table != table}
    for o in outcomes:
        if o.updated:
            marks[o.table or ""] = f"  ({o.updated} updated by the database)"
    if all(o.status == "deleted" for o in outcomes):
        print("deleted:")
        print("\n".join(_table_lines([(o.table or "", o.deleted) for o in outcomes], marks)))
        backups = sorted({o.backup for o in outcomes if o.backup})
        for path in backups:
            print(f"backup:  {path}")
            if path.endswith(".jsonl") or is_journal(path):
                print(f"restore: {PROG} restore {path}")
        return
    print("rows matched:")
    print("\n".join(_table_lines([(o.table or "", o.counted) for o in outcomes], marks)))


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete the rows of TABLE that match, through the five layers; dry by default."""
    try:
        return _delete(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _delete_setup(args: argparse.Namespace) -> tuple[Settings, Engine, Path]:
    if not args.where and not args.eq:
        raise UsageError(
            f"give --where SQL or --eq COLUMN=VALUE: delete never takes every row of {args.table}"
        )
    if args.max_rows is not None and args.max_rows < 0:
        raise UsageError(f"--max-rows {args.max_rows}: give a whole number of rows")
    try:
        _, settings = _settings(args)
        url = _parse(args.url)
        engine = _engine(url)
        folder = _backup_dir(args)
    except CliError as exc:
        raise UsageError(str(exc)) from None
    return settings, engine, folder


def _delete(args: argparse.Namespace) -> int:
    settings, engine, folder = _delete_setup(args)
    equals = _eq_pairs(args.eq)
    cleanup = Cleanup(
        engine,
        mode="apply" if args.apply else "dry",
        confirm=args.confirm,
        max_rows=args.max_rows,
        backup=args.backup or settings.backup,
        backup_dir=folder,
        report_path=args.report,
        label=DELETE_LABEL,
        settings=settings,
        confirm_hint=lambda target: f"add --confirm {target.name}",
    )
    masked = mask_url(engine.url)
    table_name = args.table
    try:
        with cleanup as c:
            try:
                table = c.table(args.table)
            except RegistrationError as exc:
                raise UsageError(str(exc)) from None
            table_name = table.fullname
            values = {name: _coerce(table, name, raw) for name, raw in equals.items()}
            where = []
            if args.where:
                where.append(Grouping(_where_clause(args.where)))
                _check_where(engine, table, args.where, where[0])
            try:
                c.delete(table, *where, cascade=args.cascade, **values)
            except RegistrationError as exc:
                raise UsageError(str(exc)) from None
            _print_verdict(c)  # bad input above is one line; the layers run on leaving
    except CleanupError as exc:
        if exc.exit_code != EXIT_BLOCKED:
            _report_outcomes(exc, table_name, args.cascade)
        print(
            f"{PROG}: {'refused' if isinstance(exc, CleanupRefused) else 'failed'}: {exc}",
            file=sys.stderr,
        )
        return exc.exit_code
    except SQLAlchemyError as exc:
        raise CliError(f"could not use {masked}: {_db_message(exc, engine.url)}") from None
    finally:
        engine.dispose()
    _report_outcomes(c, table_name, args.cascade)
    if c.mode == "dry":
        name = c.target.name if c.target else "NAME"
        print(f"dry run: nothing was deleted; add --apply --confirm {name} to delete these rows")
    return 0


def add_delete_parser(commands: Any, config_options: ArgumentParser) -> None:
    """The ``delete`` sub-command: its usage errors exit 4."""
    delete = commands.add_parser(
        "delete",
        parents=[config_options],
        help="delete rows of a table through the five layers (dry unless --apply)",
        description=(
            "Delete the rows of TABLE that match --where and --eq, through the guard, "
            "intent, backup and counts. Dry by default. Exit 0 done or dry, 1 refused "
            "(confirmation, --max-rows), 2 BLOCK, 3 failed and rolled back, 4 usage."
        ),
    )
    delete.usage_exit = EXIT_USAGE
    delete.add_argument("url", metavar="URL", help="database URL (SQLAlchemy form)")
    delete.add_argument("table", metavar="TABLE", help="table name (schema.table allowed)")
    delete.add_argument(
        "--where", metavar="SQL", help="one SQL condition on TABLE (literal SQL, no values bound)"
    )
    delete.add_argument(
        "--eq",
        metavar="COLUMN=VALUE",
        action="append",
        default=[],
        help="COLUMN equals VALUE, bound as the column's type (repeatable, AND-ed)",
    )
    delete.add_argument(
        "--cascade",
        action="store_true",
        help="also delete the rows that reference these through foreign keys",
    )
    delete.add_argument("--apply", action="store_true", help="delete (default: dry run)")
    delete.add_argument(
        "--confirm", metavar="NAME", help="the database name (required for --apply off a terminal)"
    )
    delete.add_argument("--max-rows", type=int, metavar="N", help="most rows to delete")
    delete.add_argument("--backup", choices=BACKUPS, help="backup strategy (default rows)")
    delete.add_argument(
        "--backup-dir",
        dest="dir",
        type=Path,
        metavar="DIR",
        help="backup folder (default .safe-cleanup/backups next to the pytest config)",
    )
    delete.add_argument("--report", type=Path, metavar="PATH", help="write a JSON report")
    delete.set_defaults(func=cmd_delete, parser=delete)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command and return its exit code; errors are one line on stderr."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the sub-command's parser, with its exit code
            usage: ArgumentParser = getattr(args, "parser", parser)
            usage.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Exception as exc:  # the contract is one line, never a traceback
        return _fail(f"unexpected {type(exc).__name__}: {mask_text(first_line(exc))}")


if __name__ == "__main__":
    raise SystemExit(main())
