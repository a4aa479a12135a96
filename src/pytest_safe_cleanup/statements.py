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

Beyond the verb, the watch asks three things, each cached per distinct text:
``reaches`` (the other databases a statement writes to or changes, read as the
connection's backend reads it), ``changes_stamp`` and ``lifts_read_only``. They need
names and literals, so a text that may matter is cut into tokens once per reading;
a text that plainly cannot matter (a read naming none of their words) is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
    pieces: tuple[str, ...] = ()  # to decode quoted bodies as this reading does


def _reading(*pieces: str, nests: bool = False) -> _Reading:
    flat = re.compile("|".join(pieces), re.DOTALL)
    if not nests:
        return _Reading(flat, None, pieces)
    opener = [r"/\*" if piece == _BLOCK else piece for piece in pieces]
    return _Reading(flat, re.compile("|".join(opener), re.DOTALL), pieces)


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


# What a statement does beyond the verb (section 3 and 6a): the other databases it
# writes to or changes, whether it changes a stamp, whether it lifts a read-only
# session. These need names and literals, which the readings above blank out, so a
# text that may matter is cut into tokens once per reading. Only the first sight of
# a text pays for that: every answer is cached per distinct text, like ``classify``.

#: a token: (kind, value, upper-cased value of a bare word, else ""); kind is "w" a
#: bare word, "n" a number, "q" a quoted name, "s" a string, "p" one punctuation mark.
#: value None: a quoted text this module does not decode (PostgreSQL ``U&"..."``).
_Tok = tuple[str, str | None, str]
_Statements = tuple[tuple[_Tok, ...], ...]

_PLAIN = re.compile(r"(\d[\d.]*(?:[eE][-+]?\d+)?(?![\w$]))|([\w$]+)|\S")
_BACKSLASH_SQ = re.compile(r"\\(.)|''", re.DOTALL)
_BACKSLASH_DQ = re.compile(r'\\(.)|""', re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "Z": "\x1a"}
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

#: the backends whose rules ``reaches`` knows; any other name gets every rule
BACKENDS = frozenset({"postgresql", "sqlite", "mysql", "mariadb"})


@dataclass(frozen=True)
class Reach:
    """A database other than the connected one that a statement writes to or changes.

    ``kind``: ``drop``, ``create`` (the template it copies is only read), ``alter``,
    ``comment``, ``grant`` (GRANT and REVOKE), ``use`` (MySQL switches database),
    ``attach`` and ``detach`` (SQLite), ``table`` (a write to an object qualified by
    that database), ``routine`` (a MySQL procedure or function of that database runs),
    or ``unknown`` (a reach this module cannot name). ``name``: the database as the
    server resolves it (PostgreSQL folds unquoted names to lower case; MySQL, MariaDB
    and SQLite keep them as written), for ATTACH the file expression's text, for
    DETACH the schema name; None when it is not a literal or cannot be told.
    ``alias``: ATTACH's and DETACH's schema name. ``table``: the object of ``table``
    and ``routine``. ``keyword``: the words that decided, for a message.

    The caller compares ``name`` with the database the connection reached; a reach
    that is not ``known`` must be refused (fail closed).
    """

    kind: str
    name: str | None
    alias: str | None = None
    table: str | None = None
    keyword: str = ""

    @property
    def known(self) -> bool:
        """A named database: False means the watch cannot tell which one."""
        return self.kind != "unknown" and self.name is not None


def reaches_for(backend: str) -> Callable[[str], tuple[Reach, ...]]:
    """``reaches`` for one backend, to keep per engine: one cache lookup per statement."""
    return _REACHES.get(backend, _reaches_any)


def reaches(statement: str, backend: str) -> tuple[Reach, ...]:
    """The other databases ``statement`` writes to or changes, read as ``backend`` reads it.

    ``backend`` is SQLAlchemy's dialect name: ``postgresql``, ``sqlite``, ``mysql`` or
    ``mariadb``. It decides what a name means: ``db.table`` is another database on
    MySQL and MariaDB, an attached schema on SQLite (``main`` and ``temp`` are the
    connection's own), a schema of the same database on PostgreSQL (never a reach
    there); names are folded as that server folds them; the text is read as that
    server may read it (with and without backslash escapes), and every reading counts.
    Any other backend gets every rule, every reading and names as written. Every
    statement of the text counts.
    """
    return _REACHES.get(backend, _reaches_any)(statement)


@lru_cache(maxsize=4096)
def changes_stamp(statement: str) -> bool:
    """``statement`` changes a database's stamp, on any backend.

    ``ALTER DATABASE|ROLE|USER|SYSTEM ... SET|RESET safe_cleanup...`` (any spelling),
    ``... RESET ALL``, and any write that names the ``safe_cleanup_stamp`` table or
    PostgreSQL's ``pg_db_role_setting`` however qualified or quoted (a text that
    writes and names it in any of its statements counts). Dynamic SQL whose text
    names ``safe_cleanup`` or cannot be read (MySQL ``PREPARE s FROM @q``) counts too.
    """
    if not classify(statement).writes:
        return False
    return any(_changes_stamp(toks) for toks in _all_statements(statement))


@lru_cache(maxsize=4096)
def lifts_read_only(statement: str) -> bool:
    """``statement`` would lift a read-only session set by the server, on any backend.

    PostgreSQL: ``SET [SESSION|LOCAL] default_transaction_read_only|transaction_read_only``
    to anything but on/true/yes/1, ``... READ WRITE`` in ``SET``, ``BEGIN`` or ``START``,
    ``RESET`` of those or ``RESET ALL``, ``DISCARD ALL``, ``set_config`` of those (or of
    a name that is not a literal), a write to ``pg_settings``. MySQL and MariaDB: ``SET``
    of ``transaction_read_only``, ``tx_read_only`` (also ``read_only``,
    ``super_read_only``) in any scope or ``SET STATEMENT ... FOR``, ``... READ WRITE``.
    SQLite: ``PRAGMA [schema.]query_only`` set to anything but a true value.
    """
    low = statement.lower()
    for word in _LIFT_WORDS:
        if word in low:
            return any(_lifts(toks) for toks in _all_statements(statement))
    return False


# Cheap looks at the raw text that let most reads skip tokenising: each may say yes
# too often, never no too often. Substring tests on the lower-cased text are several
# times faster than a case-insensitive regular expression.
_REACH_WORDS = ("attach", "detach", "dblink", "program")
_USE = re.compile(r"use(?![\w$])")
_QUALIFIED_CALL = re.compile(r"\.\s*[\w$`\"]+\s*\(")  # MySQL: db.fn( in a read
_LIFT_WORDS = (
    "read_only",
    "write",
    "reset",
    "discard",
    "query_only",
    "set_config",
    "pg_settings",
    "u&",
)


def _may_reach(statement: str, backend: str) -> bool:
    """A read that may still reach another database: USE, ATTACH, dblink, db.fn()."""
    low = statement.lower()
    for word in _REACH_WORDS:
        if word in low:
            return True
    for match in _USE.finditer(low):  # USE as a word; a digit may stand before: /*!50000USE
        at = match.start()
        if at == 0 or not (low[at - 1].isalpha() or low[at - 1] in "_$"):
            return True
    return backend in ("mysql", "") and _QUALIFIED_CALL.search(statement) is not None


def _reaches(statement: str, backend: str) -> tuple[Reach, ...]:
    if not classify(statement).writes and not _may_reach(statement, backend):
        return ()
    found: dict[Reach, None] = {}
    for toks in _all_statements(statement, backend):
        for reach in _reach_one(toks, backend, frozenset()):
            found[reach] = None
    return tuple(found)


def _cached_reaches(backend: str) -> Callable[[str], tuple[Reach, ...]]:
    """One cache per backend, keyed by the text alone (the fastest lookup)."""

    @lru_cache(maxsize=4096)
    def cached(statement: str) -> tuple[Reach, ...]:
        return _reaches(statement, backend)

    return cached


_reaches_any = _cached_reaches("")
_REACHES = {
    "postgresql": _cached_reaches("postgresql"),
    "sqlite": _cached_reaches("sqlite"),
}
_REACHES["mysql"] = _REACHES["mariadb"] = _cached_reaches("mysql")


# Cutting a text into tokens, once per reading.


#: the readings of a known backend, without and with a backslash in the text: the
#: server's own settings (standard_conforming_strings, NO_BACKSLASH_ESCAPES) decide
_BACKEND_READINGS = {
    "postgresql": (_READINGS[:1], _READINGS[:3]),
    "sqlite": (_READINGS[3:4], _READINGS[3:4]),
    "mysql": (_READINGS[6:], _READINGS[5:]),
}


def _all_statements(sql: str, backend: str = "") -> tuple[tuple[_Tok, ...], ...]:
    """Every statement of every distinct reading of ``sql``, as tokens.

    A known backend reads the text its own ways only (a backtick is no quote to
    PostgreSQL, but PostgreSQL never reads a MySQL connection's text); any other
    backend, or none, gets every reading.
    """
    return tuple(toks for statements in _tokenised(sql, backend) for toks in statements)


@lru_cache(maxsize=256)
def _tokenised(sql: str, backend: str) -> tuple[_Statements, ...]:
    own = _BACKEND_READINGS.get(backend)
    readings = _readings_for(sql) if own is None else own["\\" in sql]
    found: dict[_Statements, None] = {}
    for reading in readings:
        found[_tokens(sql, reading)] = None
    return tuple(found)


def _tokens(sql: str, reading: _Reading) -> _Statements:
    """``sql``'s statements as ``reading`` cuts them: comments gone, quotes decoded."""
    statements: list[list[_Tok]] = [[]]
    mysql = _MYSQL_BLOCK in reading.pieces  # its */ closes a /*! ... */ that runs

    def plain(text: str) -> None:
        out = statements[-1]
        if mysql and "*/" in text:
            text = text.replace("*/", " ")
        for match in _PLAIN.finditer(text):
            number, word = match.group(1, 2)
            if number is not None:  # 1.5 is no db.table
                out.append(("n", number, ""))
            elif word is not None:
                out.append(("w", word, word.upper()))
            elif match.group(0) == ";":
                out = []
                statements.append(out)
            else:
                out.append(("p", match.group(0), ""))

    nested = reading.nested if reading.nested is not None and sql.count("/*") > 1 else None
    pattern = nested or reading.flat
    pos = 0
    while (match := pattern.search(sql, pos)) is not None:
        plain(sql[pos : match.start()])
        piece = match.group(0)
        pos = match.end()
        if piece == "/*" and nested is not None:
            depth = 1
            while depth:
                mark = _COMMENT_MARK.search(sql, pos)
                if mark is None:
                    pos = len(sql)
                    break
                depth += 1 if mark.group(0) == "/*" else -1
                pos = mark.end()
            continue
        if piece.startswith(("--", "#", "/*")):  # a comment, or MySQL's /*! opener
            continue
        kind, decoded = _decode(piece, reading)
        value: str | None = decoded
        out = statements[-1]
        if sql[max(match.start() - 2, 0) : match.start()] in ("U&", "u&") and len(out) > 1:
            del out[-2:]  # PostgreSQL's U&"d\0061ta": escapes this module does not decode
            value = None
        out.append((kind, value, ""))
    plain(sql[pos:])
    return tuple(tuple(s) for s in statements if s)


def _decode(piece: str, reading: _Reading) -> tuple[str, str]:
    """The kind and text of one quoted piece, as ``reading`` reads it."""
    first = piece[0]
    if first in "Ee":
        return "s", _unescape(piece[2:-1], _BACKSLASH_SQ)
    if first == "'":
        if _QUOTE_BS in reading.pieces:
            return "s", _unescape(piece[1:-1], _BACKSLASH_SQ)
        return "s", piece[1:-1].replace("''", "'")
    if first == '"':
        if _IDENT_BS in reading.pieces:
            return "q", _unescape(piece[1:-1], _BACKSLASH_DQ)
        return "q", piece[1:-1].replace('""', '"')
    if first == "`":
        return "q", piece[1:-1].replace("``", "`")
    if first == "[":
        return "q", piece[1:-1]
    end = piece.index("$", 1) + 1  # $tag$ body $tag$
    return "s", piece[end:-end]


def _unescape(body: str, pattern: re.Pattern[str]) -> str:
    def one(match: re.Match[str]) -> str:
        char = match.group(1)
        return match.group(0)[0] if char is None else _ESCAPES.get(char, char)

    return pattern.sub(one, body)


# Small readers over one statement's tokens.


def _chain(toks: tuple[_Tok, ...], i: int) -> tuple[list[_Tok], int]:
    """The dotted name starting at ``i`` (``db.t``, ``"s"."t"``, ``db.*``) and the end."""
    n = len(toks)
    if i >= n or toks[i][0] not in "wq":
        return [], i
    parts = [toks[i]]
    i += 1
    while i + 1 < n and toks[i][1] == "." and (toks[i + 1][0] in "wq" or toks[i + 1][1] == "*"):
        parts.append(toks[i + 1])
        i += 2
    return parts, i


def _fold(tok: _Tok, backend: str) -> str | None:
    kind, value, _ = tok
    if value is None or kind != "w" or backend != "postgresql":
        return value
    return value.translate(_LOWER)  # PostgreSQL folds ASCII letters only


def _single_name(toks: tuple[_Tok, ...], i: int, backend: str) -> str | None:
    parts, _ = _chain(toks, i)
    return _fold(parts[0], backend) if len(parts) == 1 else None


def _skip_if(toks: tuple[_Tok, ...], i: int) -> int:
    """Past ``IF [NOT] EXISTS``."""
    if i < len(toks) and toks[i][2] == "IF":
        i += 1
        if i < len(toks) and toks[i][2] == "NOT":
            i += 1
        return i + 1
    return i


def _skip_words(toks: tuple[_Tok, ...], i: int, words: frozenset[str]) -> int:
    while i < len(toks) and (toks[i][2] in words or toks[i][2] == "OR"):
        i += 2 if toks[i][2] == "OR" else 1  # SQLite: INSERT OR REPLACE, UPDATE OR IGNORE
    return i


def _skip_paren(toks: tuple[_Tok, ...], i: int) -> int:
    """Past the parenthesis that opens at ``i``."""
    depth = 0
    while i < len(toks):
        mark = toks[i][1]
        if mark == "(":
            depth += 1
        elif mark == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _opening(toks: tuple[_Tok, ...]) -> tuple[_Tok, ...]:
    i = 0
    while i < len(toks) and toks[i][1] == "(":
        i += 1
    return toks[i:]


# reaches


_SUBQUERY = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
_EXPLAIN_WORDS = frozenset(
    {"EXPLAIN", "DESCRIBE", "DESC", "ANALYZE", "ANALYSE", "VERBOSE", "EXTENDED", "PARTITIONS"}
)
_MY_DATABASE_OPTIONS = frozenset(
    {"DEFAULT", "CHARACTER", "CHARSET", "COLLATE", "ENCRYPTION", "READ", "COMMENT"}
)
_TABLE_VERBS = frozenset(
    {
        "INSERT",
        "REPLACE",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "DROP",
        "ALTER",
        "CREATE",
        "RENAME",
        "LOAD",
        "CALL",
        "GRANT",
        "REVOKE",
        "DO",
        "EXECUTE",
        "PREPARE",
        "IMPORT",
        "HANDLER",
    }
)
_TABLE_OBJECTS = frozenset(
    {"TABLE", "TABLES", "VIEW", "TRIGGER", "PROCEDURE", "FUNCTION", "EVENT", "SEQUENCE", "INDEX"}
)
_BODIES = frozenset({"TRIGGER", "PROCEDURE", "FUNCTION", "EVENT"})
_BODY_VERBS = frozenset(
    {
        "INSERT",
        "REPLACE",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "DROP",
        "ALTER",
        "CREATE",
        "RENAME",
        "GRANT",
        "REVOKE",
        "CALL",
        "PREPARE",
        "EXECUTE",
        "COMMENT",
    }
)
_BODY_NAMES = frozenset({"new", "old", "excluded"})  # rows a trigger or an upsert names
_ROUTINES = frozenset({"FUNCTION", "PROCEDURE"})
_MODIFIERS = frozenset(
    {"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "QUICK", "INTO", "TABLE"}
)
_REF_ENDS = frozenset({"WHERE", "ORDER", "LIMIT", "RETURNING", "USING"})
_NOT_ALIAS = frozenset(
    {
        "AS",
        "SET",
        "WHERE",
        "JOIN",
        "INNER",
        "LEFT",
        "RIGHT",
        "OUTER",
        "CROSS",
        "NATURAL",
        "STRAIGHT_JOIN",
        "FULL",
        "ON",
        "USING",
        "USE",
        "IGNORE",
        "FORCE",
        "PARTITION",
        "ORDER",
        "LIMIT",
        "FROM",
        "RETURNING",
        "INDEXED",
        "NOT",
        "GROUP",
        "HAVING",
        "UNION",
        "VALUES",
        "SELECT",
        "FOR",
    }
)
#: words after which ``a.b (`` is a table and its columns, not a function call
_BEFORE_TABLE = frozenset(
    {
        "INTO",
        "TABLE",
        "TABLES",
        "ON",
        "REFERENCES",
        "UPDATE",
        "FROM",
        "JOIN",
        "EXISTS",
        "VIEW",
        "PROCEDURE",
        "FUNCTION",
        "TRIGGER",
        "EVENT",
        "INDEX",
        "TO",
        "REPLACE",
        "INSERT",
        "CALL",
        "IGNORE",
        "LOW_PRIORITY",
        "DELAYED",
        "HIGH_PRIORITY",
        "RENAME",
        "LIKE",
        "USING",
        "AS",
    }
)


def _reach_one(toks: tuple[_Tok, ...], backend: str, known: frozenset[str]) -> list[Reach]:
    toks = _opening(toks)
    if not toks:
        return []
    verb = toks[0][2]
    pg = backend in ("postgresql", "")
    my = backend in ("mysql", "")
    lite = backend in ("sqlite", "")
    if verb in _EXPLAIN_WORDS:  # EXPLAIN ANALYZE and MariaDB's ANALYZE run the statement
        i = 1
        while i < len(toks):
            if toks[i][2] in _EXPLAIN_WORDS:
                i += 1
            elif toks[i][2] == "FORMAT":
                i += 3
            elif toks[i][1] == "(" and i + 1 < len(toks) and toks[i + 1][2] not in _SUBQUERY:
                i = _skip_paren(toks, i)
            else:
                break
        return _reach_one(toks[i:], backend, known) if i < len(toks) else []
    out: list[Reach] = []
    if verb == "WITH":  # what the CTEs call, then the statement after them
        if pg:
            out += _pg_elsewhere(toks, backend)
        if my:
            out += [r for r in _calls(toks, backend) if r is not None]
        i, names = _after_with(toks)
        return out + (_reach_one(toks[i:], backend, known | names) if i < len(toks) else [])
    if verb == "PREPARE":  # PREPARE p [(types)] AS statement
        i = 2
        while i < len(toks) and toks[i][2] != "AS":
            i = _skip_paren(toks, i) if toks[i][1] == "(" else i + 1
        if i + 1 < len(toks):
            out += _reach_one(toks[i + 1 :], backend, known)
    if pg or my:
        out += _database_reaches(toks, backend, my)
    if my and verb == "USE":
        out.append(Reach("use", _single_name(toks, 1, backend), keyword="USE"))
    if my and verb in ("PREPARE", "EXECUTE"):
        out += _dynamic_reaches(toks, backend)
    if lite and verb in ("ATTACH", "DETACH"):
        out.append(_attach(toks, backend))
    if pg:
        out += _pg_elsewhere(toks, backend)
    if (my or lite) and verb in _TABLE_VERBS:
        out += _table_reaches(toks, backend, known)
    elif my:
        out += [r for r in _calls(toks, backend) if r is not None]
    return out


def _pg_elsewhere(toks: tuple[_Tok, ...], backend: str) -> list[Reach]:
    """PostgreSQL's other ways to another database.

    dblink, subscriptions, foreign servers, a shell (COPY ... PROGRAM), and what a DO
    block or a function body runs (every string in it is read as SQL: fail closed).
    """
    n = len(toks)
    verb = toks[0][2]
    out: list[Reach] = []
    for i, tok in enumerate(toks):
        value = tok[1]
        if (
            tok[0] in "wq"
            and value
            and value.lower().startswith("dblink")
            and i + 1 < n
            and toks[i + 1][1] == "("
        ):
            out.append(Reach("unknown", None, keyword=value))
    if verb in ("CREATE", "ALTER") and n > 1 and toks[1][2] in ("SUBSCRIPTION", "SERVER"):
        out.append(Reach("unknown", None, keyword=f"{verb} {toks[1][2]}"))
    if verb == "COPY" and any(t[2] == "PROGRAM" for t in toks):
        out.append(Reach("unknown", None, keyword="COPY PROGRAM"))
    if verb == "DO" or (verb == "CREATE" and any(t[2] in _ROUTINES for t in toks[1:8])):
        for kind, value, _ in toks:
            if kind == "s" and value:
                out += _nested_reaches(value, backend, 0)
    return out


def _nested_reaches(text: str, backend: str, depth: int) -> list[Reach]:
    """What a body's text reaches: its statements, those nested in it, its strings."""
    found = list(reaches(text, backend))
    for toks in _all_statements(text, backend):
        found += _body(toks, 1, backend, _BODY_NAMES)
        if depth < 2:
            for kind, value, _ in toks:
                if kind == "s" and value:
                    found += _nested_reaches(value, backend, depth + 1)
    return found


def _body(toks: tuple[_Tok, ...], start: int, backend: str, known: frozenset[str]) -> list[Reach]:
    """What the statements inside a body (``BEGIN ... END``, a trigger's action) reach."""
    out: list[Reach] = []
    for j in range(max(start, 1), len(toks)):
        if toks[j][2] in _BODY_VERBS:
            out += _reach_one(toks[j:], backend, known)
    return out


def _after_with(toks: tuple[_Tok, ...]) -> tuple[int, frozenset[str]]:
    """Where the statement after ``WITH a AS (...), b AS (...)`` starts, and the names."""
    n = len(toks)
    i = 2 if n > 1 and toks[1][2] == "RECURSIVE" else 1
    names: set[str] = set()
    while i < n and toks[i][0] in "wq":
        names.add((toks[i][1] or "").lower())
        i += 1
        if i < n and toks[i][1] == "(":
            i = _skip_paren(toks, i)
        while i < n and toks[i][2] in ("AS", "NOT", "MATERIALIZED"):
            i += 1
        if i < n and toks[i][1] == "(":
            i = _skip_paren(toks, i)
        if i < n and toks[i][1] == ",":
            i += 1
            continue
        break
    return i, frozenset(names)


def _database_reaches(toks: tuple[_Tok, ...], backend: str, my: bool) -> list[Reach]:
    """``ALTER|DROP|CREATE DATABASE x``, ``... ON DATABASE x``, ``ALTER ROLE ... IN DATABASE x``."""
    n = len(toks)
    verb = toks[0][2]
    words = ("DATABASE", "SCHEMA") if my else ("DATABASE",)  # a PostgreSQL schema is inside
    out: list[Reach] = []
    if verb in ("ALTER", "DROP", "CREATE") and n > 1:
        i, kind = 1, verb.lower()
        if verb == "CREATE" and toks[1][2] == "OR" and n > 2 and toks[2][2] == "REPLACE":
            i, kind = 3, "drop"  # MariaDB: CREATE OR REPLACE DATABASE drops it first
        if i < n and toks[i][2] in words:
            keyword = " ".join(t[2] for t in toks[: i + 1])
            i = _skip_if(toks, i + 1)
            if i >= n or (
                backend == "mysql" and verb == "ALTER" and toks[i][2] in _MY_DATABASE_OPTIONS
            ):
                return out  # MySQL's ALTER DATABASE without a name: the current one
            out.append(Reach(kind, _single_name(toks, i, backend), keyword=keyword))
        elif verb == "ALTER" and toks[1][2] in ("ROLE", "USER"):
            for j in range(2, n - 2):
                if toks[j][2] == "IN" and toks[j + 1][2] == "DATABASE":
                    keyword = f"ALTER {toks[1][2]} IN DATABASE"
                    out.append(Reach("alter", _single_name(toks, j + 2, backend), keyword=keyword))
        return out
    if verb in ("COMMENT", "SECURITY", "GRANT", "REVOKE"):
        kind = "comment" if verb in ("COMMENT", "SECURITY") else "grant"
        for j in range(1, n - 2):
            if toks[j][2] == "ON" and toks[j + 1][2] == "DATABASE":
                i = j + 2
                while True:
                    keyword = f"{verb} ON DATABASE"
                    out.append(Reach(kind, _single_name(toks, i, backend), keyword=keyword))
                    _, i = _chain(toks, i)
                    if i < n and toks[i][1] == ",":
                        i += 1
                        continue
                    break
                break
    return out


def _attach(toks: tuple[_Tok, ...], backend: str) -> Reach:
    """SQLite ``ATTACH [DATABASE] expr AS schema`` and ``DETACH [DATABASE] schema``."""
    n = len(toks)
    verb = toks[0][2]
    i = 2 if n > 1 and toks[1][2] == "DATABASE" else 1
    if verb == "DETACH":
        alias = _alias(toks, i)
        return Reach("detach", alias, alias=alias, keyword="DETACH")
    j, depth = i, 0
    while j < n and not (depth == 0 and toks[j][2] == "AS"):
        depth += 1 if toks[j][1] == "(" else -1 if toks[j][1] == ")" else 0
        j += 1
    expr = toks[i:j]
    # A string, or a name (SQLite reads a bare or quoted name there as the file name).
    path = expr[0][1] if len(expr) == 1 and expr[0][0] in "sqw" else None
    return Reach("attach", path, alias=_alias(toks, j + 1), keyword="ATTACH")


def _alias(toks: tuple[_Tok, ...], i: int) -> str | None:
    if i < len(toks) and toks[i][0] in "sqw" and (i + 1 == len(toks) or toks[i + 1][1] != "."):
        return toks[i][1]
    return None


def _dynamic_reaches(toks: tuple[_Tok, ...], backend: str) -> list[Reach]:
    """MySQL ``PREPARE s FROM 'text'`` and MariaDB ``EXECUTE IMMEDIATE 'text'``."""
    n = len(toks)
    if toks[0][2] == "PREPARE":
        i = 3 if n > 2 and toks[2][2] == "FROM" else n
    else:
        i = 2 if n > 1 and toks[1][2] == "IMMEDIATE" else n
    if i >= n and (toks[0][2] == "EXECUTE" or n < 3 or toks[2][2] != "FROM"):
        return []  # EXECUTE s runs a text checked when it was prepared
    text = toks[i][1] if i < n and toks[i][0] in "sq" else None
    if text is None or (i + 1 < n and toks[i + 1][2] != "USING"):
        return [Reach("unknown", None, keyword=toks[0][2])]
    return list(reaches(text, backend))


def _table_reaches(toks: tuple[_Tok, ...], backend: str, known: frozenset[str]) -> list[Reach]:
    """Writes to ``db.table`` (MySQL, MariaDB) or ``schema.table`` (SQLite)."""
    n = len(toks)
    verb = toks[0][2]
    targets: list[list[_Tok]] = []
    body: list[Reach] = []
    names = set(known)  # what ``x`` in ``x.column`` may be: tables, aliases
    check = n  # where qualified names that are neither targets nor columns start
    if verb in ("INSERT", "REPLACE", "TRUNCATE"):
        parts, i = _chain(toks, _skip_words(toks, 1, _MODIFIERS))
        targets.append(parts)
        while verb == "TRUNCATE" and i + 1 < n and toks[i][1] == ",":  # TRUNCATE a, b
            parts, i = _chain(toks, i + 1)
            targets.append(parts)
    elif verb == "UPDATE":
        tables, check = _refs(toks, _skip_words(toks, 1, _MODIFIERS), frozenset({"SET"}), names)
        targets += tables
    elif verb == "DELETE":
        i = _skip_words(toks, 1, _MODIFIERS - {"INTO", "TABLE"})
        if i < n and toks[i][2] == "FROM":
            tables, i = _refs(toks, i + 1, _REF_ENDS, names)
            targets += tables
            if i < n and toks[i][2] == "USING":
                tables, i = _refs(toks, i + 1, _REF_ENDS - {"USING"}, names)
                targets += tables
        else:
            tables, i = _refs(toks, i, frozenset({"FROM"}), names)
            targets += tables
            if i < n:
                tables, i = _refs(toks, i + 1, _REF_ENDS, names)
                targets += tables
        check = i
    elif verb in ("DROP", "ALTER", "CREATE"):
        targets += _object_targets(toks, backend, known, body)
    elif verb == "RENAME":
        i = 2
        while i < n:
            parts, end = _chain(toks, i)
            if parts and parts[0][2] != "TO":
                targets.append(parts)
            i = max(end, i + 1)
    elif verb == "LOAD":
        for i in range(1, n - 2):
            if toks[i][2] == "INTO" and toks[i + 1][2] == "TABLE":
                targets.append(_chain(toks, i + 2)[0])
                break
    elif verb in ("GRANT", "REVOKE") and backend != "sqlite":
        return _grant_reaches(toks, backend)
    out: list[Reach | None] = [_qualified(parts, "table", verb, backend) for parts in targets]
    out += body
    if verb == "CALL":
        out.append(_qualified(_chain(toks, 1)[0], "routine", verb, backend))
    if backend != "sqlite":
        out += _calls(toks, backend)
    if check < n:
        out += _unattributed(toks, check, names, {r.name.lower() for r in out if r and r.name})
    return [r for r in out if r is not None]


def _object_targets(
    toks: tuple[_Tok, ...], backend: str, known: frozenset[str], body: list[Reach]
) -> list[list[_Tok]]:
    """``DROP|ALTER|CREATE`` of a table, view, index, trigger or routine.

    What a trigger's or routine's body writes when it runs goes to ``body``.
    """
    n = len(toks)
    verb = toks[0][2]
    i = 1
    while i < n and toks[i][2] not in _TABLE_OBJECTS:
        if toks[i][1] == "(":
            return []
        i += 1
    if i >= n:
        return []
    kind = toks[i][2]
    targets: list[list[_Tok]] = []
    i = _skip_if(toks, i + 1)
    while True:  # DROP TABLE a, b
        parts, i = _chain(toks, i)
        targets.append(parts)
        if not (verb == "DROP" and i < n and toks[i][1] == ","):
            break
        i += 1
    for j in range(i, n):
        word = toks[j][2]
        if word == "ON" and kind in ("INDEX", "TRIGGER"):
            targets.append(_chain(toks, j + 1)[0])
        elif verb == "ALTER" and word == "RENAME" and j + 1 < n:  # moves it elsewhere
            k = j + 2 if toks[j + 1][2] in ("TO", "AS") else j + 1
            if toks[j + 1][2] not in ("COLUMN", "INDEX", "KEY", "CONSTRAINT"):
                targets.append(_chain(toks, k)[0])
        elif word == "WITH" and j + 1 < n and toks[j + 1][2] == "TABLE":  # EXCHANGE PARTITION
            targets.append(_chain(toks, j + 2)[0])
        elif kind in _BODIES and word in _BODY_VERBS:  # a body writes when it runs
            body += _reach_one(toks[j:], backend, known | _BODY_NAMES)
    return targets


def _refs(
    toks: tuple[_Tok, ...], i: int, stops: frozenset[str], names: set[str]
) -> tuple[list[list[_Tok]], int]:
    """The tables of a MySQL table_references list from ``i`` to a stop word.

    Adds every table's name and alias to ``names``; derived tables are only read.
    """
    n = len(toks)
    tables: list[list[_Tok]] = []
    expect = True
    while i < n:
        tok = toks[i]
        if tok[2] in stops:
            break
        mark = tok[1]
        if mark == "(":
            if not expect or (i + 1 < n and toks[i + 1][2] in _SUBQUERY):
                i = _skip_paren(toks, i)
                expect = False
                i = _note_alias(toks, i, names)
            else:
                i += 1  # nested references: (a JOIN b)
        elif mark == "," or tok[2] in ("JOIN", "STRAIGHT_JOIN"):
            expect = True
            i += 1
        elif expect and tok[0] in "wq":
            parts, i = _chain(toks, i)
            parts = [p for p in parts if p[1] != "*"]
            tables.append(parts)
            if parts:
                names.add((parts[-1][1] or "").lower())
            expect = False
            i = _note_alias(toks, i, names)
        else:
            i += 1
    return tables, i


def _note_alias(toks: tuple[_Tok, ...], i: int, names: set[str]) -> int:
    n = len(toks)
    if i < n and toks[i][2] == "AS":
        i += 1
    if i < n and (toks[i][0] == "q" or (toks[i][0] == "w" and toks[i][2] not in _NOT_ALIAS)):
        names.add((toks[i][1] or "").lower())
        i += 1
    return i


def _qualified(parts: list[_Tok], kind: str, verb: str, backend: str) -> Reach | None:
    parts = [p for p in parts if p[1] != "*"]
    if len(parts) < 2:
        return None
    name = _fold(parts[0], backend)
    if backend == "sqlite" and name is not None and name.lower() in ("main", "temp"):
        return None
    return Reach(kind, name, table=_fold(parts[1], backend), keyword=verb)


def _grant_reaches(toks: tuple[_Tok, ...], backend: str) -> list[Reach]:
    """MySQL ``GRANT ... ON [TABLE|FUNCTION|PROCEDURE] db.*|db.t|*.* TO ...``."""
    n = len(toks)
    i = 1
    while i < n and toks[i][2] != "ON":
        i = _skip_paren(toks, i) if toks[i][1] == "(" else i + 1
    i += 1
    while i < n and toks[i][2] in ("TABLE", "FUNCTION", "PROCEDURE"):
        i += 1
    if i >= n or toks[i][2] == "DATABASE":
        return []  # PostgreSQL's ON DATABASE: _database_reaches
    if toks[i][1] == "*":
        if i + 2 < n and toks[i + 1][1] == "." and toks[i + 2][1] == "*":
            return [Reach("unknown", None, keyword=f"{toks[0][2]} ON *.*")]
        return []
    parts = _chain(toks, i)[0]
    if len(parts) < 2:
        return []  # a table of the current database
    table = None if parts[1][1] == "*" else _fold(parts[1], backend)
    return [Reach("grant", _fold(parts[0], backend), table=table, keyword=toks[0][2])]


def _calls(toks: tuple[_Tok, ...], backend: str) -> list[Reach | None]:
    """``db.fn(...)`` anywhere in a write: a function of that database runs."""
    out: list[Reach | None] = []
    n = len(toks)
    for i in range(1, n):
        if toks[i][0] not in "wq" or toks[i - 1][1] == "." or toks[i - 1][2] == "CALL":
            continue
        parts, end = _chain(toks, i)
        if (
            len(parts) > 1
            and end < n
            and toks[end][1] == "("
            and toks[i - 1][2] not in _BEFORE_TABLE
        ):
            out.append(_qualified(parts, "routine", toks[0][2], backend))
    return out


def _unattributed(
    toks: tuple[_Tok, ...], i: int, names: set[str], reached: set[str]
) -> list[Reach | None]:
    """Qualified names after an UPDATE's or DELETE's tables that name no table there.

    ``t.column`` names a table or alias of the statement, ``db.t.column`` a database
    already reached; anything else may be another database: fail closed.
    """
    n = len(toks)
    for j in range(i, n - 1):  # tables read by UPDATE ... FROM (SQLite, PostgreSQL)
        if toks[j][2] in ("FROM", "JOIN") and j + 1 < n:
            _refs(toks, j + 1, _REF_ENDS | {"SET", "ON"}, names)
    out: list[Reach | None] = []
    while i < n:
        tok = toks[i]
        if tok[1] == "(" and i + 1 < n and toks[i + 1][2] in _SUBQUERY:
            i = _skip_paren(toks, i)  # a subquery reads
            continue
        if tok[0] not in "wq" or toks[i - 1][1] == ".":
            i += 1
            continue
        parts, i = _chain(toks, i)
        parts = [p for p in parts if p[1] != "*"]
        first = (parts[0][1] or "").lower() if parts[0][1] is not None else None
        if (len(parts) > 2 and first not in reached) or (len(parts) == 2 and first not in names):
            out.append(Reach("unknown", parts[0][1], keyword=toks[0][2]))
    return out


# changes_stamp and lifts_read_only


_STAMP_NAMES = frozenset(
    {"safe_cleanup_stamp", "pg_db_role_setting", "sqlite_master", "sqlite_schema"}
)
_DYNAMIC = frozenset({"DO", "PREPARE", "EXECUTE", "CREATE", "CALL"})
_READ_ONLY_VARIABLES = frozenset(
    {
        "default_transaction_read_only",
        "transaction_read_only",
        "tx_read_only",
        "read_only",
        "super_read_only",
    }
)
_TRUE = frozenset({"on", "true", "yes", "1"})  # SQLite reads t, y and 256 as false


def _changes_stamp(toks: tuple[_Tok, ...]) -> bool:
    toks = _opening(toks)
    if not toks:
        return False
    n = len(toks)
    for kind, value, _ in toks:
        if value is None or (kind in "wq" and value.lower() in _STAMP_NAMES):
            return True
    verb = toks[0][2]
    if verb == "ALTER":
        for j in range(1, n - 1):
            if toks[j][2] in ("SET", "RESET"):
                following = toks[j + 1]
                if following[2] == "ALL" and toks[j][2] == "RESET":
                    return True
                if following[0] in "wq" and (following[1] or "").lower().startswith("safe_cleanup"):
                    return True
    if verb in _DYNAMIC:
        for kind, value, _ in toks:
            if kind in "sq" and "safe_cleanup" in (value or "").lower():
                return True
        if verb == "PREPARE" and n > 3 and toks[2][2] == "FROM" and toks[3][0] not in "sq":
            return True  # MySQL PREPARE s FROM @q: a text nobody can read here
        if verb == "EXECUTE" and n > 2 and toks[1][2] == "IMMEDIATE" and toks[2][0] not in "sq":
            return True
    return False


def _lifts(toks: tuple[_Tok, ...]) -> bool:
    toks = _opening(toks)
    if not toks:
        return False
    n = len(toks)
    verb = toks[0][2]
    if any(tok[1] is None for tok in toks):
        return True  # U&"..." names: fail closed
    if verb in ("SET", "BEGIN", "START"):
        for j in range(1, n - 1):
            if toks[j][2] == "READ" and toks[j + 1][2] == "WRITE":
                return True
    if verb == "SET":
        for j in range(1, n):
            kind, value, _ = toks[j]
            if kind in "wq" and (value or "").lower() in _READ_ONLY_VARIABLES:
                k = j + 1
                if k < n and toks[k][1] == ":":
                    k += 1
                assigned = k < n and (toks[k][1] == "=" or toks[k][2] == "TO")
                if assigned and not _true(toks, k + 1, (",",)):
                    return True
    elif verb == "RESET" and n > 1:
        if toks[1][2] == "ALL" or (toks[1][1] or "").lower() in _READ_ONLY_VARIABLES:
            return True
    elif verb == "DISCARD" and n > 1 and toks[1][2] == "ALL":
        return True
    elif verb == "PRAGMA":
        parts, k = _chain(toks, 1)
        if parts and (parts[-1][1] or "").lower() == "query_only" and k < n:
            if toks[k][1] == "=":
                return not _true(toks, k + 1, ())
            if toks[k][1] == "(":
                return not _true(toks, k + 1, (")",))
    for j in range(n - 1):
        kind, value, _ = toks[j]
        if kind not in "wq":
            continue
        name = (value or "").lower()
        if name == "pg_settings" and any(t[2] == "UPDATE" for t in toks):
            return True
        if name == "set_config" and toks[j + 1][1] == "(":
            first = toks[j + 2] if j + 2 < n else ("p", ")", "")
            if first[0] != "s" or j + 3 >= n or toks[j + 3][1] != ",":
                return True  # a setting this module cannot name: fail closed
            named = (first[1] or "").strip().lower() in _READ_ONLY_VARIABLES
            if named and not _true(toks, j + 4, (",", ")")):
                return True
    return False


def _true(toks: tuple[_Tok, ...], k: int, stops: tuple[str, ...]) -> bool:
    """The value from ``k`` to a stop is plainly true: on, true, yes or 1, nothing else.

    Servers differ on the rest (SQLite reads ``t``, ``' 1'`` and ``256`` as false).
    """
    value: list[_Tok] = []
    while k < len(toks) and toks[k][1] not in stops and toks[k][2] != "FOR":
        value.append(toks[k])
        k += 1
    if len(value) != 1 or value[0][1] is None:
        return False  # an expression, a variable, DEFAULT ...: cannot tell
    return value[0][1].lower() in _TRUE
