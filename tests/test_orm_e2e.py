"""ORM tracking end to end: ``track_session`` and ``track`` against a real PostgreSQL.

The inner project registers nothing but the session (or the instances): the plugin
must find every row the ORM inserted, count it exactly in dry runs, delete exactly it
in apply, and leave alone rows the test deleted itself or rolled back.
"""

from __future__ import annotations

import json

import pytest
from conftest import count_rows
from sqlalchemy import create_engine, text

SCHEMA_SQL = """
CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (
    id serial PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (id),
    email text NOT NULL
);
CREATE INDEX users_account_id ON users (account_id);
CREATE TABLE assets (
    id serial PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (id),
    name text NOT NULL
);
CREATE INDEX assets_account_id ON assets (account_id);
INSERT INTO accounts (name) VALUES ('seed');
INSERT INTO users (account_id, email) VALUES (1, 'seed-1'), (1, 'seed-2');
INSERT INTO assets (account_id, name) VALUES (1, 'seed-asset');
"""
#: rows that exist before any inner test runs, and must survive every cleanup
SEED = {"accounts": 1, "users": 2, "assets": 1}

MODELS = """
from __future__ import annotations

from sqlalchemy import ForeignKey
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    users: Mapped[list[User]] = relationship(back_populates="account", cascade="all")
    assets: Mapped[list[Asset]] = relationship(back_populates="account", cascade="all")


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    email: Mapped[str]
    account: Mapped[Account] = relationship(back_populates="users")


class Asset(Base):
    __tablename__ = "assets"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str]
    account: Mapped[Account] = relationship(back_populates="assets")
"""

CONFTEST = """
import pytest
from sqlalchemy.orm import Session


@pytest.fixture
def db(safe_cleanup_engine):
    with Session(safe_cleanup_engine) as session:
        yield session
"""

TESTS = """
from models import Account, Asset, User
from sqlalchemy import func, select


def test_graph(db, safe_cleanup):
    safe_cleanup.track_session(db)          # before anything is inserted
    account = Account(name="graph", users=[User(email="a"), User(email="b")])
    db.add(account)                          # children ride along through cascade="all"
    db.flush()
    account.users.append(User(email="c"))
    db.commit()
    db.add_all([Asset(name=f"x{i}", account=account) for i in range(3)])
    db.commit()
    db.add_all([Asset(name="y0", account=account), Asset(name="y1", account=account)])
    db.flush()
    db.commit()
    assert db.scalar(select(func.count()).select_from(Asset).filter_by(account_id=account.id)) == 5


def test_deleted_and_rolled_back(db, safe_cleanup):
    safe_cleanup.track_session(db)
    account = Account(name="mixed")
    keep, gone = User(email="keep", account=account), User(email="gone", account=account)
    doomed = Asset(name="doomed", account=account)
    db.add(account)
    db.commit()
    db.delete(gone)                          # the test deletes these rows itself
    db.delete(doomed)
    db.commit()
    db.add(Account(name="rolled back", users=[User(email="rb")]))
    db.add(Asset(name="rolled back", account=account))
    db.flush()                               # inserted, then rolled back: never there
    db.rollback()
    assert keep.id is not None


def test_track_instances(db, safe_cleanup):
    account = Account(name="partial", users=[User(email=f"p{i}") for i in range(3)])
    db.add(account)
    db.commit()
    first, second, third = account.users
    safe_cleanup.track(first, third)         # exactly these two rows, by primary key
"""

#: rows each inner test leaves for cleanup (what dry counts and apply deletes)
PER_TEST = {
    "test_orm.py::test_graph": {"accounts": 1, "users": 3, "assets": 5},
    "test_orm.py::test_deleted_and_rolled_back": {"accounts": 1, "users": 1},
    "test_orm.py::test_track_instances": {"users": 2},
}
#: rows the tests make that no registration covers (track() took two users of three)
UNTRACKED = {"accounts": 1, "users": 1, "assets": 0}
MADE = {"accounts": 3, "users": 7, "assets": 5}  # rows the inner tests leave before cleanup


def make_project(pytester: pytest.Pytester, url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SCHEMA_SQL)
    engine.dispose()
    pytester.makepyfile(models=MODELS, test_orm=TESTS)
    pytester.makeconftest(CONFTEST)


def cleanups_by_test(path: str) -> dict[str, dict[str, tuple[int, int | None, str]]]:
    with open(path) as fh:
        report = json.load(fh)
    found: dict[str, dict[str, tuple[int, int | None, str]]] = {}
    for c in report["cleanups"]:
        found.setdefault(c["nodeid"], {})[c["table"]] = (c["counted"], c["deleted"], c["status"])
    return found


def test_dry_counts_exactly_what_the_orm_inserted(pytester: pytest.Pytester, pg_url: str) -> None:
    make_project(pytester, pg_url)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        pg_url,
        "--safe-cleanup=dry",
        "--safe-cleanup-report",
        "report.json",
        "-v",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=3)
    db = pg_url.rsplit("/", 1)[1]
    result.stdout.fnmatch_lines(
        [
            "*= safe cleanup =*",
            "mode: dry (--safe-cleanup)*",
            f"{db}.assets * 5 * -",
            f"{db}.users * 6 * -",
            f"{db}.accounts * 2 * -",
            f"  test_orm.py::test_graph: {db}.assets counted 5 deleted - [[]dry[]]",
            f"  test_orm.py::test_graph: {db}.users counted 3 deleted - [[]dry[]]",
            f"  test_orm.py::test_graph: {db}.accounts counted 1 deleted - [[]dry[]]",
        ]
    )
    assert "FAILED" not in result.stdout.str()
    found = cleanups_by_test(str(pytester.path / "report.json"))
    assert {
        nodeid: {table: counted for table, (counted, _, _) in tables.items()}
        for nodeid, tables in found.items()
    } == PER_TEST
    assert {s for tables in found.values() for (_, _, s) in tables.values()} == {"dry"}
    for table in SEED:
        assert count_rows(pg_url, table) == SEED[table] + MADE[table], table


def test_apply_deletes_exactly_what_the_orm_inserted(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    make_project(pytester, pg_url)
    result = pytester.runpytest_subprocess(
        "--safe-cleanup-url",
        pg_url,
        "--safe-cleanup=apply",
        "--safe-cleanup-report",
        "report.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=3)
    found = cleanups_by_test(str(pytester.path / "report.json"))
    assert found == {
        nodeid: {table: (n, n, "deleted") for table, n in tables.items()}
        for nodeid, tables in PER_TEST.items()
    }
    for table in SEED:
        assert count_rows(pg_url, table) == SEED[table] + UNTRACKED[table], table
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT email FROM users ORDER BY email")).scalars().all()
        names = conn.execute(text("SELECT name FROM accounts ORDER BY name")).scalars().all()
        assets = conn.execute(text("SELECT name FROM assets")).scalars().all()
    engine.dispose()
    # seed rows intact; of the partially tracked account, only the untracked user remains
    assert left == ["p1", "seed-1", "seed-2"]
    assert names == ["partial", "seed"]
    assert assets == ["seed-asset"]
