"""Choosing journal records to restore, and whether each record's delete committed.

A record is flushed before its delete commits, so a record whose transaction then
failed (a killed backend, a crash at the commit) is in the journal too. Where the
database can tell (PostgreSQL: the record's transaction id and ``pg_xact_status``),
restore skips records whose delete did not commit; elsewhere the audit line, written
after the commit, says a delete committed, and a record without one is "unknown".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .format import Backup, BackupError, JournalRecord, read_journal, record_error, split_location

COMMITTED = "committed"
ABORTED = "aborted"
IN_PROGRESS = "in progress"
AUDITED = "committed (audit line)"
UNKNOWN = "unknown"
AUDIT = "audit.jsonl"


def record_key(location: str | Path) -> str:
    """``<run folder>/<journal>#N``: the same record whatever the path's prefix."""
    path = Path(str(location))
    return f"{path.parent.name}/{path.name}"


def audited(root: Path) -> set[str]:
    """Keys (see :func:`record_key`) of the records the audit log names, after a commit."""
    found: set[str] = set()
    try:
        data = (Path(root) / AUDIT).read_bytes()
    except OSError:
        return found
    for line in data.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        backup = value.get("backup") if isinstance(value, dict) else None
        if isinstance(backup, str) and "#" in backup:
            found.add(record_key(backup))
    return found


def same_server(engine: Engine, masked_url: str) -> bool:
    """Whether ``engine`` reaches the PostgreSQL server a record's rows came from."""
    if engine.dialect.name != "postgresql":
        return False
    try:
        source = make_url(masked_url)
    except (ArgumentError, ValueError):
        return False
    here = engine.url
    return (source.host or "localhost", source.port or 5432) == (
        here.host or "localhost",
        here.port or 5432,
    )


def xact_status(engine: Engine, xids: Iterable[str]) -> dict[str, str]:
    """PostgreSQL's answer per transaction id: committed, aborted or in progress.

    An id the server no longer knows (or never knew) is left out: its status is unknown.
    """
    answers: dict[str, str] = {}
    wanted = sorted(set(xids))
    if not wanted:
        return answers
    with engine.connect() as conn:
        version = conn.dialect.server_version_info or (0,)
        query = text(
            "SELECT pg_xact_status(CAST(:x AS xid8))"
            if version >= (13,)
            else "SELECT txid_status(CAST(:x AS bigint))"
        )
        for xid in wanted:
            try:
                with conn.begin():
                    status = conn.execute(query, {"x": xid}).scalar_one()
            except SQLAlchemyError:
                continue
            if isinstance(status, str):
                answers[xid] = status
    return answers


def statuses(
    records: Iterable[JournalRecord], audit_keys: set[str], xacts: Mapping[str, str]
) -> dict[int, str]:
    """Each record's commit status: the database's answer, else the audit line's."""
    result: dict[int, str] = {}
    for record in records:
        answer = xacts.get(record.xid or "")
        if answer is not None:
            result[record.n] = answer
        elif record_key(record.location) in audit_keys:
            result[record.n] = AUDITED
        else:
            result[record.n] = UNKNOWN
    return result


@dataclass
class Selection:
    """Records chosen from a journal, merged into one backup, and what was skipped."""

    backup: Backup
    records: list[int]
    notes: list[str] = field(default_factory=list)


def _tables_of(record: JournalRecord) -> list[str] | None:
    if record.backup is not None:
        return record.backup.order
    tables = (record.header or {}).get("tables")
    return [str(t) for t in tables] if isinstance(tables, list) else None


def _matches_table(name: str, wanted: str) -> bool:
    return name == wanted or name.rpartition(".")[2] == wanted


def select(
    location: str | Path,
    *,
    test: str | None = None,
    table: str | None = None,
    status_of: Callable[[list[JournalRecord]], dict[int, str]] | None = None,
) -> Selection:
    """The records ``path[#N]``, ``test`` and ``table`` select, verified, as one backup.

    A damaged or truncated record that is (or may be) selected refuses the whole
    selection, named, unless it is the journal's torn last record whose delete did not
    commit (no audit line; on PostgreSQL its transaction aborted or is unknown to the
    server), which is skipped and said so. Records whose transaction aborted are skipped.
    """
    journal, number = split_location(location)
    records = read_journal(journal)
    if not records:
        raise BackupError(f"journal {journal} holds no record")
    if number is not None and all(r.n != number for r in records):
        raise BackupError(f"journal {journal} has no record #{number}")

    def maybe(record: JournalRecord) -> bool:
        if number is not None and record.n != number:
            return False
        if test is not None and record.nodeid is not None and record.nodeid != test:
            return False
        tables = _tables_of(record)
        if table is not None and tables is not None:
            return any(_matches_table(t, table) for t in tables)
        return True

    chosen = [r for r in records if maybe(r)]
    status = status_of(chosen) if status_of is not None else {}
    notes: list[str] = []
    kept: list[JournalRecord] = []
    for record in chosen:
        answer = status.get(record.n, UNKNOWN)
        if record.backup is None:
            if record.torn and record is records[-1] and answer in (ABORTED, UNKNOWN):
                why = "transaction aborted" if answer == ABORTED else "no audit line"
                notes.append(
                    f"skipped {record.location}: truncated while it was written, and its "
                    f"delete did not commit ({why})"
                )
                continue
            raise record_error(record)
        if answer == ABORTED:
            notes.append(
                f"skipped {record.location}: its delete did not commit (transaction aborted)"
            )
            continue
        kept.append(record)
    if not kept:
        raise BackupError(
            f"nothing to restore: no record of {journal} matches"
            + (f" #{number}" if number is not None else "")
            + (f" --test {test}" if test is not None else "")
            + (f" --table {table}" if table is not None else "")
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    return Selection(_merge(journal, number, kept, test, table), [r.n for r in kept], notes)


def _merge(
    journal: Path,
    number: int | None,
    records: list[JournalRecord],
    test: str | None,
    table: str | None,
) -> Backup:
    """One backup of the records' tables in journal order (restore goes the other way)."""
    backups = [r.backup for r in records if r.backup is not None]
    first = backups[0]
    sources = {(str(b.header.get("dialect")), b.url) for b in backups}
    if len(sources) > 1:
        raise BackupError(
            f"the selected records of {journal} come from {len(sources)} databases: "
            "select one with PATH#N or --test; nothing was restored"
        )
    tables = [
        t
        for b in backups
        for t in b.tables
        if (test is None or b.header.get("nodeid") == test)
        and (table is None or _matches_table(t.name, table))
    ]
    name = f"{journal}#{number}" if number is not None else str(journal)
    return Backup(Path(name), first.header, tables, first.sha256)
