"""Every engine's connections: the database reached, its verdict, read-only BLOCK sessions.

A verdict belongs to the database a connection actually reached, never to the text
of a URL: connect arguments, query-string parameters, service files, ``PG*``
variables and ``creator=`` callables all decide where a driver connects, and only
the live connection knows the result. So at every new DBAPI connection of every
engine (a pool ``connect`` event, which ``engine.raw_connection()`` fires too) the
watch asks the connection where it is, reads the database's stamp in the same
round-trip, and keeps the verdict on the pooled connection's ``info``. A connection
to a BLOCK target is then made read-only by the database itself, so that raw
cursors, functions and procedures that write fail at the server; the statement
watch on top stops writes (and anything that would lift the read-only mode) before
they are sent, and judges statements that reach another database by that database.

Nothing here imports pytest: the plugin hands the Guardian what it needs.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool

from . import executor, statements
from .guard import Level, Reason, Verdict, evaluate, read_environment
from .settings import Settings
from .stamp import SETTING, STAMP_TABLE
from .statements import classify, shorten
from .target import (
    Target,
    classify_reached_host,
    first_line,
    from_url,
    reached_target,
)

INFO_KEY = "safe_cleanup"
"""Key of the verdict in a pooled connection's ``info`` (kept for the connection's life)."""
_IDENTIFIED = "safe_cleanup_identified"
_SELECTED_DB = "safe_cleanup_selected_db"


def _record_select_db(driver_conn: Any, info: dict[str, Any]) -> None:
    """Note every ``select_db()`` of a MySQL driver connection in the pooled connection's info.

    The driver switches database with a protocol command, not a statement, and does not
    record it anywhere the watch could read; so the method is wrapped on this one
    connection object (sync or async, as the driver's is).
    """
    original = getattr(driver_conn, "select_db", None)
    if original is None or getattr(original, "_safe_cleanup", False):
        return
    wrapper: Any
    if inspect.iscoroutinefunction(original):

        async def wrapper(db: Any) -> Any:
            result = await original(db)
            info[_SELECTED_DB] = db
            return result

    else:

        def wrapper(db: Any) -> Any:
            result = original(db)
            info[_SELECTED_DB] = db
            return result

    wrapper._safe_cleanup = True
    with contextlib.suppress(AttributeError, TypeError):
        driver_conn.select_db = wrapper


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


# -- where a live connection is ------------------------------------------------


@dataclass(frozen=True)
class Reached:
    """What a live connection says of itself: the database, where, as whom, its stamp."""

    backend: str
    driver: str
    database: str
    host: str | None = None  # a host name or address, a socket folder; None for SQLite
    hostaddr: str | None = None  # the address the client connected to, where known
    port: int | None = None
    user: str | None = None
    stamp: str | None = None
    problem: str | None = None  # why the identity or stamp could not be read


_BACKENDS = (
    ("psycopg", "postgresql", "psycopg"),
    ("psycopg2", "postgresql", "psycopg2"),
    ("asyncpg", "postgresql", "asyncpg"),
    ("pg8000", "postgresql", "pg8000"),
    ("pymysql", "mysql", "pymysql"),
    ("MySQLdb", "mysql", "mysqldb"),
    ("aiomysql", "mysql", "aiomysql"),
    ("asyncmy", "mysql", "asyncmy"),
    ("mysql", "mysql", "mysqlconnector"),
    ("mariadb", "mysql", "mariadbconnector"),
    ("sqlite3", "sqlite", "pysqlite"),
    ("aiosqlite", "sqlite", "aiosqlite"),
)


def _driver_connection(record: Any, dbapi_connection: Any) -> Any:
    """The driver's own connection object (asyncio drivers sit behind an adapter)."""
    return getattr(dbapi_connection, "driver_connection", None) or getattr(
        record, "driver_connection", dbapi_connection
    )


def backend_of(record: Any, dbapi_connection: Any) -> tuple[str, str]:
    """(backend, driver) of a pooled connection.

    From the engine's dialect where the pool knows it, else from the driver's module.
    """
    pool = getattr(record, "_ConnectionRecord__pool", None)
    dialect = getattr(pool, "_dialect", None)
    name = getattr(dialect, "name", None)
    if isinstance(name, str) and name != "default":
        return ("mysql" if name == "mariadb" else name), str(getattr(dialect, "driver", ""))
    module = type(_driver_connection(record, dbapi_connection)).__module__.split(".")[0]
    for prefix, backend, driver in _BACKENDS:
        if module == prefix:
            return backend, driver
    return module, module


def _hex(value: str) -> str:
    return value.encode().hex()


def _pg_stamp_sql(database_sql: str) -> str:
    return (
        "(SELECT substr(c, length('" + SETTING + "=') + 1) "
        "FROM pg_catalog.pg_db_role_setting s "
        "JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase, "
        "unnest(s.setconfig) AS c "
        f"WHERE d.datname = {database_sql} AND s.setrole = 0 "
        "AND c LIKE '" + SETTING + "=%' LIMIT 1)"
    )


_PG_IDENTITY = (
    "SELECT current_database(), current_user, inet_server_addr()::text, inet_server_port(), "
    "(SELECT setconfig FROM pg_catalog.pg_db_role_setting WHERE setrole = 0 AND setdatabase = "
    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))"
)
"""One round-trip on a new connection. The stamp comes from the catalog, never from the
session's own setting, which connect options (``-c``, ``PGOPTIONS``) or a role's setting
could override; the array is read here rather than in SQL (fewer catalog look-ups on a
backend whose caches are still cold)."""


