"""Registrations -> an ordered, de-duplicated deletion plan.

Tests say *what* to remove (a table and a condition); the plan decides *how*: one
step per table, conditions of the same table OR-ed so a row reached twice is counted
and deleted once, steps ordered children before parents from the foreign keys.
Nothing here formats SQL by hand: every name is quoted by SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import inspect as inspect_module
import itertools
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from graphlib import CycleError, TopologicalSorter
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeGuard, Union

from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    MetaData,
    Table,
    TableClause,
    and_,
    column,
    event,
    inspect,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError
from sqlalchemy.orm import InstanceState, Session
from sqlalchemy.sql.elements import ColumnElement, Grouping, TextClause, True_
from sqlalchemy.sql.visitors import replacement_traverse

from .stamp import STAMP_TABLE

if TYPE_CHECKING:  # the asyncio extension needs greenlet, which sync users may not have
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from .target import first_line, mask_url


class RegistrationError(ValueError):
    """A cleanup registration that cannot be planned safely."""


@dataclass(frozen=True)
class Registration:
    """One ``delete()`` call: a table, a condition, and who asked for it."""

    table: Table
    condition: ColumnElement[bool]
    all_rows: bool = False
    cascade: bool = False
    nodeid: str = ""
    confirms: frozenset[str] = frozenset()
    description: str = ""


@dataclass(frozen=True)
class Step:
    """All rows of one table that the plan removes."""

    table: Table
    condition: ColumnElement[bool]
    selectable: TableClause  # what statements are built on: the Table, or a shared clause
    #: "delete", or "update": rows the database itself changes (``ON DELETE SET NULL`` /
    #: ``SET DEFAULT``) when a later step deletes what they reference; backed up, not deleted
    action: str = "delete"
    #: why the step is in the plan when no test registered it ("database cascade")
    reason: str = ""
    #: the columns the database changes in an "update" step
    changes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The table's name as reported (schema-qualified where it has a schema)."""
        return str(self.table.fullname)  # a plain str: reports cross process boundaries


@dataclass(frozen=True)
class Plan:
    """Steps in deletion order: every child table before the tables it references."""

    steps: tuple[Step, ...]
    registrations: tuple[Registration, ...] = field(default=())

    @property
    def tables(self) -> list[str]:
        """Table names in deletion order."""
        return [s.name for s in self.steps]

    def __bool__(self) -> bool:
        return bool(self.steps)


def _table_of(target: Any) -> Table | None:
    if isinstance(target, Table):
        return target
    table = getattr(target, "__table__", None)
    if isinstance(table, Table):
        return table
    try:
        mapper = inspect(target, raiseerr=False)
    except Exception:
        return None
    local = getattr(mapper, "local_table", None)
    return local if isinstance(local, Table) else None


def _unreachable(engine: Any, doing: str, exc: BaseException) -> RegistrationError:
    return RegistrationError(f"cannot reach {mask_url(engine.url)} to {doing}: {first_line(exc)}")


