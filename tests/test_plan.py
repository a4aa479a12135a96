"""Registrations -> plan -> count/apply, against real rows in SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    exists,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

from pytest_safe_cleanup import executor, guard, target
from pytest_safe_cleanup.executor import ExecutionError, LimitExceeded
from pytest_safe_cleanup.plan import (
    Plan,
    Registration,
    RegistrationBook,
    RegistrationError,
    SafeCleanup,
    TableResolver,
    build_condition,
    build_plan,
)
from pytest_safe_cleanup.settings import resolve
from pytest_safe_cleanup.stamp import STAMP_TABLE, write_stamp

SETTINGS = resolve({}, {}, {})


def schema() -> tuple[MetaData, dict[str, Table]]:
    md = MetaData()
    accounts = Table(
        "accounts", md, Column("id", Integer, primary_key=True), Column("name", String(50))
    )
    users = Table(
        "users",
        md,
        Column("id", Integer, primary_key=True),
        Column("account_id", ForeignKey("accounts.id"), nullable=False),
        Column("email", String(100)),
        Column("team", String(20), nullable=True),
    )
    assets = Table(
        "assets",
        md,
        Column("id", Integer, primary_key=True),
        Column("user_id", ForeignKey("users.id"), nullable=False),
        Column("label", String(50)),
    )
    employees = Table(
        "employees",
        md,
        Column("id", Integer, primary_key=True),
        Column("manager_id", ForeignKey("employees.id"), nullable=True),
    )
    return md, {t.name: t for t in (accounts, users, assets, employees)}


ROWS: dict[str, list[dict[str, Any]]] = {
    "accounts": [{"id": 1, "name": "acme"}, {"id": 2, "name": "globex"}],
    "users": [
        {"id": 1, "account_id": 1, "email": "u1@x.test", "team": "red"},
        {"id": 2, "account_id": 1, "email": "u2@x.test", "team": "red"},
        {"id": 3, "account_id": 1, "email": "u3@x.test", "team": "red"},
        {"id": 4, "account_id": 2, "email": "u4@x.test", "team": "blue"},
        {"id": 5, "account_id": 2, "email": "u5@x.test", "team": "blue"},
        {"id": 6, "account_id": 2, "email": "u6@x.test", "team": None},
    ],
    "assets": [
        {"id": 1, "user_id": 1, "label": "laptop"},
        {"id": 2, "user_id": 1, "label": "phone"},
        {"id": 3, "user_id": 2, "label": "laptop"},
        {"id": 4, "user_id": 4, "label": "laptop"},
        {"id": 5, "user_id": 5, "label": "badge"},
    ],
    "employees": [
        {"id": 1, "manager_id": None},
        {"id": 2, "manager_id": 1},
        {"id": 3, "manager_id": 2},
    ],
}


def sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _fk_on(dbapi_conn: Any, _: Any) -> None:  # enforce FKs: order must really matter
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


def seed(engine: Engine) -> dict[str, Table]:
    md, tables = schema()
    md.create_all(engine)
    with engine.begin() as conn:
        for name in ("accounts", "users", "assets", "employees"):
            conn.execute(tables[name].insert(), ROWS[name])
    return tables


def ids(engine: Engine, table: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(text(f"SELECT id FROM {table}")).scalars())


def all_ids(engine: Engine) -> dict[str, set[int]]:
    return {name: ids(engine, name) for name in ROWS}


SEEDED = {name: {r["id"] for r in rows} for name, rows in ROWS.items()}


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Engine]:
    engine = sqlite_engine(tmp_path / "cleanup.db")
    seed(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path / "cleanup.db")
    else:
        engine = create_engine(request.getfixturevalue("pg_url"))
    seed(engine)
    yield engine
    engine.dispose()


def reg(table: Table, *where: Any, all_rows: bool = False, **equals: Any) -> Registration:
    return Registration(table, build_condition(table, where, equals, all_rows), all_rows)


def allow(engine: Engine) -> guard.Verdict:
    environment = guard.read_environment(("ENVIRONMENT",), {"ENVIRONMENT": "test"})
    verdict = guard.evaluate(environment, target.from_url(engine.url), None, SETTINGS)
    assert verdict.level is guard.Level.ALLOW
    return verdict


# --- ordering -------------------------------------------------------------------------------

_, T = schema()
ORDER_INPUTS = list(itertools.permutations(["accounts", "users", "assets", "employees"]))


@pytest.mark.parametrize("names", ORDER_INPUTS, ids=["-".join(p) for p in ORDER_INPUTS])
def test_children_before_parents_whatever_the_registration_order(names: tuple[str, ...]) -> None:
    plan = build_plan([reg(T[n], T[n].c.id == 1) for n in names])
    order = plan.tables
    assert sorted(order) == sorted(names)  # one step per table
    assert order.index("assets") < order.index("users") < order.index("accounts")


def test_self_reference_is_one_step() -> None:
    plan = build_plan([reg(T["employees"], id=[2, 3]), reg(T["employees"], manager_id=None)])
    assert plan.tables == ["employees"]


def test_two_table_cycle_is_refused_naming_the_tables() -> None:
    md = MetaData()
    invoices = Table(
        "invoices",
        md,
        Column("id", Integer, primary_key=True),
        Column("payment_id", ForeignKey("payments.id")),
    )
    payments = Table(
        "payments",
        md,
        Column("id", Integer, primary_key=True),
        Column("invoice_id", ForeignKey("invoices.id")),
    )
    with pytest.raises(RegistrationError) as info:
        build_plan([reg(invoices, id=1), reg(payments, id=1)])
    message = str(info.value)
    assert "invoices" in message and "payments" in message and "cycle" in message
    # one side of the cycle alone plans fine
    assert build_plan([reg(invoices, id=1)]).tables == ["invoices"]


# --- conditions on the same table are OR-ed, rows counted once ------------------------------


def test_same_table_conditions_or_ed_and_counted_once(db: Engine) -> None:
    users = T["users"]
    regs = [
        reg(users, team="red"),  # 1, 2, 3
        reg(users, id=[3, 4]),  # 3, 4
        reg(users, users.c.email == "u1@x.test"),  # 1
        reg(T["assets"], user_id=[1, 4]),  # assets 1, 2, 4
        reg(T["assets"], label="laptop"),  # assets 1, 3, 4
    ]
    plan = build_plan(regs)
    assert plan.tables == ["assets", "users"]
    with db.connect() as conn:
        counts = {c.table: c.counted for c in executor.count(conn, plan)}
        each = [
            conn.execute(select(func.count()).select_from(r.table).where(r.condition)).scalar()
            for r in regs[:3]
        ]
    assert counts == {"users": 4, "assets": 4}
    assert sum(each) == 6  # what counting registrations one by one would have claimed
    assert all_ids(db) == SEEDED  # counting changes nothing


def test_model_table_and_reflected_table_combined_in_one_step(db: Engine) -> None:
    model_users = T["users"]
    reflected = TableResolver(db).resolve("users")
    assert reflected is not model_users and reflected.name == "users"
    plan = build_plan(
        [
            reg(model_users, team="red"),  # 1, 2, 3
            reg(reflected, reflected.c.id.in_([3, 4])),  # 3, 4
            reg(model_users, id=6),  # 6
        ]
    )
    assert plan.tables == ["users"]
    with db.connect() as conn:
        (count,) = executor.count(conn, plan)
    assert (count.table, count.counted) == ("users", 5)
    # and the combined statement deletes those rows in one transaction (with their assets)
    assets = TableResolver(db).resolve("assets")
    plan = build_plan([*plan.registrations, reg(assets, user_id=[1, 2, 3, 4, 6])])
    done, _ = executor.apply(db, plan, verdict=allow(db), max_rows=100, backup=None)
    assert [(c.table, c.counted, c.deleted) for c in done] == [("assets", 4, 4), ("users", 5, 5)]
    assert ids(db, "users") == {5}
    assert ids(db, "assets") == {5}


def test_foreign_keys_of_every_same_named_table_order_the_plan(db: Engine) -> None:
    """A model that does not declare the FK, registered first, beside a reflected table."""
    loose = Table(
        "users", MetaData(), Column("id", Integer, primary_key=True), Column("account_id", Integer)
    )
    resolver = TableResolver(db)
    users, accounts = resolver.resolve("users"), resolver.resolve("accounts")
    assets = resolver.resolve("assets")
    plan = build_plan(
        [
            reg(loose, id=[1, 2, 3]),
            reg(accounts, id=1),
            reg(users, account_id=1),
            reg(assets, user_id=[1, 2]),
        ]
    )
    assert plan.tables == ["assets", "users", "accounts"]
    executor.apply(db, plan, verdict=allow(db), max_rows=100, backup=None)  # FKs enforced
    assert (ids(db, "accounts"), ids(db, "users"), ids(db, "assets")) == ({2}, {4, 5, 6}, {4, 5})


# --- build_condition --------------------------------------------------------------------------

USERS = T["users"]
CONDITION_ERRORS = [
    ("no-condition", (), {}, False, "refusing to register a cleanup of every row of 'users'"),
    ("plain-string", ("id = 1",), {}, False, "condition 'id = 1' is a plain string"),
    ("bool", (True,), {}, False, "is not a SQLAlchemy expression"),
    ("python-value", (5,), {}, False, "is not a SQLAlchemy expression"),
    (
        "unknown-column",
        (),
        {"emial": "x"},
        False,
        "table 'users' has no column 'emial' (columns: id, account_id, email, team)",
    ),
    ("all-rows-with-condition", (), {"id": 1}, True, "all_rows=True takes no condition"),
]


@pytest.mark.parametrize(
    ("where", "equals", "all_rows", "message"),
    [c[1:] for c in CONDITION_ERRORS],
    ids=[c[0] for c in CONDITION_ERRORS],
)
def test_build_condition_refuses(
    where: tuple[Any, ...], equals: dict[str, Any], all_rows: bool, message: str
) -> None:
    with pytest.raises(RegistrationError) as info:
        build_condition(USERS, where, equals, all_rows)
    assert message in str(info.value)


CONDITIONS = [
    # (id, where, equals, all_rows, SQL fragment, user ids matched)
    ("equals", (), {"email": "u2@x.test"}, False, "users.email = 'u2@x.test'", {2}),
    ("list-is-in", (), {"id": [1, 5]}, False, "users.id IN (1, 5)", {1, 5}),
    ("tuple-is-in", (), {"id": (2, 3)}, False, "users.id IN (2, 3)", {2, 3}),
    ("set-is-in", (), {"team": {"blue"}}, False, "users.team IN ('blue')", {4, 5}),
    ("none-is-null", (), {"team": None}, False, "users.team IS NULL", {6}),
    ("expression", (USERS.c.id > 4,), {}, False, "users.id > 4", {5, 6}),
    ("text-clause", (text("users.id < 2"),), {}, False, "users.id < 2", {1}),
    ("and-of-all", (USERS.c.id < 3,), {"team": "red"}, False, " AND ", {1, 2}),
    ("all-rows", (), {}, True, "true", {1, 2, 3, 4, 5, 6}),
]


@pytest.mark.parametrize(
    ("where", "equals", "all_rows", "fragment", "matched"),
    [c[1:] for c in CONDITIONS],
    ids=[c[0] for c in CONDITIONS],
)
def test_build_condition(
    sqlite_db: Engine,
    where: tuple[Any, ...],
    equals: dict[str, Any],
    all_rows: bool,
    fragment: str,
    matched: set[int],
) -> None:
    condition = build_condition(USERS, where, equals, all_rows)
    sql = str(condition.compile(sqlite_db, compile_kwargs={"literal_binds": True}))
    assert fragment.lower() in sql.lower() or (all_rows and sql in ("1", "1 = 1", "true"))
    with sqlite_db.connect() as conn:
        found = set(conn.execute(select(USERS.c.id).where(condition)).scalars())
    assert found == matched


# --- resolving tables ---------------------------------------------------------------------------


def test_missing_table_is_refused_saying_it_does_not_exist(sqlite_db: Engine) -> None:
    with pytest.raises(RegistrationError) as info:
        TableResolver(sqlite_db).resolve("missing_table")
    message = str(info.value)
    assert "table 'missing_table' does not exist in sqlite:///" in message
    assert "check the name" in message


@pytest.mark.parametrize("bad", [42, "", "   ", None], ids=["int", "empty", "blank", "none"])
def test_resolver_refuses_what_is_not_a_table(sqlite_db: Engine, bad: Any) -> None:
    with pytest.raises(RegistrationError, match="pass a SQLAlchemy Table, an ORM class"):
        TableResolver(sqlite_db).resolve(bad)


def test_resolver_reflects_once(sqlite_db: Engine) -> None:
    resolver = TableResolver(sqlite_db)
    first = resolver.resolve("users")
    assert resolver.resolve("users") is first
    assert [c.name for c in first.c] == ["id", "account_id", "email", "team"]
    assert resolver.resolve(T["users"]) is T["users"]  # a Table passes through


def test_stamp_table_is_never_cleaned(sqlite_db: Engine) -> None:
    with sqlite_db.begin() as conn:
        write_stamp(conn, "test")
    stamp = TableResolver(sqlite_db).resolve(STAMP_TABLE)
    with pytest.raises(RegistrationError, match=f"{STAMP_TABLE} holds the database's stamp"):
        build_plan([reg(stamp, environment="test")])
    cleanup = SafeCleanup(
        sqlite_db, book=RegistrationBook(), tag="t1", context=lambda: ("test_x", frozenset())
    )
    for table in (STAMP_TABLE, stamp):
        with pytest.raises(RegistrationError, match="is never cleaned"):
            cleanup.delete(table, all_rows=True)
    with pytest.raises(RegistrationError, match="does not exist"):
        cleanup.delete("missing_table", id=1)
    with sqlite_db.connect() as conn:
        assert conn.execute(text(f"SELECT environment FROM {STAMP_TABLE}")).scalars().all() == [
            "test"
        ]


# --- executor.apply on SQLite -----------------------------------------------------------------


def tenant_plan() -> Plan:
    """Account 1, its users (1-3) and their assets (1-3): 7 rows over three tables."""
    return build_plan(
        [
            reg(T["accounts"], id=1),
            reg(T["users"], account_id=1),
            reg(T["assets"], user_id=[1, 2, 3]),
        ]
    )


def test_apply_deletes_exactly_the_counted_rows(sqlite_db: Engine) -> None:
    plan = tenant_plan()
    with sqlite_db.connect() as conn:
        counted = [(c.table, c.counted) for c in executor.count(conn, plan)]
    assert counted == [("assets", 3), ("users", 3), ("accounts", 1)]
    done, backup = executor.apply(
        sqlite_db, plan, verdict=allow(sqlite_db), max_rows=10000, backup=None
    )
    assert backup is None
    assert [(c.table, c.counted) for c in done] == counted
    assert all(c.deleted == c.counted for c in done)
    assert all_ids(sqlite_db) == {
        "accounts": {2},
        "users": {4, 5, 6},
        "assets": {4, 5},
        "employees": {1, 2, 3},
    }


def test_text_condition_keeps_its_or_inside_the_and(db: Engine) -> None:
    """text("a OR b") with team=... must not read "a OR b AND team = ..." (other rows)."""
    users = T["users"]
    plan = build_plan([reg(users, text("id = 6 OR id = 3"), team="red")])
    done, _ = executor.apply(db, plan, verdict=allow(db), max_rows=10000, backup=None)
    assert [(c.table, c.counted, c.deleted) for c in done] == [("users", 1, 1)]
    assert ids(db, "users") == SEEDED["users"] - {3}, "user 6 (no team) must stay"


@pytest.mark.parametrize(
    ("max_rows", "refused"), [(6, True), (0, True), (7, False)], ids=["one-over", "zero", "equal"]
)
def test_max_rows(sqlite_db: Engine, max_rows: int, refused: bool) -> None:
    verdict = allow(sqlite_db)
    if refused:
        with pytest.raises(LimitExceeded, match=f"matches 7 rows, more than max_rows={max_rows}"):
            executor.apply(
                sqlite_db, tenant_plan(), verdict=verdict, max_rows=max_rows, backup=None
            )
        assert all_ids(sqlite_db) == SEEDED
    else:
        done, _ = executor.apply(
            sqlite_db, tenant_plan(), verdict=verdict, max_rows=max_rows, backup=None
        )
        assert [(c.table, c.counted, c.deleted) for c in done] == [
            ("assets", 3, 3),
            ("users", 3, 3),
            ("accounts", 1, 1),
        ]
        assert sum(len(v) for v in all_ids(sqlite_db).values()) == 16 - 7
        assert all_ids(sqlite_db) == {
            "accounts": {2},
            "users": {4, 5, 6},
            "assets": {4, 5},
            "employees": {1, 2, 3},
        }


BLOCKS = [
    ("production-environment", {"ENVIRONMENT": "production"}, None, "'production' is a blocked"),
    ("production-stamp", {"ENVIRONMENT": "test"}, "production", "stamped 'production'"),
    ("staging-stamp-unset-env", {}, "staging", "stamped 'staging'"),
]


@pytest.mark.parametrize(
    ("environ", "stamp", "words"), [c[1:] for c in BLOCKS], ids=[c[0] for c in BLOCKS]
)
def test_block_verdict_stops_apply_before_any_delete(
    sqlite_db: Engine, environ: dict[str, str], stamp: str | None, words: str
) -> None:
    statements: list[str] = []

    @event.listens_for(sqlite_db, "before_cursor_execute")
    def _seen(conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    environment = guard.read_environment(("ENVIRONMENT",), environ)
    verdict = guard.evaluate(environment, target.from_url(sqlite_db.url), stamp, SETTINGS)
    assert verdict.level is guard.Level.BLOCK
    with pytest.raises(ExecutionError, match=f"refused: .*{words}"):
        executor.apply(sqlite_db, tenant_plan(), verdict=verdict, max_rows=10000, backup=None)
    assert statements == []  # refused before it even connected
    event.remove(sqlite_db, "before_cursor_execute", _seen)
    assert all_ids(sqlite_db) == SEEDED


def test_failing_backup_rolls_back(sqlite_db: Engine) -> None:
    def backup(conn: Connection, plan: Plan, counts: list[executor.TableCount]) -> str:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        executor.apply(
            sqlite_db, tenant_plan(), verdict=allow(sqlite_db), max_rows=100, backup=backup
        )
    assert all_ids(sqlite_db) == SEEDED


def test_count_mismatch_rolls_everything_back(sqlite_db: Engine) -> None:
    """A condition that depends on rows deleted earlier: counted 3, deleted 0 -> nothing."""
    users, assets = T["users"], T["assets"]
    plan = build_plan(
        [
            reg(assets, user_id=[1, 2, 4]),
            reg(users, exists().where(assets.c.user_id == users.c.id).where(users.c.id < 4)),
        ]
    )
    with pytest.raises(executor.CountMismatch, match="users: counted 2 rows but the delete"):
        executor.apply(sqlite_db, plan, verdict=allow(sqlite_db), max_rows=100, backup=None)
    assert all_ids(sqlite_db) == SEEDED


# --- track / track_session: key values go to their columns, never to a position --------------


def _composite_models(variant: str) -> Any:
    """A mapped class whose mapper's key order differs from its table's key order."""
    from sqlalchemy import PrimaryKeyConstraint
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    if variant == "mapper_args":
        pairs = Table(
            "pairs",
            Base.metadata,
            Column("a", Integer, primary_key=True, autoincrement=False),
            Column("b", Integer, primary_key=True, autoincrement=False),
            Column("note", String(20)),
        )
        mapper_order = [pairs.c.b, pairs.c.a]
    else:  # the table's constraint lists b first; the mapper is told a first
        pairs = Table(
            "pairs",
            Base.metadata,
            Column("a", Integer, autoincrement=False),
            Column("b", Integer, autoincrement=False),
            Column("note", String(20)),
            PrimaryKeyConstraint("b", "a"),
        )
        mapper_order = [pairs.c.a, pairs.c.b]

    class Pair(Base):
        __table__ = pairs
        __mapper_args__ = {"primary_key": mapper_order}  # noqa: RUF012

    assert [c.name for c in Pair.__mapper__.primary_key] != [c.name for c in pairs.primary_key]
    return Pair


@pytest.mark.parametrize("how", ["track", "track_session"])
@pytest.mark.parametrize("variant", ["mapper_args", "constraint_order"])
def test_track_matches_a_composite_key_by_column(pg_url: str, variant: str, how: str) -> None:
    from sqlalchemy.orm import Session

    pair_class = _composite_models(variant)
    engine = create_engine(pg_url)
    try:
        pair_class.metadata.create_all(engine)
        with engine.begin() as conn:  # rows the test never made: (2, 1) mirrors its key
            conn.execute(
                text("INSERT INTO pairs (a, b, note) VALUES (2, 1, 'keep'), (1, 1, 'keep')")
            )
        book = RegistrationBook()
        cleanup = SafeCleanup(engine, book=book, tag="t1", context=lambda: ("t", frozenset()))
        with Session(engine) as session:
            if how == "track_session":
                cleanup.track_session(session)
            made = pair_class(a=1, b=2, note="made")
            session.add(made)
            session.commit()
            if how == "track":
                cleanup.track(made)
            registrations = [r for _, regs in book.drain() for r in regs]
        plan = build_plan(registrations)
        done, _ = executor.apply(engine, plan, verdict=allow(engine), max_rows=10, backup=None)
        assert [(c.table, c.counted, c.deleted) for c in done] == [("pairs", 1, 1)]
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT a, b, note FROM pairs ORDER BY a, b")).all()
        assert [tuple(r) for r in rows] == [(1, 1, "keep"), (2, 1, "keep")]
    finally:
        engine.dispose()


def test_track_fills_a_joined_inheritance_child_key_through_its_foreign_key(
    sqlite_db: Engine,
) -> None:
    from sqlalchemy.orm import DeclarativeBase, Session

    from pytest_safe_cleanup.plan import tracked_registrations

    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = "people"
        id = Column(Integer, primary_key=True, autoincrement=False)
        kind = Column(String(10), nullable=False)
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}  # noqa: RUF012

    class Engineer(Person):
        __tablename__ = "engineers"
        engineer_id = Column(Integer, ForeignKey("people.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "engineer"}  # noqa: RUF012

    Base.metadata.create_all(sqlite_db)
    with Session(sqlite_db) as session:
        session.add_all([Engineer(id=7), Engineer(id=8)])
        session.commit()
        made = session.get(Engineer, 8)
        registrations = tracked_registrations([made], "t", frozenset())
    plan = build_plan(registrations)
    done, _ = executor.apply(sqlite_db, plan, verdict=allow(sqlite_db), max_rows=10, backup=None)
    assert [(c.table, c.deleted) for c in done] == [("engineers", 1), ("people", 1)]
    assert ids(sqlite_db, "people") == {7}
    with sqlite_db.connect() as conn:
        assert conn.execute(text("SELECT engineer_id FROM engineers")).scalars().all() == [7]