def _stamp_in(setconfig: Any) -> str | None:
    """The stamp in a ``pg_db_role_setting.setconfig`` array (``name=value`` items)."""
    if isinstance(setconfig, str):  # a driver that hands arrays over as their text
        setconfig = setconfig.strip("{}").split(",")
    for item in setconfig or ():
        key, _, value = str(item).strip('"').partition("=")
        if key == SETTING:
            return _text(value)
    return None


def _fetch(dbapi_connection: Any, sql: str) -> tuple[Any, ...] | None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return tuple(row) if row is not None else None


def _end(dbapi_connection: Any) -> None:
    """Leave the connection idle, as SQLAlchemy expects it after its connect events."""
    with contextlib.suppress(Exception):  # a driver without transactions: nothing to end
        dbapi_connection.rollback()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode(errors="replace")
    text = str(value).strip()
    return text or None


def _pg_client_side(driver_conn: Any) -> tuple[str | None, str | None, int | None]:
    """Where the client connected: psycopg's ``info``, asyncpg's address, else nothing."""
    info = getattr(driver_conn, "info", None)
    if info is not None and hasattr(info, "dbname"):
        host = _text(getattr(info, "host", None))
        hostaddr = _text(getattr(info, "hostaddr", None))
        port = getattr(info, "port", None)
        return host, hostaddr, int(port) if port else None
    addr = getattr(driver_conn, "_addr", None)
    if isinstance(addr, tuple) and addr:
        return str(addr[0]), str(addr[0]), int(addr[1]) if len(addr) > 1 else None
    if isinstance(addr, str):  # a unix socket's path
        return addr, None, None
    return None, None, None


def _pg_identity(dbapi_connection: Any, driver_conn: Any, driver: str) -> Reached:
    # psycopg opens a transaction for a SELECT (BEGIN, SELECT, ROLLBACK: three
    # round-trips); in autocommit, which it switches locally while idle, it is one.
    switch = (
        driver in ("psycopg", "psycopg2")
        and getattr(driver_conn, "autocommit", None) is False
        and not inspect.iscoroutinefunction(getattr(type(driver_conn), "commit", None))
    )
    if switch:
        driver_conn.autocommit = True
    try:
        row = _fetch(dbapi_connection, _PG_IDENTITY)
    finally:
        if switch:
            driver_conn.autocommit = False
        else:
            _end(dbapi_connection)
    if row is None:
        raise LookupError("the identity query returned no row")
    database, user, server_addr, server_port, setconfig = row
    stamp = _stamp_in(setconfig)
    host, hostaddr, port = _pg_client_side(driver_conn)
    if host is None:
        # The driver did not say: the server's own view (NULL over a unix socket).
        host = _text(server_addr) or "/unix-socket"
        hostaddr = _text(server_addr)
        port = int(server_port) if server_port else None
    return Reached("postgresql", driver, str(database), host, hostaddr, port, _text(user), stamp)


