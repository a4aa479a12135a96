"""statements: what the watch sees in a SQL text (sections 3 and 6a).

``classify`` cases are (sql, keyword, writes, destructive). Writes are what a BLOCK
target refuses; destructive ones (DELETE, TRUNCATE, DROP) are what the unguarded
watch reports. ``reaches``, ``changes_stamp`` and ``lifts_read_only`` cases follow,
each with the tricks the watch must not fall for and ways around it we tried; the
servers themselves (SQLite, PostgreSQL, MariaDB) confirm the names and the lifts.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from pytest_safe_cleanup.statements import (
    _READINGS,
    Reach,
    _classify,
    _readings_for,
    _strip,
    changes_stamp,
    classify,
    lifts_read_only,
    reaches,
    reaches_for,
    shorten,
)

W, D = "write", "destructive"  # destructive implies write

CASES = [
    # plain verbs
    ("INSERT INTO t (a) VALUES (1)", "INSERT", W),
    ("UPDATE t SET a = 1 WHERE id = 2", "UPDATE", W),
    ("DELETE FROM t WHERE id = 1", "DELETE", D),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", "MERGE", W),
    ("TRUNCATE TABLE t", "TRUNCATE", D),
    ("CREATE TABLE x (id integer)", "CREATE", W),
    ("CREATE TEMP TABLE x AS SELECT 1", "CREATE", W),
    ("ALTER TABLE t ADD COLUMN c integer", "ALTER", W),
    ("DROP TABLE t", "DROP", D),
    ("DROP DATABASE app", "DROP", D),
    ("COPY t FROM STDIN", "COPY FROM", W),
    ("COPY t (a, b) FROM '/tmp/t.csv' WITH (FORMAT csv)", "COPY FROM", W),
    ('COPY "Quoted" FROM STDIN', "COPY FROM", W),
    ("GRANT SELECT ON t TO reader", "GRANT", W),
    ("REVOKE ALL ON t FROM reader", "REVOKE", W),
    # comments
    ("-- a comment\nDELETE FROM t", "DELETE", D),
    ("-- one\n-- two\n  DELETE FROM t", "DELETE", D),
    ("/* c */ DELETE FROM t", "DELETE", D),
    ("/* c */ -- c\n   DELETE FROM t", "DELETE", D),
    ("/* multi\n line */\nTRUNCATE t", "TRUNCATE", D),
    ("/* it's a 'quote' */ DROP TABLE t", "DROP", D),
    ("/* a /* nested */ b */ DELETE FROM t", "DELETE", D),  # PostgreSQL nests comments
    ("/* looks /* nested */ DELETE FROM t", "DELETE", D),  # unterminated in PG: still a write
    ("SELECT 1 -- DELETE FROM t", "", None),
    ("SELECT 1 /* DELETE FROM t */", "", None),
    # whitespace, parentheses, case
    ("   \n\t  DELETE FROM t", "DELETE", D),
    ("(DELETE FROM t)", "DELETE", D),
    (" ( ( delete from t ) )", "DELETE", D),
    ("delete from t", "DELETE", D),
    ("dElEtE FrOm t", "DELETE", D),
    ("insert into t values (1)", "INSERT", W),
    ("truncate t", "TRUNCATE", D),
    # several statements in one text: the most dangerous one counts
    ("SELECT 1; DELETE FROM t", "DELETE", D),
    ("SELECT 1; UPDATE t SET a = 1", "UPDATE", W),
    ("INSERT INTO t VALUES (1); TRUNCATE t", "TRUNCATE", D),
    ("SELECT ';'; SELECT 2", "", None),
    # data-modifying CTEs
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d", "WITH ... DELETE", D),
    ("with d as (delete from t returning id) select * from d", "WITH ... DELETE", D),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING id) SELECT * FROM u", "WITH ... UPDATE", W),
    ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", "WITH ... INSERT", W),
    (
        "WITH a AS (SELECT id FROM t), b AS (DELETE FROM t WHERE id IN (SELECT id FROM a)) "
        "SELECT 1",
        "WITH ... DELETE",
        D,
    ),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3), "
        "d AS (DELETE FROM t WHERE id IN (SELECT n FROM r) RETURNING id) SELECT * FROM d",
        "WITH ... DELETE",
        D,
    ),
    ("/* c */ WITH d AS (DELETE FROM t RETURNING *) SELECT 1", "WITH ... DELETE", D),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "SELECT * FROM r",
        "WITH",
        None,
    ),
    ("WITH a AS (SELECT 1), b AS (SELECT 2) SELECT * FROM a, b", "WITH", None),
    ("WITH x AS (SELECT 'delete' AS w) SELECT * FROM x", "WITH", None),
    ("WITH x AS (SELECT deleted_at, update_count FROM t) SELECT * FROM x", "WITH", None),
    # strings and dollar-quoted bodies that contain the word: reads
    ("SELECT 'DELETE FROM t'", "", None),
    ("SELECT 'it''s; DELETE FROM t'", "", None),
    ('SELECT "delete" FROM t', "", None),
    ("SELECT $$ DELETE FROM t $$", "", None),
    ("SELECT $body$ DROP TABLE t; $body$", "", None),
    ("SELECT * FROM t WHERE note = 'truncate' AND kind = 'drop'", "", None),
    ("select * from deleted_items", "", None),
    ("SELECT updated_at, inserted_by FROM t", "", None),
    # dialects disagree on strings and comments: the most dangerous reading counts
    ("SELECT E'\\''; DELETE FROM t; -- '", "DELETE", D),  # PostgreSQL E'' escapes
    ("SELECT 'a\\'; DELETE FROM t; -- '", "DELETE", D),  # MySQL; PG, standard strings off
    ('SELECT "a\\"; DELETE FROM t; -- "', "DELETE", D),  # a MySQL string
    ("SELECT 'C:\\', E'\\''; DELETE FROM t; -- '", "DELETE", D),  # both kinds in PG
    ("SELECT 1; # '\nDELETE FROM t; -- '", "DELETE", D),  # a MySQL comment
    ("SELECT 1 --1; DELETE FROM t", "DELETE", D),  # MySQL: "--" needs a space after
    ("SELECT 1; /*!50000 DELETE FROM t */", "DELETE", D),  # MySQL runs /*! ... */
    ("SELECT 1 AS $$; DELETE FROM t; -- $$", "DELETE", D),  # $$ is a MySQL name
    ("SELECT 1 AS a$$; DELETE FROM t; -- $$", "DELETE", D),  # a$$ is a PG name
    ("SELECT 1 AS [it's]; DELETE FROM t; -- ']", "DELETE", D),  # SQLite, SQL Server
    ("/* /* */ ' */ DELETE FROM t; -- '", "DELETE", D),  # nested in PG, SQL Server
    ("SELECT 1;\fDELETE FROM t", "DELETE", D),  # form feed and vertical tab are spaces
    ("\vDELETE FROM t", "DELETE", D),
    ("SELECT 'it''s'", "", None),
    ("SELECT '#not a comment'", "", None),
    ("SELECT 'C:\\path\\'", "", None),
    ("SELECT e'\\n', E'it\\'s' FROM t", "", None),
    ("SELECT a # b FROM t", "", None),  # PostgreSQL's xor
    ("SELECT a -- b\n FROM t", "", None),
    ("SELECT arr[1], `c` FROM t", "", None),
    ("SELECT $1, $2", "", None),
    ("SELECT $tag$ it's; $tag$", "", None),
    ("/* a */ /* b */ SELECT 1", "", None),
    ("/*+ hint */ SELECT 1", "", None),
    # SELECT ... INTO makes a table
    ("SELECT * INTO new_t FROM t", "SELECT INTO", W),
    ("select a, b into temp copy_t from t", "SELECT INTO", W),
    ("WITH a AS (SELECT 1) SELECT * INTO x FROM a", "WITH ... SELECT INTO", W),
    ("SELECT 1 INTO @x", "", None),  # MySQL variables
    ("SELECT 1 INTO  @x", "", None),
    # EXPLAIN runs the statement only with ANALYZE
    ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN ANALYZE DELETE", D),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", "EXPLAIN ANALYZE UPDATE", W),
    ("explain analyse delete from t", "EXPLAIN ANALYZE DELETE", D),
    ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", "EXPLAIN ANALYZE CREATE", W),
    ("EXPLAIN (ANALYZE) SELECT * INTO x FROM t", "EXPLAIN ANALYZE SELECT INTO", W),
    ("EXPLAIN ANALYZE (SELECT * INTO x FROM t)", "EXPLAIN ANALYZE SELECT INTO", W),
    ("EXPLAIN ANALYZE VERBOSE DELETE FROM t", "EXPLAIN ANALYZE DELETE", D),
    ("EXPLAIN ANALYZE FORMAT=TREE DELETE FROM t", "EXPLAIN ANALYZE DELETE", D),  # MySQL
    ("EXPLAIN ANALYZE WITH d AS (DELETE FROM t) SELECT 1", "EXPLAIN ANALYZE WITH ... DELETE", D),
    ("/* c */ EXPLAIN (ANALYZE, FORMAT JSON) TRUNCATE t", "EXPLAIN ANALYZE TRUNCATE", D),
    ("ANALYZE DELETE FROM t", "ANALYZE DELETE", D),  # MariaDB runs it
    ("ANALYZE FORMAT=JSON UPDATE t SET a = 1", "ANALYZE UPDATE", W),
    ("ANALYZE t", "ANALYZE", None),
    ("ANALYZE VERBOSE t", "ANALYZE", None),
    ("ANALYZE TABLE t", "ANALYZE", None),
    ("EXPLAIN (FORMAT JSON) DELETE FROM t", "EXPLAIN", None),
    ("EXPLAIN ANALYZE WITH a AS (SELECT 1) SELECT * FROM a", "EXPLAIN", None),
    ("DESCRIBE t", "DESCRIBE", None),
    ("EXPLAIN DELETE FROM t", "EXPLAIN", None),
    ("EXPLAIN (COSTS off) DELETE FROM t", "EXPLAIN", None),
    ("EXPLAIN ANALYZE SELECT * FROM t", "EXPLAIN", None),
    # COPY ... TO reads
    ("COPY t TO STDOUT", "COPY", None),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv)", "COPY", None),
    ("COPY (SELECT * FROM t) TO STDOUT", "COPY", None),
    ("COPY (SELECT a FROM t WHERE b > 1) TO '/tmp/out.csv'", "COPY", None),
    # session and transaction statements: reads
    ("SET search_path TO app", "SET", None),
    ("SET LOCAL statement_timeout = 1000", "SET", None),
    ("SHOW server_version", "SHOW", None),
    ("BEGIN", "BEGIN", None),
    ("begin;", "BEGIN", None),
    ("COMMIT", "COMMIT", None),
    ("ROLLBACK", "ROLLBACK", None),
    ("SAVEPOINT sa_1", "SAVEPOINT", None),
    ("RELEASE SAVEPOINT sa_1", "RELEASE", None),
    ("PRAGMA foreign_keys = ON", "PRAGMA", None),
    ("SELECT * FROM t WHERE id = %(id)s", "", None),
    ("SELECT * FROM t FOR UPDATE", "", None),
    ("", "", None),
    ("   -- only a comment", "", None),
]


@pytest.mark.parametrize(("sql", "keyword", "kind"), CASES, ids=[c[0][:48] for c in CASES])
def test_classify(sql: str, keyword: str, kind: str | None) -> None:
    found = classify(sql)
    assert (found.keyword, found.writes, found.destructive) == (
        keyword,
        kind is not None,
        kind == D,
    )


SHORTCUTS = [c[0] for c in CASES] + [
    "SELECT 'a\\' /* x */, `b`, [c], $$d$$; # e\n/* f */ DELETE FROM t; -- '",
    "SELECT '/* a' /* b */ [x */ DELETE FROM t; -- ]",
    "SELECT `a` /* b /* c */ ' */ DELETE FROM t; -- '",
    "SELECT $$ /* $$; /*! DELETE FROM t */",
    "SELECT 1 --x\n, E'\\'' /* a */ /* b */",
]


@pytest.mark.parametrize("sql", SHORTCUTS, ids=[s[:48] for s in SHORTCUTS])
def test_skipping_readings_changes_nothing(sql: str) -> None:
    """Readings are skipped only where they would see what an earlier one saw."""
    chosen = _readings_for(sql)
    assert _classify(sql, chosen) == _classify(sql, _READINGS)
    assert {_strip(sql, r) for r in chosen} == {_strip(sql, r) for r in _READINGS}


def test_same_text_gives_same_answer_from_the_cache() -> None:
    first = classify("/* cached */ DELETE FROM t")
    assert classify("/* cached */ DELETE FROM t") is first


def test_shorten_is_one_line_and_bounded() -> None:
    assert shorten("DELETE\n  FROM t\n WHERE id = 1") == "DELETE FROM t WHERE id = 1"
    long = shorten("SELECT " + ", ".join(f"c{i}" for i in range(100)), limit=40)
    assert len(long) == 40
    assert long.endswith("...")


# reaches: the other databases a statement writes to or changes. Each case is
# (sql, backend, reaches shown as kind:name[.table][ as alias], "?" for no name).

PG, LITE, MY = "postgresql", "sqlite", "mysql"

REACH_CASES = [
    # PostgreSQL: databases by name, folded as the server folds them
    ("ALTER DATABASE other RESET safe_cleanup.environment", PG, ["alter:other"]),
    ("alter database Other set work_mem = '1MB'", PG, ["alter:other"]),
    ('ALTER DATABASE "Other" OWNER TO me', PG, ["alter:Other"]),
    ("ALTER DATABASE ÄProd RENAME TO x", PG, ["alter:Äprod"]),  # only ASCII folds
    ("DROP DATABASE prod", PG, ["drop:prod"]),
    ("DROP DATABASE IF EXISTS prod WITH (FORCE)", PG, ["drop:prod"]),
    ('DROP DATABASE "we""ird"', PG, ['drop:we"ird']),
    ("CREATE DATABASE copy TEMPLATE prod", PG, ["create:copy"]),  # the template is read
    ("CREATE DATABASE copy WITH OWNER = me TEMPLATE = prod", PG, ["create:copy"]),
    ("COMMENT ON DATABASE prod IS 'the real one'", PG, ["comment:prod"]),
    ("SECURITY LABEL FOR selinux ON DATABASE prod IS 'x'", PG, ["comment:prod"]),
    ("GRANT CONNECT, TEMP ON DATABASE a, B TO app", PG, ["grant:a", "grant:b"]),
    ("REVOKE ALL ON DATABASE prod FROM PUBLIC", PG, ["grant:prod"]),
    ("ALTER ROLE app IN DATABASE prod SET search_path = x", PG, ["alter:prod"]),
    ("ALTER USER app IN DATABASE prod RESET ALL", PG, ["alter:prod"]),
    # PostgreSQL: a qualified name is a schema of the same database
    ("INSERT INTO app.items VALUES (1)", PG, []),
    ("DROP SCHEMA prod CASCADE", PG, []),
    ("WITH d AS (DELETE FROM app.items RETURNING 1) SELECT 1", PG, []),
    ("SELECT datname FROM pg_database WHERE datname = 'prod'", PG, []),
    ("USE prod", PG, []),
    # tricks: comments, case, strings, several statements, readings that disagree
    ("-- x\n/* y */ DROP DATABASE prod", PG, ["drop:prod"]),
    ("SELECT 'DROP DATABASE prod'", PG, []),
    ("SELECT $$ DROP DATABASE prod $$", PG, []),
    ("SELECT 1; drop database prod", PG, ["drop:prod"]),
    ("SELECT 1 -- ; DROP DATABASE prod", PG, []),
    ("SELECT E'\\''; DROP DATABASE prod; -- '", PG, ["drop:prod"]),
    ("/* a /* b */ DROP DATABASE prod */ SELECT 1", PG, []),  # PostgreSQL nests comments
    ("/* a /* b */ DROP DATABASE prod */ SELECT 1", "mssql", ["drop:prod"]),  # SQLite's reading
    # tried around it: escaped names, another server reached through a function
    ('DROP DATABASE U&"pr\\006fd"', PG, ["drop:?"]),
    ("SELECT dblink_exec('dbname=prod', 'DELETE FROM items')", PG, ["unknown:?"]),
    ("SELECT public.dblink('dbname=prod', 'SELECT 1')", PG, ["unknown:?"]),
    ("WITH x AS (SELECT dblink_exec('dbname=prod', 'DELETE FROM t')) SELECT 1", PG, ["unknown:?"]),
    # tried around it: a DO block or a function runs text; a subscription, a foreign
    # server or a shell reach another database by a connection string
    ("DO $$ BEGIN EXECUTE 'ALTER DATABASE prod OWNER TO x'; END $$", PG, ["alter:prod"]),
    ("DO $$ BEGIN ALTER DATABASE prod OWNER TO x; END $$", PG, ["alter:prod"]),
    ("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I OWNER TO x', 'prod'); END $$", PG, ["alter:?"]),
    ("DO $$ BEGIN PERFORM dblink_exec('dbname=prod', 'DELETE FROM t'); END $$", PG, ["unknown:?"]),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT dblink_exec('x', 'y') $$",
        PG,
        ["unknown:?"],
    ),
    ("CREATE SUBSCRIPTION s CONNECTION 'dbname=prod' PUBLICATION p", PG, ["unknown:?"]),
    (
        "CREATE SERVER prod FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'prod')",
        PG,
        ["unknown:?"],
    ),
    ("COPY (SELECT 1) TO PROGRAM 'psql -d prod -c \"DROP TABLE t\"'", PG, ["unknown:?"]),
    # SQLite: ATTACH names a file; a name SQLite reads as a file name counts
    ("ATTACH DATABASE 'prod.db' AS p", LITE, ["attach:prod.db as p"]),
    ("attach 'it''s.db' as p", LITE, ["attach:it's.db as p"]),
    ("ATTACH prod AS p", LITE, ["attach:prod as p"]),
    ('ATTACH "prod.db" AS "p"', LITE, ["attach:prod.db as p"]),
    ("ATTACH 'pr' || 'od.db' AS p", LITE, ["attach:? as p"]),
    ("ATTACH ? AS p", LITE, ["attach:? as p"]),
    ("ATTACH :file AS p", LITE, ["attach:? as p"]),
    ("SELECT 1 AS [x]; ATTACH 'prod.db' AS p", LITE, ["attach:prod.db as p"]),
    ("SELECT 'ATTACH ''prod.db'' AS p'", LITE, []),
    ("DETACH DATABASE p", LITE, ["detach:p"]),
    ("INSERT INTO p.items VALUES (1)", LITE, ["table:p.items"]),
    ("DELETE FROM main.items", LITE, []),
    ("UPDATE temp.items SET a = 1", LITE, []),
    ("SELECT * FROM p.items", LITE, []),
    ("ATTACH 'prod.db' AS p", PG, []),
    # MySQL and MariaDB: USE, databases and schemas, names kept as written
    ("USE prod", MY, ["use:prod"]),
    ("use `Prod`", MY, ["use:Prod"]),
    ("SELECT 1; # '\nUSE prod; -- '", MY, ["use:prod"]),
    ("/*!50000USE*/ prod", MY, ["use:prod"]),  # MySQL runs what /*! */ holds
    ("SELECT 'USE prod'", MY, []),
    ("DROP DATABASE Prod", MY, ["drop:Prod"]),
    ("DROP SCHEMA IF EXISTS `prod`", MY, ["drop:prod"]),
    ("ALTER SCHEMA prod READ ONLY = 0", MY, ["alter:prod"]),
    ("ALTER DATABASE CHARACTER SET utf8mb4", MY, []),  # the current database
    ("CREATE DATABASE IF NOT EXISTS sandbox", MY, ["create:sandbox"]),
    ("CREATE OR REPLACE DATABASE prod", "mariadb", ["drop:prod"]),  # drops it first
    # MySQL: writes to db.table
    ("INSERT INTO prod.items VALUES (1)", MY, ["table:prod.items"]),
    ("INSERT IGNORE prod.items SET a = 1", MY, ["table:prod.items"]),
    ("REPLACE INTO `prod`.`items` VALUES (1)", MY, ["table:prod.items"]),
    ("UPDATE LOW_PRIORITY prod.items SET a = 1", MY, ["table:prod.items"]),
    ("DELETE FROM prod.items WHERE id = 1", MY, ["table:prod.items"]),
    ("TRUNCATE prod.items", MY, ["table:prod.items"]),
    ("TRUNCATE TABLE `prod` . items", MY, ["table:prod.items"]),
    ("DROP TABLE IF EXISTS items, prod.items", MY, ["table:prod.items"]),
    ("ALTER TABLE prod.items ADD c int", MY, ["table:prod.items"]),
    ("CREATE TABLE prod.items (id int)", MY, ["table:prod.items"]),
    ("CREATE TABLE `a``b`.items (id int)", MY, ["table:a`b.items"]),
    ("RENAME TABLE items TO prod.items", MY, ["table:prod.items"]),
    ("RENAME TABLE prod.items TO items, a TO b", MY, ["table:prod.items"]),
    ("INSERT INTO items SELECT * FROM prod.items", MY, []),  # read
    ("DELETE FROM items WHERE id IN (SELECT id FROM prod.items)", MY, []),  # read
    ("UPDATE items SET a = 1 WHERE items.id = 2", MY, []),
    ("INSERT INTO items (a) VALUES ('prod.items')", MY, []),
    ("SELECT * FROM prod.items", MY, []),
    ("INSERT INTO prod.items VALUES (1)", PG, []),
    # MySQL multi-table forms: every table that may be written
    ("UPDATE items JOIN prod.b ON items.id = b.id SET b.x = 1", MY, ["table:prod.b"]),
    ("UPDATE a, prod.b AS x SET x.v = a.v WHERE a.id = x.id", MY, ["table:prod.b"]),
    ("DELETE a, prod.b FROM a JOIN prod.b ON a.id = b.id", MY, ["table:prod.b"]),
    ("DELETE x FROM prod.items AS x WHERE x.id = 1", MY, ["table:prod.items"]),
    (
        "DELETE FROM x USING ok.a AS x JOIN prod.b ON x.id = b.id",
        MY,
        ["table:ok.a", "table:prod.b"],
    ),
    ("DELETE a.* FROM a JOIN (SELECT id FROM prod.b) d ON a.id = d.id", MY, []),
    ("WITH x AS (SELECT 1) DELETE FROM prod.items", MY, ["table:prod.items"]),
    # a qualified name that names no table of the statement: fail closed
    ("UPDATE items SET a = 1 WHERE prod.items.id = 1", MY, ["unknown:prod"]),
    ("DELETE FROM items WHERE other.x = 1", MY, ["unknown:other"]),
    # tried around it: text run later, routines, grants, partitions, triggers, renames
    ("PREPARE s FROM 'DELETE FROM prod.items'", MY, ["table:prod.items"]),
    ("PREPARE s FROM @sql", MY, ["unknown:?"]),
    ("EXECUTE IMMEDIATE 'DROP DATABASE prod'", "mariadb", ["drop:prod"]),
    ("CALL prod.purge()", MY, ["routine:prod.purge"]),
    ("INSERT INTO items VALUES (prod.next_id())", MY, ["routine:prod.next_id"]),
    ("GRANT ALL ON prod.* TO 'u'@'%'", MY, ["grant:prod"]),
    ("GRANT SELECT (a) ON TABLE prod.items TO u", MY, ["grant:prod.items"]),
    ("GRANT ALL ON *.* TO u", MY, ["unknown:?"]),
    ("ALTER TABLE items EXCHANGE PARTITION p0 WITH TABLE prod.items", MY, ["table:prod.items"]),
    ("ALTER TABLE items RENAME prod.items", MY, ["table:prod.items"]),
    (
        "CREATE TRIGGER tr AFTER INSERT ON items FOR EACH ROW DELETE FROM prod.items",
        MY,
        ["table:prod.items"],
    ),
    ("LOAD DATA INFILE 'x.csv' INTO TABLE prod.items", MY, ["table:prod.items"]),
    (
        "CREATE TRIGGER tr AFTER DELETE ON items FOR EACH ROW CALL prod.audit()",
        MY,
        ["routine:prod.audit"],
    ),
    ("CREATE PROCEDURE p() BEGIN SELECT 1; DELETE FROM prod.items; END", MY, ["table:prod.items"]),
    ("CREATE EVENT e ON SCHEDULE AT NOW() DO DROP DATABASE prod", MY, ["drop:prod"]),
    (
        "CREATE PROCEDURE p() BEGIN PREPARE s FROM 'DELETE FROM prod.items'; END",
        MY,
        ["table:prod.items"],
    ),
    ("SELECT prod.purge()", MY, ["routine:prod.purge"]),  # a read that runs a routine
    ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM p.items; END", LITE, ["table:p.items"]),
    # what SQLAlchemy and triggers send is no reach
    ("SELECT count(users.id) FROM users", MY, []),
    ("SELECT JSON_EXTRACT(t.doc, '$.a') FROM t", MY, []),
    ("INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)", MY, []),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a", LITE, []),
    ("UPDATE items SET price = 1.5 WHERE id = 2", MY, []),
    ("UPDATE `items` SET `price`=%(price)s WHERE `items`.`id` = %(items_id)s", MY, []),
    ("DELETE FROM app.items WHERE app.items.id = %(id_1)s", MY, ["table:app.items"]),
    (
        "CREATE TRIGGER tr BEFORE UPDATE ON items FOR EACH ROW "
        "UPDATE log SET v = NEW.v WHERE id = OLD.id",
        MY,
        [],
    ),
    ("ANALYZE DELETE FROM prod.items", "mariadb", ["table:prod.items"]),  # it runs
    # a backend these rules do not know gets every rule
    ("DROP SCHEMA prod", "mssql", ["drop:prod"]),
    ("PREPARE p (int) AS DELETE FROM prod.items WHERE id = $1", "mssql", ["table:prod.items"]),
    ("TRUNCATE a, prod.items", "mssql", ["table:prod.items"]),
    ("INSERT INTO prod.items VALUES (1)", "mssql", ["table:prod.items"]),
]


def shown(reach: Reach) -> str:
    text = f"{reach.kind}:{'?' if reach.name is None else reach.name}"
    if reach.table:
        text += f".{reach.table}"
    if reach.kind == "attach":
        text += f" as {reach.alias}"
    return text


@pytest.mark.parametrize(
    ("sql", "backend", "expected"), REACH_CASES, ids=[f"{c[1]}:{c[0][:44]}" for c in REACH_CASES]
)
def test_reaches(sql: str, backend: str, expected: list[str]) -> None:
    found = reaches(sql, backend)
    assert [shown(r) for r in found] == expected
    assert all(r.known == (r.kind != "unknown" and r.name is not None) for r in found)


def test_reaches_names_the_words_that_decided_and_is_cached() -> None:
    (reach,) = reaches("/* c */ DROP DATABASE IF EXISTS prod", "postgresql")
    assert reach == Reach("drop", "prod", keyword="DROP DATABASE")
    assert reaches("/* c */ DROP DATABASE IF EXISTS prod", "postgresql") is reaches(
        "/* c */ DROP DATABASE IF EXISTS prod", "postgresql"
    )
    assert reaches("USE prod", "mariadb") == reaches("USE prod", "mysql")
    assert reaches_for("sqlite")("ATTACH 'a.db' AS a") is reaches("ATTACH 'a.db' AS a", "sqlite")
    assert reaches_for("oracle") is reaches_for("")  # any other backend: every rule


# changes_stamp: (sql, changes a database's stamp)

STAMP_CASES = [
    ("ALTER DATABASE app SET safe_cleanup.environment = 'test'", True),
    ("alter database app reset SAFE_CLEANUP.ENVIRONMENT", True),
    ("ALTER DATABASE app SET \"safe_cleanup.environment\" TO 'dev'", True),
    ("ALTER DATABASE app SET safe_cleanup . environment FROM CURRENT", True),
    ("ALTER DATABASE app RESET ALL", True),
    ("ALTER ROLE app IN DATABASE prod SET safe_cleanup.environment = 'test'", True),
    ("ALTER ROLE ALL IN DATABASE prod RESET ALL", True),
    ("DELETE FROM safe_cleanup_stamp", True),
    ("UPDATE public.safe_cleanup_stamp SET environment = 'test'", True),
    ('TRUNCATE "safe_cleanup_stamp"', True),
    ("DROP TABLE IF EXISTS `app`.`safe_cleanup_stamp`", True),
    ("REPLACE INTO safe_cleanup_stamp VALUES ('test')", True),
    ("INSERT INTO [safe_cleanup_stamp] VALUES ('test')", True),
    ("ALTER TABLE safe_cleanup_stamp RENAME TO old", True),
    ("RENAME TABLE safe_cleanup_stamp TO old", True),
    ("CREATE OR REPLACE VIEW safe_cleanup_stamp AS SELECT 'test' AS environment", True),
    ("/* x */ -- y\n delete from SAFE_CLEANUP_STAMP", True),
    ("SELECT 1; DELETE FROM safe_cleanup_stamp", True),
    ("SELECT 1; /*!50000 DELETE FROM safe_cleanup_stamp */", True),
    ("WITH d AS (DELETE FROM safe_cleanup_stamp RETURNING 1) SELECT 1", True),
    # tried around it: a table renamed into the stamp, the catalog behind the setting,
    # text run later, an escaped name
    ("ALTER TABLE fake RENAME TO safe_cleanup_stamp", True),
    ("DELETE FROM pg_catalog.pg_db_role_setting", True),
    ("PREPARE s FROM 'DELETE FROM safe_cleanup_stamp'", True),
    ("PREPARE s FROM @q", True),
    ("DO $$ BEGIN EXECUTE 'DELETE FROM safe_cleanup_stamp'; END $$", True),
    ('DELETE FROM U&"safe\\005fcleanup_stamp"', True),
    ("CREATE VIEW v AS SELECT * FROM safe_cleanup_stamp", True),  # then DELETE FROM v
    ("UPDATE sqlite_master SET sql = 'x' WHERE name = 'safe_cleanup_stamp'", True),
    # not a change
    ("SELECT environment FROM safe_cleanup_stamp", False),
    ("SELECT 'DELETE FROM safe_cleanup_stamp'", False),
    ("-- DELETE FROM safe_cleanup_stamp\nSELECT 1", False),
    ("ALTER DATABASE app SET search_path = app", False),
    ("ALTER DATABASE safe_cleanup_test OWNER TO me", False),
    ("INSERT INTO log (m) VALUES ('safe_cleanup_stamp')", False),
    ("SET safe_cleanup.environment = 'test'", False),  # this session only
    ("SELECT current_setting('safe_cleanup.environment')", False),
    ("DELETE FROM items", False),
]


@pytest.mark.parametrize(("sql", "expected"), STAMP_CASES, ids=[c[0][:48] for c in STAMP_CASES])
def test_changes_stamp(sql: str, expected: bool) -> None:
    assert changes_stamp(sql) is expected


# lifts_read_only: (sql, lifts a read-only session)

LIFT_CASES = [
    # PostgreSQL
    ("SET default_transaction_read_only = off", True),
    ("set Default_Transaction_Read_Only to FALSE", True),
    ("SET SESSION default_transaction_read_only = 0", True),
    ("SET LOCAL default_transaction_read_only TO 'off'", True),
    ('SET default_transaction_read_only = "off"', True),
    ('SET "default_transaction_read_only" = off', True),
    ("SET default_transaction_read_only = 'of'", True),  # a prefix PostgreSQL takes
    ("SET default_transaction_read_only TO DEFAULT", True),
    ("SET transaction_read_only = off", True),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", True),
    ("SET TRANSACTION READ WRITE", True),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", True),
    ("BEGIN READ WRITE", True),
    ("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE", True),
    ("START TRANSACTION READ WRITE", True),
    ("BEGIN READ/* x */WRITE", True),
    ("RESET default_transaction_read_only", True),
    ("RESET ALL", True),
    ("DISCARD ALL", True),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", True),
    ("SELECT pg_catalog.set_config('DEFAULT_TRANSACTION_READ_ONLY', 'off', false)", True),
    ("SELECT 1 FROM (SELECT set_config('transaction_read_only', 'off', true)) s", True),
    ("SELECT 1; SET default_transaction_read_only = off", True),
    ("/* c */ -- c\n set default_transaction_read_only = off", True),
    # tried around it: a quoted function, a name not given as a literal, an escaped
    # name, the settings view
    ("select \"set_config\"('default_transaction_read_only', 'off', false)", True),
    ("SELECT set_config($1, $2, false)", True),
    ("SELECT set_config(name, 'off', false) FROM names", True),
    ('SET U&"default\\005ftransaction_read_only" = off', True),
    ("UPDATE pg_settings SET setting = 'off' WHERE name LIKE 'default_transaction_read%'", True),
    # MySQL and MariaDB
    ("SET transaction_read_only = 0", True),
    ("SET @@session.transaction_read_only = OFF", True),
    ("SET @@tx_read_only := 0", True),
    ("SET SESSION tx_read_only = 'OFF'", True),
    ("SET LOCAL tx_read_only = 0", True),
    ("SET autocommit = 1, tx_read_only = 0", True),
    ("SET SESSION TRANSACTION READ WRITE", True),
    ("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ WRITE", True),
    ("SELECT 1 # x\n; SET tx_read_only = 0", True),
    ("/*!50000 SET SESSION tx_read_only = 0 */", True),
    # tried around it: a quoted variable, an expression, the default, one statement
    ("SET `tx_read_only` = 0", True),
    ("SET @@session.`tx_read_only` = 0", True),
    ("SET tx_read_only = 1 - 1", True),
    ("SET tx_read_only = DEFAULT", True),
    ("SET STATEMENT tx_read_only = 0 FOR SELECT 1", True),
    # SQLite
    ("PRAGMA query_only = 0", True),
    ("PRAGMA query_only = false", True),
    ("pragma QUERY_ONLY = OFF", True),
    ("PRAGMA query_only = 'no'", True),
    ("PRAGMA main.query_only = 0", True),
    ('PRAGMA "main"."query_only" = 0', True),
    ("PRAGMA [query_only] = 0", True),
    # tried around it: the call form, values SQLite reads as false
    ("PRAGMA query_only(0)", True),
    ("PRAGMA query_only = 256", True),
    ("PRAGMA query_only = t", True),
    ("PRAGMA query_only = ' 1'", True),
    ("PRAGMA query_only = -1", True),
    # not a lift
    ("SET default_transaction_read_only = on", False),
    ("SET default_transaction_read_only = 'on'", False),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", False),
    ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", False),
    ("BEGIN", False),
    ("BEGIN ISOLATION LEVEL READ COMMITTED", False),
    ("START TRANSACTION READ ONLY", False),
    ("SELECT 'SET default_transaction_read_only = off'", False),
    ("SELECT $$ RESET ALL $$", False),
    ("-- RESET ALL\nSELECT 1", False),
    ("SELECT set_config('search_path', 'app', false)", False),
    ("SELECT set_config('default_transaction_read_only', 'on', false)", False),
    ("SET tx_read_only = 1", False),
    ("SET @@session.tx_read_only = ON", False),
    ("PRAGMA query_only", False),
    ("PRAGMA query_only = 1", False),
    ("PRAGMA query_only = yes", False),
    ("PRAGMA foreign_keys = 0", False),
    ("SELECT read_only FROM t", False),
    ("SHOW transaction_read_only", False),
    ("SELECT @@tx_read_only", False),
    ("DISCARD PLANS", False),
    ("RESET search_path", False),
    ("SET search_path TO app", False),
]


@pytest.mark.parametrize(("sql", "expected"), LIFT_CASES, ids=[c[0][:48] for c in LIFT_CASES])
def test_lifts_read_only(sql: str, expected: bool) -> None:
    assert lifts_read_only(sql) is expected


# The same tricks on every case: a comment before it, another statement before it,
# another case, the whole text in a string or after a line comment.

FOUND_REACHES = [c for c in REACH_CASES if c[2]]
PLAIN_TEXT = [c for c in REACH_CASES if "\\" not in c[0] and "\n" not in c[0]]


@pytest.mark.parametrize(("sql", "backend", "expected"), FOUND_REACHES)
def test_reaches_through_comments_and_other_statements(
    sql: str, backend: str, expected: list[str]
) -> None:
    for text in (f"/* c */ -- c\n{sql}", f"SELECT 1; {sql}", f"{sql};\n SELECT 2"):
        assert [shown(r) for r in reaches(text, backend)] == expected, text
    if backend == "mysql":
        assert [shown(r) for r in reaches(f"# c\n{sql}", backend)] == expected


@pytest.mark.parametrize(("sql", "backend", "expected"), PLAIN_TEXT)
def test_reaches_nothing_in_a_string_or_a_comment(
    sql: str, backend: str, expected: list[str]
) -> None:
    quoted = sql.replace("'", "''")
    for text in (f"SELECT '{quoted}'", f"SELECT 1 -- {sql}", f"SELECT 1 /* {sql} */"):
        if "*/" in sql and "/*" in text:
            continue
        assert reaches(text, backend) == (), text


@pytest.mark.parametrize(
    ("sql", "expected", "function"),
    [(sql, expected, changes_stamp) for sql, expected in STAMP_CASES]
    + [(sql, expected, lifts_read_only) for sql, expected in LIFT_CASES],
    ids=[f"stamp:{c[0][:40]}" for c in STAMP_CASES] + [f"lift:{c[0][:40]}" for c in LIFT_CASES],
)
def test_answers_hold_through_case_comments_and_other_statements(
    sql: str, expected: bool, function: Callable[[str], bool]
) -> None:
    for text in (sql.lower(), sql.upper(), f"/* c */ -- c\n {sql}", f"SELECT 1; {sql}"):
        assert function(text) is expected, text
    if expected and "\\" not in sql:
        quoted = sql.replace("'", "''")
        assert function(f"SELECT '{quoted}'") is False
        assert function(f"SELECT 1 -- {sql}".replace("\n", " ")) is False


def test_no_text_makes_them_raise() -> None:
    """The watch runs them on every statement: odd text gets an answer, never an error."""
    texts = [c[0] for c in REACH_CASES + STAMP_CASES + LIFT_CASES]
    pieces = sorted({word for text in texts for word in text.split()})
    pieces += [".", ",", "(", ")", ";", "=", "'", '"', "`", "[", "]", "$$", "--", "#", "\n"]
    pieces += ["/*", "*/", "/*!", "\\", "U&", "E'", "?", "%s", "-", "@@", ":="]
    rng = random.Random(9)
    for _ in range(3000):
        parts = [rng.choice(pieces) for _ in range(rng.randint(0, 12))]
        sql = rng.choice((" ", "")).join(parts)
        for backend in ("postgresql", "sqlite", "mysql", "other"):
            assert isinstance(reaches(sql, backend), tuple)
        assert changes_stamp(sql) in (True, False)
        assert lifts_read_only(sql) in (True, False)


# The servers decide: every case a server really lifts or names must be seen so.


def test_sqlite_lifts_only_what_lifts_read_only_sees() -> None:
    lifted = []
    for sql, _ in LIFT_CASES:
        conn = sqlite3.connect(":memory:")
        conn.execute("PRAGMA query_only = 1")
        with contextlib.suppress(sqlite3.Error):
            conn.executescript(sql)
        if conn.execute("PRAGMA query_only").fetchone() == (0,):
            lifted.append(sql)
        conn.close()
    assert [sql for sql in lifted if not lifts_read_only(sql)] == []
    assert len(lifted) >= 12  # the SQLite cases above


def test_postgresql_lifts_only_what_lifts_read_only_sees(pg_server_url: str) -> None:
    """Every case only changes its own session, so the server's database serves."""
    # no server-side prepared statements: DISCARD ALL drops them, and psycopg 3.1 would
    # then send ROLLBACK as one it believes still prepared
    engine = create_engine(
        pg_server_url, isolation_level="AUTOCOMMIT", connect_args={"prepare_threshold": None}
    )
    lifted = []
    try:
        with engine.connect() as conn:
            for sql, _ in LIFT_CASES:
                conn.exec_driver_sql("SET default_transaction_read_only = on")
                try:
                    conn.exec_driver_sql(sql)
                    state = conn.exec_driver_sql(
                        "SELECT current_setting('default_transaction_read_only'), "
                        "current_setting('transaction_read_only')"
                    ).one()
                    if "off" in state:
                        lifted.append(sql)
                except DBAPIError:
                    pass
                conn.exec_driver_sql("ROLLBACK")
    finally:
        engine.dispose()
    assert [sql for sql in lifted if not lifts_read_only(sql)] == []
    assert len(lifted) >= 20


