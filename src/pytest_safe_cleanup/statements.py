"""Recognise what a SQL statement does, in microseconds, without a parser.

Section 6a's watch runs on every statement of every engine in the process, so this
must be cheap: comments, strings and whitespace are stripped once per distinct
statement text (SQLAlchemy reuses compiled strings, so the cache mostly hits), and
a data-modifying CTE (``WITH d AS (DELETE ...) SELECT ...``) is still a write.
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

_NOISE = re.compile(
    r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\$(\w*)\$.*?\$\1\$""",
    re.DOTALL,
)
_WORD = re.compile(r"[A-Za-z_]+")
_CTE_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_SELECT_INTO = re.compile(r"^SELECT\b.*?\bINTO\b\s+(?!@|:)", re.IGNORECASE | re.DOTALL)
_ANALYZE = re.compile(r"\bANALY[SZ]E\b", re.IGNORECASE)
# COPY (query) TO ... reads; only COPY table [(columns)] FROM ... writes.
_COPY_FROM = re.compile(r"^COPY\s+(?![\s(]).*?\bFROM\b", re.IGNORECASE | re.DOTALL)
_INNER_COMMENT = re.compile(r"/\*(?:(?!/\*|\*/).)*\*/", re.DOTALL)


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
    dangerous statement is. PostgreSQL nests comments: innermost ones go first.
    """
    text = _NOISE.sub(" ", sql)
    while "*/" in text and _INNER_COMMENT.search(sql):  # a comment closed inside a comment
        sql = _INNER_COMMENT.sub(" ", sql)
        text = _NOISE.sub(" ", sql)
    parts = [_classify_one(part) for part in text.split(";")]
    return max(parts, key=lambda s: (s.destructive, s.writes))


def _classify_one(text: str) -> Statement:
    text = text.lstrip(" \t\r\n(")
    match = _WORD.match(text)
    if match is None:
        return _READ
    verb = match.group(0).upper()
    if verb == "WITH":
        found = _CTE_WRITE.search(text)
        if found is None:
            return Statement("WITH", False, False)
        inner = found.group(1).upper()
        return Statement(f"WITH ... {inner}", True, inner in DESTRUCTIVE)
    if verb == "EXPLAIN":
        # EXPLAIN ANALYZE runs the statement it explains.
        if _ANALYZE.search(text) is None:
            return Statement("EXPLAIN", False, False)
        found = _CTE_WRITE.search(text)
        if found is None:
            return Statement("EXPLAIN", False, False)
        inner = found.group(1).upper()
        return Statement(f"EXPLAIN ANALYZE {inner}", True, inner in DESTRUCTIVE)
    if verb == "COPY":
        writes = _COPY_FROM.match(text) is not None
        return Statement("COPY FROM" if writes else "COPY", writes, False)
    if verb == "SELECT":
        if _SELECT_INTO.match(text):
            return Statement("SELECT INTO", True, False)
        return _READ
    if verb in WRITE_KEYWORDS:
        return Statement(verb, True, verb in DESTRUCTIVE)
    return Statement(verb, False, False)


def shorten(sql: str, limit: int = 120) -> str:
    """One line of a statement for a message."""
    one = " ".join(sql.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."