def _stamp_rows(dbapi_connection: Any, sql: str) -> str | None:
    """Every row of a stamp table, joined.

    A table holding ``test`` and ``production`` is read as both, so the blocked word is
    seen whichever row comes first.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        values = [_text(r[0]) for r in cursor.fetchall()]
    finally:
        cursor.close()
    found = [v for v in values if v]
    return " ".join(found) if found else None


def _mysql_stamp(
    dbapi_connection: Any, schema: str | None, *, end: bool = True
) -> tuple[str | None, str | None]:
    """The stamp table's value in ``schema`` (the current database when None).

    ``end=False`` leaves the connection's transaction as it was (a statement of the
    user's is about to run in it).
    """
    qualified = STAMP_TABLE if schema is None else f"`{schema.replace('`', '``')}`.{STAMP_TABLE}"
    try:
        return _stamp_rows(dbapi_connection, f"SELECT environment FROM {qualified}"), None
    except Exception as exc:
        text = first_line(exc)
        if "1146" in text or "doesn't exist" in text:  # no stamp table: no stamp
            return None, None
        return None, text
    finally:
        if end:
            _end(dbapi_connection)


def _mysql_identity(dbapi_connection: Any, driver_conn: Any, driver: str) -> Reached:
    row = _fetch(dbapi_connection, "SELECT DATABASE(), CURRENT_USER(), @@port")
    _end(dbapi_connection)
    if row is None:
        raise LookupError("the identity query returned no row")
    database, user, server_port = row
    socket = _text(
        getattr(driver_conn, "unix_socket", None) or getattr(driver_conn, "_unix_socket", None)
    )
    host = _text(getattr(driver_conn, "host", None) or getattr(driver_conn, "_host", None))
    port = getattr(driver_conn, "port", None) or getattr(driver_conn, "_port", None)
    if socket and (host in (None, "localhost")):
        host = socket if socket.startswith("/") else f"/{socket}"
    stamp, problem = (None, None)
    if database is not None:
        stamp, problem = _mysql_stamp(dbapi_connection, None)
    return Reached(
        "mysql",
        driver,
        _text(database) or "",
        host,
        None,
        int(port or server_port or 0) or None,
        (_text(user) or "").rpartition("@")[0] or None,  # 'name@host' as the server matched it
        stamp,
        problem,
    )


def sqlite_file(name: str) -> str:
    """The real path SQLite opens for a file name or ``file:`` URI (relative to the cwd)."""
    if name.startswith("file:"):
        from urllib.parse import unquote

        name = unquote(name[5:].split("?", 1)[0].split("#", 1)[0])
        if name.startswith("//"):  # file://host/path: only an empty or local host is valid
            name = "/" + name[2:].partition("/")[2]
    return os.path.realpath(name)


def sqlite_stamp_of(path: str) -> tuple[str | None, str | None]:
    """The stamp of a SQLite file, read on a connection of our own, read-only."""
    import sqlite3
    from urllib.parse import quote

    if not path or not os.path.exists(path):
        return None, None
    try:
        own = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return None, str(exc)
    try:
        return _sqlite_stamp(own, "main")
    finally:
        own.close()


def _sqlite_stamp(dbapi_connection: Any, schema: str) -> tuple[str | None, str | None]:
    quoted = '"' + schema.replace('"', '""') + '"'
    try:
        found = _fetch(
            dbapi_connection,
            f"SELECT name FROM {quoted}.sqlite_master WHERE type = 'table' "
            f"AND name = '{STAMP_TABLE}'",
        )
        if not found:
            return None, None
        return _stamp_rows(
            dbapi_connection, f"SELECT environment FROM {quoted}.{STAMP_TABLE}"
        ), None
    except Exception as exc:
        return None, first_line(exc)


def _sqlite_identity(dbapi_connection: Any, driver: str) -> Reached:
    rows_cursor = dbapi_connection.cursor()
    try:
        rows_cursor.execute("PRAGMA database_list")
        rows = rows_cursor.fetchall()
    finally:
        rows_cursor.close()
    main = next((r for r in rows if r[1] == "main"), None)
    path = str(main[2]) if main is not None and main[2] else ""
    database = os.path.realpath(path) if path else ":memory:"
    stamp, problem = _sqlite_stamp(dbapi_connection, "main")
    return Reached("sqlite", driver, database, None, None, None, None, stamp, problem)


def read_identity(record: Any, dbapi_connection: Any) -> Reached:
    """Ask a new DBAPI connection where it is (one round-trip, the stamp included)."""
    backend, driver = backend_of(record, dbapi_connection)
    driver_conn = _driver_connection(record, dbapi_connection)
    try:
        if backend == "postgresql":
            return _pg_identity(dbapi_connection, driver_conn, driver)
        if backend == "mysql":
            return _mysql_identity(dbapi_connection, driver_conn, driver)
        if backend == "sqlite":
            return _sqlite_identity(dbapi_connection, driver)
    except Exception as exc:
        _end(dbapi_connection)
        return Reached(backend, driver, "", problem=f"could not be identified: {first_line(exc)}")
    return Reached(backend, driver, "", problem=f"{backend} connections cannot be identified")


_READ_ONLY = {
    "postgresql": ("SET SESSION default_transaction_read_only = on",),
    "mysql": ("SET SESSION TRANSACTION READ ONLY",),
    "sqlite": ("PRAGMA query_only = 1",),
}


_TRUE = frozenset({"1", "on", "true", "yes"})


def _sqlite_authorizer() -> Callable[[int, str | None, str | None, str | None, str | None], int]:
    """A sqlite3 authorizer that denies every write, ATTACH and lifting ``query_only``.

    Set on the driver's connection, it holds for raw cursors too: only code that calls
    ``set_authorizer`` itself on the driver's object removes it.
    """
    import sqlite3

    writes = {
        getattr(sqlite3, name)
        for name in dir(sqlite3)
        if name.startswith(("SQLITE_CREATE_", "SQLITE_DROP_"))
        or name
        in (
            "SQLITE_INSERT",
            "SQLITE_UPDATE",
            "SQLITE_DELETE",
            "SQLITE_ALTER_TABLE",
            "SQLITE_ATTACH",
            "SQLITE_DETACH",
            "SQLITE_REINDEX",
            "SQLITE_ANALYZE",
        )
    }
    lifting = {"query_only", "writable_schema", "journal_mode", "schema_version", "user_version"}

    def authorize(
        action: int, arg1: str | None, arg2: str | None, schema: str | None, source: str | None
    ) -> int:
        if action in writes and not (arg1 or "").startswith("sqlite_temp"):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in lifting and arg2:
            if (arg1 or "").lower() == "query_only" and arg2.strip("'\" ").lower() in _TRUE:
                return sqlite3.SQLITE_OK  # setting it again
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorize


def make_read_only(dbapi_connection: Any, backend: str, driver_conn: Any = None) -> None:
    """Put the session in the database's own read-only mode (BLOCK targets)."""
    cursor = dbapi_connection.cursor()
    try:
        for sql in _READ_ONLY.get(backend, ()):
            cursor.execute(sql)
    finally:
        cursor.close()
    with contextlib.suppress(Exception):
        dbapi_connection.commit()  # a SET inside a rolled-back transaction would be undone
    if backend == "sqlite":
        import sqlite3

        if isinstance(driver_conn, sqlite3.Connection):
            driver_conn.set_authorizer(_sqlite_authorizer())


