"""The backup folder: one subfolder per run, a journal per worker, and the audit log.

Rows are captured inside the deleting transaction (``DELETE ... RETURNING``, else
``SELECT *`` first, so columns no model maps are kept too), encoded while the server
works, checked against the counts, and appended as one self-checking record to the
run's journal for this worker (``<run>/<worker or main>.journal``), flushed with one
``fdatasync`` before the caller commits. Only creating the journal flushes its folder.
Backups hold real data, so folders are 0700, files 0600, and every folder the plugin
owns (the top, each run and worker folder) holds a ``.gitignore`` of ``*`` as
``.pytest_cache`` does; a top folder with a ``.gitignore`` of the user's gets a line
for the audit log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from ..executor import ROW_TEXT, SERVER_TEXT, CapturedTable, TableCount, rows_statement
from ..plan import Plan
from ..target import Target, carries_secret, first_line
from .codec import CodecError, encode
from .format import (
    FORMAT,
    JOURNAL_SUFFIX,
    JOURNAL_VERSION,
    BackupError,
    JournalRecord,
    dumps,
    read_backup,
    read_journal,
)

GITIGNORE = "# Created by pytest-safe-cleanup: backups hold real data, never commit them.\n*\n"
AUDIT = "audit.jsonl"
AUDIT_IGNORE = f"# Added by pytest-safe-cleanup: the audit log holds real data.\n/{AUDIT}\n"
RUN_MARKER = ".safe-cleanup-run"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


@dataclass(frozen=True)
class BackupInfo:
    """A verified backup: where it is, its rows (total and per table), its checksum."""

    path: Path
    rows: int
    tables: dict[str, int]
    sha256: str


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name fragment: no separators, no leading dot, bounded length."""
    name = _UNSAFE.sub("_", text).strip("._")[:limit]
    return name or "x"


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def fsync_path(path: Path) -> None:
    """Flush a file's content, or a folder's entries (a new file's name), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_url(target: Target) -> str | None:
    """The URL restore may reuse: only one that carries no password or other secret.

    The masked URL is all a Target keeps, so any password in it (in the user info or a
    secret query key, whatever the masking turned it into) means restore needs ``--url``.
    A relative SQLite path is made absolute, since restore may run from elsewhere.
    """
    url = make_url(target.masked_url)
    if carries_secret(url):
        return None
    database = url.database or ""
    relative = database not in ("", ":memory:") and not database.startswith("file:")
    if url.get_backend_name() == "sqlite" and relative and not os.path.isabs(database):
        url = url.set(database=os.path.abspath(database))
    return url.render_as_string(hide_password=False)


_ROW_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_SIMPLE = frozenset({str, int, bool, float, type(None)})
_BATCH = 1000


def _batches(rows: Iterable[Sequence[Any]]) -> Iterator[list[list[Any]]]:
    batch: list[list[Any]] = []
    for row in rows:
        batch.append(list(row))
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _rows_line(batch: list[list[Any]]) -> bytes:
    """One ``rows`` record of up to a thousand rows.

    JSON carries str, int, bool and finite floats as they are; only columns holding
    anything else go through the codec, and the batch is one C-level encode instead
    of one per row (teardown runs once per test).
    """
    width = len(batch[0])
    for i in range(width):
        if any(type(row[i]) not in _SIMPLE for row in batch):
            for row in batch:
                row[i] = encode(row[i])
    try:
        text = _ROW_ENCODER.encode({"kind": "rows", "rows": batch})
    except ValueError:  # a NaN or infinite float: the codec writes those exactly
        exact = [[encode(v) if type(v) is float else v for v in row] for row in batch]
        text = _ROW_ENCODER.encode({"kind": "rows", "rows": exact})
    return (text + "\n").encode("ascii")


def _remove_own_folder(folder: Path, own: set[str]) -> bool | None:
    """Remove a folder that holds nothing but the plugin's own files.

    ``own`` names the files besides the ``.gitignore`` that may be removed with it. Returns
    None when something else is there (nothing is touched), False when the folder could
    not be removed after its own files were (another worker wrote into it meanwhile).
    """
    try:
        left = {entry.name for entry in folder.iterdir()}
    except OSError:
        return None
    if not left <= own | {".gitignore"}:
        return None
    for name in left:
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


class BackupStore:
    """Backups of one run (and worker) under ``root``; created on first write."""

    def __init__(
        self, root: Path, run_id: str, *, worker: str | None = None, keep: int = 20
    ) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.worker = worker
        self.keep = keep
        self.run_root = self.root / safe_name(run_id)
        self.folder = self.run_root / safe_name(worker) if worker else self.run_root
        self._ready = False
        self._root_ready = False
        self._counter = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self.journal = self.run_root / f"{safe_name(worker) if worker else 'main'}{JOURNAL_SUFFIX}"
        #: the journal's descriptor (O_APPEND), records written, the process that opened it
        self._journal_fd: int | None = None
        self._journal_pid = 0
        self._records = 0
        #: set when a failed append could not be taken back: no record may follow it
        self._journal_broken: str | None = None
        #: what the writer thread could not do after the fact (reported as warnings)
        self.problems: list[str] = []

    # -- folders -------------------------------------------------------------
    def _mkdir(self, path: Path, what: str) -> None:
        try:
            if path.exists() and not path.is_dir():
                raise BackupError(
                    f"backup folder {path} is not a directory: remove it or set "
                    "safe_cleanup_backup_dir / --safe-cleanup-backup-dir to a folder"
                )
            if not path.is_dir():
                path.mkdir(mode=0o700, parents=True)
                os.chmod(path, 0o700)
        except FileExistsError:
            if not path.is_dir():
                raise BackupError(f"backup folder {path} is not a directory") from None
        except OSError as exc:
            raise BackupError(
                f"cannot create the {what} {path}: {_why(exc)}; nothing was deleted "
                "(set safe_cleanup_backup_dir / --safe-cleanup-backup-dir to a writable folder)"
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise BackupError(f"the {what} {path} is not writable; nothing was deleted")

    def _ignore(self, folder: Path) -> None:
        """A ``.gitignore`` of ``*`` in a folder the plugin owns (kept if one is there)."""
        ignore = folder / ".gitignore"
        if ignore.exists():
            return
        try:
            self._write_new(ignore, GITIGNORE.encode())
        except FileExistsError:
            pass  # another worker wrote it
        except OSError as exc:
            raise BackupError(f"cannot write {ignore}: {_why(exc)}") from None

    def _ignore_audit(self) -> None:
        """Make git ignore the audit log where the root holds a ``.gitignore`` of the user's.

        Run folders carry their own ``.gitignore``; the audit log sits in the root, so a
        user's ``.gitignore`` there that does not ignore everything gets one line for it.
        """
        ignore = self.root / ".gitignore"
        try:
            lines = {line.strip() for line in ignore.read_text(errors="replace").splitlines()}
        except OSError:
            return
        if lines & {"*", AUDIT, f"/{AUDIT}"}:
            return
        try:
            with ignore.open("a", encoding="utf-8") as fh:
                fh.write(f"\n{AUDIT_IGNORE}")
        except OSError as exc:
            raise BackupError(f"cannot add the audit log to {ignore}: {_why(exc)}") from None

    def _ensure_root(self) -> None:
        if self._root_ready:
            return
        self._mkdir(self.root, "backup folder")
        self._ignore(self.root)
        self._ignore_audit()
        self._root_ready = True

    def _ensure_run(self) -> None:
        if self._ready:
            return
        self._ensure_root()
        self._mkdir(self.run_root, "run backup folder")
        self._ignore(self.run_root)
        # After the run folder: a worker that finds only the marker (see close) may
        # remove the run folder, and this marker is then written again.
        with contextlib.suppress(FileExistsError, OSError):
            self._write_new(self.run_root / RUN_MARKER, f"{self.run_id}\n".encode())
        self.prune()
        self._ready = True

    def ensure_folder(self) -> Path:
        """Create (once) and return this run's folder, e.g. for a pg_dump file."""
        self._ensure_run()
        if self.folder != self.run_root:
            self._mkdir(self.folder, "worker backup folder")
            self._ignore(self.folder)
        return self.folder

    def prune(self) -> list[Path]:
        """Remove the oldest runs beyond ``keep``; never this run, never unmarked folders.

        Only folders carrying the run marker are considered, so a backup folder pointed
        at a directory with other content never loses that content.
        """
        runs = []
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return []
        for entry in entries:
            if entry == self.run_root or entry.is_symlink() or not entry.is_dir():
                continue
            marker = entry / RUN_MARKER
            if marker.is_file():
                with contextlib.suppress(OSError):
                    runs.append((marker.stat().st_mtime, entry.name, entry))
        runs.sort()
        excess = len(runs) - max(self.keep - 1, 0)
        removed = [entry for _, _, entry in runs[: max(excess, 0)]]
        for entry in removed:
            shutil.rmtree(entry, ignore_errors=True)
        return removed

    # -- files ---------------------------------------------------------------
    def _open_new(self, path: Path) -> int:
        """Create ``path`` (0600) for writing, never replacing or following anything."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        return os.open(path, flags, 0o600)

    def _write_new(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_rows(
        self,
        conn: Connection,
        plan: Plan,
        counts: list[TableCount],
        *,
        nodeid: str,
        target: Target,
    ) -> BackupInfo:
        """Back up the rows ``plan`` would delete, inside the caller's open transaction.

        Returns only once the journal record is flushed with the counted rows and its
        checksum; any failure leaves no record and raises BackupError.
        """
        pending = self.begin(conn.dialect.name, plan, nodeid=nodeid, target=target, conn=conn)
        try:
            for step in plan.steps:
                try:
                    statement = (
                        rows_statement(step)
                        if step.action == "update"
                        else select(text("*")).select_from(step.selectable).where(step.condition)
                    )
                    result = conn.execute(statement)
                    columns, rows = list(result.keys()), result.all()
                except SQLAlchemyError as exc:
                    raise BackupError(
                        f"could not read the rows to back up: {first_line(exc)}; "
                        "nothing was deleted"
                    ) from None
                changes = step.changes if step.action == "update" else None
                pending.add((step.name, step.table, columns, rows, "codec", changes))
            return pending.complete(counts)
        except BaseException:
            pending.abort()
            raise

    def begin(
        self,
        dialect: str,
        plan: Plan,
        *,
        nodeid: str,
        target: Target,
        conn: Connection | None = None,
    ) -> PendingBackup:
        """Start a journal record that rows are added to as the deletes return them.

        ``conn`` (the deleting transaction's) gives PostgreSQL's transaction id, kept in
        the record so that ``backups`` and ``restore`` can ask whether its delete committed.
        """
        self._ensure_run()
        if self._journal_broken is not None:
            raise BackupError(f"{self._journal_broken}; nothing was deleted")
        xid = transaction_id(conn) if conn is not None and dialect == "postgresql" else None
        header = self.header(dialect, plan, nodeid, target, xid)
        return PendingBackup(self, header)

    # -- the journal ---------------------------------------------------------
    def _journal_open(self) -> int:
        """The journal's descriptor, created (and its folder flushed) on first use."""
        if self._journal_fd is not None and self._journal_pid == os.getpid():
            return self._journal_fd
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.journal, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:  # a forked child, or a store reopened in the same run
            fd = os.open(self.journal, flags)
            created = False
        try:
            if created:
                fsync_path(self.journal.parent)
                self._records = 0
            else:
                self._records = sum(
                    1 for r in read_journal(self.journal) if r.header is not None or r.torn
                )
        except BaseException:
            os.close(fd)
            raise
        self._journal_fd, self._journal_pid = fd, os.getpid()
        return fd

    def _append_record(
        self, header: dict[str, Any], lines: list[bytes], end: dict[str, Any]
    ) -> tuple[str, str]:
        """Append one record and flush it (one write, one fdatasync); return ``path#N``.

        A failed write or flush is taken back (the journal is cut to its old length),
        so a record that is not durable never sits before the next one.
        """
        fd = self._journal_open()
        n = self._records + 1
        record = dumps({**header, "n": n})
        digest = hashlib.sha256()
        for line in lines:
            digest.update(line)
        digest.update(record)
        closing = dumps({**end, "n": n, "sha256": digest.hexdigest()})
        payload = b"".join([record, *lines, closing])
        size = os.fstat(fd).st_size
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(0, "short write")
                view = view[written:]
            os.fdatasync(fd)
        except BaseException as exc:
            try:
                os.ftruncate(fd, size)
                os.fdatasync(fd)
            except OSError as undo:
                self._journal_broken = (
                    f"journal {self.journal} holds a record that could not be written nor "
                    f"taken back ({_why(undo)})"
                )
            raise exc from None
        self._records = n
        return f"{self.journal}#{n}", digest.hexdigest()

    def _journal_close(self) -> None:
        if self._journal_fd is not None and self._journal_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._journal_fd)
        self._journal_fd = None

    def _writer(self) -> ThreadPoolExecutor:
        # A forked child (pytest-forked, say) has the pool but not its thread: a new one.
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="safe-cleanup-backup")
            self._pool_pid = os.getpid()
        return self._pool

    def close(self) -> None:
        """Stop the writer thread (after the session's last cleanup); drop an empty run."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._journal_close()
        self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """A run whose every backup failed leaves no folder: nothing to list or restore.

        Only empty folders go (``rmdir`` refuses anything else), so a backup that another
        xdist worker wrote meanwhile is never removed with them.
        """
        if not self._ready:
            return
        if self.folder != self.run_root:
            _remove_own_folder(self.folder, set())
        if _remove_own_folder(self.run_root, {RUN_MARKER}) is False:
            # another worker's folder appeared meanwhile: the run stays marked and ignored
            with contextlib.suppress(OSError):
                self._write_new(self.run_root / RUN_MARKER, f"{self.run_id}\n".encode())
            with contextlib.suppress(BackupError):
                self._ignore(self.run_root)
        self._ready = False

    def header(
        self, dialect: str, plan: Plan, nodeid: str, target: Target, xid: str | None = None
    ) -> dict[str, Any]:
        """A record's first line: where the rows came from and how to restore them."""
        return {
            "kind": "record",
            "format": FORMAT,
            "version": JOURNAL_VERSION,
            "dialect": dialect,
            "url": target.masked_url,
            "restore_url": restore_url(target),
            "target": target.name,
            "run_id": self.run_id,
            "worker": self.worker,
            "nodeid": nodeid,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "tables": plan.tables,
            "xid": xid,
        }

    # -- audit ---------------------------------------------------------------
    def audit(self, record: Mapping[str, Any]) -> None:
        """Append one line to ``audit.jsonl``: one write, O_APPEND, never rewritten.

        The write happens here, so a full disk or a read-only folder is reported with
        the cleanup; the fsync runs on the writer thread, before the next backup is
        made durable and before the session ends (see :meth:`flush`).
        """
        self._ensure_root()
        path = self.root / AUDIT
        line = (
            json.dumps(dict(record), separators=(",", ":"), ensure_ascii=True, default=str) + "\n"
        ).encode("ascii")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(0, "short write")
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise BackupError(f"cannot append to the audit log {path}: {_why(exc)}") from None
        self._writer().submit(self._sync_audit, fd, path)

    def _sync_audit(self, fd: int, path: Path) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self.problems.append(f"the audit log {path} could not be flushed to disk: {_why(exc)}")
        finally:
            os.close(fd)

    def flush(self) -> list[str]:
        """Wait for the writer thread; return (and forget) what it could not do."""
        if self._pool is not None:
            self._pool.submit(int).result()
        problems, self.problems = self.problems, []
        return problems


