"""What both benchmarks share: a private PostgreSQL cluster, the machine, medians.

Imported by ``teardown.py`` and ``suite.py`` (run as scripts, so this folder is on
``sys.path``). Nothing here measures; it only sets the stage and prints it.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from pytest_safe_cleanup.providers import ProviderUnavailable
from pytest_safe_cleanup.providers.local import LocalCluster, find_bindir

#: LocalCluster tunes its throwaway cluster for speed (fsync off); a benchmark of
#: what users pay needs the durable defaults back. ALTER SYSTEM wins over postgresql.conf.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@dataclass(frozen=True)
class Cluster:
    """A started LocalCluster: its URL, engine factory and where pg_dump lives."""

    url: str
    bindir: Path
    folder: Path | None
    settings: dict[str, str]
    version: str

    def engine(self, **kwargs: object) -> Engine:
        """A new engine on the cluster's database."""
        return create_engine(self.url, **kwargs)  # type: ignore[arg-type]

    def tool(self, name: str) -> str:
        """A client tool of the server's version (pg_dump): next to the real initdb first."""
        for folder in ((self.bindir / "initdb").resolve().parent, self.bindir):
            if os.access(folder / name, os.X_OK):
                return str(folder / name)
        found = shutil.which(name)
        if found is None:
            sys.exit(f"benchmark: no {name} next to {self.bindir / 'initdb'} or on PATH")
        return found

    def libpq(self) -> dict[str, str]:
        """Host, port, user and database for command-line tools."""
        url = make_url(self.url)
        return {
            "host": str(url.host),
            "port": str(url.port),
            "user": str(url.username),
            "dbname": str(url.database),
        }


@contextmanager
def local_cluster(durable: bool = True) -> Iterator[Cluster]:
    """Start a LocalCluster (fsync back on unless ``durable`` is False), stop it after."""
    provider = LocalCluster()
    try:
        database = provider.start()
    except ProviderUnavailable as exc:
        sys.exit(f"benchmark: no local PostgreSQL cluster: {exc}")
    try:
        url = database.url
        if durable:
            with psycopg.connect(_conninfo(url), autocommit=True) as conn:
                for name, value in DURABLE.items():
                    conn.execute(f"ALTER SYSTEM SET {name} = {value}")
                conn.execute("SELECT pg_reload_conf()")
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                shown = {
                    name: str(conn.execute(text(f"SHOW {name}")).scalar_one())
                    for name in (*DURABLE, "shared_buffers")
                }
                version = str(conn.execute(text("SHOW server_version")).scalar_one())
        finally:
            engine.dispose()
        yield Cluster(url, find_bindir(), provider.folder, shown, version)
    finally:
        provider.stop()


def _conninfo(url: str) -> str:
    parsed = make_url(url)
    return f"host={parsed.host} port={parsed.port} user={parsed.username} dbname={parsed.database}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory() -> str:
    """Total memory from /proc/meminfo, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def machine_lines(cluster: Cluster | None) -> list[str]:
    """What the numbers were measured on, and the command that measured them."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {memory()} RAM, "
        f"load average at start {load}",
        f"software: Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"psycopg {psycopg.__version__}, {platform.system()} {platform.release()}",
    ]
    if cluster is not None:
        settings = ", ".join(f"{k}={v}" for k, v in cluster.settings.items())
        lines.append(f"PostgreSQL {cluster.version} (LocalCluster on 127.0.0.1; {settings})")
    lines.append("command: " + shlex.join([sys.executable, *sys.argv]))
    return lines


def median_ms(seconds: list[float]) -> float:
    """Median of timings in seconds, as milliseconds."""
    return statistics.median(seconds) * 1000.0


def render(rows: list[list[str]], header: list[str], left: int = 1) -> str:
    """A plain text table: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
