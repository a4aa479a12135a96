"""The database's own environment record, read at every evaluation.

On PostgreSQL the stamp is a database-level setting (``ALTER DATABASE ... SET
safe_cleanup.environment``), read from the catalog so that it holds for connections
opened before it was written and does not travel with a data dump. Elsewhere it is a
one-row table that cleanup never touches.
"""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.engine import Connection

SETTING = "safe_cleanup.environment"
STAMP_TABLE = "safe_cleanup_stamp"
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class StampError(ValueError):
    """A stamp that cannot be written as asked."""


def validate(environment: str) -> str:
    """Lower-case and check an environment name for a stamp."""
    name = environment.strip().lower()
    if not _VALID.match(name):
        raise StampError(
            f"invalid environment name {environment!r}: use letters, digits, '_', '-' or '.'"
        )
    return name


def read_stamp(conn: Connection) -> str | None:
    """The stamp of the connected database, or None when it carries none."""
    backend = conn.dialect.name
    if backend == "postgresql":
        row = conn.exec_driver_sql(
            "SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s "
            "JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase "
            "WHERE d.datname = current_database() AND s.setrole = 0"
        ).first()
        for item in row[0] if row and row[0] else []:
            key, _, value = str(item).partition("=")
            if key == SETTING and value.strip():
                return value.strip().lower()
        return None
    if not conn.dialect.has_table(conn, STAMP_TABLE):
        return None
    rows = conn.execute(text(f"SELECT environment FROM {STAMP_TABLE}")).scalars().all()
    # The command keeps one row; a hand-edited table with several is read as all of
    # them together, so a blocked row among them still blocks.
    values = sorted({str(r).strip().lower() for r in rows if r is not None and str(r).strip()})
    return ",".join(values) if values else None


def write_stamp(conn: Connection, environment: str) -> None:
    """Stamp the connected database; the caller commits."""
    name = validate(environment)
    backend = conn.dialect.name
    if backend == "postgresql":
        database = conn.exec_driver_sql("SELECT current_database()").scalar_one()
        quoted = conn.dialect.identifier_preparer.quote(str(database))
        # ALTER DATABASE takes no bind parameters; the value is validated above.
        conn.exec_driver_sql(f"ALTER DATABASE {quoted} SET {SETTING} = '{name}'")
        return
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {STAMP_TABLE} (environment VARCHAR(64) NOT NULL)"
    )
    conn.exec_driver_sql(f"DELETE FROM {STAMP_TABLE}")
    conn.execute(text(f"INSERT INTO {STAMP_TABLE} (environment) VALUES (:e)"), {"e": name})
