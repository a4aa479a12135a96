"""The ``pg_dump`` strategy: a whole-database dump, checked readable before any delete.

The password goes to ``pg_dump`` through ``PGPASSWORD`` and never on its command line,
where every user of the machine could read it in the process list. A dump that cannot
be made, is empty, or that ``pg_restore --list`` cannot read stops the deletion.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import URL

from ..target import (
    PASSWORD_QUERY_KEYS,
    SECRET_QUERY_KEYS,
    TargetError,
    mask_text,
    mask_url,
    parse_url,
)
from .format import BackupError
from .store import fsync_path, safe_name

_MISMATCH = re.compile(r"server version:\s*([\w.]+);\s*pg_dump version:\s*([\w.]+)")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(url: URL) -> tuple[str, str | None]:
    """A libpq connection string without any secret, and the login password apart.

    Only the login password is returned (for ``PGPASSWORD``). Other secrets, such as
    ``sslpassword`` (the client key's passphrase), have no environment variable in libpq
    and are left out rather than put on a command line every user can read.
    """
    parts: dict[str, str] = {}
    if url.host:
        parts["host"] = url.host
    if url.port:
        parts["port"] = str(url.port)
    if url.username:
        parts["user"] = url.username
    if url.database:
        parts["dbname"] = url.database
    password = url.password
    for key, value in url.query.items():
        text = ",".join(value) if isinstance(value, tuple) else value
        if key.lower() in PASSWORD_QUERY_KEYS:
            password = password or text
        elif key.lower() not in SECRET_QUERY_KEYS:
            parts[key] = text
    return " ".join(f"{k}={_quote(v)}" for k, v in parts.items()), (
        str(password) if password else None
    )


def _first_error(stderr: str, password: str | None) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()] or lines
    text = mask_text(errors[0] if errors else "no message")
    return text.replace(password, "***") if password else text


def _left_out(url: URL) -> str:
    """A hint for pg_dump's failure when the URL had secrets that pg_dump was not given."""
    keys = [k for k in url.query if k.lower() in SECRET_QUERY_KEYS - PASSWORD_QUERY_KEYS]
    if not keys:
        return ""
    return (
        f" (the URL's {', '.join(keys)} was not passed to pg_dump: libpq takes it only in the "
        "connection string, on the command line where every user could read it; use a client "
        "key without a passphrase or safe_cleanup_backup = rows)"
    )


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


def dump_database(url: str | URL, folder: Path) -> Path:
    """Dump the whole database (``pg_dump -Fc``) into a new 0600 file in ``folder``.

    Returns the dump's path once ``pg_restore --list`` has read it back.
    """
    try:
        parsed = parse_url(url)
    except TargetError as exc:
        raise BackupError(str(exc)) from None
    masked = mask_url(parsed)
    if parsed.get_backend_name() != "postgresql":
        raise BackupError(
            f"the pg_dump backup needs PostgreSQL, not {parsed.get_backend_name()} ({masked}): "
            "use safe_cleanup_backup = rows"
        )
    pg_dump = shutil.which("pg_dump")
    pg_restore = shutil.which("pg_restore")
    if pg_dump is None or pg_restore is None:
        missing = "pg_dump" if pg_dump is None else "pg_restore"
        raise BackupError(
            f"{missing} was not found on PATH, so {masked} cannot be dumped and nothing was "
            "deleted: install the PostgreSQL client of the server's major version (or newer), "
            "or use safe_cleanup_backup = rows"
        )
    info, password = conninfo(parsed)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    folder = Path(folder)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{safe_name(parsed.database or 'postgres')}-{stamp}.dump"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot create a dump file in {folder}: {exc.strerror or exc}") from None
    try:
        _dump(pg_dump, pg_restore, info, env, path, masked, password, _left_out(parsed))
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path


def _dump(
    pg_dump: str,
    pg_restore: str,
    info: str,
    env: dict[str, str],
    path: Path,
    masked: str,
    password: str | None,
    hint: str = "",
) -> None:
    done = _run([pg_dump, "-Fc", "--no-password", "-f", str(path), "-d", info], env)
    if done.returncode != 0:
        mismatch = _MISMATCH.search(done.stderr)
        if mismatch:
            server, client = mismatch.groups()
            raise BackupError(
                f"pg_dump {client} is older than the server of {masked} (PostgreSQL {server}): "
                f"install a PostgreSQL {server.split('.')[0]} client (or newer); nothing was "
                "deleted"
            )
        raise BackupError(
            f"pg_dump of {masked} failed (exit {done.returncode}): "
            f"{_first_error(done.stderr, password)}; nothing was deleted{hint}"
        )
    try:
        size = path.stat().st_size
        if size:
            fsync_path(path)
            fsync_path(path.parent)
    except OSError as exc:
        raise BackupError(f"cannot read the dump {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise BackupError(f"pg_dump of {masked} wrote an empty file; nothing was deleted")
    listed = _run([pg_restore, "--list", str(path)], env)
    if listed.returncode != 0 or not listed.stdout.strip():
        raise BackupError(
            f"the dump of {masked} is not readable by pg_restore --list: "
            f"{_first_error(listed.stderr, password)}; nothing was deleted"
        )
