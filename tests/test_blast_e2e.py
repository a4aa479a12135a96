"""The blast radius of apply, as users run it: rows the database itself removes or changes
through foreign keys are counted, capped, backed up and restored like registered rows.

Each scenario runs an inner pytest in a subprocess against a real database (PostgreSQL
via ``pg_url``, SQLite as a file with foreign keys enforced) and compares every table's
rows before the cleanup with the rows after apply and ``safe-cleanup restore``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from test_apply_e2e import backup_root, cleanups, execute, fetch, report, restore_cli, run

from pytest_safe_cleanup.backup import read_backup

FAMILY = """
CREATE SCHEMA other;
CREATE TABLE parents (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE kids (
    id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parents(id) ON DELETE CASCADE
);
CREATE TABLE toys (id int PRIMARY KEY, kid_id int REFERENCES kids(id) ON DELETE CASCADE);
CREATE TABLE notes (
    id int PRIMARY KEY, parent_id int REFERENCES parents(id) ON DELETE SET NULL, body text
);
CREATE TABLE other.visits (
    id int PRIMARY KEY, parent_id int DEFAULT 2 REFERENCES parents(id) ON DELETE SET DEFAULT
);
CREATE TABLE logs (line text, parent_id int REFERENCES parents(id) ON DELETE SET NULL);
INSERT INTO parents VALUES (1, 'target'), (2, 'kept');
INSERT INTO kids SELECT g, CASE WHEN g <= 50 THEN 1 ELSE 2 END FROM generate_series(1, 60) g;
INSERT INTO toys SELECT g, g FROM generate_series(1, 60) g;
INSERT INTO notes
    SELECT g, CASE WHEN g <= 4 THEN 1 ELSE 2 END, 'n' || g FROM generate_series(1, 6) g;
INSERT INTO other.visits VALUES (1, 1), (2, 1), (3, 2);
INSERT INTO logs VALUES ('a', 1), ('a', 1), ('b', 2);
"""
SQLITE_FAMILY = FAMILY.replace("CREATE SCHEMA other;", "").replace("other.", "")
SQLITE_FAMILY = SQLITE_FAMILY.replace(
    "SELECT g, CASE WHEN g <= 50 THEN 1 ELSE 2 END FROM generate_series(1, 60) g",
    "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 60) "
    "SELECT g, CASE WHEN g <= 50 THEN 1 ELSE 2 END FROM s",
)
SQLITE_FAMILY = SQLITE_FAMILY.replace(
    "INSERT INTO toys SELECT g, g FROM generate_series(1, 60) g",
    "INSERT INTO toys SELECT id, id FROM kids",
)
SQLITE_FAMILY = SQLITE_FAMILY.replace(
    "\n    SELECT g, CASE WHEN g <= 4 THEN 1 ELSE 2 END, 'n' || g FROM generate_series(1, 6) g",
    " SELECT id, CASE WHEN id <= 4 THEN 1 ELSE 2 END, 'n' || id FROM kids WHERE id <= 6",
)
TABLES = ("parents", "kids", "toys", "notes", "other.visits", "logs")

#: SQLite enforces foreign keys (and so runs ON DELETE actions) only where asked
SQLITE_CONFTEST = """
from sqlalchemy import event
from sqlalchemy.engine import Engine


@event.listens_for(Engine, "connect")
def foreign_keys(dbapi_connection, _record):
    dbapi_connection.execute("PRAGMA foreign_keys = ON")
"""
PARENT_ONLY = """
import pytest


@pytest.mark.safe_cleanup(max_rows={max_rows})
def test_parent(safe_cleanup):
    safe_cleanup.delete("parents", id=1)
"""


def snapshot(url: str, tables: tuple[str, ...]) -> dict[str, list[str]]:
    """Every row of every table, as the database prints it, sorted."""
    postgres = url.startswith("postgresql")
    out = {}
    for table in tables:
        name = table if postgres else table.split(".")[-1]
        alias = name.split(".")[-1]
        query = f"SELECT {alias}::text FROM {name}" if postgres else f"SELECT * FROM {name}"
        out[table] = sorted(repr(tuple(r)) for r in fetch(url, query))
    return out


def setup(pytester: pytest.Pytester, request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        execute(url, FAMILY)
    else:
        url = f"sqlite:///{pytester.path / 'app.db'}"
        execute(url, SQLITE_FAMILY)
        pytester.makeconftest(SQLITE_CONFTEST)
    pytester.makeini("[pytest]\n")
    return url


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_database_cascades_join_the_plan_are_backed_up_and_restored(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, backend: str
) -> None:
    url = setup(pytester, request, backend)
    tables = TABLES if backend == "postgresql" else tuple(t.split(".")[-1] for t in TABLES)
    visits = tables[4]
    before = snapshot(url, tables)
    pytester.makepyfile(test_parent=PARENT_ONLY.format(max_rows=200))

    result = run(pytester, url, "--safe-cleanup=dry")
    result.assert_outcomes(passed=1)
    assert snapshot(url, tables) == before
    dry = cleanups(report(pytester))
    assert dry["test_parent", "toys"]["counted"] == 50
    assert dry["test_parent", "notes"]["updated"] == 4

    result = run(pytester, url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1)
    got = cleanups(report(pytester))
    summary = {
        t: (
            got["test_parent", t]["counted"],
            got["test_parent", t]["deleted"],
            got["test_parent", t]["updated"],
            got["test_parent", t]["reason"],
        )
        for t in tables
        if ("test_parent", t) in got
    }
    assert summary == {
        "toys": (50, 50, None, "database cascade"),
        "kids": (50, 50, None, "database cascade"),
        "notes": (0, 0, 4, "database SET NULL"),
        visits: (0, 0, 2, "database SET DEFAULT"),
        "logs": (0, 0, 2, "database SET NULL"),
        "parents": (1, 1, None, ""),
    }
    db = url.rsplit("/", 1)[1]
    result.stdout.fnmatch_lines(
        [
            f"{db}.toys * 50 * 50 * - *(database cascade)",
            f"{db}.notes * 0 * 0 * 4 *(database SET NULL)",
            f"{db}.parents * 1 * 1 * -",
            "total * 101 * 101",
        ]
    )
    after = snapshot(url, tables)
    assert len(after["kids"]) == 10 and len(after["toys"]) == 10
    assert after["parents"] == [p for p in before["parents"] if "kept" in p]
    assert [r for r in fetch(url, "SELECT id FROM notes WHERE parent_id IS NULL")] == [
        (1,),
        (2,),
        (3,),
        (4,),
    ]
    assert sorted(fetch(url, f"SELECT id, parent_id FROM {visits}")) == [(1, 2), (2, 2), (3, 2)]
    (path,) = {c["backup"] for c in got.values()}
    backup = read_backup(Path(path))
    assert backup.counts == {"toys": 50, "kids": 50, "notes": 4, visits: 2, "logs": 2, "parents": 1}

    restored = restore_cli(path, "--url", url)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(url, tables) == before
    # restoring twice: the deleted rows conflict, nothing changes
    again = restore_cli(path, "--url", url)
    assert again.returncode != 0
    assert snapshot(url, tables) == before


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_cascade_over_max_rows_is_refused_with_every_row_still_there(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, backend: str
) -> None:
    url = setup(pytester, request, backend)
    tables = TABLES if backend == "postgresql" else tuple(t.split(".")[-1] for t in TABLES)
    before = snapshot(url, tables)
    counts = {t: len(rows) for t, rows in before.items()}
    pytester.makepyfile(test_parent=PARENT_ONLY.format(max_rows=10))

    result = run(pytester, url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*cleanup matches 109 rows, more than max_rows=10: nothing was deleted*"
            "(of which toys 50 by database cascade, kids 50 by database cascade*"
        ]
    )
    assert {t: len(rows) for t, rows in snapshot(url, tables).items()} == counts
    assert snapshot(url, tables) == before
    assert list(backup_root(pytester).rglob("*.jsonl")) == []


CROSS_SCHEMA = """
CREATE SCHEMA billing;
CREATE TABLE accounts (id int PRIMARY KEY);
CREATE TABLE billing.invoices (
    id int PRIMARY KEY, account_id int NOT NULL REFERENCES accounts(id)
);
CREATE TABLE billing.lines (
    id int PRIMARY KEY, invoice_id int NOT NULL REFERENCES billing.invoices(id)
);
INSERT INTO accounts VALUES (1), (2);
INSERT INTO billing.invoices VALUES (10, 1), (11, 1), (20, 2);
INSERT INTO billing.lines VALUES (100, 10), (101, 11), (200, 20);
"""


def test_cascade_true_follows_foreign_keys_from_other_schemas(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    execute(pg_url, CROSS_SCHEMA)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_account="""
        def test_account(safe_cleanup):
            safe_cleanup.delete("accounts", id=1, cascade=True)
        """
    )
    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1)
    got = cleanups(report(pytester))
    assert {t: got["test_account", t]["deleted"] for _, t in got} == {
        "billing.lines": 2,
        "billing.invoices": 2,
        "accounts": 1,
    }
    assert fetch(pg_url, "SELECT id FROM accounts") == [(2,)]
    assert fetch(pg_url, "SELECT id FROM billing.invoices") == [(20,)]
    assert fetch(pg_url, "SELECT id FROM billing.lines") == [(200,)]


# ---------------------------------------------------------------------------- side effects

SIDE_EFFECTS = """
CREATE TABLE orders (id int PRIMARY KEY);
CREATE TABLE shipments (id int PRIMARY KEY, order_id int);
CREATE FUNCTION drop_shipments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN DELETE FROM shipments WHERE order_id = OLD.id; RETURN OLD; END $$;
CREATE TRIGGER orders_gone AFTER DELETE ON orders FOR EACH ROW EXECUTE FUNCTION drop_shipments();
INSERT INTO orders VALUES (1), (2);
INSERT INTO shipments SELECT g, CASE WHEN g <= 7 THEN 1 ELSE 2 END FROM generate_series(1, 9) g;

CREATE TABLE items (id int PRIMARY KEY);
CREATE TABLE audit (item_id int, at timestamptz DEFAULT now());
CREATE FUNCTION log_item() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (item_id) VALUES (OLD.id); RETURN OLD; END $$;
CREATE TRIGGER items_log AFTER DELETE ON items FOR EACH ROW EXECUTE FUNCTION log_item();
INSERT INTO items VALUES (1), (2), (3);

CREATE TABLE animals (id int PRIMARY KEY, name text);
CREATE TABLE dogs (bark text) INHERITS (animals);
INSERT INTO animals VALUES (1, 'x'), (2, 'y');
INSERT INTO dogs VALUES (3, 'x', 'woof'), (4, 'y', 'wuff');

CREATE TABLE events (tenant int, id int) PARTITION BY LIST (tenant);
CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1);
CREATE TABLE events_2 PARTITION OF events FOR VALUES IN (2);
INSERT INTO events SELECT t, g FROM generate_series(1, 2) t, generate_series(1, 5) g;

