"""Backups restore every value exactly, on every PostgreSQL driver, under any session settings.

The database's own defaults are set to unusual output settings (DateStyle SQL, DMY;
IntervalStyle iso_8601; extra_float_digits 0), so every connection, the plugin's, the
test's and restore's, starts with them. Each table's rows are compared as PostgreSQL
prints them (``t::text``) before the cleanup and after apply and ``safe-cleanup restore``.
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url
from test_apply_e2e import cleanups, execute, fetch, report, restore_cli, run

SCHEMA = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE everything (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tag text NOT NULL,
    d date, ts timestamp, tstz timestamptz, iv interval, f8 float8, f4 real, n numeric,
    j json, jb jsonb, ia int[], ta text[], b bytea, m mood, r int4range, tr tstzrange,
    tt timetz, u uuid,
    len int GENERATED ALWAYS AS (length(tag)) STORED
);
CREATE TABLE animals (id int PRIMARY KEY, name text, tag text);
CREATE TABLE dogs (bark text, born date) INHERITS (animals);
CREATE TABLE nokey (tag text, j json, x float8);
"""
ROWS = r"""
INSERT INTO everything (tag, d, ts, tstz, iv, f8, f4, n, j, jb, ia, ta, b, m, r, tr, tt, u) VALUES
('{tag}', 'infinity', '-infinity', 'infinity', '1 mon 2 days', 0.1 + 0.2, 1.1, 'NaN',
 '{{"a": 1,  "a" : [1.50, null]}}', '1.000000000000000000001', '[0:2]={{1,2,3}}',
 '{{"a b",NULL,"c,d"}}', '\x00ff', 'happy', '[1,5)', '[2020-01-01 00:00+05:30,)',
 '12:00:01.5+05:30', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
('{tag}', '2020-02-01', '2001-12-31 23:59:59.999999', '1900-01-01 00:00 Europe/Amsterdam',
 '-1 year -2 mons +3 days -04:05:06.000007', 1e-310, 'NaN', 12345678901234567890.1234500,
 'null', '{{"x": 1e400}}', '{{{{1,2}},{{3,NULL}}}}', '{{}}', '', 'sad', 'empty', NULL,
 '00:00+00', NULL),
('{tag}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL);
INSERT INTO dogs VALUES (10{n}, 'rex', '{tag}', 'woof', '2019-12-03'),
                        (11{n}, 'fido', '{tag}', NULL, 'infinity');
INSERT INTO nokey VALUES ('{tag}', '{{"k":  "v"}}', 0.1), ('{tag}', '{{"k":  "v"}}', 0.1),
                         ('{tag}', NULL, NULL), ('{tag}', 'null', 'Infinity');
"""
TABLES = ("everything", "animals", "dogs", "nokey")
SYNC_TEST = """
def test_cleanup(safe_cleanup):
    for table in ("everything", "dogs", "nokey"):
        safe_cleanup.delete(table, tag="gone")
"""
ASYNC_TEST = """
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


@pytest.fixture
def safe_cleanup_async_engine():
    return create_async_engine({url!r}, poolclass=NullPool)


@pytest.mark.asyncio
async def test_cleanup(async_safe_cleanup):
    for table in ("everything", "dogs", "nokey"):
        await async_safe_cleanup.delete(table, tag="gone")
"""


def snapshot(url: str) -> dict[str, list[str]]:
    return {t: sorted(r[0] for r in fetch(url, f"SELECT {t}::text FROM {t}")) for t in TABLES}


@pytest.mark.parametrize("driver", ["psycopg", "psycopg_async", "asyncpg"])
def test_every_value_round_trips_exactly_under_unusual_session_settings(
    pytester: pytest.Pytester, pg_url: str, driver: str
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    execute(
        pg_url,
        SCHEMA
        + ROWS.format(tag="kept", n=0)
        + ROWS.format(tag="gone", n=1)
        + f"ALTER DATABASE {database} SET DateStyle = 'SQL, DMY';"
        + f"ALTER DATABASE {database} SET IntervalStyle = 'iso_8601';"
        + f"ALTER DATABASE {database} SET extra_float_digits = 0;"
        + f"ALTER DATABASE {database} SET TimeZone = 'America/St_Johns';",
    )
    assert fetch(pg_url, "SHOW DateStyle") == [("SQL, DMY",)]
    before = snapshot(pg_url)
    gone = {t: sum("gone" in r for r in rows) for t, rows in before.items()}
    assert gone == {"everything": 3, "animals": 2, "dogs": 2, "nokey": 4}
    pytester.makeini("[pytest]\n")
    if driver == "psycopg":
        pytester.makepyfile(test_exact=SYNC_TEST)
    else:
        url = make_url(pg_url).set(drivername=f"postgresql+{driver}")
        pytester.makepyfile(
            test_exact=ASYNC_TEST.format(url=url.render_as_string(hide_password=False))
        )

    result = run(pytester, pg_url, "--safe-cleanup=apply")
    result.assert_outcomes(passed=1)
    got = cleanups(report(pytester))
    assert {t: got["test_cleanup", t]["deleted"] for _, t in got} == {
        "everything": 3,
        "dogs": 2,
        "nokey": 4,
    }
    after = snapshot(pg_url)
    assert {t: sum("gone" in r for r in rows) for t, rows in after.items()} == dict.fromkeys(
        TABLES, 0
    )
    (path,) = {c["backup"] for c in got.values()}

    restored = restore_cli(path, "--url", pg_url)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(pg_url) == before
    # a second restore finds every row there, the table without a key included
    again = restore_cli(path, "--url", pg_url)
    assert again.returncode != 0
    assert "already exist" in again.stderr + again.stdout
    skipped = restore_cli(path, "--url", pg_url, "--skip-existing")
    assert skipped.returncode == 0, skipped.stderr
    assert snapshot(pg_url) == before
