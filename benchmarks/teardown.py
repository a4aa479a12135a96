"""What one teardown costs: a ~1,100-row tenant beside 10k, 100k and 1M unrelated rows.

    python benchmarks/teardown.py                      # sizes 10k, 100k, 1M; 15 repetitions
    python benchmarks/teardown.py --sizes 10000 --repeat 5   # a quick run
    python benchmarks/teardown.py --profile            # and where one apply teardown spends

Starts its own PostgreSQL (LocalCluster, with fsync, synchronous_commit and
full_page_writes turned back on), loads background accounts, users and assets, and
for each size times four ways of removing one tenant (1 account, 100 users, 1,000
assets), re-created before every measured teardown:

    bare DELETE   one transaction: delete assets, users, account; commit
    document      pg_dump -Fc of the whole database, SELECT count(*) per table,
                  then one autocommit DELETE per table
    plugin dry    SafeCleanup registrations -> Conductor.finish in mode dry
    plugin apply  the same in mode apply, with the default rows backup
    contract floor  apply's steps written by hand in raw psycopg, nothing else: one
                  count, DELETE ... RETURNING per table (rows as the server's text), a
                  file created on a helper thread meanwhile, written, fsynced, read back,
                  renamed, its folder fsynced, commit, an audit line fsynced on the thread

The plugin is driven through its stable entry points (settings.resolve, runner.Guardian
and Conductor, plan.SafeCleanup and RegistrationBook, backup.BackupStore), so this
measures whatever the code does today. Every teardown's result is checked.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import itertools
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from _common import Cluster, local_cluster, machine_lines, median_ms, render
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from pytest_safe_cleanup import runner
from pytest_safe_cleanup.backup import BackupStore
from pytest_safe_cleanup.plan import RegistrationBook, SafeCleanup
from pytest_safe_cleanup.report import Outcome, Report
from pytest_safe_cleanup.settings import resolve

TENANT_USERS = 100
TENANT_ASSETS = 1000
TENANT_ROWS = 1 + TENANT_USERS + TENANT_ASSETS
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)

metadata = MetaData()
accounts = Table(
    "client_accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(120), nullable=False),
)
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("client_accounts.id"), nullable=False, index=True),
    Column("email", String(200), nullable=False),
)
assets = Table(
    "assets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("client_accounts.id"), nullable=False, index=True),
    Column("owner_id", ForeignKey("users.id"), index=True),
    Column("name", String(200), nullable=False),
)
EXPECTED = {"assets": TENANT_ASSETS, "users": TENANT_USERS, "client_accounts": 1}
APPROACHES = ("bare DELETE", "document", "plugin dry", "plugin apply", "contract floor")


class BenchmarkError(RuntimeError):
    """A teardown did not do what it should: the numbers would mean nothing."""


def say(message: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def tenant_conditions(account: int) -> list[tuple[Table, ColumnElement[bool]]]:
    """The tenant's rows per table, children first."""
    return [
        (assets, assets.c.account_id == account),
        (users, users.c.account_id == account),
        (accounts, accounts.c.id == account),
    ]


class PluginRig:
    """The objects the pytest plugin builds for a session, in one mode."""

    def __init__(self, mode: str, engine: Engine, guardian: runner.Guardian, backups: Path) -> None:
        self.mode = mode
        self.engine = engine
        self.guardian = guardian
        self.settings = resolve(cli={"safe_cleanup": mode}, env={}, ini={})
        run_id = f"bench-{mode}"
        self.report = Report(self.settings.mode, run_id, self.settings.source("mode"))
        self.store = BackupStore(backups, run_id)
        self.conductor = runner.Conductor(
            self.settings,
            guardian,
            self.report,
            interactive=False,
            prompt=None,
            store=self.store,
        )
        self.resolvers: dict[int, Any] = {}
        self.numbers = itertools.count(1)

    def teardown(self, account: int) -> list[Outcome]:
        """One test's registrations and its teardown, as the safe_cleanup fixture runs them."""
        n = next(self.numbers)
        nodeid = f"tests/test_tenants.py::test_tenant_{self.mode}_{n}"
        self.guardian.on_use = lambda t: self.report.use_target(t.key)
        book = RegistrationBook(self.resolvers, self.guardian.watch)
        cleanup = SafeCleanup(
            self.engine,
            book=book,
            tag=f"bench-{self.mode}-{n}",
            context=lambda: (nodeid, frozenset()),
        )
        cleanup.delete(assets, account_id=account)
        cleanup.delete(users, account_id=account)
        cleanup.delete(accounts, id=account)
        before = len(self.report.cleanups)
        errors = self.conductor.finish(book.drain(), runner.TestContext(nodeid=nodeid))
        if errors:
            raise BenchmarkError("; ".join(errors))
        return self.report.cleanups[before:]