def test_postgresql_drops_the_database_reaches_names(pg_server_url: str) -> None:
    engine = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    tag = uuid.uuid4().hex[:8]
    statements = [
        f"DROP DATABASE Sct_ÄB_{tag}",  # folds ASCII letters only
        f'/* c */ SELECT 1; drop database if exists "Sct_we""ird_{tag}" with (force)',
    ]
    try:
        with engine.connect() as conn:
            for sql in statements:
                (reach,) = reaches(sql, "postgresql")
                assert reach.kind == "drop" and reach.name is not None
                quoted = reach.name.replace('"', '""')
                conn.exec_driver_sql(f'CREATE DATABASE "{quoted}"')
                for one in sql.split("; "):
                    conn.exec_driver_sql(one)
                left = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_database WHERE datname = %(name)s",
                    {"name": reach.name},
                ).scalar_one()
                assert left == 0, sql
    finally:
        with engine.connect() as conn:
            for sql in statements:
                for reach in reaches(sql, "postgresql"):
                    quoted = (reach.name or "").replace('"', '""')
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{quoted}"')
        engine.dispose()


def test_sqlite_attaches_the_file_reaches_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    conn = sqlite3.connect("main.db")
    for sql in (
        "ATTACH DATABASE 'a.db' AS a",
        "attach b AS b",
        'ATTACH "c.db" AS "c"',
        "SELECT 1 AS [x]; ATTACH 'it''s.db' AS d",
    ):
        (reach,) = reaches(sql, "sqlite")
        conn.executescript(sql)
        files = {row[1]: Path(row[2]).name for row in conn.execute("PRAGMA database_list")}
        assert files[reach.alias] == reach.name, sql
    conn.close()


