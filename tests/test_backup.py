"""Layer 4 against real databases: rows backups written in the deleting transaction,
restored value for value; folders, retention, refusals; the pg_dump strategy."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from decimal import Decimal
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import assert_same_rows, same
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup import executor, plan
from pytest_safe_cleanup.backup import (
    BackupError,
    BackupStore,
    RestoreConflict,
    decode,
    dump_database,
    encode,
    list_runs,
    read_backup,
    restore,
    restore_backup,
)
from pytest_safe_cleanup.backup import journal as journal_module
from pytest_safe_cleanup.backup import store as store_module
from pytest_safe_cleanup.backup.format import read_journal, split_location
from pytest_safe_cleanup.backup.store import RUN_MARKER
from pytest_safe_cleanup.guard import Level, Verdict
from pytest_safe_cleanup.target import from_url

ALLOW = Verdict(Level.ALLOW, ())


# ---------------------------------------------------------------------------- helpers


def engine_for(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


def rows_of(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    """Every row as the driver returns it (no SQLAlchemy types), ordered by id."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def registration(table: str, *ids: int) -> plan.Registration:
    """A registration through a Table that maps only ``id``: SELECT * must keep the rest."""
    t = Table(table, MetaData(), Column("id", Integer, primary_key=True))
    return plan.Registration(t, t.c.id.in_(ids))


def journal_of(location: Path) -> Path:
    """The journal file a ``<journal>#N`` location names."""
    return split_location(location)[0]


def apply_with_backup(
    engine: Engine, store: BackupStore, regs: list[plan.Registration], nodeid: str = "t.py::x"
) -> tuple[list[executor.TableCount], Path]:
    """Apply as the runner does: the store writes inside executor.apply's transaction."""
    target = from_url(engine.url)
    written: list[Path] = []

    def hook(conn: Any, p: plan.Plan, counts: list[executor.TableCount]) -> str:
        info = store.write_rows(conn, p, counts, nodeid=nodeid, target=target)
        written.append(info.path)
        return str(info.path)

    done, location = executor.apply(
        engine, plan.build_plan(regs), verdict=ALLOW, max_rows=10000, backup=hook
    )
    assert location == str(written[0])
    return done, written[0]


# ---------------------------------------------------------------------------- codec