class Bench:
    """The database, the four approaches, and the checks after each teardown."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.engine = cluster.engine()
        self.autocommit = cluster.engine(isolation_level="AUTOCOMMIT")
        self.dump_file = workdir / "whole-database.dump"
        self.pg_dump = cluster.tool("pg_dump")
        self.tool_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.statements = 0
        self.loaded = 0
        self.tenants = itertools.count(1)
        self._trace_path: Path | None = None
        for engine in (self.engine, self.autocommit):
            event.listen(engine, "before_cursor_execute", self._count)
        event.listen(self.engine, "checkout", self._checkout)
        event.listen(self.engine, "checkin", self._checkin)
        metadata.create_all(self.engine)
        # One Guardian for the session, installed on every engine as the plugin does.
        apply_settings = resolve(cli={"safe_cleanup": "apply"}, env={}, ini={})
        self.guardian = runner.Guardian(apply_settings, environ={})
        self.guardian.install()
        # The contract floor's own connection and helper thread (no SQLAlchemy, no plugin).
        db = cluster.libpq()
        self.raw = psycopg.connect(
            f"host={db['host']} port={db['port']} user={db['user']} dbname={db['dbname']}"
        )
        self.helper = ThreadPoolExecutor(1)
        self.floor_dir = workdir / "floor"
        self.floor_dir.mkdir(mode=0o700)
        self.floor_files = 0
        self.rigs = {
            "plugin dry": PluginRig("dry", self.engine, self.guardian, workdir / "backups"),
            "plugin apply": PluginRig("apply", self.engine, self.guardian, workdir / "backups"),
        }
        self.guardian.on_verdict = self._verdict

    def _verdict(self, target: Any, verdict: Any) -> None:
        for rig in self.rigs.values():
            rig.report.add_target(target.key, runner.target_info(target, verdict))

    def close(self) -> None:
        """Stop watching and release connections."""
        self.helper.shutdown()
        self.raw.close()
        self.guardian.uninstall()
        self.engine.dispose()
        self.autocommit.dispose()

    # -- statements and round-trips -------------------------------------------
    def _count(self, *_: object) -> None:
        self.statements += 1

    def _checkout(self, dbapi_conn: Any, *_: object) -> None:
        if self._trace_path is not None:
            from psycopg import pq

            with self._trace_path.open("ab") as handle:
                dbapi_conn.pgconn.trace(os.dup(handle.fileno()))
            dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def _checkin(self, dbapi_conn: Any, *_: object) -> None:
        if dbapi_conn is not None and self._trace_path is not None:
            dbapi_conn.pgconn.untrace()

    @contextmanager
    def wire(self) -> Iterator[list[str]]:
        """Messages that start a round-trip (Query, or Sync closing Parse/Bind/Execute)."""
        path = self.workdir / "libpq.trace"
        path.write_bytes(b"")
        self._trace_path = path
        trips: list[str] = []
        try:
            yield trips
        finally:
            self._trace_path = None
        pending = ""
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) < 3 or fields[0] != "F":
                continue
            kind = fields[2]
            detail = fields[3].strip() if len(fields) > 3 else ""
            if kind == "Query":
                trips.append(detail.strip('"').split()[0] if detail else "Query")
            elif kind == "Parse":
                found = re.match(r'"[^"]*" "(\w+)', detail)  # statement name, then its SQL
                pending = found.group(1) if found else "?"
            elif kind == "Sync":
                trips.append(pending or "Sync")
                pending = ""

    # -- data ------------------------------------------------------------------
    def load(self, size: int) -> float:
        """Grow the background to ``size`` rows (users + assets); return the seconds taken."""
        add = size - self.loaded
        if add <= 0:
            return 0.0
        started = time.perf_counter()
        n_users = max(1, add // 11)
        n_assets = add - n_users
        n_accounts = max(1, add // TENANT_ROWS)
        with self.engine.begin() as conn:
            # Consistent by construction: skip the per-row foreign-key triggers while loading.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            a_lo = _insert_range(
                conn,
                "INSERT INTO client_accounts (name) "
                "SELECT 'background-' || g FROM generate_series(1, :n) AS g",
                n=n_accounts,
            )
            u_lo = _insert_range(
                conn,
                "INSERT INTO users (account_id, email) "
                "SELECT :a_lo + g % :n_accounts, 'bg' || g || '@example.test' "
                "FROM generate_series(1, :n) AS g",
                n=n_users,
                a_lo=a_lo,
                n_accounts=n_accounts,
            )
            _insert_range(
                conn,
                "INSERT INTO assets (account_id, owner_id, name) "
                "SELECT :a_lo + g % :n_accounts, :u_lo + g % :n_users, 'bg-asset-' || g "
                "FROM generate_series(1, :n) AS g",
                n=n_assets,
                a_lo=a_lo,
                n_accounts=n_accounts,
                u_lo=u_lo,
                n_users=n_users,
            )
        self.loaded = size
        self.vacuum()
        return time.perf_counter() - started

    def vacuum(self) -> None:
        """VACUUM ANALYZE the three tables (untimed), so every round starts alike."""
        with self.autocommit.connect() as conn:
            conn.execute(text("VACUUM ANALYZE client_accounts, users, assets"))

    def background_rows(self) -> int:
        """Rows of users and assets, all accounts included."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM assets)")
                ).scalar_one()
            )

    def create_tenant(self) -> int:
        """One account with 100 users and 1,000 assets owned by them; its id."""
        name = f"tenant-{next(self.tenants)}"
        with self.engine.begin() as conn:
            account = conn.execute(
                insert(accounts).values(name=name).returning(accounts.c.id)
            ).scalar_one()
            lo, hi = conn.execute(
                text(
                    "WITH ins AS (INSERT INTO users (account_id, email) "
                    "SELECT :account, 'user' || g || '-' || :name || '@example.test' "
                    "FROM generate_series(1, :n) AS g RETURNING id) "
                    "SELECT min(id), max(id) FROM ins"
                ),
                {"account": account, "name": name, "n": TENANT_USERS},
            ).one()
            if hi - lo + 1 != TENANT_USERS:
                raise BenchmarkError(f"tenant user ids are not contiguous: {lo}..{hi}")
            conn.execute(
                text(
                    "INSERT INTO assets (account_id, owner_id, name) "
                    "SELECT :account, :lo + g % :users, 'asset' || g || '-' || :name "
                    "FROM generate_series(0, :n - 1) AS g"
                ),
                {
                    "account": account,
                    "lo": lo,
                    "users": TENANT_USERS,
                    "name": name,
                    "n": TENANT_ASSETS,
                },
            )
        return int(account)

    def tenant_rows(self, account: int) -> dict[str, int]:
        """What is left of a tenant, per table (untimed check)."""
        with self.autocommit.connect() as conn:
            return {
                table.name: int(
                    conn.execute(select(func.count()).select_from(table).where(cond)).scalar_one()
                )
                for table, cond in tenant_conditions(account)
            }

    # -- the four approaches --------------------------------------------------
    def bare(self, account: int) -> None:
        """One transaction: delete assets, users, account; commit."""
        with self.engine.begin() as conn:
            for table, cond in tenant_conditions(account):
                conn.execute(delete(table).where(cond))

    def document(self, account: int) -> None:
        """Whole-database pg_dump -Fc, a count(*) per table, then autocommit deletes."""
        db = self.cluster.libpq()
        subprocess.run(
            [
                self.pg_dump,
                "-Fc",
                "-h",
                db["host"],
                "-p",
                db["port"],
                "-U",
                db["user"],
                "-f",
                str(self.dump_file),
                db["dbname"],
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.tool_env,
        )
        with self.autocommit.connect() as conn:
            for table, cond in tenant_conditions(account):
                conn.execute(select(func.count()).select_from(table).where(cond)).scalar_one()
            for table, cond in tenant_conditions(account):
                conn.execute(delete(table).where(cond))

    def dry(self, account: int) -> list[Outcome]:
        """The plugin in mode dry."""
        return self.rigs["plugin dry"].teardown(account)

    def apply(self, account: int) -> list[Outcome]:
        """The plugin in mode apply (rows backup)."""
        return self.rigs["plugin apply"].teardown(account)

    def floor(self, account: int) -> Path:
        """Apply's steps by hand on a raw psycopg connection: what no implementation beats."""
        from psycopg.types.string import TextLoader

        conn = self.raw
        self.floor_files += 1
        final = self.floor_dir / f"{self.floor_files:05d}.jsonl"
        partial = final.with_name(f".{final.name}.partial")
        conditions = [
            ("assets", "account_id = %(a)s"),
            ("users", "account_id = %(a)s"),
            ("client_accounts", "id = %(a)s"),
        ]
        params = {"a": account}
        with conn.cursor() as cur:
            counted = cur.execute(
                "SELECT "
                + ", ".join(f"(SELECT count(*) FROM {t} WHERE {c})" for t, c in conditions),
                params,
            ).fetchone()
            if counted is None or sum(counted) > 10_000:
                raise BenchmarkError(f"floor counted {counted}")
            created = self.helper.submit(
                os.open, partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
            lines = []
            for (table, condition), n in zip(conditions, counted, strict=True):
                cur.execute(f"DELETE FROM {table} WHERE {condition} RETURNING *", params)
                for oid in {d[1] for d in cur.description or ()}:
                    cur.adapters.register_loader(oid, TextLoader)
                rows = cur.fetchall()
                if len(rows) != n:
                    raise BenchmarkError(f"floor deleted {len(rows)} of {n} {table} rows")
                lines.append(json.dumps({"rows": rows}, separators=(",", ":")).encode() + b"\n")
        data = b"".join(lines)
        data += json.dumps({"sha256": hashlib.sha256(data).hexdigest()}).encode() + b"\n"
        fd = created.result()
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        if partial.read_bytes() != data:
            raise BenchmarkError("floor read back a different file")
        os.rename(partial, final)
        folder = os.open(self.floor_dir, os.O_RDONLY)
        os.fsync(folder)
        os.close(folder)
        conn.commit()
        audit = os.open(self.floor_dir / "audit", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(audit, json.dumps({"account": account, "backup": str(final)}).encode() + b"\n")
        self.helper.submit(_fsync_close, audit)
        return final

    def approaches(self) -> dict[str, Callable[[int], object]]:
        """Name -> teardown of one tenant."""
        return {
            "bare DELETE": self.bare,
            "document": self.document,
            "plugin dry": self.dry,
            "plugin apply": self.apply,
            "contract floor": self.floor,
        }

    # -- checks -----------------------------------------------------------------
    def check(self, name: str, account: int, result: object) -> None:
        """Raise unless the teardown did exactly what it should."""
        left = self.tenant_rows(account)
        if name == "plugin dry":
            outcomes = _outcomes(result)
            got = {o.table: o.counted for o in outcomes}
            if {o.status for o in outcomes} != {"dry"} or got != EXPECTED:
                raise BenchmarkError(f"dry counted {got} ({outcomes}), expected {EXPECTED}")
            if left != EXPECTED:
                raise BenchmarkError(f"dry changed rows: {left} left, expected {EXPECTED}")
            self.bare(account)  # untimed: dry leaves the tenant in place
            left = self.tenant_rows(account)
        elif name == "plugin apply":
            outcomes = _outcomes(result)
            got = {o.table: o.deleted for o in outcomes}
            if {o.status for o in outcomes} != {"deleted"} or got != EXPECTED:
                raise BenchmarkError(f"apply deleted {got} ({outcomes}), expected {EXPECTED}")
            backups = {o.backup for o in outcomes}
            if len(backups) != 1 or None in backups or not Path(str(backups.pop())).is_file():
                raise BenchmarkError(f"apply wrote no backup file: {outcomes}")
        elif name == "contract floor" and not Path(str(result)).is_file():
            raise BenchmarkError(f"the floor wrote no backup file: {result!r}")
        elif name == "document" and not self.dump_file.stat().st_size:
            raise BenchmarkError("pg_dump wrote an empty file")
        if any(left.values()):
            raise BenchmarkError(f"{name} left rows behind: {left}")


def _fsync_close(fd: int) -> None:
    os.fsync(fd)
    os.close(fd)


def _outcomes(result: object) -> list[Outcome]:
    if not isinstance(result, list) or not all(isinstance(o, Outcome) for o in result):
        raise BenchmarkError(f"expected the teardown's outcomes, got {result!r}")
    return result


def _insert_range(conn: Any, sql: str, **params: int) -> int:
    """Run an INSERT ... SELECT; return the first id (ids must be contiguous)."""
    lo, hi, n = conn.execute(
        text(f"WITH ins AS ({sql} RETURNING id) SELECT min(id), max(id), count(*) FROM ins"),
        params,
    ).one()
    if hi - lo + 1 != n:
        raise BenchmarkError(f"ids not contiguous while loading: {lo}..{hi} for {n} rows")
    return int(lo)


def measure(
    bench: Bench, repeat: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Time every approach ``repeat`` times, interleaved, after ``warmup`` untimed rounds."""
    times: dict[str, list[float]] = defaultdict(list)
    statements: dict[str, list[int]] = defaultdict(list)
    approaches = bench.approaches()
    names = list(approaches)
    for rnd in range(warmup + repeat):
        bench.vacuum()
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:  # rotate, so no approach is always first
            account = bench.create_tenant()
            sent = bench.statements
            started = time.perf_counter()
            result = approaches[name](account)
            elapsed = time.perf_counter() - started
            sent = bench.statements - sent
            bench.check(name, account, result)
            if rnd >= warmup:
                times[name].append(elapsed)
                statements[name].append(sent)
    return times, statements


def profile_apply(bench: Bench, teardowns: int, top: int) -> list[str]:
    """CProfile over a few apply teardowns: top entries by cumulative and by own time."""
    profiler = cProfile.Profile()
    for _ in range(teardowns):
        account = bench.create_tenant()
        profiler.enable()
        result = bench.apply(account)
        profiler.disable()
        bench.check("plugin apply", account, result)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    mine = os.path.dirname(os.path.abspath(__file__))

    def table(column: int, title: str) -> list[str]:
        lines = [f"{'cum ms':>8} {'own ms':>8} {'calls':>6}  {title}"]
        ranked = sorted(stats.items(), key=lambda item: item[1][column], reverse=True)
        for (filename, lineno, function), (_, calls, own, cum, _) in ranked:
            if filename.startswith(mine) or "cProfile" in filename or function == "disable":
                continue  # the benchmark's own frames
            lines.append(
                f"{cum * 1000 / teardowns:8.2f} {own * 1000 / teardowns:8.2f} "
                f"{calls // teardowns:6d}  {_short(filename)}:{lineno}({function})"
            )
            if len(lines) > top:
                break
        return lines

    return [
        *table(3, f"top {top} by cumulative time, per teardown (mean of {teardowns})"),
        "",
        *table(2, f"top {top} by own time"),
    ]


def _short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "benchmarks/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="background rows (users + assets), comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=15, help="measured teardowns per approach and size"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first, per size (default 1)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile apply teardowns at the largest size (cProfile, top 10 cumulative)",
    )
    parser.add_argument(
        "--fsync-off",
        action="store_true",
        help="keep LocalCluster's throwaway settings (fsync off) instead of durable ones",
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes takes whole numbers separated by commas, not {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 100:
        parser.error("--sizes: give at least one size of 100 rows or more")
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    args = parse_args(argv)
    started = time.perf_counter()
    rows: list[list[str]] = []
    medians: dict[tuple[int, str], float] = {}
    counts: dict[tuple[int, str], int] = {}
    wire: dict[int, dict[str, list[str]]] = {}
    profile: list[str] = []
    with (
        local_cluster(durable=not args.fsync_off) as cluster,
        tempfile.TemporaryDirectory(prefix="safe-cleanup-bench-") as tmp,
    ):
        header = machine_lines(cluster)
        bench = Bench(cluster, Path(tmp))
        try:
            # The engine's first connection reads the stamp: the verdict, once per session.
            sent = bench.statements
            bench.guardian.check(bench.engine)
            verdict_statements = bench.statements - sent
            for size in args.sizes:
                say(f"loading background to {size:,} rows ...")
                seconds = bench.load(size)
                say(f"  loaded in {seconds:.1f} s ({bench.background_rows():,} rows); measuring")
                times, statements = measure(bench, args.repeat, args.warmup)
                for name in APPROACHES:
                    medians[size, name] = median_ms(times[name])
                    counts[size, name] = int(statistics.median(statements[name]))
                bare = medians[size, "bare DELETE"]
                for name in APPROACHES:
                    ms = times[name]
                    rows.append(
                        [
                            f"{size:,}",
                            name,
                            f"{medians[size, name]:.1f}",
                            f"{min(ms) * 1000:.1f}",
                            f"{max(ms) * 1000:.1f}",
                            f"{medians[size, name] / bare:.2f}x",
                        ]
                    )
                wire[size] = {}
                for name, fn in (("plugin dry", bench.dry), ("plugin apply", bench.apply)):
                    account = bench.create_tenant()
                    with bench.wire() as trips:
                        result = fn(account)
                    bench.check(name, account, result)
                    wire[size][name] = trips
            if args.profile:
                say(f"profiling apply at {args.sizes[-1]:,} rows ...")
                profile = profile_apply(bench, teardowns=5, top=10)
        finally:
            bench.close()

    out = print
    out("\n".join(header))
    out(
        f"tenant: 1 account + {TENANT_USERS} users + {TENANT_ASSETS:,} assets = "
        f"{TENANT_ROWS:,} rows; background = other accounts' users + assets in the same "
        "tables (foreign keys indexed)"
    )
    out(f"medians of {args.repeat} teardowns per cell ({args.warmup} untimed round first)\n")
    out(render(rows, ["size", "approach", "median ms", "min", "max", "x bare"], left=2))
    small, large = args.sizes[0], args.sizes[-1]
    apply_growth = medians[large, "plugin apply"] / medians[small, "plugin apply"]
    if large != small:
        out(
            f"\nplugin apply at {large:,} / at {small:,}: {apply_growth:.2f}x "
            f"({medians[large, 'plugin apply']:.1f} ms / {medians[small, 'plugin apply']:.1f} ms)"
        )
    out("\nstatements per teardown (before_cursor_execute on the engine, median):")
    for size in args.sizes:
        parts = ", ".join(f"{name} {counts[size, name]}" for name in APPROACHES[:-1])
        out(f"  {size:,}: {parts} (document also runs pg_dump; the floor is not on the engine)")
    out(f"  once per session, the verdict at the engine's first connection: {verdict_statements}")
    out("round-trips on the wire per teardown (libpq trace: Query or Sync messages):")
    for size in args.sizes:
        for name, trips in wire[size].items():
            out(f"  {size:,} {name}: {len(trips)} ({', '.join(trips)})")

    worst = max(medians[s, "plugin apply"] / medians[s, "bare DELETE"] for s in args.sizes)
    floor = max(medians[s, "contract floor"] / medians[s, "bare DELETE"] for s in args.sizes)
    over = ", ".join(
        f"{s:,} {medians[s, 'plugin apply'] - medians[s, 'contract floor']:+.1f} ms"
        for s in args.sizes
    )
    dry_statements = max(counts[s, "plugin dry"] for s in args.sizes)
    out("\ntargets:")
    out(
        f"  apply within 1.5x of bare DELETE at every size: worst {worst:.2f}x "
        f"{'ok' if worst <= 1.5 else 'MISSED'}"
    )
    out(
        f"    (the contract's steps by hand, nothing else: worst {floor:.2f}x; "
        f"plugin apply over that floor: {over})"
    )
    if large != small:
        out(
            f"  apply at {large:,} within 1.25x of {small:,}: {apply_growth:.2f}x "
            f"{'ok' if apply_growth <= 1.25 else 'MISSED'}"
        )
    out(
        f"  dry sends 1 statement per teardown: {dry_statements} "
        f"{'ok' if dry_statements == 1 else 'MISSED'}"
    )
    if profile:
        out(f"\nwhere one apply teardown spends its time ({large:,} rows, cProfile, cumulative):")
        out("\n".join(profile))
    out(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