def _table_lines(
    name: str,
    table: Table,
    columns: list[str],
    rows: Any,
    encoding: str,
    changes: tuple[str, ...] | None = None,
) -> tuple[list[bytes], int]:
    """A table record and its rows records; the number of rows.

    ``changes``: the rows were not deleted but changed by a foreign key action on
    these columns; the record says so and restore puts their old values back.
    """
    record: dict[str, Any] = {
        "kind": "table",
        "name": name,
        "table": table.name,
        "schema": table.schema,
        "columns": columns,
    }
    if encoding != "codec":
        record["encoding"] = encoding
    if changes is not None:
        record["changes"] = list(changes)
    lines = [dumps(record)]
    if encoding in (SERVER_TEXT, ROW_TEXT):
        # every value is the server's text or None: one C-level encode per batch
        for start in range(0, len(rows), _BATCH):
            chunk = {"kind": "rows", "rows": rows[start : start + _BATCH]}
            lines.append((_ROW_ENCODER.encode(chunk) + "\n").encode("ascii"))
        return lines, len(rows)
    count = 0
    for batch in _batches(rows):
        lines.append(_rows_line(batch))
        count += len(batch)
    return lines, count


def transaction_id(conn: Connection) -> str | None:
    """PostgreSQL's id of the open transaction (assigned now: it deletes anyway)."""
    version = conn.dialect.server_version_info or (0,)
    function = "pg_current_xact_id()" if version >= (13,) else "txid_current()"
    try:
        return str(conn.exec_driver_sql(f"SELECT CAST({function} AS text)").scalar_one())
    except SQLAlchemyError as exc:
        raise BackupError(
            f"could not read the transaction id for the backup: {first_line(exc)}; "
            "nothing was deleted"
        ) from None


