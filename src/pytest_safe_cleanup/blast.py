"""The blast radius of a plan: rows the database itself removes or changes.

A delete reaches rows nobody registered through foreign keys: ``ON DELETE CASCADE``
removes the children, ``SET NULL``/``SET DEFAULT`` changes them. Those rows join the
plan here, so they are counted, capped by ``max_rows`` and backed up like the rest:
cascaded children become delete steps of their own (children first, reason
"database cascade"), changed rows become "update" steps that the executor backs up
just before the delete that changes them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from graphlib import CycleError, TopologicalSorter
from typing import Any

from sqlalchemy import (
    Column,
    MetaData,
    Table,
    TableClause,
    and_,
    false,
    func,
    inspect,
    not_,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnClause, ColumnElement, False_
from sqlalchemy.sql.visitors import replacement_traverse

from .plan import Plan, RegistrationError, Step, _shared_clause

CASCADE_REASON = "database cascade"
#: ON DELETE actions by which the database itself removes or changes rows
ACTIONS = ("CASCADE", "SET NULL", "SET DEFAULT")


@dataclass(frozen=True)
class Reference:
    """One foreign key: ``child(columns)`` references ``parent(referred)``."""

    child: tuple[str | None, str]  # (schema, name); the default schema is None
    parent: tuple[str | None, str]
    columns: tuple[str, ...]
    referred: tuple[str, ...]
    action: str  # "CASCADE", "SET NULL", "SET DEFAULT", or "" for no action / restrict


_PG_REFERENCES = text(
    """
SELECT cn.nspname, cc.relname, pn.nspname, pc.relname, c.confdeltype,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
             ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
             ORDER BY k.i),
       current_schema()
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class cc ON cc.oid = c.conrelid
JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
JOIN pg_catalog.pg_class pc ON pc.oid = c.confrelid
JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confrelid = ANY(CAST(:parents AS regclass[]))
ORDER BY 1, 2, c.conname
"""
)
_PG_ACTIONS = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def _key(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


class References:
    """Foreign keys into tables, read from the catalog.

    PostgreSQL answers are kept per target for the session (its transaction statistics
    catch anything a later schema change adds); elsewhere the catalog is local and read
    each time.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], list[Reference]] = {}
        self._default: dict[str, str] = {}

    def into(
        self, conn: Connection, target: str, parents: Sequence[tuple[str | None, str]]
    ) -> list[Reference]:
        """Every foreign key that references one of ``parents``."""
        if conn.dialect.name != "postgresql":
            return _inspected(conn, parents)
        missing = [p for p in parents if (target, _key(*p)) not in self._cache]
        if missing:
            preparer = conn.dialect.identifier_preparer
            names = [".".join(preparer.quote(part) for part in (s, n) if part) for s, n in missing]
            rows = conn.execute(_PG_REFERENCES, {"parents": names}).all()
            for parent in missing:
                self._cache[(target, _key(*parent))] = []
            for cs, cn, ps, pn, action, cols, refs, default in rows:
                found = Reference(
                    (None if cs == default else cs, cn),
                    (None if ps == default else ps, pn),
                    tuple(cols),
                    tuple(refs),
                    _PG_ACTIONS.get(action, ""),
                )
                self._cache.setdefault((target, _key(*found.parent)), []).append(found)
        return [r for p in parents for r in self._cache[(target, _key(*p))]]


def _sqlite(conn: Connection, parents: Sequence[tuple[str | None, str]]) -> list[Reference]:
    """Foreign keys into ``parents`` from SQLite's pragmas (the inspector omits ON DELETE)."""
    if not conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        return []  # foreign keys are not enforced on this connection: no action runs
    wanted = {name for schema, name in parents if schema is None}
    quote = conn.dialect.identifier_preparer.quote
    names = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).scalars()
    found = []
    for name in list(names):
        keys: dict[int, list[Any]] = {}
        for row in conn.exec_driver_sql(f"PRAGMA foreign_key_list({quote(name)})"):
            keys.setdefault(row[0], []).append(row)
        for rows in keys.values():
            rows.sort(key=lambda r: r[1])
            parent = rows[0][2]
            if parent not in wanted:
                continue
            referred = [r[4] for r in rows]
            if any(r is None for r in referred):  # REFERENCES parent: its primary key
                info = conn.exec_driver_sql(f"PRAGMA table_info({quote(parent)})").all()
                referred = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
            action = str(rows[0][6] or "").upper()
            found.append(
                Reference(
                    (None, name),
                    (None, parent),
                    tuple(r[3] for r in rows),
                    tuple(referred),
                    action if action in ACTIONS else "",
                )
            )
    return found


