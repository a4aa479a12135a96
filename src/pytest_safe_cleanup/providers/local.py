"""Disposable PostgreSQL cluster made with the machine's own ``initdb``/``pg_ctl``.

Needs no server, no Docker and no credentials: a private cluster in a temporary
folder, on a free port of 127.0.0.1, tuned for speed over durability, deleted on
stop.  PostgreSQL refuses to run as root, so under root (CI) the cluster runs as
the ``postgres`` (else ``nobody``) user without needing sudo.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL

from pytest_safe_cleanup.providers import (
    BINDIR_ENV,
    DisposableDatabase,
    Provider,
    ProviderUnavailable,
    one_line,
)
from pytest_safe_cleanup.target import first_line

__all__ = ["DATABASE", "SUPERUSER", "LocalCluster", "find_bindir"]

DATABASE = "safe_cleanup"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

_NEEDED = ("initdb", "pg_ctl", "postgres")
_INSTALL = (
    "install the PostgreSQL server binaries (initdb, pg_ctl, postgres; "
    "e.g. apt-get install postgresql)"
)
_PORT_TRIES = 5
_LOG_LINES = 6
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ")
# Unix sockets paths are limited to 107 bytes; keep room for "/.s.PGSQL.NNNNN.lock".
_MAX_BASE = 60
_PORT_CLASH = re.compile(r"Address already in use|could not bind IPv4", re.IGNORECASE)
# A throwaway needs no durability: these make initdb-to-first-query much faster.
_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


@dataclass(frozen=True)
class _RunAs:
    """Unprivileged account to run PostgreSQL as when we are root."""

    name: str
    uid: int
    gid: int


def _version_key(folder: Path) -> tuple[int, ...]:
    """Order /usr/lib/postgresql/<version>/bin so 16 beats 9.6."""
    try:
        return tuple(int(part) for part in folder.parent.name.split("."))
    except ValueError:
        return (-1,)


def _complete(folder: Path) -> bool:
    """Whether folder holds every server binary we run."""
    return all(os.access(folder / name, os.X_OK) for name in _NEEDED)


def find_bindir(bindir: str | os.PathLike[str] | None = None, path: str | None = None) -> Path:
    """Folder with initdb/pg_ctl/postgres: ``bindir`` only if given, else PATH, pg_config, Debian.

    ``path`` is the PATH to search (None: this process's).  Debian and Ubuntu keep the
    server binaries off PATH in /usr/lib/postgresql/<version>/bin, hence the fallbacks.
    """
    if bindir is not None:
        if _complete(Path(bindir)):
            return Path(bindir)
        raise ProviderUnavailable(
            f"no {', '.join(_NEEDED)} in {os.fspath(bindir)} (from {BINDIR_ENV}): "
            f"{_INSTALL} or point {BINDIR_ENV} at their folder"
        )
    candidates: list[Path] = []
    initdb = shutil.which("initdb", path=path)
    if initdb:
        candidates.append(Path(initdb).parent)
    pg_config = shutil.which("pg_config", path=path)
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates.extend(debian[:1])
    for folder in candidates:
        if _complete(folder):
            return folder
    raise ProviderUnavailable(
        f"no PostgreSQL server binaries ({', '.join(_NEEDED)}) on PATH, in pg_config --bindir "
        f"or /usr/lib/postgresql/*/bin: {_INSTALL}"
    )


def _run_as() -> _RunAs | None:
    """Who runs initdb/pg_ctl: ourselves, or under root an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return _RunAs(name, entry.pw_uid, entry.pw_gid)
    raise ProviderUnavailable(
        "PostgreSQL refuses to run as root and there is no 'postgres' or 'nobody' user "
        "to run it as: create a 'postgres' system user or run the tests as a normal user"
    )


def _traversable(folder: Path, who: _RunAs) -> bool:
    """Whether ``who`` may pass through folder and all its parents (plain mode bits)."""
    for part in (folder, *folder.parents):
        try:
            st = part.stat()
        except OSError:
            return False
        if st.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == who.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _base_folder(who: _RunAs | None) -> Path:
    """Where to make the cluster folder: TMPDIR if usable by ``who`` and short, else /tmp."""
    for base in (Path(tempfile.gettempdir()).resolve(), Path("/tmp")):
        if len(os.fsencode(base)) <= _MAX_BASE and (who is None or _traversable(base, who)):
            return base
    user = who.name if who else "this user"
    raise ProviderUnavailable(
        f"no temporary folder that {user} can reach with a short enough path: "
        "set TMPDIR to a short world-traversable folder"
    )


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read(path: Path, start: int = 0) -> str:
    """Text of a log from byte ``start`` ("" if unreadable)."""
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            content = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return content


def _tail(content: str, lines: int = _LOG_LINES) -> str:
    """Last non-empty log lines without their timestamp prefix, joined on one line."""
    kept = [_LOG_PREFIX.sub("", line.strip()) for line in content.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _size(path: Path) -> int:
    """Return the size of path, 0 if it does not exist yet."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _postmaster_pid(data: Path) -> int | None:
    """PID in postmaster.pid if that process is still our postmaster."""
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        # The postmaster chdirs into its data folder: a reused PID would not be there.
        with contextlib.suppress(OSError):
            if Path(os.readlink(proc / "cwd")) != data.resolve():
                return None
    return pid


def _kill_postmaster(data: Path) -> None:
    """Last resort when pg_ctl could not stop it: SIGQUIT, then SIGKILL."""
    for sig, wait in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        pid = _postmaster_pid(data)
        if pid is None:
            return
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(0.05)


class LocalCluster(Provider):
    """A private PostgreSQL cluster in ``safe-cleanup-pg-*`` under the temporary folder.

    ``bindir`` forces the binaries' folder (nothing else is searched), ``path`` is the
    PATH to search, ``port`` fixes the port (no retry on a clash; default: a free one).
    """

    kind: str = "local"

    def __init__(
        self,
        *,
        bindir: str | os.PathLike[str] | None = None,
        path: str | None = None,
        port: int | None = None,
    ) -> None:
        self._bindir_setting = bindir
        self._path = path
        self._fixed_port = port
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._port: int | None = None
        self._bindir: Path | None = None
        self._run_as: _RunAs | None = None

    @property
    def folder(self) -> Path | None:
        """Temporary folder holding data, socket and server.log; None when stopped."""
        return self._folder

    @property
    def port(self) -> int | None:
        """TCP port on 127.0.0.1 once started."""
        return self._port

    def _run(
        self, args: list[str], folder: Path, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the cluster's owner, with no PG* variables leaking in."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"  # English messages: the port-clash check reads them
        who = self._run_as
        if who is not None:
            env.update(USER=who.name, LOGNAME=who.name, HOME=str(folder))
        return subprocess.run(
            args,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=who.uid if who else None,
            group=who.gid if who else None,
            extra_groups=[] if who else None,
        )

    def _tool(self, name: str) -> str:
        if self._bindir is None:
            raise ProviderUnavailable("local: the PostgreSQL binaries were not located")
        return str(self._bindir / name)

    def start(self) -> DisposableDatabase:
        """Make, start and fill the cluster; on any failure remove it all and raise."""
        try:
            import psycopg  # noqa: F401  (checked before making anything)
        except ImportError as exc:
            raise ProviderUnavailable(
                "install pytest-safe-cleanup[postgres] (psycopg) to use a local cluster"
            ) from exc
        bindir = find_bindir(self._bindir_setting, self._path)
        who = _run_as()
        base = _base_folder(who)
        with self._lock:
            if self._folder is not None:
                raise RuntimeError("LocalCluster.start called twice without stop")
            folder = Path(tempfile.mkdtemp(prefix="safe-cleanup-pg-", dir=base))
            self._folder, self._bindir, self._run_as = folder, bindir, who
            atexit.register(self.stop)
        try:
            return self._start(folder, who)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise ProviderUnavailable(f"{Path(str(exc.cmd[0])).name} timed out") from exc
        except BaseException:
            self.stop()
            raise

    def _start(self, folder: Path, who: _RunAs | None) -> DisposableDatabase:
        if who is not None:
            os.chown(folder, who.uid, who.gid)
        folder.chmod(0o700)
        data = folder / "data"
        log = folder / "server.log"

        version_out = self._run([self._tool("postgres"), "--version"], folder, timeout=30).stdout
        match = re.search(r"\(PostgreSQL\)\s+(\S+)", version_out)
        version = match.group(1) if match else "unknown version"

        initdb = self._run(
            [
                self._tool("initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            folder,
            timeout=120,
        )
        if initdb.returncode != 0:
            output = one_line(initdb.stderr or initdb.stdout)
            raise ProviderUnavailable(f"initdb failed in {folder}: {output}")

        settings = {
            **_SETTINGS,
            "unix_socket_directories": "'{}'".format(str(folder).replace("'", "''")),
        }
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# pytest-safe-cleanup: throwaway cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

        port = self._start_server(folder, data, log)
        self._create_database(port, log)
        url = URL.create(
            "postgresql+psycopg", username=SUPERUSER, host=HOST, port=port, database=DATABASE
        )
        owner = f", run as {who.name}" if who else ""
        return DisposableDatabase(
            url=url.render_as_string(hide_password=False),
            async_url=url.set(drivername="postgresql+asyncpg").render_as_string(
                hide_password=False
            ),
            kind=self.kind,
            detail=f"local cluster (PostgreSQL {version}) on {HOST}:{port} in {folder}{owner}",
        )

    def _start_server(self, folder: Path, data: Path, log: Path) -> int:
        """pg_ctl start on a free port, retrying with another port if it got taken."""
        tries = 1 if self._fixed_port is not None else _PORT_TRIES
        for attempt in range(1, tries + 1):
            port = self._fixed_port or _free_port()
            offset = _size(log)
            result = self._run(
                [
                    self._tool("pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    f"-p {port}",
                ],
                folder,
                timeout=90,
            )
            if result.returncode == 0:
                self._port = port
                return port
            _kill_postmaster(data)  # pg_ctl may give up on a postmaster still starting
            new_log = _read(log, offset)
            tail = _tail(new_log)
            if attempt < tries and _PORT_CLASH.search(new_log):
                continue
            said = one_line(result.stderr or result.stdout)
            raise ProviderUnavailable(
                f"pg_ctl could not start the cluster in {folder} on {HOST}:{port}: {said}"
                + (f" | server.log: {tail}" if tail else "")
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_database(self, port: int, log: Path) -> None:
        """CREATE DATABASE safe_cleanup, so tests never touch the maintenance database."""
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(
                host=HOST,
                port=port,
                user=SUPERUSER,
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            ) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        except psycopg.Error as exc:
            first = first_line(exc)
            tail = _tail(_read(log))
            raise ProviderUnavailable(
                f"could not create database {DATABASE} on {HOST}:{port}: {first}"
                + (f" | server.log: {tail}" if tail else "")
            ) from exc

    def stop(self) -> None:
        """Stop the server (pg_ctl -m immediate, else kill) and delete the folder; never raises."""
        with contextlib.suppress(Exception):
            with self._lock:
                folder, self._folder = self._folder, None
                self._port = None
                atexit.unregister(self.stop)
            if folder is None:
                return
            data = folder / "data"
            try:
                if (data / "postmaster.pid").exists():
                    with contextlib.suppress(Exception):
                        pg_ctl = self._tool("pg_ctl")
                        args = [pg_ctl, "stop", "-D", str(data), "-m", "immediate", "-w"]
                        self._run(args, folder, timeout=30)
                _kill_postmaster(data)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