class PendingBackup:
    """One journal record, built on the store's writer thread beside the deletes.

    Each table's rows are encoded while the server deletes the next table, so only the
    append and its ``fdatasync`` wait in :meth:`finish`, before the commit. Steps run in
    order on one thread; after a failure the rest are skipped and nothing is written.
    """

    def __init__(self, store: BackupStore, header: dict[str, Any]) -> None:
        self.store = store
        self.header = header
        self.location = ""
        self._error: BaseException | None = None
        self._lines: list[bytes] = []
        self._written: dict[str, int] = {}
        self._digest = ""
        self._last: Future[None] | None = None

    def _submit(self, step: Callable[..., None], *args: Any) -> Future[None]:
        def run() -> None:
            if self._error is None:
                try:
                    step(*args)
                except BaseException as exc:  # reported by finish(), which the caller awaits
                    self._error = exc

        self._last = self.store._writer().submit(run)
        return self._last

    def add(self, captured: CapturedTable) -> None:
        """Encode one table's rows (they must not be read from a live cursor)."""
        self._submit(self._encode, captured)

    def _encode(self, captured: CapturedTable) -> None:
        name = captured[0]
        lines, n = _table_lines(*captured)
        self._written[name] = self._written.get(name, 0) + n
        self._lines += lines

    def finish(self, counts: Sequence[TableCount]) -> str:
        """:meth:`complete`, returning the record's ``path#N`` (the executor's Capture)."""
        return str(self.complete(counts).path)

    def complete(self, counts: Sequence[TableCount]) -> BackupInfo:
        """Append the record to the journal and flush it; check it holds the counted rows."""
        expected = {c.table: c.counted + (c.updated or 0) for c in counts}
        updated = {c.table: c.updated for c in counts if c.updated}
        self._submit(self._complete, expected, updated).result()
        if self._error is not None:
            self._lines = []
            raise _backup_error(self._error, self.store.journal) from None
        self._lines = []
        return BackupInfo(
            Path(self.location), sum(self._written.values()), dict(self._written), self._digest
        )

    def _complete(self, expected: dict[str, int], updated: dict[str, int]) -> None:
        if self._written != expected:
            raise BackupError(
                f"the rows backed up ({_describe(self._written)}) differ from the rows counted "
                f"({_describe(expected)}): the data changed during cleanup"
            )
        end = {
            "kind": "end",
            "rows": self._written,
            "total": sum(self._written.values()),
            "updated": updated,
        }
        self.location, self._digest = self.store._append_record(self.header, self._lines, end)

    def abort(self) -> None:
        """Give up before the record was written: wait for the writer, drop the rows."""
        if self._last is not None:
            with contextlib.suppress(BaseException):
                self._last.result()
        self._lines = []