def _driver_lifts_read_only(conn: Connection) -> bool:
    """A PostgreSQL driver told to open read-write transactions.

    psycopg's ``read_only = False`` and psycopg2's ``readonly = False`` (SQLAlchemy's
    ``postgresql_readonly=False`` execution option sets them) send ``BEGIN READ WRITE``,
    which lifts the session's read-only default without any statement the watch sees.
    """
    driver = conn.connection.driver_connection
    return getattr(driver, "read_only", None) is False or getattr(driver, "readonly", None) is False


_WRITES_DESPITE_READ_ONLY = re.compile(
    r"\b(lo_unlink|lo_put|lo_from_bytea|lo_creat|lo_create|lo_import|lo_truncate|lo_truncate64"
    r"|lowrite|lo_write|pg_terminate_backend|pg_cancel_backend|pg_reload_conf"
    r"|pg_rotate_logfile|pg_file_write|pg_file_unlink|pg_file_rename|dblink_exec|dblink"
    r"|dblink_send_query|pg_logical_emit_message|pg_replication_origin_\w+"
    r"|pg_create_\w*slot|pg_drop_replication_slot|pg_switch_wal|pg_promote)\s*\(",
    re.IGNORECASE,
)


def _writes_despite_read_only(statement: str) -> bool:
    """Functions a read-only PostgreSQL transaction still runs, that change things.

    Large objects (``lo_unlink``, ``lo_put``...), other sessions (``pg_terminate_backend``),
    the server (``pg_reload_conf``) and other databases (``dblink``): on a BLOCK
    connection their names anywhere in the text stop it.
    """
    return _WRITES_DESPITE_READ_ONLY.search(statement) is not None


_QUALIFIED = re.compile(
    r"(`(?:[^`]|``)+`|[A-Za-z_][\w$]*)\s*\.\s*(?:`(?:[^`]|``)+`|[A-Za-z_][\w$]*)"
)
_VIEW = re.compile(r"\bVIEW\b", re.IGNORECASE)


def _mysql_qualifiers(text: str) -> list[str]:
    """The database part of every ``db.name`` in a MySQL text (backquotes undone)."""
    found = []
    for match in _QUALIFIED.finditer(text):
        name = match.group(1)
        if name.startswith("`"):
            name = name[1:-1].replace("``", "`")
        found.append(name)
    return found