def _inspected(conn: Connection, parents: Sequence[tuple[str | None, str]]) -> list[Reference]:
    """Foreign keys into ``parents`` from SQLAlchemy's inspector (MySQL, MariaDB)."""
    if conn.dialect.name == "sqlite":
        return _sqlite(conn, parents)
    wanted = set(parents)
    inspector = inspect(conn)
    found = []
    for schema in dict.fromkeys([None, *(s for s, _ in parents)]):
        for name in inspector.get_table_names(schema=schema):
            for fk in inspector.get_foreign_keys(name, schema=schema):
                parent = (fk.get("referred_schema") or schema, fk["referred_table"])
                if parent not in wanted:
                    continue
                action = str((fk.get("options") or {}).get("ondelete") or "").upper()
                found.append(
                    Reference(
                        (schema, name),
                        parent,
                        tuple(fk["constrained_columns"]),
                        tuple(fk["referred_columns"]),
                        action if action in ACTIONS else "",
                    )
                )
    return found


_names = itertools.count(1)


def _membership(local: list[Any], subquery: Any) -> ColumnElement[bool]:
    if len(local) == 1:
        return local[0].in_(subquery)  # type: ignore[no-any-return]
    return tuple_(*local).in_(subquery)


def _subquery(step: Step, columns: Iterable[str]) -> Any:
    """``SELECT columns FROM step's table WHERE step's condition``, never correlated."""
    return select(*(step.selectable.c[c] for c in columns)).where(step.condition).correlate(None)


