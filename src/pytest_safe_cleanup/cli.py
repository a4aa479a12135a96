"""The ``safe-cleanup`` command: check and stamp a database, restore and list backups.

It reads the same ini keys as the plugin from the config file pytest would find, so a
verdict seen here is the verdict a test run gets. Exit codes are part of the contract:
``check`` exits 0/1/2 for ALLOW/CONFIRM/BLOCK, ``restore`` exits 2 on a BLOCK target and
1 when a CONFIRM target lacks ``--confirm``, and every error (usage errors included)
exits 3 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import os
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from .backup import Backup, BackupError, list_runs, read_backup, restore_backup
from .guard import Level, Verdict, evaluate, read_environment
from .settings import INI_HELP, LIST_INI, Settings, SettingsError, resolve
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
    stamp = with_connection(url, read_stamp)
    target, verdict = verdict_for(url, settings, os.environ, stamp)
    print(f"target:  {target.masked_url}")
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
        current = read_stamp(conn)
        if current == name:
            return current
        if current in blocked and name not in blocked:
            raise CliError(
                f"{target.masked_url} is stamped {current!r}, a blocked environment, and will "
                f"not be restamped {name!r}: the stamp can be removed only by a database "
                f"administrator by hand ({reset_hint(target)})"
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
    try:
        backup = read_backup(args.path)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    url = _parse(_restore_url(args, backup.restore_url, backup.url))
    _, settings = _settings(args)
    engine = _engine(url)  # one engine for the stamp and the restore
    try:
        return _restore(args, backup, url, settings, engine)
    finally:
        engine.dispose()


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
    for run in runs:
        when = run.modified.strftime("%Y-%m-%d %H:%M:%S UTC")
        dumps = f", {len(run.dumps)} pg_dump" if run.dumps else ""
        files, rows = _plural(run.files, "file"), _plural(run.rows, "row")
        print(f"run {run.run_id}  {when}  {files}{dumps}, {rows}")
        for name, n in run.tables.items():
            print(f"  {name:<32} {n:>8}")
        for path in run.damaged:
            print(f"  damaged: {path}")
    return 0


# --------------------------------------------------------------------------- parser


class ArgumentParser(argparse.ArgumentParser):
    """Exit 3 with one line on usage errors, since 2 means BLOCK for ``check``."""

    def error(self, message: str) -> NoReturn:
        """Report a usage error the way every other error is reported."""
        self.exit(EXIT_ERROR, f"{PROG}: error: {message} (see '{PROG} --help')\n")


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
        description="Check or stamp a database, restore or list backups (pytest-safe-cleanup).",
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
    restore.add_argument("path", metavar="PATH", type=Path, help="a .jsonl rows backup")
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
    backups.set_defaults(func=cmd_backups)
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command and return its exit code; errors are one line on stderr."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
