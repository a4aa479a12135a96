"""Layer 4: rows backups written before a delete commits, pg_dump, and restore.

Nothing here imports pytest: the runner hands a :class:`BackupStore` the executor's
open connection, and the ``safe-cleanup`` command restores and lists backups.
"""

from __future__ import annotations

from .codec import CodecError, decode, encode
from .format import Backup, BackupError, BackupTable, read_backup
from .pg_dump import dump_database
from .restore import RestoreConflict, RestoreResult, restore, restore_backup
from .store import BackupInfo, BackupStore, RunSummary, list_runs

__all__ = [
    "Backup",
    "BackupError",
    "BackupInfo",
    "BackupStore",
    "BackupTable",
    "CodecError",
    "RestoreConflict",
    "RestoreResult",
    "RunSummary",
    "decode",
    "dump_database",
    "encode",
    "list_runs",
    "read_backup",
    "restore",
    "restore_backup",
]