def _mysql_view_reaches(statement: str) -> list[str]:
    """Databases a MySQL ``CREATE|ALTER ... VIEW`` names: rows of them can change through it.

    Column references (``t.col``) read as database names too; a name that is no database
    holds no stamp and passes, so the cost is only a refusal where a name is blocked.
    """
    if _VIEW.search(statement) is None:
        return []
    return sorted(set(_mysql_qualifiers(statement)))


def _mysql_view_databases(conn: Connection, schema: str | None, table: str) -> list[str]:
    """The databases a MySQL view's stored definition names (none for a table)."""
    from sqlalchemy import text

    row = conn.execute(
        text(
            "SELECT VIEW_DEFINITION FROM information_schema.VIEWS "
            "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
        ),
        {"schema": schema, "table": table},
    ).first()
    return sorted(set(_mysql_qualifiers(str(row[0])))) if row and row[0] else []


# -- who sent a statement ----------------------------------------------------------

_LIBRARY_PARTS = tuple(
    {
        os.sep + "sqlalchemy" + os.sep,
        os.path.dirname(__file__) + os.sep,
        os.sep + "site-packages" + os.sep,
        os.sep + "dist-packages" + os.sep,
        os.path.dirname(os.__file__) + os.sep,
        os.sep + "_pytest" + os.sep,
        os.sep + "pluggy" + os.sep,
        "<frozen ",
    }
)


