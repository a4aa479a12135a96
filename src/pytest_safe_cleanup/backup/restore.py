"""Put a rows backup back: parent tables first, in one transaction, or not at all.

Everything that can refuse is checked before the first insert: the file's checksum,
that every table and column of the backup exists in the target (a backup restored
into another schema stops here), and which rows already exist. A row whose primary
key is already there is a conflict that aborts the whole restore unless
``skip_existing`` says to keep the row in the database and skip the backup's copy.
Rows a foreign key action changed (``SET NULL``/``SET DEFAULT``) get their old values
back once the rows they reference are in again.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    MetaData,
    Table,
    TableClause,
    and_,
    bindparam,
    column,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.sql.elements import ColumnClause

from ..executor import ROW_TEXT, SERVER_TEXT
from ..target import mask_url
from .format import Backup, BackupError, BackupTable, read_backup

CHUNK = 500
#: the settings apply captured rows under, for reading them back (SET LOCAL)
_FIXED_INPUT = text(
    "SELECT set_config('DateStyle', 'ISO, YMD', true), "
    "set_config('IntervalStyle', 'postgres', true), set_config('lc_monetary', 'C', true)"
)


class RestoreConflict(BackupError):
    """Rows of the backup already exist in the target; nothing was restored."""


@dataclass(frozen=True)
class RestoreResult:
    """Rows restored (or, in a dry run, that would be) and skipped, per table."""

    path: Path
    restored: dict[str, int]
    skipped: dict[str, int]
    conflicts: dict[str, int]  # existing rows found in a dry run without skip_existing
    dry_run: bool

    @property
    def total(self) -> int:
        """Rows restored, or that a dry run would restore."""
        return sum(self.restored.values())


@dataclass
class _Prepared:
    backup: BackupTable
    clause: TableClause
    columns: list[str]  # backup columns that are inserted (generated ones are not)
    key: list[int]  # positions of the primary key in the backup's columns
    rows: list[tuple[Any, ...]]
    table: Table


def _bind_type(col: Any, typed: bool) -> Any:
    if not typed:
        return None  # hand the driver back exactly what it gave
    if isinstance(col.type, JSON):
        json_type = copy.copy(col.type)
        json_type.none_as_null = True  # SQL NULL stays NULL, not JSON 'null'
        return json_type
    return col.type


def _self_ordered(table: Table, bt: BackupTable) -> list[tuple[Any, ...]]:
    """Rows ordered so that a row a self-reference points to is inserted before it."""
    links = []
    for fk in table.foreign_keys:
        if fk.column.table is table and fk.parent.name in bt.columns:
            links.append((bt.columns.index(fk.parent.name), bt.columns.index(fk.column.name)))
    if not links:
        return list(bt.rows)
    pending = list(bt.rows)
    ordered: list[tuple[Any, ...]] = []
    placed: set[tuple[int, Any]] = set()
    present = {(r, row[r]) for _, r in links for row in pending}
    while pending:
        ready = [
            row
            for row in pending
            if all(
                row[c] is None
                or row[c] == row[r]
                or (r, row[c]) in placed
                or (r, row[c]) not in present
                for c, r in links
            )
        ]
        if not ready:  # a cycle: insert as is, the database reports what fails
            ready = pending
        ids = {id(row) for row in ready}
        pending = [row for row in pending if id(row) not in ids]
        ordered.extend(ready)
        placed.update((r, row[r]) for _, r in links for row in ready)
    return ordered


def _prepare(conn: Connection, bt: BackupTable, typed: bool) -> _Prepared:
    masked = mask_url(conn.engine.url)
    try:
        table = Table(bt.table, MetaData(), schema=bt.schema, autoload_with=conn)
    except NoSuchTableError:
        raise BackupError(
            f"table {bt.name} of the backup does not exist in {masked}: the backup belongs to "
            "another schema or database; nothing was restored"
        ) from None
    missing = [c for c in bt.columns if c not in table.c]
    if missing:
        raise BackupError(
            f"table {bt.name} in {masked} has no column {', '.join(missing)} that the backup "
            "holds: the backup belongs to another schema; nothing was restored"
        )
    if bt.encoding == ROW_TEXT and [c.name for c in table.c] != list(bt.columns):
        raise BackupError(
            f"table {bt.name} in {masked} has the columns ({', '.join(c.name for c in table.c)}) "
            f"and the backup's rows have ({', '.join(bt.columns)}): the table changed since "
            "the backup; nothing was restored"
        )
    generated = {c.name for c in table.c if c.computed is not None}
    columns = [c for c in bt.columns if c not in generated]
    binds: list[ColumnClause[Any]] = [column(c, _bind_type(table.c[c], typed)) for c in columns]
    clause = table_clause(table.name, *binds, schema=table.schema)
    key = [bt.columns.index(c.name) for c in table.primary_key.columns]
    rows = list(bt.rows) if bt.encoding in (SERVER_TEXT, ROW_TEXT) else _self_ordered(table, bt)
    return _Prepared(bt, clause, columns, key, rows, table)


class _ServerRows:
    """Rows as PostgreSQL printed them, read back by the server: every value exactly.

    They go into a temporary table of the target's column types first, so conflicts
    are found by the server and the real insert is one statement. Whole-row texts
    (ROW_TEXT) are cast to the table's row type on any driver; per-value texts of older
    backups go through psycopg's COPY.
    """

    _names = itertools.count(1)

    def __init__(self, conn: Connection, prep: _Prepared) -> None:
        if prep.backup.encoding == SERVER_TEXT and conn.dialect.driver != "psycopg":
            raise BackupError(
                f"this backup of {prep.backup.name} holds PostgreSQL's own text: restore it "
                "through psycopg (a postgresql+psycopg:// URL); nothing was restored"
            )
        preparer = conn.dialect.identifier_preparer
        self.conn = conn
        self.table = preparer.format_table(prep.table)
        self.stage = preparer.quote(f"sc_restore_{next(self._names)}")
        every = ", ".join(preparer.quote(c) for c in prep.backup.columns)
        self.columns = ", ".join(preparer.quote(c) for c in prep.columns)
        self.picked = ", ".join(f"r.{preparer.quote(c)}" for c in prep.columns)
        # a row exists by its primary key; without one, by every column it inserts
        keys = [prep.backup.columns[i] for i in prep.key] or prep.columns
        self.exists = (
            f"EXISTS (SELECT 1 FROM {self.table} AS t WHERE "
            + " AND ".join(_same(preparer.quote(k), bool(prep.key)) for k in keys)
            + ")"
        )
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {self.stage} ON COMMIT DROP AS "
            f"SELECT {every} FROM {self.table} WITH NO DATA"
        )
        if prep.backup.encoding == ROW_TEXT:
            fill = text(
                f"INSERT INTO {self.stage} SELECT (CAST(x AS {self.table})).* "
                "FROM unnest(CAST(:rows AS text[])) AS x"
            )
            for chunk in _chunks([row[0] for row in prep.rows], 10 * CHUNK):
                conn.execute(fill, {"rows": list(chunk)})
            return
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            # COPY's text format: each value goes to its column type's input as printed
            with cursor.copy(f"COPY {self.stage} ({every}) FROM STDIN") as copy:
                for row in prep.rows:
                    copy.write_row(row)
        finally:
            cursor.close()

    def conflicts(self) -> int:
        sql = f"SELECT count(*) FROM {self.stage} AS r WHERE {self.exists}"
        return int(self.conn.exec_driver_sql(sql).scalar_one())

    def update(self, prep: _Prepared) -> int:
        """Put the changed columns' old values back on the rows the stage names."""
        preparer = self.conn.dialect.identifier_preparer
        changes = prep.backup.changes or ()
        sets = ", ".join(f"{preparer.quote(c)} = r.{preparer.quote(c)}" for c in changes)
        match = " AND ".join(_same(preparer.quote(c), bool(prep.key)) for c in _match(prep))
        result = self.conn.exec_driver_sql(
            f"UPDATE {self.table} AS t SET {sets} FROM {self.stage} AS r WHERE {match}"
        )
        return int(result.rowcount)

    def insert(self, skip_existing: bool) -> None:
        where = f" WHERE NOT {self.exists}" if skip_existing else ""
        self.conn.exec_driver_sql(
            f"INSERT INTO {self.table} ({self.columns}) OVERRIDING SYSTEM VALUE "
            f"SELECT {self.picked} FROM {self.stage} AS r{where}"
        )