class TableResolver:
    """Resolves table names by reflection, once per engine and name.

    Kept for the whole session: teardown runs once per test, and reflecting the
    same tables again for each test would cost round-trips for nothing.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.metadata = MetaData()
        self._schemas: dict[str | None, MetaData] = {}
        self._conn: Connection | None = None

    @contextmanager
    def using(self, conn: Connection) -> Iterator[None]:
        """Reflect through ``conn`` (an async engine's connection inside run_sync)."""
        previous, self._conn = self._conn, conn
        try:
            yield
        finally:
            self._conn = previous

    @contextmanager
    def _connect(self, what: str) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        try:
            with self.engine.connect() as conn:
                yield conn
        except NoSuchTableError:
            raise
        except SQLAlchemyError as exc:
            raise _unreachable(self.engine, f"look up {what}", exc) from None

    def resolve(self, target: Any) -> Table:
        """A Table from a Table, an ORM class or a (``schema.``)table name."""
        table = _table_of(target)
        if table is not None:
            return table
        if not isinstance(target, str) or not target.strip():
            raise RegistrationError(
                f"cannot delete from {target!r}: "
                "pass a SQLAlchemy Table, an ORM class or a table name"
            )
        schema, _, name = target.strip().rpartition(".")
        key = f"{schema}.{name}" if schema else name
        if key in self.metadata.tables:
            return self.metadata.tables[key]
        try:
            with self._connect(f"table {target!r}") as conn:
                return Table(name, self.metadata, schema=schema or None, autoload_with=conn)
        except NoSuchTableError:
            raise RegistrationError(
                f"table {target!r} does not exist in {mask_url(self.engine.url)}: "
                "check the name (and schema) or create the table before registering its cleanup"
            ) from None

    def schema_tables(self, schema: str | None) -> MetaData:
        """Every table of one schema, reflected once: where cascades find children."""
        if schema not in self._schemas:
            metadata = MetaData()
            with self._connect(f"the tables of schema {schema or 'default'}") as conn:
                metadata.reflect(bind=conn, schema=schema)
            self._schemas[schema] = metadata
        return self._schemas[schema]

    def referencing(self, table: Table) -> list[tuple[Table, ForeignKeyConstraint]]:
        """Each (table, foreign key) in the database that references ``table``.

        Tables of every schema count: a foreign key from another schema deletes (or
        blocks the delete of) these rows as surely as one from the same schema.
        """
        found = []
        for schema in self._referencing_schemas(table):
            for candidate in self.schema_tables(schema).tables.values():
                for fk in candidate.foreign_key_constraints:
                    referred = fk.referred_table
                    if referred.name == table.name and referred.schema == table.schema:
                        found.append((candidate, fk))
        return sorted(found, key=lambda pair: (pair[0].fullname, pair[1].name or ""))

    def _referencing_schemas(self, table: Table) -> list[str | None]:
        """The schemas holding a foreign key into ``table`` (the default one as None)."""
        if self.engine.dialect.name != "postgresql":
            return [table.schema]
        with self._connect(f"the foreign keys into {table.fullname!r}") as conn:
            name = conn.dialect.identifier_preparer.format_table(table)
            rows = conn.execute(_REFERENCING_SCHEMAS, {"table": name}).all()
        schemas: list[str | None] = [table.schema]
        for schema, default in rows:
            found = None if schema == default else str(schema)
            if found not in schemas:
                schemas.append(found)
        return schemas

    def reflected(self, table: Table) -> Table:
        """The reflected twin of a Table (all of its real columns)."""
        twin = self.schema_tables(table.schema).tables.get(table.fullname)
        if twin is None:
            raise RegistrationError(f"table {table.fullname!r} does not exist in the database")
        return twin


_REFERENCING_SCHEMAS = text(
    "SELECT DISTINCT n.nspname, current_schema() FROM pg_catalog.pg_constraint c "
    "JOIN pg_catalog.pg_class r ON r.oid = c.conrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
    "WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confrelid = CAST(:table AS regclass)"
)

_cte_names = itertools.count(1)


def _columns(table: Table, names: Sequence[str], resolver: TableResolver) -> list[Any]:
    if all(n in table.c for n in names):
        return [table.c[n] for n in names]
    twin = resolver.reflected(table)
    return [twin.c[n] for n in names]


def _membership(local: list[Any], subquery: Any) -> ColumnElement[bool]:
    if len(local) == 1:
        return local[0].in_(subquery)  # type: ignore[no-any-return]
    return tuple_(*local).in_(subquery)


def _self_closure(
    table: Table, condition: ColumnElement[bool], fk: ForeignKeyConstraint, resolver: TableResolver
) -> ColumnElement[bool]:
    """Rows matching ``condition`` and, transitively, the rows that reference them.

    Follows a self-referencing foreign key with a recursive CTE; UNION stops on cycles.
    """
    ref_names = [e.column.name for e in fk.elements]
    child_names = [c.name for c in fk.columns]
    refs = _columns(table, ref_names, resolver)
    tree = (
        select(*refs)
        .where(condition)
        .cte(f"sc_tree_{next(_cte_names)}", recursive=True, nesting=True)
    )
    alias = resolver.reflected(table).alias()
    step = select(*(alias.c[n] for n in ref_names)).where(
        and_(*(alias.c[c] == tree.c[r] for c, r in zip(child_names, ref_names, strict=True)))
    )
    tree = tree.union(step)
    return _membership(refs, select(*(tree.c[n] for n in ref_names)))


def cascade_registrations(
    resolver: TableResolver, root: Registration, limit: int = 32
) -> list[Registration]:
    """``root`` and every row that references its rows through foreign keys, transitively.

    Each referencing table gets its own registration (so it is counted and backed up
    on its own line); conditions are sub-selects of the parent's condition, evaluated
    before anything is deleted because the plan removes children first.
    """
    result: list[Registration] = []

    def visit(reg: Registration, path: tuple[str, ...]) -> None:
        if len(result) >= limit * 8:
            raise RegistrationError(
                f"cascade from {root.table.fullname!r} reaches too many foreign-key paths: "
                "register the tables explicitly"
            )
        table, condition = reg.table, reg.condition
        children = resolver.referencing(table)
        for _, fk in children:
            if fk.referred_table.fullname == fk.parent.fullname:
                condition = _self_closure(table, condition, fk, resolver)
        result.append(replace(reg, condition=condition))
        for child, fk in children:
            if child.fullname == table.fullname or child.fullname in path:
                continue
            parent_cols = _columns(table, [e.column.name for e in fk.elements], resolver)
            local = [child.c[c.name] for c in fk.columns]
            child_condition = _membership(local, select(*parent_cols).where(condition))
            visit(
                replace(
                    reg,
                    table=child,
                    condition=child_condition,
                    all_rows=False,
                    description=f"references {table.fullname}",
                ),
                (*path, table.fullname),
            )

    visit(root, ())
    return result


def build_condition(
    table: Table, where: Sequence[Any], equals: Mapping[str, Any], all_rows: bool
) -> ColumnElement[bool]:
    """AND of the ``where`` expressions and ``column == value`` pairs.

    A list, tuple or set value means IN. A registration with no condition would wipe
    the table, so it is refused unless ``all_rows=True`` says that is meant.
    """
    clauses: list[ColumnElement[bool]] = []
    for expr in where:
        if isinstance(expr, str):
            raise RegistrationError(
                f"condition {expr!r} is a plain string: use a SQLAlchemy expression "
                "(table.c.email == 'x'), keyword equals (email='x') or sqlalchemy.text()"
            )
        if isinstance(expr, bool) or not isinstance(expr, ColumnElement | TextClause):
            raise RegistrationError(
                f"condition {expr!r} is not a SQLAlchemy expression: use table.c.col == value"
            )
        if isinstance(expr, TextClause):
            # SQLAlchemy never parenthesises text(): "a OR b" AND-ed with tenant=5
            # would read "a OR b AND tenant = 5" and reach other tenants' rows.
            expr = Grouping(expr)
        clauses.append(expr)
    for key, value in equals.items():
        if key not in table.c:
            columns = ", ".join(c.name for c in table.c)
            raise RegistrationError(
                f"table {table.fullname!r} has no column {key!r} (columns: {columns})"
            )
        column = table.c[key]
        if isinstance(value, list | tuple | set | frozenset):
            clauses.append(column.in_(list(value)))
        else:
            clauses.append(column == value if value is not None else column.is_(None))
    if not clauses:
        if not all_rows:
            raise RegistrationError(
                f"refusing to register a cleanup of every row of {table.fullname!r}: "
                "add a condition "
                "(delete(table, table.c.id == 1) or delete(table, email='x')) or pass all_rows=True"
            )
        return true()
    if all_rows:
        raise RegistrationError("all_rows=True takes no condition: drop the condition or all_rows")
    return clauses[0] if len(clauses) == 1 else and_(*clauses)


def check_table_allowed(table: Table) -> None:
    """The stamp table is the database's identity; cleanup never touches it."""
    if table.name == STAMP_TABLE:
        raise RegistrationError(f"{STAMP_TABLE} holds the database's stamp and is never cleaned")


def _shared_clause(tables: Sequence[Table]) -> TableClause:
    """One lightweight table with every column any of the same-named Tables maps.

    Registrations may name one database table through several Table objects (an ORM
    model and a reflected table); their conditions must meet in one statement.
    """
    first = tables[0]
    columns: dict[str, Any] = {}
    for table in tables:
        for col in table.c:
            columns.setdefault(col.name, col.type)
    return table_clause(
        first.name, *(column(n, t) for n, t in columns.items()), schema=first.schema
    )


def _adapt(condition: ColumnElement[bool], shared: TableClause) -> ColumnElement[bool]:
    """Rewrite columns of any same-named Table onto the shared clause."""

    def replace(element: Any, **_: Any) -> Any:
        if (
            isinstance(element, Column)
            and isinstance(element.table, Table)
            and element.table.name == shared.name
            and element.table.schema == shared.schema
        ):
            return shared.c[element.name]
        return None

    return replacement_traverse(condition, {}, replace)


def _parents(table: Table) -> set[str]:
    names: set[str] = set()
    for fk in table.foreign_keys:
        target = fk.target_fullname.rsplit(".", 1)[0]
        names.add(target)
    return names


def order_children_first(tables: Iterable[Table]) -> list[Table]:
    """Tables ordered so that every table comes before the tables it references.

    A self-reference is fine (one statement removes parent and child rows together);
    a cycle between two or more tables cannot be ordered and is refused.
    """
    by_name: dict[str, Table] = {}
    parents: dict[str, set[str]] = {}
    for t in sorted(tables, key=lambda t: t.fullname):  # same-named Tables: keys of all count
        by_name.setdefault(t.fullname, t)
        parents.setdefault(t.fullname, set()).update(_parents(t))
    # graphlib emits a node after its predecessors: a parent's predecessors are its children.
    graph: dict[str, set[str]] = {name: set() for name in by_name}
    for name in by_name:
        for parent in (parents[name] & by_name.keys()) - {name}:
            graph[parent].add(name)
    try:
        # Sorted predecessors: sets of names iterate in a per-process hash order, and the
        # deletion order (and the summary's table order) must be the same on every run.
        order = list(TopologicalSorter({n: sorted(p) for n, p in graph.items()}).static_order())
    except CycleError as exc:
        cycle = " -> ".join(dict.fromkeys(exc.args[1]))
        raise RegistrationError(
            f"tables {cycle} reference each other in a cycle: their deletion cannot be ordered; "
            "set the foreign key to NULL in the test first or register one table's cleanup per test"
        ) from None
    return [by_name[n] for n in order]


def build_plan(registrations: Sequence[Registration]) -> Plan:
    """One step per table, conditions OR-ed, children before parents."""
    tables: dict[str, list[Table]] = {}
    for reg in registrations:
        check_table_allowed(reg.table)
        same = tables.setdefault(reg.table.fullname, [])
        if not any(t is reg.table for t in same):
            same.append(reg.table)
    steps = []
    for table in order_children_first(t for same in tables.values() for t in same):
        same = tables[table.fullname]
        shared = _shared_clause(same) if len(same) > 1 else None
        conds = [
            r.condition if shared is None else _adapt(r.condition, shared)
            for r in registrations
            if r.table.fullname == table.fullname
        ]
        if any(isinstance(c, True_) for c in conds):
            combined: ColumnElement[bool] = true()
        else:
            combined = conds[0] if len(conds) == 1 else or_(*conds)
        steps.append(Step(table, combined, shared if shared is not None else table))
    return Plan(tuple(steps), tuple(registrations))


__all__ = [
    "AsyncSafeCleanup",
    "Plan",
    "Registration",
    "RegistrationBook",
    "RegistrationError",
    "SafeCleanup",
    "Step",
    "TableResolver",
    "build_condition",
    "build_plan",
    "order_children_first",
]


AnyEngine = Union[Engine, "AsyncEngine"]


def is_async_engine(engine: object) -> TypeGuard[AsyncEngine]:
    """An AsyncEngine, recognised without importing the asyncio extension."""
    return not isinstance(engine, Engine) and isinstance(
        getattr(engine, "sync_engine", None), Engine
    )


def sync_engine_of(engine: AnyEngine) -> Engine:
    """The sync Engine behind an AsyncEngine (events, reflection and plans use it)."""
    return engine.sync_engine if is_async_engine(engine) else engine  # type: ignore[return-value]


def _key_for(table: Table, by_column: Mapping[Any, Any]) -> tuple[Any, ...] | None:
    """``table``'s primary key values, in the table's key order, from the mapper's columns.

    A key column is matched as the column itself, else through a foreign key to a
    mapper key column (a joined-inheritance child's key referencing its parent's), else
    by name; a table whose key cannot be filled wholly is left out, never guessed.
    """
    by_name = {getattr(c, "name", None): v for c, v in by_column.items()}
    values = []
    for key_column in table.primary_key.columns:
        referenced = [v for c, v in by_column.items() if key_column.references(c)]
        if key_column in by_column:
            values.append(by_column[key_column])
        elif len(referenced) == 1:
            values.append(referenced[0])
        elif key_column.name in by_name:
            values.append(by_name[key_column.name])
        else:
            return None
    return tuple(values) if values else None


def tracked_registrations(
    instances: Iterable[object], nodeid: str, confirms: frozenset[str]
) -> list[Registration]:
    """Registrations by primary key for ORM instances that are (still) in the database.

    Instances never flushed, rolled back (transient again) or deleted through the
    session are skipped: their rows are not there, and must not be counted twice.
    """
    by_table: dict[str, tuple[Table, dict[tuple[Any, ...], None]]] = {}
    for obj in instances:
        state = inspect(obj, raiseerr=False)
        if not isinstance(state, InstanceState):
            raise RegistrationError(f"track() takes ORM instances, not {obj!r}")
        if state.was_deleted or not state.has_identity or state.identity is None:
            continue
        # The identity follows the mapper's key order, which need not be the table's
        # (``__mapper_args__ = {"primary_key": [...]}``, a PrimaryKeyConstraint in
        # another order): each value goes to its column, never to a position.
        by_column = dict(zip(state.mapper.primary_key, state.identity, strict=True))
        for table in state.mapper.tables:
            if not isinstance(table, Table):
                continue
            key = _key_for(table, by_column)
            if key is not None:
                by_table.setdefault(table.fullname, (table, {}))[1][key] = None
    registrations = []
    for table, keys in by_table.values():
        pk = list(table.primary_key.columns)
        values = list(keys)
        condition = pk[0].in_([k[0] for k in values]) if len(pk) == 1 else tuple_(*pk).in_(values)
        registrations.append(
            Registration(table, condition, nodeid=nodeid, confirms=confirms, description="tracked")
        )
    return registrations


class _Registrar:
    """The core the sync and async fixtures share: validation, tracking and the book."""

    def __init__(
        self,
        engine: AnyEngine,
        *,
        book: RegistrationBook,
        tag: str,
        context: Callable[[], tuple[str, frozenset[str]]],
    ) -> None:
        self.engine = engine
        self._book = book
        self._tag = tag
        self._context = context

    @property
    def tag(self) -> str:
        """A short token unique to this test in this run, to embed in the data it makes."""
        return self._tag

    def _resolver(self) -> TableResolver:
        return self._book.resolver(sync_engine_of(self.engine))

    def _needs_connection(self, target: Any, cascade: bool) -> bool:
        if cascade:
            return True
        if isinstance(target, str):
            schema, _, name = target.strip().rpartition(".")
            key = f"{schema}.{name}" if schema else name
            return key not in self._resolver().metadata.tables
        return False

    def _register(
        self,
        target: Any,
        where: Sequence[Any],
        all_rows: bool,
        cascade: bool,
        equals: Mapping[str, Any],
    ) -> None:
        resolver = self._resolver()
        table = resolver.resolve(target)
        check_table_allowed(table)
        condition = build_condition(table, where, equals, all_rows)
        nodeid, confirms = self._context()
        registration = Registration(table, condition, all_rows, cascade, nodeid, confirms)
        found = cascade_registrations(resolver, registration) if cascade else [registration]
        for reg in found:
            check_table_allowed(reg.table)
        for reg in found:
            self._book.add(self.engine, reg)

    def track(self, *instances: object) -> None:
        """Delete these ORM instances' rows (by primary key) at teardown."""
        for obj in instances:
            if not isinstance(inspect(obj, raiseerr=False), InstanceState):
                raise RegistrationError(f"track() takes ORM instances, not {obj!r}")
        nodeid, confirms = self._context()
        objects = list(instances)
        self._book.defer(self.engine, lambda: tracked_registrations(objects, nodeid, confirms))

    def track_session(self, session: Session | AsyncSession) -> None:
        """Delete every row this ORM session inserts from now until teardown."""
        target = getattr(session, "sync_session", session)
        if not isinstance(target, Session):
            raise RegistrationError(f"track_session() takes an ORM Session, not {session!r}")
        inserted: list[object] = []

        def after_flush(flushed: Session, _context: Any) -> None:
            inserted.extend(flushed.new)

        event.listen(target, "after_flush", after_flush)
        nodeid, confirms = self._context()

        def collect() -> list[Registration]:
            if event.contains(target, "after_flush", after_flush):
                event.remove(target, "after_flush", after_flush)
            return tracked_registrations(inserted, nodeid, confirms)

        self._book.defer(self.engine, collect)

    def track_sessions(self) -> None:
        """Delete every row any ORM session in the process inserts from now until teardown.

        The application's own sessions included (a FastAPI or Flask dependency, a global
        ``sessionmaker``, sync or async); each row is deleted on the database its session
        wrote it to, whatever engine this fixture is bound to. Calling it again is a no-op.
        """
        if self._book.tracking:
            return
        from .tracking import TRACKER

        collector = TRACKER.start()
        self._book.tracking = True
        nodeid, confirms = self._context()

        def collect() -> list[tuple[Engine, list[Registration]]]:
            inserted = collector.stop()
            return [
                (engine, tracked_registrations(objs, nodeid, confirms))
                for engine, objs in inserted.items()
            ]

        self._book.defer_tracked(collect)


class SafeCleanup(_Registrar):
    """What a test registers for cleanup on one engine (the ``safe_cleanup`` fixture).

    Registration checks everything it can at once (table, columns, condition) so a
    mistake fails in the test that made it; the deletion itself waits for teardown.
    """

    engine: Engine

    def on(self, engine: Engine) -> SafeCleanup:
        """The same API for another database; its cleanup runs as its own plan."""
        if is_async_engine(engine):
            raise RegistrationError(
                "safe_cleanup.on() takes an Engine; use async_safe_cleanup.on() for an AsyncEngine"
            )
        if self._book.on_engine is not None:
            self._book.on_engine(engine)
        return SafeCleanup(engine, book=self._book, tag=self._tag, context=self._context)

    def delete(
        self,
        target: Any,
        *where: Any,
        all_rows: bool = False,
        cascade: bool = False,
        **equals: Any,
    ) -> None:
        """Register rows of ``target`` for deletion at teardown.

        ``target`` is a Table, an ORM class or a table name (reflected). Conditions
        are SQLAlchemy expressions and ``column=value`` pairs (a list means IN).
        ``cascade=True`` also takes every row that references these through foreign
        keys, transitively, found from the database's schema.
        """
        self._register(target, where, all_rows, cascade, equals)


class AsyncSafeCleanup(_Registrar):
    """The same API for an AsyncEngine (the ``async_safe_cleanup`` fixture).

    ``delete`` is awaited because it may reflect a table; ``track`` and
    ``track_session`` need no I/O. Teardown runs on the loop the test ran on.
    """

    engine: AsyncEngine

    def __init__(
        self,
        engine: AsyncEngine | None,
        *,
        book: RegistrationBook,
        tag: str,
        context: Callable[[], tuple[str, frozenset[str]]],
    ) -> None:
        super().__init__(engine, book=book, tag=tag, context=context)  # type: ignore[arg-type]
        self._bound = engine is not None

    def _require_engine(self) -> None:
        if not self._bound:
            raise RegistrationError(
                "async_safe_cleanup has no engine: define a safe_cleanup_async_engine fixture "
                "or call async_safe_cleanup.on(async_engine)"
            )

    def _note_loop(self) -> None:
        self._require_engine()
        with suppress(RuntimeError):
            self._book.loop = asyncio.get_running_loop()

    def on(self, engine: AsyncEngine) -> AsyncSafeCleanup:
        """The same API for another async database."""
        if not is_async_engine(engine):
            raise RegistrationError(
                "async_safe_cleanup.on() takes an AsyncEngine; use safe_cleanup.on() for an Engine"
            )
        if self._book.on_engine is not None:
            self._book.on_engine(engine.sync_engine)
        return AsyncSafeCleanup(engine, book=self._book, tag=self._tag, context=self._context)

    def delete(
        self,
        target: Any,
        *where: Any,
        all_rows: bool = False,
        cascade: bool = False,
        **equals: Any,
    ) -> Coroutine[Any, Any, None]:
        """Register rows of ``target`` for deletion at teardown (see SafeCleanup.delete).

        A coroutine: nothing is registered until it is awaited. The book keeps it with
        the caller's file and line, so one never awaited fails the test at teardown
        instead of leaving its rows behind silently.
        """
        caller = sys._getframe(1)
        coroutine = self._delete(target, where, all_rows, cascade, equals)
        self._book.expect_awaited(coroutine, _location(caller))
        return coroutine

    async def _delete(
        self,
        target: Any,
        where: Sequence[Any],
        all_rows: bool,
        cascade: bool,
        equals: Mapping[str, Any],
    ) -> None:
        self._note_loop()
        if not self._needs_connection(target, cascade):
            self._register(target, where, all_rows, cascade, equals)
            return
        resolver = self._resolver()

        def register(conn: Connection) -> None:
            with resolver.using(conn):
                self._register(target, where, all_rows, cascade, equals)

        try:
            async with self.engine.connect() as aconn:
                await aconn.run_sync(register)
        except SQLAlchemyError as exc:
            raise _unreachable(self.engine, "register a cleanup", exc) from None

    def track(self, *instances: object) -> None:
        """Delete these ORM instances' rows (by primary key) at teardown."""
        self._note_loop()
        super().track(*instances)

    def track_session(self, session: Session | AsyncSession) -> None:
        """Delete every row this (async) session inserts from now until teardown."""
        self._note_loop()
        super().track_session(session)

    def track_sessions(self) -> None:
        """Delete every row any ORM session inserts from now on (see SafeCleanup).

        Needs no engine of its own: each row is deleted where its session wrote it.
        """
        with suppress(RuntimeError):
            self._book.loop = asyncio.get_running_loop()
        super().track_sessions()


def _location(frame: FrameType) -> str:
    """``path:line`` of a frame, relative to the working folder where it is under it."""
    path = frame.f_code.co_filename
    with suppress(ValueError):
        relative = os.path.relpath(path)
        if not relative.startswith(os.pardir):
            path = relative
    return f"{path}:{frame.f_lineno}"


class RegistrationBook:
    """Registrations grouped per engine, in the order engines were first used."""

    def __init__(
        self,
        resolvers: dict[int, TableResolver] | None = None,
        on_engine: Callable[[Engine], None] | None = None,
    ) -> None:
        self._entries: dict[int, tuple[AnyEngine, list[Registration]]] = {}
        self._deferred: list[tuple[AnyEngine, Callable[[], list[Registration]]]] = []
        self._resolvers = {} if resolvers is None else resolvers
        #: told of every engine handed out through ``on()`` (the plugin watches them)
        self.on_engine = on_engine
        #: the event loop an async test registered on: its teardown runs there
        self.loop: asyncio.AbstractEventLoop | None = None
        #: track_sessions() was called: rows of any session, grouped by their engines
        self.tracking = False
        self._tracked: list[Callable[[], list[tuple[Engine, list[Registration]]]]] = []
        self._awaitables: list[tuple[Coroutine[Any, Any, None], str]] = []

    def resolver(self, engine: Engine) -> TableResolver:
        """The reflection cache of one engine."""
        key = id(engine)
        if key not in self._resolvers:
            self._resolvers[key] = TableResolver(engine)
        return self._resolvers[key]

    def add(self, engine: AnyEngine, registration: Registration) -> None:
        """Append one registration for ``engine``."""
        self._entries.setdefault(id(engine), (engine, []))[1].append(registration)

    def defer(self, engine: AnyEngine, collect: Callable[[], list[Registration]]) -> None:
        """Registrations known only at teardown (tracked ORM rows)."""
        self._entries.setdefault(id(engine), (engine, []))
        self._deferred.append((engine, collect))

    def expect_awaited(self, coroutine: Coroutine[Any, Any, None], where: str) -> None:
        """A registration that does nothing until awaited (``async_safe_cleanup.delete``)."""
        self._awaitables.append((coroutine, where))

    def never_awaited(self) -> list[str]:
        """Where registrations were made and never awaited; each is closed (no warning)."""
        pending, self._awaitables = self._awaitables, []
        missed = []
        for coroutine, where in pending:
            if inspect_module.getcoroutinestate(coroutine) == inspect_module.CORO_CREATED:
                coroutine.close()
                missed.append(where)
        return missed

    def defer_tracked(self, collect: Callable[[], list[tuple[Engine, list[Registration]]]]) -> None:
        """Registrations known at teardown on engines found then (``track_sessions``)."""
        self._tracked.append(collect)

    def _engine_for(self, engine: Engine) -> AnyEngine:
        """The entry a tracked row joins: an engine of the book on the same database.

        Rows of the fixture's database join its plan (one transaction per database);
        an async dialect's engine is wrapped as the AsyncEngine its sessions used.
        """
        for known, _ in self._entries.values():
            sync = sync_engine_of(known)
            if sync is engine or sync.url == engine.url:
                return known
        if engine.dialect.is_async:
            from sqlalchemy.ext.asyncio import AsyncEngine

            return AsyncEngine(engine)
        return engine

    def drain(self) -> list[tuple[AnyEngine, list[Registration]]]:
        """Every engine's registrations, emptied so a cleanup never runs twice."""
        deferred, self._deferred = self._deferred, []
        for engine, collect in deferred:
            for reg in collect():
                self.add(engine, reg)
        tracked, self._tracked = self._tracked, []
        for collect_tracked in tracked:
            for sync, regs in collect_tracked():
                if regs:
                    target = self._engine_for(sync)
                    for reg in regs:
                        self.add(target, reg)
        entries = [(e, regs) for e, regs in self._entries.values() if regs]
        self._entries = {}
        return entries