CODEC_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**63,
    -(10**5000),
    1.5,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    Decimal("1.10"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    Decimal("1E+30"),
    Decimal("-0.000"),
    "",
    "text with \n and \ud800 and é",
    b"",
    bytes(range(256)),
    bytearray(b"ab"),
    dt.date(1, 1, 1),
    dt.time(23, 59, 59, 999999),
    dt.time(12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2020, 2, 29, 1, 2, 3, 456789),
    dt.datetime(2021, 3, 28, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
    dt.datetime(2021, 10, 31, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
    dt.timedelta(days=-3, microseconds=1),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {"$dec": "not a tag", "nested": [{"$obj": 1}, None]},
    {"a": {"$bytes": "x"}},
    [1, None, [2, [None]]],
    (1, "a"),
    ip_address("::1"),
    ip_interface("10.1.2.3/8"),
    ip_network("192.168.0.0/16"),
]


@pytest.mark.parametrize("value", CODEC_VALUES, ids=lambda v: type(v).__name__)
def test_codec_round_trips_exactly_through_json(value: Any) -> None:
    line = json.dumps(encode(value), allow_nan=False)
    back = decode(json.loads(line))
    if isinstance(value, bytearray):
        assert back == bytes(value)
    else:
        assert same(value, back)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        assert back.fold == value.fold and back.utcoffset() == value.utcoffset()


def test_codec_refuses_what_it_cannot_keep() -> None:
    with pytest.raises(ValueError, match=r"cannot encode a builtins\.object"):
        encode(object())
    with pytest.raises(ValueError, match="unknown tag"):
        decode({"$nope": 1})


# ---------------------------------------------------------------------------- PostgreSQL

PG_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE everything (
    id integer PRIMARY KEY, i integer, bi bigint, n numeric, f double precision, t text,
    b bytea, bo boolean, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
    iv interval, u uuid, j json, jb jsonb, ia integer[], ta text[], m mood, ip inet
);
"""
PG_COLUMNS = (
    "i",
    "bi",
    "n",
    "f",
    "t",
    "b",
    "bo",
    "d",
    "tm",
    "ttz",
    "ts",
    "tstz",
    "iv",
    "u",
    "j",
    "jb",
    "ia",
    "ta",
    "m",
    "ip",
)
PG_INSERT = text(
    "INSERT INTO everything VALUES (:id, :i, :bi, :n, :f, :t, :b, :bo, :d, :tm, :ttz, :ts, "
    ":tstz, :iv, :u, CAST(:j AS json), CAST(:jb AS jsonb), :ia, :ta, CAST(:m AS mood), "
    "CAST(:ip AS inet))"
)
PG_ROWS: list[dict[str, Any]] = [
    dict(
        id=1,
        i=-(2**31),
        bi=2**63 - 1,
        n=Decimal("12345678901234567890.123456789"),
        f=1e308,
        t='héllo "quotes"\n{"$dec": 1}',
        b=bytes(range(256)),
        bo=True,
        d=dt.date(1999, 12, 31),
        tm=dt.time(23, 59, 59, 999999),
        ttz=dt.time(12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        ts=dt.datetime(2020, 2, 29, 1, 2, 3, 456789),
        tstz=dt.datetime(2021, 3, 28, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
        iv=dt.timedelta(days=3, seconds=7, microseconds=11),
        u=uuid.uuid4(),
        j='{"$dec": "not a tag", "nested": [1, 2.5, null, "x"]}',
        jb='{"a": {"$obj": 1}, "b": [true, false]}',
        ia=[1, None, 3],
        ta=["a", None, "c,d"],
        m="happy",
        ip="10.1.2.3/8",
    ),
    dict(
        id=2,
        i=0,
        bi=-(2**63),
        n=Decimal("NaN"),
        f=float("nan"),
        t="",
        b=b"",
        bo=False,
        d=dt.date(1, 1, 1),
        tm=dt.time(0, 0),
        ttz=dt.time(0, 0, tzinfo=dt.UTC),
        ts=dt.datetime(1970, 1, 1),
        tstz=dt.datetime(2038, 1, 19, 3, 14, 7, tzinfo=dt.UTC),
        iv=dt.timedelta(microseconds=-1),
        u=uuid.UUID(int=0),
        j='"a JSON string"',
        jb="[[1, 2], {}, null]",
        ia=[[1, 2], [3, None]],
        ta=[],
        m="sad",
        ip="::1",
    ),
    dict(
        id=3,
        **dict.fromkeys(PG_COLUMNS),
    ),
    dict(
        id=4,
        i=7,
        bi=7,
        n=Decimal("-1E-20"),
        f=float("-inf"),
        t="x" * 10000,
        b=b"\x00",
        bo=None,
        d=None,
        tm=None,
        ttz=None,
        ts=None,
        tstz=None,
        iv=dt.timedelta(days=-400),
        u=None,
        j="[]",
        jb='{"deep": {"deeper": [1.5, "2", {"$tuple": []}]}}',
        ia=[None, None],
        ta=[None],
        m=None,
        ip=None,
    ),
]


@pytest.fixture
def pg_everything(pg_url: str) -> Engine:
    engine = engine_for(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(PG_SCHEMA)
        conn.execute(PG_INSERT, PG_ROWS)
        conn.execute(PG_INSERT, [dict(PG_ROWS[2], id=99)])  # a row the cleanup leaves
    return engine


def test_postgres_round_trip_of_every_type(pg_everything: Engine, tmp_path: Path) -> None:
    engine = pg_everything
    before = rows_of(engine, "everything WHERE id < 99")
    assert before[0][19] == "happy" and isinstance(before[0][3], Decimal)  # the driver's types

    store = BackupStore(tmp_path / "backups", "run-1")
    done, path = apply_with_backup(engine, store, [registration("everything", 1, 2, 3, 4)])
    assert [(c.table, c.counted, c.deleted) for c in done] == [("everything", 4, 4)]
    assert count(engine, "everything") == 1

    backup = read_backup(path)
    assert backup.counts == {"everything": 4}
    assert backup.tables[0].columns[:3] == ("id", "i", "bi")  # unmapped columns kept
    assert backup.header["dialect"] == "postgresql" and backup.header["nodeid"] == "t.py::x"

    result = restore(path, engine)
    assert result.restored == {"everything": 4} and result.skipped == {"everything": 0}
    after = rows_of(engine, "everything WHERE id < 99")
    assert_same_rows(before, after)
    with engine.connect() as conn:  # SQL NULL stayed NULL, JSON 'null' inside stayed JSON
        nulls = conn.execute(
            text(
                "SELECT j IS NULL, jb IS NULL, jb::text FROM everything WHERE id IN (2, 3) "
                "ORDER BY id"
            )
        ).all()
    assert [tuple(r) for r in nulls] == [(False, False, "[[1, 2], {}, null]"), (True, True, None)]


def apply_capturing(
    url: str, store: BackupStore, regs: list[plan.Registration], *, use_async: bool
) -> tuple[list[executor.TableCount], Path, str]:
    """Apply as the runner does on PostgreSQL: the deletes return the rows they remove."""
    seen: list[str] = []

    def run(conn: Any) -> tuple[list[executor.TableCount], str | None]:
        def capture(c: Any, p: plan.Plan) -> executor.Capture:
            return store.begin(c.dialect.name, p, nodeid="t.py::x", target=from_url(c.engine.url))

        seen.append(f"{conn.dialect.driver}{' async' if conn.dialect.is_async else ''}")
        return executor.apply(
            conn,
            plan.build_plan(regs),
            verdict=ALLOW,
            max_rows=10000,
            backup=None,
            capture=capture,
        )

    if use_async:
        from sqlalchemy.ext.asyncio import create_async_engine

        async def main() -> tuple[list[executor.TableCount], str | None]:
            engine = create_async_engine(url, poolclass=NullPool)
            try:
                async with engine.connect() as aconn:
                    return await aconn.run_sync(run)
            finally:
                await engine.dispose()

        done, location = asyncio.run(main())
    else:
        engine = engine_for(url)
        with engine.connect() as conn:
            done, location = run(conn)
    store.close()
    assert location is not None
    return done, Path(location), seen[0]


@pytest.mark.parametrize("use_async", [False, True], ids=["psycopg", "psycopg-async"])
def test_postgres_rows_captured_by_the_delete_round_trip_exactly(
    pg_everything: Engine, pg_url: str, tmp_path: Path, use_async: bool
) -> None:
    engine = pg_everything
    before = rows_of(engine, "everything WHERE id < 99")
    store = BackupStore(tmp_path / "backups", "run-1")
    done, path, driver = apply_capturing(
        pg_url, store, [registration("everything", 1, 2, 3, 4)], use_async=use_async
    )
    assert driver == ("psycopg async" if use_async else "psycopg")
    assert [(c.table, c.counted, c.deleted) for c in done] == [("everything", 4, 4)]
    assert count(engine, "everything") == 1
    journal = journal_of(path)
    assert path.name == "main.journal#1"
    assert sorted(p.name for p in journal.parent.iterdir()) == [
        ".gitignore",
        RUN_MARKER,
        journal.name,
    ]

    backup = read_backup(path)
    # on every driver each row is the server's own text of the whole row
    assert backup.tables[0].encoding == executor.ROW_TEXT
    assert backup.tables[0].columns[:2] == ("id", "i")
    first = backup.tables[0].rows[0][0]
    assert first.startswith("(1,-2147483648,") and ",12345678901234567890.123456789," in first
    # every value is text (psycopg 3.1 and 3.2 loaded uuid, json and numeric as Python values)
    values = [v for row in backup.tables[0].rows for v in row]
    assert all(v is None or type(v) is str for v in values)
    assert restore(path, engine).restored == {"everything": 4}
    assert_same_rows(before, rows_of(engine, "everything WHERE id < 99"))


def test_a_failed_capture_leaves_no_file_and_deletes_nothing(
    pg_everything: Engine, pg_url: str, tmp_path: Path
) -> None:
    engine = pg_everything
    store = BackupStore(tmp_path / "backups", "run-1")
    with engine.begin() as conn:  # a trigger keeps a row the count included
        conn.exec_driver_sql(
            "CREATE FUNCTION keep_two() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RETURN NULL; END $$; "
            "CREATE TRIGGER keep_two BEFORE DELETE ON everything FOR EACH ROW "
            "WHEN (OLD.id = 2) EXECUTE FUNCTION keep_two()"
        )
    with pytest.raises(executor.CountMismatch, match="counted 4 rows but the delete removed 3"):
        apply_capturing(pg_url, store, [registration("everything", 1, 2, 3, 4)], use_async=False)
    assert count(engine, "everything") == 5
    assert sorted(p.name for p in store.folder.iterdir()) == [".gitignore", RUN_MARKER]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_its_own_backup(sqlite_rows: Engine, tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "b", "r")
    apply_with_backup(sqlite_rows, store, [registration("things", 1)])  # the writer starts
    pid = os.fork()
    if pid == 0:  # the child has the pool object but not its thread
        try:
            apply_with_backup(sqlite_rows, store, [registration("things", 2)], "t.py::child")
            os._exit(0)
        except BaseException:
            os._exit(1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung writing its backup")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert count(sqlite_rows, "things") == 1
    records = read_journal(store.journal)  # one journal: the child appended record #2
    assert [(r.n, r.nodeid, r.error) for r in records] == [
        (1, "t.py::x", None),
        (2, "t.py::child", None),
    ]
    store.close()


def test_postgres_restore_goes_parent_first_and_orders_self_references(
    pg_url: str, tmp_path: Path
) -> None:
    engine = engine_for(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE accounts (id int PRIMARY KEY, name text);"
            "CREATE TABLE users (id int PRIMARY KEY, account_id int NOT NULL REFERENCES accounts,"
            " manager_id int REFERENCES users);"
            "INSERT INTO accounts VALUES (1, 'a'), (2, 'b');"
            "INSERT INTO users VALUES (30, 1, NULL), (10, 1, 30), (20, 2, 10);"
            # rewrite the top manager so the heap holds children before their parent
            "UPDATE users SET account_id = 1 WHERE id = 30;"
        )
    raw = rows_of(engine, "users")
    meta = MetaData()
    accounts = Table("accounts", meta, Column("id", Integer, primary_key=True))
    users = Table(
        "users",
        meta,
        Column("id", Integer, primary_key=True),
        Column("account_id", ForeignKey("accounts.id")),
    )
    regs = [
        plan.Registration(users, users.c.account_id.in_([1, 2])),
        plan.Registration(accounts, accounts.c.id.in_([1, 2])),
    ]
    store = BackupStore(tmp_path / "b", "run")
    _, path = apply_with_backup(engine, store, regs)
    assert count(engine, "users") == count(engine, "accounts") == 0
    assert read_backup(path).order == ["users", "accounts"]  # deletion order in the file
    assert [r[0] for r in read_backup(path).tables[0].rows] == [10, 20, 30]  # child first

    dry = restore(path, engine, dry_run=True)
    assert dry.restored == {"accounts": 2, "users": 3} and dry.dry_run
    assert count(engine, "users") == 0
    result = restore(path, engine)
    assert list(result.restored) == ["accounts", "users"]  # parents first
    assert rows_of(engine, "users") == raw

    # every row exists now: a conflict aborts the whole restore ...
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM users WHERE id = 20")
    with pytest.raises(RestoreConflict, match=r"accounts 2, users 2 by primary key.*--skip-exist"):
        restore(path, engine)
    assert count(engine, "users") == 2
    dry = restore(path, engine, dry_run=True)
    assert dry.conflicts == {"accounts": 2, "users": 2} and dry.restored["users"] == 1
    assert count(engine, "users") == 2
    # ... unless existing rows are skipped
    result = restore(path, engine, skip_existing=True)
    assert result.restored == {"accounts": 0, "users": 1}
    assert result.skipped == {"accounts": 2, "users": 2}
    assert rows_of(engine, "users") == raw


def test_postgres_backup_into_another_schema_is_refused(pg_databases: Any, tmp_path: Path) -> None:
    source = engine_for(pg_databases.create())
    other = engine_for(pg_databases.create())
    schema = (
        "CREATE TABLE accounts (id int PRIMARY KEY, name text);"
        "CREATE TABLE users (id int PRIMARY KEY, account_id int REFERENCES accounts{extra});"
    )
    with source.begin() as conn:
        conn.exec_driver_sql(schema.format(extra=", email text"))
        conn.exec_driver_sql(
            "INSERT INTO accounts VALUES (1, 'a'); INSERT INTO users VALUES (1, 1, 'e');"
        )
    with other.begin() as conn:
        conn.exec_driver_sql(schema.format(extra=""))
    resolver = plan.TableResolver(source)
    users, accounts = resolver.resolve("users"), resolver.resolve("accounts")
    _, path = apply_with_backup(
        source,
        BackupStore(tmp_path / "b", "run"),
        [
            plan.Registration(accounts, accounts.c.id == 1),
            plan.Registration(users, users.c.account_id == 1),
        ],
    )
    with pytest.raises(BackupError, match=r"table users in .* has no column email.*another sch"):
        restore(path, other)
    assert count(other, "accounts") == count(other, "users") == 0  # parent not inserted either
    with other.begin() as conn:
        conn.exec_driver_sql("DROP TABLE users")
    with pytest.raises(BackupError, match="table users of the backup does not exist"):
        restore(path, other)
    assert count(other, "accounts") == 0


# ---------------------------------------------------------------------------- SQLite


def test_sqlite_round_trip_of_every_type(tmp_path: Path) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'app.db'}")
    meta = MetaData()
    items = Table(
        "items",
        meta,
        Column("id", Integer, primary_key=True),
        Column("r", Float),
        Column("t", String),
        Column("bl", LargeBinary),
        Column("when", DateTime),
        Column("amount", Numeric(30, 10)),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE items ADD COLUMN untyped")  # no declared type
        conn.execute(
            items.insert(),
            [
                dict(
                    id=1,
                    r=1.25,
                    t="é\n'",
                    bl=bytes(range(256)),
                    when=dt.datetime(2024, 2, 29, 23, 59, 59, 123456),
                    amount=Decimal("12345678901234567890.0123456789"),
                ),
                dict(
                    id=2,
                    r=float("inf"),
                    t="",
                    bl=b"",
                    when=dt.datetime(1, 1, 1),
                    amount=Decimal("-0.5"),
                ),
                dict(id=3, r=None, t=None, bl=None, when=None, amount=None),
            ],
        )
        conn.exec_driver_sql("UPDATE items SET untyped = 2 * 9223372036854775807 / 2 WHERE id=1")
        conn.exec_driver_sql("UPDATE items SET untyped = x'00ff' WHERE id = 2")
    before = rows_of(engine, "items")
    with engine.connect() as conn:
        typed_before = [tuple(r) for r in conn.execute(select(items).order_by("id"))]
    assert isinstance(typed_before[0][4], dt.datetime)

    store = BackupStore(tmp_path / "backups", "run-1")
    done, path = apply_with_backup(engine, store, [registration("items", 1, 2, 3)])
    assert [(c.counted, c.deleted) for c in done] == [(3, 3)]
    assert count(engine, "items") == 0
    assert read_backup(path).header["restore_url"] == f"sqlite:///{tmp_path / 'app.db'}"

    assert restore(path, engine).restored == {"items": 3}
    assert_same_rows(before, rows_of(engine, "items"))
    with engine.connect() as conn:
        typed_after = [tuple(r) for r in conn.execute(select(items).order_by("id"))]
    assert_same_rows(typed_before, typed_after)


RESTORE_URL_CASES = [
    # (id, source URL, recorded restore URL)
    (
        "no-password",
        "postgresql+psycopg://app@db.example.com/db",
        "postgresql+psycopg://app@db.example.com/db",
    ),
    ("userinfo-password", "postgresql+psycopg://app:pw@db.example.com/orders", None),
    ("empty-userinfo-password", "postgresql+psycopg://app:@db.example.com/orders", None),
    ("query-password", "postgresql+psycopg://app@db.example.com/orders?password=sekrit", None),
    ("query-PWD-upper", "mssql+pyodbc://app@db.example.com/orders?PWD=sekrit", None),
    ("query-sslpassword", "postgresql+psycopg://app@db.example.com/orders?sslpassword=k", None),
    (
        "other-query-kept",
        "postgresql://app@h/orders?sslmode=require",
        "postgresql://app@h/orders?sslmode=require",
    ),
]


@pytest.mark.parametrize(
    ("url", "recorded"), [c[1:] for c in RESTORE_URL_CASES], ids=[c[0] for c in RESTORE_URL_CASES]
)
def test_restore_url_is_recorded_only_without_any_password(url: str, recorded: str | None) -> None:
    assert store_module.restore_url(from_url(url, (), {})) == recorded


def test_backup_header_of_a_url_with_a_query_password_has_no_restore_url(
    pg_url: str, tmp_path: Path
) -> None:
    engine = engine_for(pg_url + "?password=q-s3cret")  # trust auth: the password is unused
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept VALUES (1)")
    _, path = apply_with_backup(engine, BackupStore(tmp_path / "b", "r"), [registration("kept", 1)])
    assert "q-s3cret" not in journal_of(path).read_text()
    backup = read_backup(path)
    assert backup.header["restore_url"] is None and backup.restore_url is None
    assert "password=" in backup.url


def test_a_recorded_restore_url_with_a_password_is_not_reused(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    store = BackupStore(tmp_path / "b", "r")
    _, path = apply_with_backup(sqlite_rows, store, [registration("things", 1)])
    backup = read_backup(path)
    assert backup.restore_url == backup.header["restore_url"] is not None
    for legacy in (
        "postgresql://app@h/orders?password=%2A%2A%2A",  # what older versions wrote
        "postgresql://app:***@h/orders",
    ):
        old = dataclasses.replace(backup, header={**backup.header, "restore_url": legacy})
        assert old.restore_url is None
    kept = dataclasses.replace(backup, header={**backup.header, "restore_url": "not a url"})
    assert kept.restore_url == "not a url"  # restore then says the URL is unusable


def test_postgres_backup_refused_into_sqlite(pg_everything: Engine, tmp_path: Path) -> None:
    _, path = apply_with_backup(
        pg_everything, BackupStore(tmp_path / "b", "r"), [registration("everything", 3)]
    )
    sqlite = engine_for(f"sqlite:///{tmp_path / 'x.db'}")
    with sqlite.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE everything (id INTEGER PRIMARY KEY)")
    with pytest.raises(BackupError, match="taken from a postgresql database"):
        restore(path, sqlite)
    assert count(sqlite, "everything") == 0


# ---------------------------------------------------------------------------- folders


@pytest.fixture
def sqlite_rows(tmp_path: Path) -> Engine:
    engine = engine_for(f"sqlite:///{tmp_path / 'data.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)")
        conn.exec_driver_sql("INSERT INTO things VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    return engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folders_files_gitignore_and_audit(sqlite_rows: Engine, tmp_path: Path) -> None:
    root = tmp_path / "deep" / "backups"
    store = BackupStore(root, "run/../1", worker="gw0")
    assert not root.exists()  # created on first write only
    _, path = apply_with_backup(sqlite_rows, store, [registration("things", 1, 2)], "a/t.py::x[1]")
    journal = journal_of(path)
    assert journal == root / "run_.._1" / "gw0.journal"  # no path escapes from ids
    assert path.name == "gw0.journal#1"
    assert (mode(root), mode(root / "run_.._1")) == (0o700, 0o700)
    assert mode(journal) == 0o600
    assert (root / ".gitignore").read_text().splitlines()[-1] == "*"
    assert mode(root / ".gitignore") == 0o600

    store.audit({"run_id": "run/../1", "nodeid": "a", "rows": {"things": 2}})
    first = (root / "audit.jsonl").read_bytes()
    store.audit({"run_id": "run/../1", "nodeid": "b\nc", "when": dt.date(2024, 1, 1)})
    lines = (root / "audit.jsonl").read_bytes().splitlines(keepends=True)
    assert lines[0] == first and len(lines) == 2
    assert json.loads(lines[1]) == {"run_id": "run/../1", "nodeid": "b\nc", "when": "2024-01-01"}
    assert mode(root / "audit.jsonl") == 0o600


def test_retention_keeps_the_newest_runs(sqlite_rows: Engine, tmp_path: Path) -> None:
    root = tmp_path / "backups"
    (root / "notes").mkdir(parents=True)  # not a run: never pruned
    for i in range(5):
        store = BackupStore(root, f"run{i}", keep=3)
        store.ensure_folder()
        os.utime(root / f"run{i}" / RUN_MARKER, (1000 + i, 1000 + i))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["notes", "run2", "run3", "run4"]
    lonely = BackupStore(root, "run-last", keep=0)
    lonely.ensure_folder()  # keep=0 still never removes the current run
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["notes", "run-last"]
    apply_with_backup(sqlite_rows, lonely, [registration("things", 3)])
    [run] = list_runs(root)
    assert (run.run_id, run.files, run.tables, run.damaged) == ("run-last", 1, {"things": 1}, ())


# ---------------------------------------------------------------------------- refusals


def test_backup_root_that_is_a_file_stops_the_delete(sqlite_rows: Engine, tmp_path: Path) -> None:
    blocker = tmp_path / "backups"
    blocker.write_text("not a folder")
    with pytest.raises(BackupError, match=rf"backup folder {blocker} is not a directory"):
        apply_with_backup(sqlite_rows, BackupStore(blocker, "r"), [registration("things", 1)])
    nested = blocker / "inside"
    with pytest.raises(
        BackupError, match=rf"cannot create the backup folder {nested}: Not a directory"
    ):
        apply_with_backup(sqlite_rows, BackupStore(nested, "r"), [registration("things", 1)])
    assert count(sqlite_rows, "things") == 3
    assert blocker.read_text() == "not a folder"


class DiskFullStore(BackupStore):
    """Appends the journal record to the real /dev/full: every write fails with ENOSPC."""

    def _journal_open(self) -> int:
        if self._journal_fd is None:
            self._journal_fd = os.open("/dev/full", os.O_WRONLY)
            self._journal_pid = os.getpid()
        return self._journal_fd


def test_disk_full_stops_the_delete_and_leaves_no_record(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    store = DiskFullStore(tmp_path / "backups", "r")
    with pytest.raises(BackupError) as info:
        apply_with_backup(sqlite_rows, store, [registration("things", 1, 2, 3)])
    message = str(info.value)
    assert "No space left on device" in message and "nothing was deleted" in message
    assert str(store.journal) in message and "\n" not in message
    assert count(sqlite_rows, "things") == 3
    assert sorted(p.name for p in store.run_root.iterdir()) == [".gitignore", RUN_MARKER]
    # /dev/full cannot be cut back to its old length: no record may follow the failed one
    with pytest.raises(BackupError, match="could not be written nor taken back"):
        apply_with_backup(sqlite_rows, store, [registration("things", 1)])
    assert count(sqlite_rows, "things") == 3
    store._journal_close()


def test_damaged_backups_are_refused_and_nothing_is_inserted(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    _, path = apply_with_backup(
        sqlite_rows, BackupStore(tmp_path / "b", "r"), [registration("things", 1, 2, 3)]
    )
    data = journal_of(path).read_bytes()
    truncated = tmp_path / "truncated.journal"
    truncated.write_bytes(data[: len(data) - 40])
    cut_at_line = tmp_path / "cut.journal"
    cut_at_line.write_bytes(b"".join(data.splitlines(keepends=True)[:-2]))
    flipped = tmp_path / "flipped.journal"
    i = data.index(b'"b"')  # a value inside a row
    flipped.write_bytes(data[:i] + b'"x"' + data[i + 3 :])
    for bad in (truncated, cut_at_line, flipped):
        named = re.escape(f"{bad}#1")
        with pytest.raises(BackupError, match=rf"(backup|record) {named} is (damaged|truncated)"):
            restore(bad, sqlite_rows)
        assert count(sqlite_rows, "things") == 0
    [run] = list_runs(tmp_path / "b")
    assert run.damaged == ()
    assert restore(path, sqlite_rows).restored == {"things": 3}


def test_rows_that_change_between_count_and_backup_stop_the_delete(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    store = BackupStore(tmp_path / "b", "r")
    p = plan.build_plan([registration("things", 1, 2)])
    with sqlite_rows.connect() as conn, conn.begin():
        counts = executor.count(conn, p)
        conn.exec_driver_sql("DELETE FROM things WHERE id = 2")  # a concurrent writer
        with pytest.raises(BackupError, match=r"backed up \(things 1\) differ .*counted"):
            store.write_rows(conn, p, counts, nodeid="t", target=from_url(sqlite_rows.url))
        conn.rollback()
    assert count(sqlite_rows, "things") == 3
    assert not store.journal.exists()


# ---------------------------------------------------------------------------- pg_dump


def test_pg_dump_writes_a_readable_dump(pg_url: str, tmp_path: Path) -> None:
    engine = engine_for(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept VALUES (1)")
    path = dump_database(pg_url, tmp_path / "dumps")
    assert path.parent == tmp_path / "dumps" and path.suffix == ".dump"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    listed = subprocess.run(
        ["pg_restore", "--list", str(path)], capture_output=True, text=True, check=True
    )
    assert "TABLE public kept" in listed.stdout


def wrapper(folder: Path, body: str) -> Path:
    folder.mkdir()
    script = folder / "pg_dump"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    (folder / "pg_restore").symlink_to(shutil.which("pg_restore") or "/usr/bin/pg_restore")
    return folder


def logging_pg_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pg_dump on PATH that logs its arguments and PGPASSWORD, then runs the real one."""
    real = shutil.which("pg_dump")
    log = tmp_path / "log"
    bindir = wrapper(
        tmp_path / "bin",
        f'printf "%s\\n" "$@" > {log}; echo "PGPASSWORD=$PGPASSWORD" >> {log}; exec {real} "$@"',
    )
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_pg_dump_password_goes_through_the_environment_never_argv(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = logging_pg_dump(tmp_path, monkeypatch)
    with_password = pg_url.replace("postgres@", "postgres:s3cret-pw@")
    assert "s3cret-pw" in with_password
    path = dump_database(with_password, tmp_path / "dumps")
    recorded = log.read_text().splitlines()
    assert recorded[-1] == "PGPASSWORD=s3cret-pw"
    assert not any("s3cret-pw" in arg for arg in recorded[:-1])
    assert "-Fc" in recorded and path.stat().st_size > 0


def test_pg_dump_sslpassword_is_neither_pgpassword_nor_argv(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = logging_pg_dump(tmp_path, monkeypatch)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    path = dump_database(pg_url + "?sslpassword=key-phrase", tmp_path / "dumps")
    recorded = log.read_text().splitlines()
    assert recorded[-1] == "PGPASSWORD="  # the key's passphrase is not the login password
    assert not any("key-phrase" in arg for arg in recorded[:-1])
    assert path.stat().st_size > 0

    with_both = pg_url.replace("postgres@", "postgres:s3cret-pw@") + "?SSLPassword=key-phrase"
    dump_database(with_both, tmp_path / "dumps")
    recorded = log.read_text().splitlines()
    assert recorded[-1] == "PGPASSWORD=s3cret-pw"
    assert not any("key-phrase" in line or "s3cret-pw" in line for line in recorded[:-1])


def test_pg_dump_conninfo_keeps_secrets_apart() -> None:
    from pytest_safe_cleanup.backup.pg_dump import conninfo
    from pytest_safe_cleanup.target import parse_url

    info, password = conninfo(parse_url("postgresql://u@h/db?sslpassword=k&sslmode=require"))
    assert password is None and "k'" not in info and "sslmode='require'" in info
    info, password = conninfo(parse_url("postgresql://u@h/db?pwd=p&sslpassword=k"))
    assert password == "p" and "sslpassword" not in info and "pwd" not in info


def test_pg_dump_failure_says_the_sslpassword_was_not_passed(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = wrapper(
        tmp_path / "fail", "echo 'pg_dump: error: could not load private key' >&2; exit 1"
    )
    monkeypatch.setenv("PATH", str(failing))
    with pytest.raises(BackupError) as caught:
        dump_database(pg_url + "?sslpassword=key-phrase", tmp_path / "dumps")
    message = str(caught.value)
    assert "\n" not in message and "key-phrase" not in message
    assert "sslpassword was not passed to pg_dump" in message and "nothing was deleted" in message


def test_pg_dump_refusals(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(BackupError, match=r"pg_dump was not found on PATH.*nothing was deleted"):
        dump_database(pg_url, tmp_path / "dumps")
    # pg_dump's own refusal of a newer server, as pg_dump 14 prints it for a 15 server
    old = wrapper(
        tmp_path / "old",
        "echo 'pg_dump: error: aborting because of server version mismatch' >&2; "
        "echo 'pg_dump: detail: server version: 15.20; pg_dump version: 14.11' >&2; exit 1",
    )
    monkeypatch.setenv("PATH", str(old))
    with pytest.raises(BackupError, match=r"pg_dump 14.11 is older than .*PostgreSQL 15.20"):
        dump_database(pg_url, tmp_path / "dumps")
    assert list((tmp_path / "dumps").iterdir()) == []  # the failed dump's file is removed
    monkeypatch.setenv("PATH", os.defpath)
    with pytest.raises(BackupError, match=r"pg_dump of .* failed .*does-not-exist"):
        dump_database(pg_url.rsplit("/", 1)[0] + "/does-not-exist", tmp_path / "dumps")
    with pytest.raises(BackupError, match="needs PostgreSQL, not sqlite"):
        dump_database(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "dumps")


def test_a_table_without_a_primary_key_is_restored_once(tmp_path: Path) -> None:
    """Rows are found again by every column (NULL equal to NULL): restoring twice adds none."""
    engine = engine_for(f"sqlite:///{tmp_path / 'data.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE nokey (tag TEXT, v REAL, b BLOB)")
        conn.exec_driver_sql(
            "INSERT INTO nokey VALUES ('x', 0.5, NULL), ('x', 0.5, NULL), ('x', NULL, X'00'), "
            "('keep', 1, NULL)"
        )
    query = "SELECT tag, v, b FROM nokey ORDER BY tag, v, b"
    with engine.connect() as conn:
        before = [tuple(r) for r in conn.exec_driver_sql(query)]
    t = Table("nokey", MetaData(), Column("tag", Text))
    store = BackupStore(tmp_path / "backups", "run-1")
    _, path = apply_with_backup(engine, store, [plan.Registration(t, t.c.tag == "x")])
    assert count(engine, "nokey") == 1

    assert restore(path, engine).restored == {"nokey": 3}
    with pytest.raises(RestoreConflict, match="nokey 3 by primary key, or by every column"):
        restore(path, engine)
    again = restore(path, engine, skip_existing=True)
    assert (again.restored, again.skipped) == ({"nokey": 0}, {"nokey": 3})
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.exec_driver_sql(query)] == before


def test_git_ignores_everything_the_plugin_writes_beside_a_gitignore_of_the_users(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    root = repo / "backups"
    root.mkdir(parents=True)
    (root / ".gitignore").write_text("*.log\n")  # the user's own, which ignores only logs
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    store = BackupStore(root, "run-1", worker="gw0")
    _, path = apply_with_backup(sqlite_rows, store, [registration("things", 1)])
    store.audit({"run_id": "run-1", "nodeid": "a"})
    assert journal_of(path) == root / "run-1" / "gw0.journal"
    assert journal_of(path).is_file() and (root / "audit.jsonl").is_file()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status.splitlines() == ["?? backups/.gitignore"]  # the user's file, nothing else
    assert (root / ".gitignore").read_text().startswith("*.log\n")
    for folder in (root / "run-1",):
        assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"


# ---------------------------------------------------------------------------- journal


def sqlite_journal(engine: Engine, tmp_path: Path) -> tuple[BackupStore, list[Path]]:
    """Two cleanups of one run: record #1 (things 1, 2) and record #2 (things 3)."""
    store = BackupStore(tmp_path / "b", "r")
    _, first = apply_with_backup(engine, store, [registration("things", 1, 2)], "t.py::a")
    _, second = apply_with_backup(engine, store, [registration("things", 3)], "t.py::b")
    return store, [first, second]


def test_two_cleanups_share_one_journal_with_records_one_and_two(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    store, (first, second) = sqlite_journal(sqlite_rows, tmp_path)
    assert (first.name, second.name) == ("main.journal#1", "main.journal#2")
    assert journal_of(first) == journal_of(second) == store.journal
    assert count(sqlite_rows, "things") == 0
    records = read_journal(store.journal)
    assert [(r.n, r.nodeid, r.backup.counts if r.backup else None) for r in records] == [
        (1, "t.py::a", {"things": 2}),
        (2, "t.py::b", {"things": 1}),
    ]
    assert [sorted(read_backup(p).tables[0].rows) for p in (first, second)] == [
        [(1, "a"), (2, "b")],
        [(3, "c")],
    ]
    # restore by #N: only record #2's row comes back
    assert restore(second, sqlite_rows).restored == {"things": 1}
    with sqlite_rows.connect() as conn:
        assert sorted(conn.exec_driver_sql("SELECT id FROM things").scalars()) == [3]
    # by test: record #1 alone; the journal as a whole holds both
    chosen = journal_module.select(store.journal, test="t.py::a")
    assert chosen.records == [1] and chosen.backup.counts == {"things": 2}
    assert journal_module.select(store.journal).records == [1, 2]
    assert journal_module.select(store.journal, table="things").backup.counts == {"things": 3}
    with pytest.raises(BackupError, match=r"no record of .* matches --table nothing"):
        journal_module.select(store.journal, table="nothing")
    assert restore_backup(chosen.backup, sqlite_rows).restored == {"things": 2}
    assert count(sqlite_rows, "things") == 3
    store.close()


def test_a_torn_last_record_is_skipped_only_when_its_delete_did_not_commit(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    store, (_, second) = sqlite_journal(sqlite_rows, tmp_path)
    store.close()
    journal = store.journal
    whole = journal.read_bytes()
    journal.write_bytes(whole[: len(whole) - 17])  # a crash cut record #2 short
    records = read_journal(journal)
    assert [(r.n, r.torn, r.backup is not None) for r in records] == [
        (1, False, True),
        (2, True, False),
    ]
    # no audit line names #2: its delete did not commit, restore skips it and says so
    chosen = journal_module.select(
        journal,
        status_of=lambda rs: journal_module.statuses(
            rs, journal_module.audited(journal.parent.parent), {}
        ),
    )
    assert chosen.records == [1]
    assert chosen.notes == [
        f"skipped {journal}#2: truncated while it was written, and its delete did not "
        "commit (no audit line)"
    ]
    assert restore_backup(chosen.backup, sqlite_rows).restored == {"things": 2}
    assert count(sqlite_rows, "things") == 2
    # with an audit line naming #2 (its delete committed), the selection is refused
    store.audit({"run_id": "r", "nodeid": "t.py::b", "backup": str(second)})
    with pytest.raises(BackupError, match=re.escape(f"record {journal}#2 is truncated")):
        journal_module.select(
            journal,
            status_of=lambda rs: journal_module.statuses(
                rs, journal_module.audited(journal.parent.parent), {}
            ),
        )
    # and asked for by number, a torn record is refused whatever its status
    with pytest.raises(BackupError, match=re.escape(f"record {journal}#2 is truncated")):
        read_backup(Path(f"{journal}#2"))
    assert count(sqlite_rows, "things") == 2


def test_a_damaged_middle_record_refuses_the_selection_by_name(
    sqlite_rows: Engine, tmp_path: Path
) -> None:
    store, (_, second) = sqlite_journal(sqlite_rows, tmp_path)
    store.close()
    journal = store.journal
    data = journal.read_bytes()
    i = data.index(b'"a"')  # a value inside record #1's row
    journal.write_bytes(data[:i] + b'"z"' + data[i + 3 :])
    records = read_journal(journal)
    assert [(r.n, r.backup is not None, r.torn) for r in records] == [
        (1, False, False),
        (2, True, False),
    ]
    named = re.escape(f"{journal}#1")
    for selection in ({}, {"test": "t.py::a"}, {"table": "things"}):
        with pytest.raises(
            BackupError, match=rf"backup {named} is damaged or truncated \(checksum"
        ):
            journal_module.select(journal, **selection)
    # record #2 alone is intact and restores
    assert restore(second, sqlite_rows).restored == {"things": 1}
    assert count(sqlite_rows, "things") == 1
    [run] = list_runs(tmp_path / "b")
    assert run.damaged == (Path(f"{journal}#1"),) and run.tables == {"things": 1}
