"""statements.classify: what the watch sees in a SQL text (section 6a).

Each case is (sql, keyword, writes, destructive). Writes are what a BLOCK target
refuses; destructive ones (DELETE, TRUNCATE, DROP) are what the unguarded watch reports.
"""

from __future__ import annotations

import pytest

from pytest_safe_cleanup.statements import (
    _READINGS,
    _classify,
    _readings_for,
    _strip,
    classify,
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
    ("WITH a AS (SELECT id FROM t), b AS (DELETE FROM t WHERE id IN (SELECT id FROM a)) "
     "SELECT 1", "WITH ... DELETE", D),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3), "
     "d AS (DELETE FROM t WHERE id IN (SELECT n FROM r) RETURNING id) SELECT * FROM d",
     "WITH ... DELETE", D),
    ("/* c */ WITH d AS (DELETE FROM t RETURNING *) SELECT 1", "WITH ... DELETE", D),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
     "SELECT * FROM r", "WITH", None),
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