CREATE TABLE rulers (id int PRIMARY KEY);
CREATE TABLE ruled (id int PRIMARY KEY, ruler_id int);
CREATE RULE rulers_gone AS ON DELETE TO rulers DO ALSO DELETE FROM ruled WHERE ruler_id = OLD.id;
INSERT INTO rulers VALUES (1), (2);
INSERT INTO ruled VALUES (1, 1), (2, 1), (3, 2);
"""
SIDE_TABLES = (
    "orders",
    "shipments",
    "items",
    "audit",
    "animals",
    "ONLY animals",
    "dogs",
    "events",
    "rulers",
    "ruled",
)
SIDE_TESTS = """
def test_trigger(safe_cleanup):
    safe_cleanup.delete("orders", id=1)


def test_audit(safe_cleanup):
    safe_cleanup.delete("items", id=[1, 2])


def test_inheritance(safe_cleanup):
    safe_cleanup.delete("animals", name="x")


def test_partitions(safe_cleanup):
    safe_cleanup.delete("events", tenant=1)


def test_rule(safe_cleanup):
    safe_cleanup.delete("rulers", id=1)
"""


def pg_counts(url: str, tables: tuple[str, ...]) -> dict[str, int]:
    return {t: fetch(url, f"SELECT count(*) FROM {t}")[0][0] for t in tables}


def test_what_triggers_rules_and_inheritance_children_would_do_is_refused(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    execute(pg_url, SIDE_EFFECTS)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_side=SIDE_TESTS)
    counts = pg_counts(pg_url, SIDE_TABLES)

    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=5, errors=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_side.py::test_trigger (*): shipments: the database deleted 7 rows outside "
            "the plan (a trigger, a rule or an inheritance child of a planned table); rolled back, "
            "nothing was deleted*",
            "FAILED test_side.py::test_inheritance (*): dogs: the database deleted 1 rows outside "
            "the plan (a trigger*",
            "FAILED test_side.py::test_rule (*): ruled: the database deleted 2 rows outside*",
        ]
    )
    got = cleanups(report(pytester))
    assert (got["test_audit", "items"]["deleted"], got["test_audit", "audit"]["reason"]) == (
        2,
        "2 rows inserted by a trigger",
    )
    assert got["test_partitions", "events"]["deleted"] == 5
    assert pg_counts(pg_url, SIDE_TABLES) == {**counts, "items": 1, "audit": 2, "events": 5}


def test_trusted_triggers_run_and_are_listed_with_their_counts(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    execute(pg_url, SIDE_EFFECTS)
    pytester.makeini("[pytest]\nsafe_cleanup_triggers = trust\n")
    pytester.makepyfile(test_side=SIDE_TESTS)

    result = run(pytester, pg_url, "--safe-cleanup=apply", "-k", "trigger")
    result.assert_outcomes(passed=1)
    db = pg_url.rsplit("/", 1)[1]
    result.stdout.fnmatch_lines(
        [
            f"{db}.orders * 1 * 1",
            f"{db}.shipments * 0 * 7 *(outside the plan (safe_cleanup_triggers = trust))",
        ]
    )
    assert pg_counts(pg_url, ("orders", "shipments")) == {"orders": 1, "shipments": 2}


SQLITE_TRIGGER = """
CREATE TABLE orders (id INTEGER PRIMARY KEY);
CREATE TABLE shipments (id INTEGER PRIMARY KEY, order_id INTEGER);
CREATE TRIGGER orders_gone AFTER DELETE ON orders
BEGIN DELETE FROM shipments WHERE order_id = OLD.id; END;
CREATE TRIGGER orders_new AFTER INSERT ON orders BEGIN SELECT 1; END;
INSERT INTO orders VALUES (1), (2);
INSERT INTO shipments VALUES (1, 1), (2, 1), (3, 2)
"""


@pytest.mark.parametrize("triggers", ["refuse", "trust"])
def test_sqlite_delete_triggers_on_planned_tables_are_found_in_the_catalog(
    pytester: pytest.Pytester, triggers: str
) -> None:
    url = f"sqlite:///{pytester.path / 'app.db'}"
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.connection.dbapi_connection.executescript(SQLITE_TRIGGER)  # type: ignore[union-attr]
    engine.dispose()
    pytester.makeini(f"[pytest]\nsafe_cleanup_triggers = {triggers}\n")
    pytester.makepyfile(
        test_orders="""
        def test_order(safe_cleanup):
            safe_cleanup.delete("orders", id=1)
        """
    )
    counts = {t: len(fetch(url, f"SELECT * FROM {t}")) for t in ("orders", "shipments")}
    result = run(pytester, url, "--safe-cleanup=apply")
    if triggers == "refuse":
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(
            [
                "*orders: trigger orders_gone (DELETE) would run on the rows this cleanup deletes "
                "or changes*refused, nothing was deleted*"
            ]
        )
        assert {t: len(fetch(url, f"SELECT * FROM {t}")) for t in counts} == counts
    else:
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            ["app.db.orders * 1 * 1 *(trigger orders_gone (DELETE) trusted*"]
        )
        assert fetch(url, "SELECT id FROM shipments") == [(3,)]