def _definitely(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """True where ``condition`` is true; false where it is false or NULL."""
    return func.coalesce(condition, false())


def _closure(step: Step, ref: Reference) -> ColumnElement[bool]:
    """The step's rows and, transitively, the rows that reference them through ``ref``."""
    sel = step.selectable
    refs = [sel.c[c] for c in ref.referred]
    tree = (
        select(*refs)
        .where(step.condition)
        .correlate(None)
        .cte(f"sc_cascade_{next(_names)}", recursive=True, nesting=True)
    )
    alias = sel.alias()
    tree = tree.union(
        select(*(alias.c[c] for c in ref.referred)).where(
            and_(*(alias.c[c] == tree.c[r] for c, r in zip(ref.columns, ref.referred, strict=True)))
        )
    )
    local = [sel.c[c] for c in ref.columns]
    return or_(step.condition, _membership(local, select(*(tree.c[r] for r in ref.referred))))


def _with_columns(step: Step, needed: Iterable[str]) -> Step:
    """The step on a selectable that has every column in ``needed`` (conditions moved over)."""
    sel = step.selectable
    missing = [c for c in dict.fromkeys(needed) if c not in sel.c]
    if not missing:
        return step
    extra = Table(sel.name, MetaData(), *(Column(c) for c in missing), schema=sel.schema)
    shared = _shared_clause([step.table, extra])
    if sel is not step.table:  # a shared clause already: keep every column it had
        for col in sel.c:
            if col.name not in shared.c:
                shared.append_column(ColumnClause(col.name, col.type))
    old = {id(sel), id(step.table)}

    def move(element: Any, **_: Any) -> Any:
        if isinstance(element, ColumnClause) and id(getattr(element, "table", None)) in old:
            return shared.c[element.name]
        return None

    condition = replacement_traverse(step.condition, {}, move)
    return replace(step, condition=condition, selectable=shared)


def _new_step(schema: str | None, name: str, columns: Iterable[str]) -> Step:
    table = Table(name, MetaData(), *(Column(c) for c in dict.fromkeys(columns)), schema=schema)
    return Step(table, false(), table, reason=CASCADE_REASON)


def extend(conn: Connection, plan: Plan, references: References, target: str) -> Plan:
    """``plan`` with every row a foreign key action would remove or change joined to it.

    Leaves no transaction open. A plan that no foreign key action reaches is returned
    as it is.
    """
    if not plan:
        return plan
    try:
        return _extend(conn, plan, references, target)
    finally:
        if conn.in_transaction():
            conn.rollback()


def _extend(conn: Connection, plan: Plan, references: References, target: str) -> Plan:
    default = _default_schema(conn)

    def norm(schema: str | None, name: str) -> tuple[str | None, str]:
        return (None if schema == default else schema, name)

    steps: dict[tuple[str | None, str], Step] = {}
    for step in plan.steps:
        steps[norm(step.table.schema, step.table.name)] = step
    incoming: dict[tuple[str | None, str], list[Reference]] = {}
    frontier = list(steps)
    while frontier:
        found = references.into(conn, target, frontier)
        for parent in frontier:
            incoming.setdefault(parent, [])
        fresh: list[tuple[str | None, str]] = []
        for ref in found:
            incoming.setdefault(ref.parent, []).append(ref)
            if ref.action == "CASCADE" and ref.child not in steps and ref.child not in fresh:
                fresh.append(ref.child)
        for child in fresh:
            steps[child] = _new_step(*child, ())
        frontier = fresh
    refs = [r for rs in incoming.values() for r in rs]
    if not any(r.action in ACTIONS for r in refs):
        return plan
    # every column a condition or a sub-select will name
    needed: dict[tuple[str | None, str], list[str]] = {k: [] for k in steps}
    for ref in refs:
        if ref.parent in steps:
            needed[ref.parent] += ref.referred
        if ref.child in steps:
            needed[ref.child] += ref.columns
    for key, cols in needed.items():
        steps[key] = _with_columns(steps[key], cols)
    order = _children_first(steps, plan, refs, norm)
    # conditions, parents first: a child's rows are those its parent's final rows reach
    for key in reversed(order):
        step = steps[key]
        reach = [
            _membership(
                [step.selectable.c[c] for c in ref.columns],
                _subquery(steps[ref.parent], ref.referred),
            )
            for ref in incoming_of(refs, key)
            if ref.action == "CASCADE" and ref.parent != key and ref.parent in steps
        ]
        if reach:
            step = replace(step, condition=or_(step.condition, *reach))
        for ref in incoming.get(key, []):
            if ref.action == "CASCADE" and ref.child == key:
                step = replace(step, condition=_closure(step, ref))
        steps[key] = step
    final: list[Step] = []
    for key in order:
        deleting = steps[key]
        for ref in incoming.get(key, []):
            if ref.action not in ("SET NULL", "SET DEFAULT"):
                continue
            changed = steps.get(ref.child) or _new_step(*ref.child, ref.columns)
            reached = _membership(
                [changed.selectable.c[c] for c in ref.columns], _subquery(deleting, ref.referred)
            )
            if changed.action == "delete" and not isinstance(changed.condition, False_):
                # rows the child's own delete removes are not changed, whenever this runs
                reached = and_(reached, not_(_definitely(changed.condition)))
            final.append(
                Step(
                    changed.table,
                    reached,
                    changed.selectable,
                    action="update",
                    reason=f"database {ref.action}",
                    changes=ref.columns,
                )
            )
        final.append(deleting)
    return Plan(tuple(final), plan.registrations)


def incoming_of(refs: Sequence[Reference], key: tuple[str | None, str]) -> list[Reference]:
    """The foreign keys of table ``key``."""
    return [r for r in refs if r.child == key]


def _default_schema(conn: Connection) -> str | None:
    name = conn.dialect.default_schema_name
    return str(name) if name else None


def _children_first(
    steps: dict[tuple[str | None, str], Step],
    plan: Plan,
    refs: Sequence[Reference],
    norm: Any,
) -> list[tuple[str | None, str]]:
    """Every delete step's table, children before the tables they reference."""
    graph: dict[tuple[str | None, str], set[tuple[str | None, str]]] = {k: set() for k in steps}
    for ref in refs:
        if ref.child in steps and ref.parent in steps and ref.child != ref.parent:
            graph[ref.parent].add(ref.child)
    for step in plan.steps:
        child = norm(step.table.schema, step.table.name)
        for fk in step.table.foreign_keys:
            schema, _, name = fk.target_fullname.rsplit(".", 1)[0].rpartition(".")
            parent = norm(schema or None, name)
            if parent in graph and parent != child:
                graph[parent].add(child)
    try:
        return list(
            TopologicalSorter(
                {k: sorted(v, key=_sort_key) for k, v in sorted(graph.items(), key=_sort_item)}
            ).static_order()
        )
    except CycleError as exc:
        cycle = " -> ".join(_key(*k) for k in dict.fromkeys(exc.args[1]))
        raise RegistrationError(
            f"tables {cycle} reference each other in a cycle through foreign keys with "
            "ON DELETE actions: their deletion cannot be ordered; register one table's "
            "cleanup per test"
        ) from None


def _sort_key(key: tuple[str | None, str]) -> tuple[str, str]:
    return (key[0] or "", key[1])


def _sort_item(item: tuple[tuple[str | None, str], Any]) -> tuple[str, str]:
    return _sort_key(item[0])


# ---------------------------------------------------------------------------- side effects

#: per watched relation: oid, name, the planned table it counts toward (1-based index into
#: :tables, for itself or as a partition), and this transaction's deleted, updated and
#: inserted tuples so far. Every table of the database is watched when a planned table,
#: or one of its inheritance children or partitions, has a trigger or a rule.
_PG_WATCH = text(
    """
WITH RECURSIVE planned AS (
    SELECT p.rel::oid AS oid, p.n FROM unnest(CAST(:tables AS regclass[])) WITH ORDINALITY
        AS p(rel, n)
), tree AS (
    SELECT oid FROM planned
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid
), wide AS (
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid IN (SELECT oid FROM tree) AND NOT t.tgisinternal
    ) OR EXISTS (
        SELECT 1 FROM pg_catalog.pg_rewrite r
        WHERE r.ev_class IN (SELECT oid FROM tree) AND r.rulename <> '_RETURN'
    ) AS yes
), watched AS (
    SELECT oid FROM tree
    UNION
    SELECT c.oid FROM pg_catalog.pg_class c, wide
    WHERE wide.yes AND c.relkind = 'r'
      AND c.relnamespace <> 'pg_catalog'::regnamespace
      AND c.relnamespace <> 'information_schema'::regnamespace
)
SELECT w.oid, c.oid::regclass::text,
       COALESCE(
           (SELECT p.n FROM planned p WHERE p.oid = w.oid),
           CASE WHEN c.relispartition THEN (
               SELECT p.n FROM pg_catalog.pg_partition_ancestors(w.oid) WITH ORDINALITY
                   AS a(rel, depth)
               JOIN planned p ON p.oid = a.rel ORDER BY a.depth LIMIT 1
           ) END
       ),
       pg_catalog.pg_stat_get_xact_tuples_deleted(w.oid),
       pg_catalog.pg_stat_get_xact_tuples_updated(w.oid),
       pg_catalog.pg_stat_get_xact_tuples_inserted(w.oid)
FROM watched w JOIN pg_catalog.pg_class c ON c.oid = w.oid
"""
)
TRUSTED = "outside the plan (safe_cleanup_triggers = trust)"


class SideEffect(RuntimeError):
    """The database deleted or changed rows outside the plan; the transaction rolls back."""


@dataclass(frozen=True)
class Watch:
    """The transaction's own per-table statistics before the deletes (PostgreSQL)."""

    tables: tuple[str, ...]  # the plan's table names, as :tables was given
    counters: dict[int, tuple[str, int | None, int, int, int]]


def _plan_tables(conn: Connection, plan: Plan) -> tuple[list[str], list[str]]:
    """The plan's table names (each once) and the same as regclass input."""
    quote = conn.dialect.identifier_preparer.quote
    formatted: dict[str, str] = {}
    for step in plan.steps:
        if step.name not in formatted:
            parts = (step.table.schema, step.table.name)
            formatted[step.name] = ".".join(quote(p) for p in parts if p)
    return list(formatted), list(formatted.values())


def _read(
    conn: Connection, formatted: list[str]
) -> dict[int, tuple[str, int | None, int, int, int]]:
    rows = conn.execute(_PG_WATCH, {"tables": formatted}).all()
    return {
        int(oid): (str(name), None if n is None else int(n), int(d), int(u), int(i))
        for oid, name, n, d, u, i in rows
    }


def watch(conn: Connection, plan: Plan) -> Watch | None:
    """Take the statistics the deletes will be checked against (PostgreSQL only)."""
    if conn.dialect.name != "postgresql" or not plan:
        return None
    names, formatted = _plan_tables(conn, plan)
    return Watch(tuple(names), _read(conn, formatted))


def verify(
    conn: Connection, plan: Plan, counts: Sequence[Any], before: Watch | None, triggers: str
) -> list[tuple[str, int, int, int]]:
    """What the database did beyond the plan: (table, deleted, changed, inserted) each.

    Rows deleted or changed outside the plan raise :class:`SideEffect` unless
    ``triggers`` is "trust"; rows inserted (audit tables) are reported, never refused.
    """
    if before is None:
        return []
    _, formatted = _plan_tables(conn, plan)
    after = _read(conn, formatted)
    actual: dict[str, list[int]] = {}
    for oid, (name, n, d, u, i) in after.items():
        old = before.counters.get(oid, (name, n, 0, 0, 0))
        owner = before.tables[n - 1] if n is not None else name
        got = actual.setdefault(owner, [0, 0, 0])
        got[0] += d - old[2]
        got[1] += u - old[3]
        got[2] += i - old[4]
    expected = {c.table: (c.counted, c.updated or 0) for c in counts}
    extra: list[tuple[str, int, int, int]] = []
    for owner, (d, u, i) in actual.items():
        want_d, want_u = expected.get(owner, (0, 0))
        if (d, u, i) != (want_d, want_u, 0):
            extra.append((owner, d - want_d, u - want_u, i))
    wrong = [e for e in extra if e[1] > 0 or e[2] > 0] or [e for e in extra if e[1] or e[2]]
    if wrong and triggers != "trust":
        owner, d, u, _ = wrong[0]
        what = " and ".join(
            part
            for part in (
                f"deleted {d} rows" if d else "",
                f"changed {u} rows" if u else "",
            )
            if part
        )
        others = f" (and {len(wrong) - 1} more tables)" if len(wrong) > 1 else ""
        raise SideEffect(
            f"{owner}: the database {what} outside the plan{others} (a trigger, a rule or an "
            "inheritance child of a planned table); rolled back, nothing was deleted: register "
            "those rows too, or set safe_cleanup_triggers = trust for triggers that keep "
            "counters or history"
        )
    return extra


_SQLITE_TRIGGER = re.compile(
    r"\b(?:BEFORE|AFTER|INSTEAD\s+OF)?\s*(DELETE|UPDATE)\b(?:\s+OF\s+[^;]*?)?\s+ON\s",
    re.IGNORECASE,
)


def catalog_triggers(conn: Connection, plan: Plan) -> list[str]:
    """Delete and update triggers on planned tables, from the catalog (SQLite).

    Where the database cannot say what a transaction touched, a trigger that a cleanup
    fires is found before anything runs: "table: trigger (DELETE)" each.
    """
    if conn.dialect.name != "sqlite" or not plan:
        return []
    names = {step.table.name for step in plan.steps if step.table.schema in (None, "main")}
    found = []
    rows = conn.exec_driver_sql(
        "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
    )
    for name, table, sql in rows:
        if table not in names:
            continue
        head = re.split(r"\sBEGIN\b", " ".join(str(sql or "").split()).upper(), maxsplit=1)[0]
        match = _SQLITE_TRIGGER.search(head.split(" ON ", 1)[0] + " ON ")
        if match is not None:
            found.append(f"{table}: trigger {name} ({match.group(1).upper()})")
    return found


__all__ = [
    "CASCADE_REASON",
    "Reference",
    "References",
    "SideEffect",
    "TableClause",
    "Watch",
    "catalog_triggers",
    "extend",
    "verify",
    "watch",
]
