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
    lines = body.splitlines()
    return _verified(path, lines, last, hashlib.sha256(body).hexdigest(), "header", VERSION)


def _verified(
    path: Path, lines: list[bytes], last: bytes, digest: str, head: str, version: int
) -> Backup:
    """Check a footer (or a journal record's end line) against the lines it closes."""
    try:
        footer = json.loads(last)
    except ValueError:
        raise _damaged(path, "no readable footer") from None
    end = "footer" if head == "header" else "end"
    if not isinstance(footer, dict) or footer.get("kind") != end:
        raise _damaged(path, "no footer")
    if footer.get("sha256") != digest:
        raise _damaged(path, "checksum mismatch")
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("kind") != head:
        raise _damaged(path, "no header")
    if header.get("format") != FORMAT or header.get("version") != version:
        raise BackupError(
            f"{path} is not a pytest-safe-cleanup rows backup of version {version} "
            f"(format {header.get('format')!r}, version {header.get('version')!r})"
        )
    if head == "record" and footer.get("n") != header.get("n"):
        raise _damaged(path, "the end line names another record")
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


# -- the journal ---------------------------------------------------------------
#: A journal holds one record per applied cleanup, appended and flushed before its
#: commit. A record is a "record" line (where the rows came from, the test, the
#: transaction id on PostgreSQL), table and rows lines as in a backup file, and an
#: "end" line with the row counts and the sha256 of the table and rows lines followed
#: by the record line (the record line is numbered when it is written).
JOURNAL_VERSION = 2
RECORD_START = b'{"kind":"record"'
JOURNAL_SUFFIX = ".journal"


@dataclass(frozen=True)
class JournalRecord:
    """One record of a journal: verified (``backup``) or not (``error`` says why)."""

    journal: Path
    n: int
    header: dict[str, Any] | None
    backup: Backup | None
    error: str | None
    #: the journal's last record, cut short (a crash during its write): its delete
    #: cannot have committed, since the flush precedes the commit
    torn: bool = False

    @property
    def location(self) -> str:
        """``<journal>#<n>``, the name the report and the audit line give this record."""
        return f"{self.journal}#{self.n}"

    @property
    def nodeid(self) -> str | None:
        """The test the record belongs to, if its record line can be read."""
        value = (self.header or {}).get("nodeid")
        return str(value) if value is not None else None

    @property
    def xid(self) -> str | None:
        """The PostgreSQL transaction id of the delete, if the record holds one."""
        value = (self.header or {}).get("xid")
        return str(value) if value is not None else None


def split_location(location: str | Path) -> tuple[Path, int | None]:
    """``path#N`` -> (path, N); a path without ``#N`` -> (path, None)."""
    text = str(location)
    base, sep, number = text.rpartition("#")
    if sep and base.endswith(JOURNAL_SUFFIX) and number.isdigit():
        return Path(base), int(number)
    return Path(text), None


def is_journal(location: str | Path) -> bool:
    """Whether a location names a journal (or one of its records), not a backup file."""
    return split_location(location)[0].name.endswith(JOURNAL_SUFFIX)


def parse_journal(path: Path, data: bytes) -> list[JournalRecord]:
    """Split a journal into records and verify each one on its own."""
    groups: list[list[bytes]] = []
    for line in data.splitlines(keepends=True):
        if line.startswith(RECORD_START) or not groups:
            groups.append([line])
        else:
            groups[-1].append(line)
    records: list[JournalRecord] = []
    previous = 0
    for index, group in enumerate(groups):
        last = index == len(groups) - 1
        try:
            header = json.loads(group[0])
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("kind") != "record":
            header = None
        number = header.get("n") if header is not None else None
        n = number if isinstance(number, int) and number > previous else previous + 1
        previous = n
        where = Path(f"{path}#{n}")
        complete = group[-1].endswith(b"\n") and group[-1].startswith(b'{"kind":"end"')
        if last and not complete:
            error = "the record is cut short"
            records.append(JournalRecord(path, n, header, None, error, torn=True))
            continue
        body = [line.rstrip(b"\n") for line in group[:-1]]
        digest = hashlib.sha256(b"".join(group[1:-1]) + group[0]).hexdigest()
        try:
            backup = _verified(where, body, group[-1], digest, "record", JOURNAL_VERSION)
        except BackupError as exc:
            records.append(JournalRecord(path, n, header, None, str(exc)))
            continue
        records.append(JournalRecord(path, n, header, backup, None))
    return records


def read_journal(path: Path) -> list[JournalRecord]:
    """Every record of a journal, each verified on its own."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read journal {path}: {exc.strerror or exc}") from None
    return parse_journal(Path(path), data)


def record_error(record: JournalRecord) -> BackupError:
    """A damaged or truncated record refuses what it belongs to, named."""
    if record.torn:
        return BackupError(
            f"record {record.location} is truncated (cut short while it was written); "
            "it cannot be used"
        )
    return BackupError(record.error or f"record {record.location} cannot be used")


def read_backup(path: Path) -> Backup:
    """Read, parse and verify a backup file (or one journal record, ``path#N``).

    A journal without ``#N`` reads as its only record. Damaged or truncated ->
    BackupError naming it.
    """
    if is_journal(path):
        journal, n = split_location(path)
        records = read_journal(journal)
        chosen = [r for r in records if n is None or r.n == n]
        if not chosen:
            raise BackupError(f"journal {journal} has no record #{n}")
        if len(chosen) > 1:
            raise BackupError(
                f"journal {journal} holds {len(chosen)} records: name one, {journal}#N"
            )
        if chosen[0].backup is None:
            raise record_error(chosen[0])
        return chosen[0].backup
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read backup {path}: {exc.strerror or exc}") from None
    return parse(Path(path), data)
