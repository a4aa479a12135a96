"""Recognise what a SQL statement does, in microseconds, without a parser.

Section 6a's watch runs on every statement of every engine in the process, so this
must be cheap: comments, strings and whitespace are stripped once per distinct
statement text (SQLAlchemy reuses compiled strings, so the cache mostly hits), and
a data-modifying CTE (``WITH d AS (DELETE ...) SELECT ...``) is still a write.

The watch does not know which database will read the text, and databases disagree
on what is a comment or a string: ``#`` starts a comment in MySQL only, a backslash
escapes a quote in MySQL and PostgreSQL ``E''`` strings, ``$$`` quotes in PostgreSQL
only, ``[...]`` quotes in SQLite and SQL Server, PostgreSQL nests comments, and
MySQL runs ``/*! ... */``. So it fails closed: a text is read in each of these ways
and is what its most dangerous reading makes of it. Texts holding none of the
characters where the readings differ (most of them) are read once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

#: first keywords of statements that change data or schema
WRITE_KEYWORDS = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "TRUNCATE",
        "CREATE",
        "ALTER",
        "DROP",
        "GRANT",
        "REVOKE",
        "REPLACE",
        "UPSERT",
        "RENAME",
        "COMMENT",
        "REINDEX",
        "CLUSTER",
        "REFRESH",
        "LOAD",
        "IMPORT",
        "SECURITY",
        "VACUUM",
        "DO",
        "CALL",
        "EXECUTE",
        "PREPARE",
    }
)
DESTRUCTIVE = frozenset({"DELETE", "TRUNCATE", "DROP"})

# Pieces of the readings below; each reading strips its comments and quoted bodies.
# Every piece starts with a literal character: a leading look-behind would make the
# regular expression try each piece at every position (several times slower).
_LINE = r"--[^\n]*"
_MYSQL_LINE = r"--(?=[\x00-\x20]|\Z)[^\n]*|#[^\n]*"  # MySQL: "--" needs a space after
_BLOCK = r"/\*.*?\*/"
_MYSQL_BLOCK = r"/\*M?!\d*|/\*.*?\*/"  # /*! ... */ is run by MySQL: drop the opener only
_QUOTE = r"'(?:[^']|'')*'"
_QUOTE_BS = r"'(?:[^'\\]|\\.|'')*'"
_E_QUOTE = r"[Ee](?<![\w$][Ee])'(?:[^'\\]|\\.|'')*'"  # PostgreSQL E'...', not xe'...'
_IDENT = r'"(?:[^"]|"")*"'
_IDENT_BS = r'"(?:[^"\\]|\\.|"")*"'  # a MySQL string
_BACKTICK = r"`(?:[^`]|``)*`"
_BRACKET = r"\[[^\]]*\]"
_DOLLAR = r"\$(?<![\w$]\$)((?:[^\W\d]\w*)?)\$.*?\$\1\$"  # not a$$ (a name) nor $1


@dataclass(frozen=True)
class _Reading:
    """One way of telling comments and quoted bodies from statement text."""

    flat: re.Pattern[str]  # block comments do not nest
    nested: re.Pattern[str] | None  # block comments nest: the opener alone


def _reading(*pieces: str, nests: bool = False) -> _Reading:
    flat = re.compile("|".join(pieces), re.DOTALL)
    if not nests:
        return _Reading(flat, None)
    opener = [r"/\*" if piece == _BLOCK else piece for piece in pieces]
    return _Reading(flat, re.compile("|".join(opener), re.DOTALL))


#: the first reading decides the keyword when readings agree on the danger, and is
#: the only one a text goes through when ``_readings_for`` finds the others agree
_READINGS = (
    # PostgreSQL (and the standard): nested comments, $$ strings; E'' below
    _reading(_LINE, _BLOCK, _QUOTE, _IDENT, _DOLLAR, nests=True),
    _reading(_LINE, _BLOCK, _E_QUOTE, _QUOTE, _IDENT, _DOLLAR, nests=True),
    # PostgreSQL with standard_conforming_strings off: every '' string escapes
    _reading(_LINE, _BLOCK, _QUOTE_BS, _IDENT, _DOLLAR, nests=True),
    # SQLite and SQL Server (which nests comments)
    _reading(_LINE, _BLOCK, _QUOTE, _IDENT, _BACKTICK, _BRACKET),
    _reading(_LINE, _BLOCK, _QUOTE, _IDENT, _BACKTICK, _BRACKET, nests=True),
    # MySQL and MariaDB, then with NO_BACKSLASH_ESCAPES
    _reading(_MYSQL_LINE, _MYSQL_BLOCK, _QUOTE_BS, _IDENT_BS, _BACKTICK),
    _reading(_MYSQL_LINE, _MYSQL_BLOCK, _QUOTE, _IDENT, _BACKTICK),
)
_DOLLAR_OPEN = re.compile(r"\$(?!\d)")  # $1 is a parameter
_TIGHT_DASHES = re.compile(r"--(?![\x00-\x20]|\Z)")  # a comment except in MySQL
_COMMENT_MARK = re.compile(r"/\*|\*/")

_WORD = re.compile(r"[A-Za-z_]+")
_CTE_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_INTO = re.compile(r"\bINTO\s+(?![\s@:])", re.IGNORECASE)  # not INTO @var or :var
_ANALYZE = re.compile(r"\bANALY[SZ]E\b", re.IGNORECASE)
# COPY (query) TO ... reads; only COPY table [(columns)] FROM ... writes.
_COPY_FROM = re.compile(r"^COPY\s+(?![\s(]).*?\bFROM\b", re.IGNORECASE | re.DOTALL)
# What may stand between EXPLAIN (or MariaDB's ANALYZE) and the statement it explains.
_EXPLAIN_OPTION = re.compile(
    r"\s*(?:\([^()]*\)|(?:ANALY[SZ]E|VERBOSE|EXTENDED|PARTITIONS|QUERY\s+PLAN)\b"
    r"|FORMAT\s*=\s*\w+)",
    re.IGNORECASE,
)
_EXPLAIN_VERBS = frozenset({"EXPLAIN", "DESCRIBE", "DESC", "ANALYZE", "ANALYSE"})
_STATEMENT_VERBS = WRITE_KEYWORDS | {"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN", "COPY"}
_SPACE = " \t\r\n\f\v("


@dataclass(frozen=True)
class Statement:
    """What a statement does: ``keyword`` is the verb that decided."""

    keyword: str
    writes: bool
    destructive: bool


_READ = Statement("", False, False)


@lru_cache(maxsize=4096)
def classify(sql: str) -> Statement:
    """Classify one SQL text; unknown verbs (SET, SHOW, BEGIN, PRAGMA ...) are reads.

    A text with several statements (``SELECT 1; DELETE ...``) is what its most
    dangerous statement is, under the most dangerous way of reading the text.
    """
    return _classify(sql, _readings_for(sql))


def _classify(sql: str, readings: tuple[_Reading, ...]) -> Statement:
    found: Statement | None = None
    seen: set[str] = set()
    for reading in readings:
        text = _strip(sql, reading)
        if text in seen:
            continue
        seen.add(text)
        for part in text.split(";"):
            one = _classify_one(part)
            if found is None or (one.destructive, one.writes) > (found.destructive, found.writes):
                found = one
                if found.destructive:
                    return found
    assert found is not None  # split() gives at least one part
    return found


def _readings_for(sql: str) -> tuple[_Reading, ...]:
    """The readings that can see ``sql`` differently from an earlier one, in order.

    Most texts hold none of the characters the readings differ on and are read once.
    """
    escapes = "\\" in sql
    brackets = "[" in sql
    quotes = brackets or "`" in sql or ("$" in sql and _DOLLAR_OPEN.search(sql) is not None)
    nests = sql.count("/*") > 1
    mysql = (
        "#" in sql
        or "/*!" in sql
        or "/*M!" in sql
        or ("--" in sql and _TIGHT_DASHES.search(sql) is not None)
    )
    if not (escapes or quotes or nests or mysql):
        return _READINGS[:1]
    return _select(
        (
            True,
            escapes,  # E'' strings
            escapes,  # every '' string escapes
            quotes or nests,  # SQLite: no $$, but `` and [], comments do not nest
            quotes and nests,  # SQL Server: `` and [], comments nest
            mysql or escapes or brackets,  # MySQL
            mysql or brackets,  # MySQL without backslash escapes
        )
    )


@lru_cache(maxsize=128)
def _select(wanted: tuple[bool, ...]) -> tuple[_Reading, ...]:
    return tuple(reading for reading, want in zip(_READINGS, wanted, strict=True) if want)


def _strip(sql: str, reading: _Reading) -> str:
    """``sql`` with comments and quoted bodies blanked out, as ``reading`` sees them."""
    if reading.nested is None or sql.count("/*") < 2:
        return reading.flat.sub(" ", sql)
    out: list[str] = []
    pos = 0
    while (match := reading.nested.search(sql, pos)) is not None:
        out.append(sql[pos : match.start()])
        out.append(" ")
        pos = match.end()
        if match.group(0) == "/*":
            depth = 1
            while depth:
                mark = _COMMENT_MARK.search(sql, pos)
                if mark is None:  # unterminated: the rest is comment
                    pos = len(sql)
                    break
                depth += 1 if mark.group(0) == "/*" else -1
                pos = mark.end()
    out.append(sql[pos:])
    return "".join(out)


def _classify_one(text: str) -> Statement:
    text = text.lstrip(_SPACE)
    match = _WORD.match(text)
    if match is None:
        return _READ
    verb = match.group(0).upper()
    if verb == "WITH":
        found = _CTE_WRITE.search(text)
        if found is not None:
            inner = found.group(1).upper()
            return Statement(f"WITH ... {inner}", True, inner in DESTRUCTIVE)
        if _INTO.search(text):  # WITH ... SELECT ... INTO new_table
            return Statement("WITH ... SELECT INTO", True, False)
        return Statement("WITH", False, False)
    if verb in _EXPLAIN_VERBS:
        return _explain(verb, text[match.end() :])
    if verb == "COPY":
        writes = _COPY_FROM.match(text) is not None
        return Statement("COPY FROM" if writes else "COPY", writes, False)
    if verb == "SELECT":
        if _INTO.search(text, match.end()):
            return Statement("SELECT INTO", True, False)
        return _READ
    if verb in WRITE_KEYWORDS:
        return Statement(verb, True, verb in DESTRUCTIVE)
    return Statement(verb, False, False)


def _explain(verb: str, rest: str) -> Statement:
    """EXPLAIN ANALYZE (and MariaDB's ANALYZE stmt) runs the statement it explains."""
    runs = verb.startswith("ANALY")
    pos = 0
    while (option := _EXPLAIN_OPTION.match(rest, pos)) is not None:
        text = option.group(0).lstrip(_SPACE)
        word = _WORD.match(text)
        if word is not None and word.group(0).upper() in _STATEMENT_VERBS:
            break  # a parenthesised statement, not options
        runs = runs or _ANALYZE.search(text) is not None
        pos = option.end()
    if runs:
        inner = _classify_one(rest[pos:])
        if inner.writes:
            prefix = "ANALYZE" if verb.startswith("ANALY") else f"{verb} ANALYZE"
            return Statement(f"{prefix} {inner.keyword}", True, inner.destructive)
    return Statement(verb, False, False)


def shorten(sql: str, limit: int = 120) -> str:
    """One line of a statement for a message."""
    one = " ".join(sql.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."