@pytest.fixture(scope="module")
def mariadb() -> Iterator[Engine]:
    url = os.environ.get("SAFE_CLEANUP_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except OperationalError:
        engine.dispose()
        pytest.skip(f"no MariaDB server at {url}")
    yield engine
    engine.dispose()


def test_mariadb_lifts_only_what_lifts_read_only_sees(mariadb: Engine) -> None:
    lifted = []
    with mariadb.connect() as conn:
        try:
            for sql, _ in LIFT_CASES:
                conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
                try:
                    conn.exec_driver_sql(sql.replace("%", "%%"))
                    if conn.exec_driver_sql("SELECT @@session.tx_read_only").scalar() == 0:
                        lifted.append(sql)
                except DBAPIError:
                    pass
        finally:
            conn.exec_driver_sql("SET SESSION TRANSACTION READ WRITE")
    assert [sql for sql in lifted if not lifts_read_only(sql)] == []
    assert len(lifted) >= 8


def test_mariadb_uses_the_database_reaches_names(mariadb: Engine) -> None:
    tag = uuid.uuid4().hex[:8]
    statements = [
        f"USE sct_plain_{tag}",
        f"use `Sct_Case_{tag}`",
        f"/*!50000USE*/ sct_hidden_{tag}",
        f"SELECT 1 # '\n; USE `sct_tick``{tag}`",
    ]
    names = [reaches(sql, "mariadb")[0].name for sql in statements]
    with mariadb.connect() as conn:
        try:
            for sql, name in zip(statements, names, strict=True):
                assert name is not None
                conn.exec_driver_sql(f"CREATE DATABASE `{name.replace('`', '``')}`")
                for one in sql.split("; "):
                    conn.exec_driver_sql(one)
                assert conn.exec_driver_sql("SELECT DATABASE()").scalar() == name, sql
        finally:
            for name in names:
                if name is not None:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name.replace('`', '``')}`")