def _match(prep: _Prepared) -> list[str]:
    """The columns that find a changed row again: its primary key, else every other column."""
    if prep.key:
        return [prep.backup.columns[i] for i in prep.key]
    changes = set(prep.backup.changes or ())
    return [c for c in prep.columns if c not in changes]


def _same(name: str, keyed: bool) -> str:
    """Equal in the target and the stage; without a key, any type, NULL equal to NULL."""
    if keyed:
        return f"t.{name} = r.{name}"
    return f"CAST(t.{name} AS text) IS NOT DISTINCT FROM CAST(r.{name} AS text)"


def _update_rows(conn: Connection, prep: _Prepared) -> int:
    """Put the changed columns' old values back, row by row (codec rows)."""
    changes = prep.backup.changes or ()
    match = _match(prep)
    condition = and_(
        *(
            prep.clause.c[c] == bindparam(f"k_{i}", type_=prep.clause.c[c].type)
            if prep.key
            else prep.clause.c[c].is_not_distinct_from(
                bindparam(f"k_{i}", type_=prep.clause.c[c].type)
            )
            for i, c in enumerate(match)
        )
    )
    values = {c: bindparam(f"v_{i}", type_=prep.clause.c[c].type) for i, c in enumerate(changes)}
    statement = update(prep.clause).where(condition).values(values)
    index = prep.backup.columns.index
    params = [
        {
            **{f"k_{i}": row[index(c)] for i, c in enumerate(match)},
            **{f"v_{i}": row[index(c)] for i, c in enumerate(changes)},
        }
        for row in prep.rows
    ]
    done = 0
    for chunk in _chunks(params, CHUNK):
        result = conn.execute(statement, list(chunk))
        done += max(int(result.rowcount), 0)
    return done


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _identity(prep: _Prepared) -> list[int]:
    """Positions that identify a row: its primary key, else every column it inserts."""
    return prep.key or [prep.backup.columns.index(c) for c in prep.columns]


