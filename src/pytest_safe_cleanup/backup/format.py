"""The rows backup file: JSON lines with a header, table records, rows and a footer.

Layout, one JSON value per line::

    {"kind": "header", "format": ..., "version": 1, "tables": [deletion order], ...}
    {"kind": "table", "name": "app.users", "table": "users", "schema": "app", "columns": [...]}
    {"kind": "rows", "rows": [[row values, encoded, in column order], ...]}
                                                      <- rows of the last table record
    [row values, encoded, in column order]            <- one row (also accepted)
                                      a table record with "encoding": "postgresql-text"
                                      holds each value as the server printed it, or null;
                                      "postgresql-row": each row is [the row's text]; a
                                      record with "changes" holds rows a foreign key
                                      action changed (not deleted) on those columns
    ...
    {"kind": "footer", "rows": {"app.users": 3}, "total": 3, "sha256": "<of every line above>"}

The footer makes truncation and damage detectable: a backup without a footer, with a
checksum that does not match or with row counts that differ is refused as a whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..executor import ROW_TEXT, SERVER_TEXT
from ..target import carries_secret
from .codec import CodecError, decode

FORMAT = "pytest-safe-cleanup rows"
VERSION = 1


class BackupError(RuntimeError):
    """Why the backup could not be made or read; apply must stop, nothing is deleted."""


@dataclass(frozen=True)
class BackupTable:
    """One table's rows as they were before the delete, in the file's column order."""

    name: str  # as the plan reports it (schema-qualified where it has a schema)
    table: str
    schema: str | None
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    #: "codec" (values through codec.py), "postgresql-text" (each value's text as
    #: the server printed it, None for NULL; restore hands it back to ``COPY FROM``) or
    #: "postgresql-row" (each row's text as one value, read back by ``CAST(.. AS t)``)
    encoding: str = "codec"
    #: None: the rows were deleted. Otherwise the rows were changed, not deleted, by a
    #: foreign key action (``SET NULL``/``SET DEFAULT``) on these columns
    changes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Backup:
    """A parsed and verified backup file."""

    path: Path
    header: dict[str, Any]
    tables: list[BackupTable]
    sha256: str

    @property
    def order(self) -> list[str]:
        """Table names in deletion order (children first); restore goes the other way."""
        return [t.name for t in self.tables]

    @property
    def counts(self) -> dict[str, int]:
        """Rows per table (deleted and changed ones)."""
        return _counts(self.tables)

    @property
    def url(self) -> str:
        """The masked URL of the database the rows came from."""
        return str(self.header.get("url", ""))

    @property
    def restore_url(self) -> str | None:
        """A URL to restore into without asking, or None where the source needed a password.

        A recorded URL that carries a (masked) password or secret query value, as older
        versions could write, is not reused either: restore then asks for ``--url``.
        """
        value = self.header.get("restore_url")
        if not value:
            return None
        try:
            secret = carries_secret(make_url(str(value)))
        except (ArgumentError, ValueError):
            secret = False  # restore reports the unusable URL in its own words
        return None if secret else str(value)


def _counts(tables: list[BackupTable]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tables:
        counts[t.name] = counts.get(t.name, 0) + len(t.rows)
    return counts


def dumps(value: Any) -> bytes:
    """One compact JSON line (ASCII, so any text survives; no NaN, which is not JSON)."""
    return (
        json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
        + b"\n"
    )


def _server_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CodecError(f"a value that is not the server's text: {value!r}")


def _width(table: BackupTable) -> int:
    """Values per row: one (the whole row's text) for ROW_TEXT, else one per column."""
    return 1 if table.encoding == ROW_TEXT else len(table.columns)


def _changes(record: dict[str, Any]) -> tuple[str, ...] | None:
    changes = record.get("changes")
    if changes is None:
        return None
    if not isinstance(changes, list) or not all(isinstance(c, str) for c in changes):
        raise ValueError("changes is not a list of column names")
    if not set(changes) <= set(record["columns"]):
        raise ValueError("changes names a column the record does not hold")
    return tuple(changes)


def _damaged(path: Path, why: str) -> BackupError:
    return BackupError(f"backup {path} is damaged or truncated ({why}); it cannot be used")


def parse(path: Path, data: bytes) -> Backup:
    """Parse and verify a backup's bytes: footer, checksum, row counts, then every value."""
    if not data:
        raise _damaged(path, "the file is empty")
    if not data.endswith(b"\n"):
        raise _damaged(path, "the last line is incomplete")
    body_end = data.rfind(b"\n", 0, len(data) - 1) + 1
    body, last = data[:body_end], data[body_end:]
    try:
        footer = json.loads(last)
    except ValueError:
        raise _damaged(path, "no readable footer") from None
    if not isinstance(footer, dict) or footer.get("kind") != "footer":
        raise _damaged(path, "no footer")
    digest = hashlib.sha256(body).hexdigest()
    if footer.get("sha256") != digest:
        raise _damaged(path, "checksum mismatch")
    lines = body.splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("kind") != "header":
        raise _damaged(path, "no header")
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise BackupError(
            f"{path} is not a pytest-safe-cleanup rows backup of version {VERSION} "
            f"(format {header.get('format')!r}, version {header.get('version')!r})"
        )
    tables: list[BackupTable] = []
    value_of: Callable[[Any], Any] = decode
    try:
        for line in lines[1:]:
            record = json.loads(line)
            if isinstance(record, list):
                if not tables or len(record) != _width(tables[-1]):
                    raise _damaged(path, "a row that does not match its table's columns")
                tables[-1].rows.append(tuple(value_of(v) for v in record))
            elif isinstance(record, dict) and record.get("kind") == "rows":
                if not tables or not isinstance(record.get("rows"), list):
                    raise _damaged(path, "rows before their table record")
                width = _width(tables[-1])
                for row in record["rows"]:
                    if not isinstance(row, list) or len(row) != width:
                        raise _damaged(path, "a row that does not match its table's columns")
                    tables[-1].rows.append(tuple(value_of(v) for v in row))
            elif isinstance(record, dict) and record.get("kind") == "table":
                encoding = record.get("encoding", "codec")
                if encoding not in ("codec", SERVER_TEXT, ROW_TEXT):
                    raise _damaged(path, f"an unknown row encoding {encoding!r}")
                tables.append(
                    BackupTable(
                        str(record["name"]),
                        str(record["table"]),
                        record.get("schema"),
                        tuple(str(c) for c in record["columns"]),
                        encoding=encoding,
                        changes=_changes(record),
                    )
                )
                value_of = _server_text if encoding in (SERVER_TEXT, ROW_TEXT) else decode
            else:
                raise _damaged(path, "an unknown record")
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, CodecError):
            raise _damaged(path, f"a value cannot be decoded: {exc}") from None
        raise _damaged(path, f"an unreadable record: {exc}") from None
    counts = _counts(tables)
    if footer.get("rows") != counts or [t.name for t in tables] != header.get("tables"):
        raise _damaged(path, "row counts or tables differ from the footer")
    return Backup(path, header, tables, digest)


def read_backup(path: Path) -> Backup:
    """Read, parse and verify a backup file; damaged or truncated -> BackupError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read backup {path}: {exc.strerror or exc}") from None
    return parse(Path(path), data)
