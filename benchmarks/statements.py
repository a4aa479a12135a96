"""How much the statement watch (section 6a) costs: ``python benchmarks/statements.py``.

1. ``statements.classify`` over a realistic mix of statements, cold (every text new,
   so the cache never hits: a counter in a leading comment) and warm (the same texts
   again, as SQLAlchemy sends its cached compiled strings); then ``reaches`` (for
   MySQL, whose ``db.table`` is another database; also through ``reaches_for``, the
   per-engine function the watch may keep), ``changes_stamp`` and
   ``lifts_read_only`` the same way, over the whole mix and over its reads alone
   (a read must cost what ``classify`` costs once warm).
2. The watch on a real SQLite engine: ``SELECT 1`` executed 20,000 times with no
   watch, with the plugin's Guardian installed, and with the engine watched during a
   test (every statement classified). Prints microseconds per statement and ratios.

Nothing here asserts on time: machines differ; read the numbers.
"""

from __future__ import annotations

import itertools
import time
import timeit
from collections.abc import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from pytest_safe_cleanup.runner import Guardian
from pytest_safe_cleanup.settings import resolve
from pytest_safe_cleanup.statements import (
    changes_stamp,
    classify,
    lifts_read_only,
    reaches,
    reaches_for,
)

MIX = [
    "SELECT users.id, users.email, users.account_id FROM users WHERE users.id = %(pk_1)s",
    "SELECT accounts.id AS accounts_id, accounts.name AS accounts_name FROM accounts "
    "WHERE accounts.name = %(name_1)s ORDER BY accounts.id LIMIT %(param_1)s",
    "INSERT INTO users (account_id, email) VALUES (%(account_id)s, %(email)s) RETURNING users.id",
    "UPDATE users SET email=%(email)s WHERE users.id = %(users_id)s",
    "DELETE FROM assets WHERE assets.id = %(id)s",
    "/* request 1 */ -- trace\nSELECT count(*) FROM assets WHERE owner_id IS NULL",
    "WITH d AS (DELETE FROM sessions WHERE expires < now() RETURNING id) SELECT count(*) FROM d",
    "SELECT 'delete me' AS label, $$ drop $$ AS body",
    "BEGIN",
    "SAVEPOINT sa_savepoint_1",
    "COMMIT",
    "SET search_path TO app, public",
    "INSERT INTO other_db.audit (event) VALUES (%(event)s)",
    "SET SESSION TRANSACTION READ WRITE",
]
ROUNDS = 20_000
QUERIES = 20_000


def per_statement_us(seconds: float, statements: int) -> float:
    return seconds / statements * 1e6


def bench(name: str, function: Callable[[str], object], mix: list[str]) -> None:
    """Print ``function``'s cost per statement over ``mix``, cold and warm."""
    counter = itertools.count()
    cold_texts = (f"/* {next(counter)} */ {sql}" for sql in itertools.cycle(mix))

    def cold() -> None:
        function(next(cold_texts))

    def warm() -> None:
        for sql in mix:
            function(sql)

    warm()  # fill the cache
    cold_s = min(timeit.repeat(cold, number=ROUNDS, repeat=3))
    warm_s = min(timeit.repeat(warm, number=ROUNDS // len(mix), repeat=3))
    warm_n = ROUNDS // len(mix) * len(mix)
    for label, us in (
        (f"{name}, cold (distinct texts)", per_statement_us(cold_s, ROUNDS)),
        (f"{name}, warm (repeated texts)", per_statement_us(warm_s, warm_n)),
    ):
        print(f"{label + ':':<54}{us:8.2f} us/statement")


def bench_classify() -> None:
    reads = [sql for sql in MIX if not classify(sql).writes]

    def reaches_mysql(sql: str) -> object:
        return reaches(sql, "mysql")

    for name, function in (
        ("classify", classify),
        ("reaches", reaches_mysql),
        ("reaches_for('mysql')", reaches_for("mysql")),
        ("changes_stamp", changes_stamp),
        ("lifts_read_only", lifts_read_only),
    ):
        bench(name, function, MIX)
        bench(f"{name}, reads only", function, reads)


def run_queries(engine: Engine) -> float:
    """Seconds for QUERIES executions of ``SELECT 1`` on one connection."""
    with engine.connect() as conn:
        stmt = text("SELECT 1")
        conn.execute(stmt)
        start = time.perf_counter()
        for _ in range(QUERIES):
            conn.execute(stmt)
        return time.perf_counter() - start


def bench_watch() -> None:
    settings = resolve({}, {}, {})
    engine = create_engine("sqlite://")
    guardian = Guardian(settings, environ={})
    best = {
        "no watch": float("inf"),
        "watch installed": float("inf"),
        "engine watched in a test": float("inf"),
    }
    # Alternate the three set-ups and keep each one's best round: a busy machine
    # slows rounds at random, not one set-up.
    for _ in range(3):
        best["no watch"] = min(best["no watch"], run_queries(engine))
        guardian.install()
        try:
            engine.dispose()  # the watch sees the engine's next first connection
            best["watch installed"] = min(best["watch installed"], run_queries(engine))
            guardian.watch(engine)
            guardian.current_test = "benchmarks/statements.py::watched"
            best["engine watched in a test"] = min(
                best["engine watched in a test"], run_queries(engine)
            )
        finally:
            guardian.current_test = None
            guardian.uninstall()
            engine.dispose()
    base = best["no watch"]
    for label, seconds in best.items():
        us = per_statement_us(seconds, QUERIES)
        extra = per_statement_us(seconds - base, QUERIES)
        print(
            f"{'SELECT 1 on SQLite, ' + label + ':':<54}{us:8.2f} us/statement "
            f"(+{extra:.2f} us, x{seconds / base:.2f})"
        )


if __name__ == "__main__":
    bench_classify()
    bench_watch()