def _caller() -> tuple[str, int]:
    """(file, line) of the nearest frame outside SQLAlchemy, this package and libraries."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not any(part in name for part in _LIBRARY_PARTS) and not name.startswith("<"):
            return name, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return "", 0


# -- the Guardian --------------------------------------------------------------------


_ACTIVE: Guardian | None = None
"""The Guardian whose listeners are installed (one per process at a time)."""


class Guardian:
    """Verdicts per database reached, and the watch on every engine's connections."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.environment = read_environment(settings.env_vars, self.environ)
        #: keys of databases a provider of this plugin made in this run
        self.disposable: set[str] = set()
        #: the strictest verdict seen per database reached, for the report
        self.verdicts: dict[str, tuple[Target, Verdict]] = {}
        self.on_verdict: Callable[[Target, Verdict], None] | None = None
        self.on_block: Callable[[Blocked], None] | None = None
        self.on_use: Callable[[Target], None] | None = None
        #: says whether a file is test code (a test module, a conftest); None: all is
        self.is_test_file: Callable[[str], bool] | None = None
        #: the nodeid of the test whose body runs now, None between tests
        self.current_test: str | None = None
        #: per engine, the BLOCK databases its first connection was refused for (weak: an
        #: engine's id() is reused once it is gone, and a new engine is refused anew)
        self._refused: WeakKeyDictionary[Engine, set[str]] = WeakKeyDictionary()
        self._watched: WeakSet[Engine] = WeakSet()
        self._reported: set[tuple[str, str]] = set()
        self._installed = False

    # -- pure parts ----------------------------------------------------------------
    def target(self, url: object) -> Target:
        """A Target from a URL's text, before any connection (messages, start checks)."""
        target = from_url(url, self.settings.allowed_hosts, self.environ)  # type: ignore[arg-type]
        return replace(target, disposable=True) if target.key in self.disposable else target

    def static_verdict(self, target: Target) -> Verdict:
        """Environment, host and name rules: everything known without connecting."""
        return evaluate(self.environment, target, None, self.settings)

    def judge(self, reached: Reached) -> tuple[Target, Verdict]:
        """The verdict of a database reached; the report hears of each database once."""
        host_class, host_reason = classify_reached_host(
            reached.backend, reached.host, reached.hostaddr, self.settings.allowed_hosts
        )
        target = reached_target(reached, host_class, host_reason)
        if target.key in self.disposable:
            target = replace(target, disposable=True)
        verdict = evaluate(self.environment, target, reached.stamp, self.settings)
        if reached.problem is not None:
            reason = Reason(Level.CONFIRM, "identity", f"the database {reached.problem}")
            verdict = Verdict(max(verdict.level, Level.CONFIRM), (*verdict.reasons, reason))
        known = self.verdicts.get(target.key)
        if known is not None and known[1].level > verdict.level:
            return known  # a verdict never loosens within a session
        self.verdicts[target.key] = (target, verdict)
        if known is None and self.on_verdict is not None:
            self.on_verdict(target, verdict)
        return target, verdict

    def mark_disposable(self, engine: Engine) -> None:
        """A provider made the database this engine reaches, in this run."""
        raw = engine.raw_connection()
        try:
            known = raw.info.get(INFO_KEY)
            key = known[0].key if known else None
        finally:
            raw.close()
        if key is not None:
            self.disposable.add(key)
            self.verdicts.pop(key, None)

    # -- verdicts of live connections ---------------------------------------------
    def _of(self, conn: Connection) -> tuple[Target, Verdict]:
        known: tuple[Target, Verdict] | None = conn.connection.info.get(INFO_KEY)
        if known is None:
            # Connected before the watch was installed: identify it now.
            fairy = conn.connection
            known = self._identify(fairy, fairy.dbapi_connection)
        return known

    def check_connection(self, conn: Connection) -> tuple[Target, Verdict]:
        """The verdict of an open connection's database; BLOCK raises."""
        return self._used(*self._of(conn))

    def check(self, engine: Engine) -> tuple[Target, Verdict]:
        """Connect once and return the verdict of the database reached; BLOCK raises."""
        with engine.connect() as conn:
            return self.check_connection(conn)

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

    def _identify(self, record: Any, dbapi_connection: Any) -> tuple[Target, Verdict]:
        reached = read_identity(record, dbapi_connection)
        target, verdict = self.judge(reached)
        record.info[INFO_KEY] = (target, verdict)
        record.info[_IDENTIFIED] = dbapi_connection
        driver_conn = _driver_connection(record, dbapi_connection)
        if verdict.level is Level.BLOCK:
            make_read_only(dbapi_connection, reached.backend, driver_conn)
        elif reached.backend == "sqlite":
            self._judge_attachments(driver_conn, target)
        if reached.backend == "mysql":
            _record_select_db(driver_conn, record.info)
        return target, verdict

    def _judge_attachments(self, driver_conn: Any, target: Target) -> None:
        """SQLite: every ATTACH, raw cursors' and bound file names included, is judged.

        The sqlite3 authorizer sees the file name SQLite will open, whatever the text.
        """
        import sqlite3

        if not isinstance(driver_conn, sqlite3.Connection):
            return

        def authorize(
            action: int, arg1: str | None, arg2: str | None, schema: str | None, src: str | None
        ) -> int:
            if action != sqlite3.SQLITE_ATTACH or arg1 in (":memory:", ""):
                return sqlite3.SQLITE_OK
            if arg1 is None:  # a bound or computed file name: cannot be judged
                return sqlite3.SQLITE_DENY
            path = sqlite_file(arg1)
            stamp, problem = sqlite_stamp_of(path)
            reached = Reached("sqlite", target.driver, path, stamp=stamp, problem=problem)
            return (
                sqlite3.SQLITE_DENY
                if self.judge(reached)[1].level is Level.BLOCK
                else (sqlite3.SQLITE_OK)
            )

        driver_conn.set_authorizer(authorize)

    # -- events ----------------------------------------------------------------------
    def _on_pool_connect(self, dbapi_connection: Any, record: Any) -> None:
        # Also on first_connect, which fires before connect: a user's own first_connect
        # listener (registered on the engine, so after this class-level one) must not
        # reach a BLOCK database before it is read-only.
        if record.info.get(_IDENTIFIED) is not dbapi_connection:
            self._identify(record, dbapi_connection)

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        known = record.info.get(INFO_KEY)
        if known is not None and known[1].level is Level.BLOCK:
            # Whatever a raw cursor did with the last checkout, this one starts read-only.
            make_read_only(
                dbapi_connection, known[0].backend, _driver_connection(record, dbapi_connection)
            )

    def _on_engine_connect(self, conn: Connection) -> None:
        __tracebackhide__ = True
        target, verdict = self._of(conn)
        if verdict.level is not Level.BLOCK:
            return
        refused = self._refused.setdefault(conn.engine, set())
        if target.key in refused:
            return  # caught and connected again: read-only, never refused twice
        # The engine's first connection to a BLOCK database errors (the test stops,
        # the session stops); anything later on it may read, never write.
        refused.add(target.key)
        conn.close()
        blocked = Blocked(target, verdict)
        if self.on_block is not None:
            self.on_block(blocked)
        raise blocked

    def database_verdict(
        self, conn: Connection, target: Target, name: str | None, how: str = "statement"
    ) -> tuple[Target, Verdict] | None:
        """The verdict of another database on the same server, or SQLite file.

        Named by a statement or a plan; None when it is the connection's own database.
        """
        if name is None:
            reason = Reason(
                Level.BLOCK, "reach", f"{how}: it reaches a database its text does not name"
            )
            return target, Verdict(Level.BLOCK, (reason,))
        dbapi = conn.connection.dbapi_connection
        problem: str | None = None
        stamp: str | None = None
        database = name
        if target.backend == "postgresql":
            if name == target.database:
                return None
            try:
                row = _fetch(
                    dbapi,
                    "SELECT "
                    + _pg_stamp_sql(f"convert_from(decode('{_hex(name)}', 'hex'), 'UTF8')"),
                )
                stamp = _text(row[0]) if row else None
            except Exception as exc:
                problem = f"stamp could not be read: {first_line(exc)}"
        elif target.backend == "mysql":
            if name == target.database:
                return None
            stamp, problem = _mysql_stamp(dbapi, name, end=False)
        elif target.backend == "sqlite":
            if name in ("", ":memory:"):
                return None
            database = sqlite_file(name)
            if database == target.database:
                return None
            stamp, problem = sqlite_stamp_of(database)
        else:
            return None
        reached = Reached(
            target.backend,
            target.driver,
            database,
            target.host,
            target.hostaddr,
            target.port,
            None,
            stamp,
            f"named in a {how}: its {problem}" if problem else None,
        )
        return self.judge(reached)

    def check_schemas(
        self, conn: Connection, target: Target, tables: set[tuple[str | None, str]]
    ) -> None:
        """A plan's tables that live in another database: BLOCK there refuses.

        On MySQL a schema is a database, and a view may read (and so delete through) tables
        of other databases: its definition names them. On SQLite a schema is an attached
        file. On PostgreSQL a schema is part of the connection's own database.
        """
        names: set[str] = set()
        for schema, table in sorted(tables, key=str):
            if target.backend == "sqlite" and schema:
                names.add(self._sqlite_alias_file(conn, schema))
            elif target.backend == "mysql":
                if schema:
                    names.add(schema)
                names |= set(_mysql_view_databases(conn, schema, table))
        for name in sorted(names):
            if name == "":
                continue  # main, temp or an alias that is not attached
            named = self.database_verdict(conn, target, name, "cleanup plan")
            if named is not None and named[1].level is Level.BLOCK:
                raise Blocked(*named)

    @staticmethod
    def _sqlite_alias_file(conn: Connection, alias: str) -> str:
        """The file an attached schema name stands for ('' for main, temp or unknown)."""
        if alias.lower() in ("main", "temp"):
            return ""
        dbapi = conn.connection.dbapi_connection
        if dbapi is None:
            return ""
        rows = dbapi.cursor()
        try:
            rows.execute("PRAGMA database_list")
            files = {str(r[1]).lower(): str(r[2] or "") for r in rows.fetchall()}
        finally:
            rows.close()
        return files.get(alias.lower(), "")

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
        info = conn.connection.info
        known: tuple[Target, Verdict] | None = info.get(INFO_KEY)
        target, verdict = known if known is not None else self._of(conn)
        if target.backend == "mysql":
            target, verdict = self._current_mysql_database(conn, target, verdict)
        blocked = verdict.level is Level.BLOCK
        kind = classify(statement)
        test = self.current_test
        where = f" (test {test})" if test else ""
        verb = kind.keyword or "a statement"
        if kind.writes or blocked:  # a BLOCK connection checks every statement
            if statements.changes_stamp(statement):
                raise WriteRefused(
                    f"safe-cleanup stopped a change to a database's stamp, sent through "
                    f"{target.masked_url}, before it was sent{where}: only a database "
                    "administrator changes a "
                    f"stamp, outside pytest: {shorten(statement)}"
                )
            driver_lifts = blocked and _driver_lifts_read_only(conn)
            if blocked and (
                kind.writes
                or driver_lifts
                or statements.lifts_read_only(statement)
                or _writes_despite_read_only(statement)
            ):
                why = " (the driver was set to open read-write transactions)" * driver_lifts
                raise WriteRefused(
                    f"safe-cleanup stopped {verb} on {target.masked_url} before it was "
                    f"sent{where}: the target is read-only{why}, BLOCK: {verdict.explain()}: "
                    f"{shorten(statement)}"
                )
        if not blocked:
            for reach in statements.reaches(statement, target.backend):
                if reach.kind == "detach":
                    continue  # forgetting an attached file changes nothing in it
                if reach.name is None:
                    raise WriteRefused(
                        f"safe-cleanup stopped {verb} through {target.masked_url} before it was "
                        f"sent{where}: it reaches a database its text does not name "
                        f"({reach.kind}), so the guard cannot judge it: {shorten(statement)}"
                    )
                name = reach.name
                if target.backend == "sqlite" and reach.kind != "attach":
                    name = self._sqlite_alias_file(conn, name)  # db.table: an attached alias
                    if not name:
                        continue
                named = self.database_verdict(conn, target, name, reach.kind)
                if named is not None and named[1].level is Level.BLOCK:
                    raise WriteRefused(
                        f"safe-cleanup stopped {verb} through {target.masked_url} "
                        f"before it was sent{where}: it reaches {named[0].masked_url}, BLOCK: "
                        f"{named[1].explain()}: {shorten(statement)}"
                    )
                if named is not None and reach.kind == "use":
                    # The connection now works in the database it switched to.
                    info[INFO_KEY] = named
                    info[_SELECTED_DB] = named[0].database
        if not blocked and target.backend == "mysql" and kind.writes:
            for name in _mysql_view_reaches(statement):
                named = self.database_verdict(conn, target, name, "view")
                if named is not None and named[1].level is Level.BLOCK:
                    raise WriteRefused(
                        f"safe-cleanup stopped {verb} through {target.masked_url} before it was "
                        f"sent{where}: the view it makes reads {named[0].masked_url}, whose rows "
                        f"it could change, BLOCK: {named[1].explain()}: {shorten(statement)}"
                    )
        self._report_unguarded(conn, statement, kind, test)

    def _current_mysql_database(
        self, conn: Connection, target: Target, verdict: Verdict
    ) -> tuple[Target, Verdict]:
        """The database a MySQL connection works in now.

        A driver's ``select_db()`` switches it without any statement the watch sees;
        PyMySQL records the switch on its connection.
        """
        current = conn.connection.info.get(_SELECTED_DB)
        if isinstance(current, bytes):
            current = current.decode(errors="replace")
        if not current or current == target.database:
            return target, verdict
        named = self.database_verdict(conn, target, str(current), "select_db")
        if named is None:
            return target, verdict
        conn.connection.info[INFO_KEY] = named
        return named

    def _report_unguarded(
        self, conn: Connection, statement: str, kind: statements.Statement, test: str | None
    ) -> None:
        if not kind.destructive or test is None or self.settings.unguarded == "ignore":
            return
        if self.settings.watch != "all" and conn.engine not in self._watched:
            return
        if conn.get_execution_options().get(executor.EXECUTOR_OPTION):
            return
        filename, line = _caller()
        if not filename or (self.is_test_file is not None and not self.is_test_file(filename)):
            return  # the application under test deleting its own rows is its business
        message = (
            f"{test}: {kind.keyword} sent outside safe_cleanup (no guard, count or backup) "
            f"at {Path(filename).name}:{line}: {shorten(statement)}; register it with "
            "safe_cleanup.delete() instead"
        )
        if self.settings.unguarded == "error":
            raise UnguardedStatement(f"safe-cleanup: {message} (safe_cleanup_unguarded = error)")
        if (test, statement) not in self._reported:
            self._reported.add((test, statement))
            warnings.warn_explicit(
                UnguardedStatementWarning(message), UnguardedStatementWarning, filename, line
            )

    def install(self) -> None:
        """Watch every engine in the process, made by the plugin or not.

        One Guardian watches at a time: a new one (another session in the same process)
        takes over from the last, which otherwise stays installed until the process ends.
        """
        global _ACTIVE
        if _ACTIVE is not None and _ACTIVE is not self:
            _ACTIVE.uninstall()
        _ACTIVE = self
        if not self._installed:
            event.listen(Pool, "first_connect", self._on_pool_connect)
            event.listen(Pool, "connect", self._on_pool_connect)
            event.listen(Pool, "checkout", self._on_checkout)
            event.listen(Engine, "engine_connect", self._on_engine_connect)
            event.listen(Engine, "before_cursor_execute", self._before_execute)
            self._installed = True

    def finish(self) -> None:
        """The session is over: nothing more is reported, the guard stays.

        Code that runs after the session (an ``atexit`` handler, a thread still running)
        meets the same verdicts and read-only BLOCK connections until the process ends.
        """
        self.current_test = None
        self.on_verdict = self.on_block = self.on_use = None
        self.is_test_file = None

    def uninstall(self) -> None:
        """Stop watching (tests of the watch itself; another session's Guardian)."""
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        if self._installed:
            event.remove(Pool, "first_connect", self._on_pool_connect)
            event.remove(Pool, "connect", self._on_pool_connect)
            event.remove(Pool, "checkout", self._on_checkout)
            event.remove(Engine, "engine_connect", self._on_engine_connect)
            event.remove(Engine, "before_cursor_execute", self._before_execute)
            self._installed = False