def _backup_error(exc: BaseException, path: Path) -> BaseException:
    """What a failed backup step means for the cleanup: nothing was deleted."""
    if isinstance(exc, BackupError):
        return BackupError(f"{exc}; nothing was deleted")
    if isinstance(exc, OSError):
        return BackupError(f"could not write backup {path}: {_why(exc)}; nothing was deleted")
    if isinstance(exc, CodecError):
        return BackupError(
            f"cannot back up these rows exactly ({exc}); nothing was deleted: "
            "use safe_cleanup_backup = pg_dump for this database"
        )
    return exc


def _describe(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


@dataclass(frozen=True)
class RunSummary:
    """One run's backups: files, rows per table, and what failed verification."""

    run_id: str
    path: Path
    files: int
    tables: dict[str, int]
    damaged: tuple[Path, ...]
    dumps: tuple[Path, ...]
    modified: dt.datetime
    #: every journal record of the run, verified or not, in journal and record order
    records: tuple[JournalRecord, ...] = ()

    @property
    def rows(self) -> int:
        """Rows over every table."""
        return sum(self.tables.values())


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder under ``root``, oldest first, with its backups verified.

    Journals count as one file each; their records are listed on their own. Old runs'
    per-teardown ``.jsonl`` files are read as before.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.is_symlink():
            continue
        files = sorted(entry.rglob("*.jsonl"))
        journals = sorted(entry.rglob(f"*{JOURNAL_SUFFIX}"))
        dumps_found = tuple(sorted(entry.rglob("*.dump")))
        if not files and not journals and not dumps_found:
            continue  # a run whose backups all failed (or were pruned) has nothing to restore
        tables: dict[str, int] = {}
        damaged: list[Path] = []
        for path in files:
            try:
                backup = read_backup(path)
            except BackupError:
                damaged.append(path)
                continue
            for name, n in backup.counts.items():
                tables[name] = tables.get(name, 0) + n
        records: list[JournalRecord] = []
        for path in journals:
            try:
                found = read_journal(path)
            except BackupError:
                damaged.append(path)
                continue
            records += found
            for record in found:
                if record.backup is None:
                    damaged.append(Path(record.location))
                    continue
                for name, n in record.backup.counts.items():
                    tables[name] = tables.get(name, 0) + n
        modified = dt.datetime.fromtimestamp(entry.stat().st_mtime, dt.UTC)
        runs.append(
            RunSummary(
                entry.name,
                entry,
                len(files) + len(journals),
                tables,
                tuple(damaged),
                dumps_found,
                modified,
                tuple(records),
            )
        )
    runs.sort(key=lambda r: (r.modified, r.run_id))
    return runs