def _existing(conn: Connection, prep: _Prepared) -> set[tuple[Any, ...]]:
    """Identities (see :func:`_identity`) of the backup's rows already in the target."""
    positions = _identity(prep)
    names = [prep.backup.columns[i] for i in positions]
    cols = [prep.clause.c[n] for n in names]
    keys = list(dict.fromkeys(tuple(row[i] for i in positions) for row in prep.rows))
    found: set[tuple[Any, ...]] = set()
    for chunk in _chunks(keys, CHUNK if prep.key else 50):
        if not prep.key:  # NULL equals NULL here: any column may hold one
            condition = or_(
                *(
                    and_(*(c.is_not_distinct_from(v) for c, v in zip(cols, k, strict=True)))
                    for k in chunk
                )
            )
        elif len(cols) == 1:
            condition = cols[0].in_([k[0] for k in chunk])
        else:
            condition = tuple_(*cols).in_(list(chunk))
        found.update(tuple(r) for r in conn.execute(select(*cols).where(condition)))
    return found


def restore(
    path: Path, engine: Engine, *, dry_run: bool = False, skip_existing: bool = False
) -> RestoreResult:
    """Insert the backup's rows parent-first in one transaction; all or nothing.

    ``dry_run`` reports what would be restored and what conflicts, and changes nothing.
    """
    backup = read_backup(Path(path))
    return restore_backup(backup, engine, dry_run=dry_run, skip_existing=skip_existing)


def restore_backup(
    backup: Backup, engine: Engine, *, dry_run: bool = False, skip_existing: bool = False
) -> RestoreResult:
    """:func:`restore` for a backup already read."""
    source = str(backup.header.get("dialect", ""))
    masked = mask_url(engine.url)
    if source and source != engine.dialect.name:
        raise BackupError(
            f"the backup was taken from a {source} database and {masked} is "
            f"{engine.dialect.name}: restore it into a {source} database; nothing was restored"
        )
    typed = engine.dialect.name == "postgresql"
    restored: dict[str, int] = {}
    skipped: dict[str, int] = {}
    conflicts: dict[str, int] = {}
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            if engine.dialect.name == "postgresql":
                conn.execute(_FIXED_INPUT)
            prepared = [_prepare(conn, bt, typed) for bt in reversed(backup.tables)]
            plans = []
            servers: dict[int, _ServerRows | None] = {}
            for index, prep in enumerate(prepared):
                name = prep.backup.name
                if prep.backup.changes is not None:
                    # changed, not deleted: old values go back once their parents are in
                    if prep.rows and prep.backup.encoding in (SERVER_TEXT, ROW_TEXT):
                        servers[index] = _ServerRows(conn, prep)
                    restored[name] = restored.get(name, 0) + len(prep.rows)
                    skipped.setdefault(name, 0)
                    plans.append((prep, prep.rows))
                    continue
                if prep.backup.encoding in (SERVER_TEXT, ROW_TEXT):
                    server = _ServerRows(conn, prep) if prep.rows else None
                    servers[index] = server
                    taken = server.conflicts() if server is not None else 0
                    rows = prep.rows[: len(prep.rows) - taken]  # only their number is used
                else:
                    existing = _existing(conn, prep)
                    identity = _identity(prep)
                    rows = [r for r in prep.rows if tuple(r[i] for i in identity) not in existing]
                    taken = len(prep.rows) - len(rows)
                if taken and not skip_existing:
                    conflicts[name] = conflicts.get(name, 0) + taken
                skipped[name] = skipped.get(name, 0) + (taken if skip_existing else 0)
                restored[name] = restored.get(name, 0) + len(rows)
                plans.append((prep, rows))
            if conflicts and not dry_run:
                detail = ", ".join(f"{name} {n}" for name, n in conflicts.items())
                raise RestoreConflict(
                    f"rows of the backup already exist in {masked} ({detail} by primary key, "
                    "or by every column where a table has none): "
                    "nothing was restored; pass --skip-existing to keep the existing rows "
                    "and restore the rest"
                )
            if not dry_run:
                for index, (prep, rows) in enumerate(plans):
                    if prep.backup.changes is not None:
                        if not rows:
                            continue
                        staged = servers.get(index)
                        if staged is not None:
                            staged.update(prep)
                        else:
                            _update_rows(conn, prep)
                        continue
                    if prep.backup.encoding in (SERVER_TEXT, ROW_TEXT):
                        staged = servers.get(index)
                        if staged is not None:
                            staged.insert(skip_existing)
                        continue
                    positions = [prep.backup.columns.index(c) for c in prep.columns]
                    values = [
                        {c: row[i] for c, i in zip(prep.columns, positions, strict=True)}
                        for row in rows
                    ]
                    for chunk in _chunks(values, CHUNK):
                        conn.execute(insert(prep.clause), list(chunk))
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()
    return RestoreResult(backup.path, restored, skipped, conflicts, dry_run)
