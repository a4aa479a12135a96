"""What the plugin costs a whole test suite, timed as users run it.

    python benchmarks/suite.py                         # 500 database tests, 1,000 plain tests
    python benchmarks/suite.py --db-tests 100 --plain-tests 200 --runs 1   # a quick run

1. A generated suite of 500 tests, each inserting a small tenant (1 account, 2 users)
   into a private PostgreSQL (a LocalCluster started here, fsync on, passed with
   --safe-cleanup-url) and registering its cleanup with the safe_cleanup fixture,
   run with --safe-cleanup=off, dry and apply (median of 3 runs each).
2. A generated suite of 1,000 tests that use no database, run with the plugin
   installed and with -p no:safe_cleanup (median of 5 runs): the plugin's overhead
   on a suite that does not use it (target: under 2%).

Every run is ``sys.executable -m pytest -q -p no:cacheprovider`` in a subprocess,
timed with time.perf_counter around subprocess.run, after one untimed warm-up run
of each variant; variants are interleaved so drift hits them alike. Rows are counted
after each database run (apply must leave none; off and dry leave all).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import Cluster, local_cluster, machine_lines, render
from sqlalchemy import text

SCHEMA = '''\
"""Tables of the generated suite (created by benchmarks/suite.py before the runs)."""

from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, insert

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


def make_tenant(engine, tag):
    """One account and two users; the account's id."""
    with engine.begin() as conn:
        account = conn.execute(
            insert(accounts).values(name=f"tenant-{tag}").returning(accounts.c.id)
        ).scalar_one()
        conn.execute(
            insert(users),
            [{"account_id": account, "email": f"user{n}-{tag}@example.test"} for n in (1, 2)],
        )
    return account
'''

DB_TEST = """

def test_tenant_{n:04d}(safe_cleanup, safe_cleanup_engine):
    account = make_tenant(safe_cleanup_engine, safe_cleanup.tag)
    safe_cleanup.delete(users, account_id=account)
    safe_cleanup.delete(accounts, id=account)
    assert account > 0
"""

PLAIN_TEST = """

def test_plain_{n:04d}():
    values = list(range({n} % 7 + 3))
    assert sum(values) == len(values) * (len(values) - 1) // 2
"""

PER_FILE = 50
MODES = ("off", "dry", "apply")


def say(message: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def write_suite(folder: Path, tests: int, head: str, body: str) -> None:
    """``tests`` test functions in files of PER_FILE, plus a pytest.ini to fix the rootdir."""
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    for start in range(0, tests, PER_FILE):
        numbers = range(start, min(start + PER_FILE, tests))
        source = head + "".join(body.format(n=n) for n in numbers)
        (folder / f"test_generated_{start // PER_FILE:03d}.py").write_text(source)


def clean_env() -> dict[str, str]:
    """This process's environment without settings that would change what is measured."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAFE_CLEANUP_", "PYTEST_")) and k not in ("ENVIRONMENT", "CI")
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_pytest(folder: Path, args: list[str], expect: int) -> tuple[float, float]:
    """One timed ``pytest -q`` run in a subprocess: (wall, CPU) seconds; all must pass."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=folder,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    if done.returncode != 0 or f"{expect} passed" not in done.stdout:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"benchmark: {' '.join(args)} did not pass {expect} tests:\n{tail}")
    return elapsed, cpu


def db_suite(cluster: Cluster, folder: Path, tests: int, runs: int) -> dict[str, list[float]]:
    """Time the database suite in each mode, counting rows after every run."""
    sys.path.insert(0, str(folder))
    try:
        import bench_schema  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(folder))
    engine = cluster.engine()
    bench_schema.metadata.create_all(engine)

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE users, client_accounts RESTART IDENTITY"))

    def left() -> tuple[int, int]:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT (SELECT count(*) FROM client_accounts), (SELECT count(*) FROM users)")
            ).one()
        return int(row[0]), int(row[1])

    times: dict[str, list[float]] = defaultdict(list)
    try:
        for rnd in range(runs + 1):  # round 0 is the untimed warm-up
            shift = rnd % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                reset()
                args = [f"--safe-cleanup={mode}", f"--safe-cleanup-url={cluster.url}"]
                elapsed, cpu = run_pytest(folder, args, tests)
                expected = (0, 0) if mode == "apply" else (tests, 2 * tests)
                if left() != expected:
                    raise SystemExit(
                        f"benchmark: after --safe-cleanup={mode}, (accounts, users) = {left()}, "
                        f"expected {expected}"
                    )
                if rnd:
                    times[mode].append(elapsed)
                    times[f"{mode} cpu"].append(cpu)
                say(f"  {mode:5s} {elapsed:6.2f} s, cpu {cpu:5.2f} s{'' if rnd else ' (warm-up)'}")
    finally:
        engine.dispose()
    return times


def plain_suite(folder: Path, tests: int, runs: int) -> dict[str, list[float]]:
    """Time the no-database suite with the plugin installed and with it disabled."""
    variants = {"plugin installed": [], "-p no:safe_cleanup": ["-p", "no:safe_cleanup"]}
    names = list(variants)
    times: dict[str, list[float]] = defaultdict(list)
    for rnd in range(runs + 1):
        for name in names if rnd % 2 else names[::-1]:
            elapsed, cpu = run_pytest(folder, variants[name], tests)
            if rnd:
                times[name].append(elapsed)
                times[f"{name} cpu"].append(cpu)
            say(f"  {name:18s} {elapsed:6.2f} s, cpu {cpu:5.2f} s{'' if rnd else ' (warm-up)'}")
    return times


def import_cost(runs: int) -> float:
    """Median seconds to import the plugin module once pytest is imported."""
    code = (
        "import time, pytest; t = time.perf_counter(); import pytest_safe_cleanup.plugin; "
        "print(time.perf_counter() - t)"
    )
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        samples.append(float(out.strip()))
    return statistics.median(samples)


def identity_cost(url: str, rounds: int) -> dict[str, float]:
    """Microseconds per new connection and per statement, without and with the watch.

    The watch identifies every new DBAPI connection (one round-trip: the database reached
    and its stamp) and classifies every statement; interleaved rounds of ``rounds``
    connections and ``rounds * 20`` statements each, medians of 5.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from pytest_safe_cleanup.settings import resolve
    from pytest_safe_cleanup.watch import Guardian

    guardian = Guardian(resolve({}, {}, {}), environ={})
    fresh = create_engine(url, poolclass=NullPool)
    pooled = create_engine(url)
    samples: dict[str, list[float]] = defaultdict(list)
    try:
        for rnd in range(6):
            for watched in (False, True):
                if watched:
                    guardian.install()
                name = "watched" if watched else "bare"
                start = time.perf_counter()
                for _ in range(rounds):
                    with fresh.connect():
                        pass
                connect = (time.perf_counter() - start) / rounds * 1e6
                with pooled.connect() as conn:
                    query = text("SELECT 1")
                    start = time.perf_counter()
                    for _ in range(rounds * 20):
                        conn.execute(query)
                    statement = (time.perf_counter() - start) / (rounds * 20) * 1e6
                guardian.uninstall()
                pooled.dispose()  # the next round's first connection is new again
                if rnd:  # the first round warms up
                    samples[f"{name} connect"].append(connect)
                    samples[f"{name} statement"].append(statement)
    finally:
        guardian.uninstall()
        fresh.dispose()
        pooled.dispose()
    return {key: statistics.median(values) for key, values in samples.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-tests", type=int, default=500, help="tests of the database suite")
    parser.add_argument("--plain-tests", type=int, default=1000, help="tests of the plain suite")
    parser.add_argument("--db-runs", type=int, default=3, help="timed runs per mode (median)")
    parser.add_argument("--plain-runs", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--runs", type=int, help="set both --db-runs and --plain-runs")
    parser.add_argument(
        "--fsync-off", action="store_true", help="keep LocalCluster's fsync-off settings"
    )
    parser.add_argument(
        "--connections", type=int, default=200, help="new connections per identity round"
    )
    args = parser.parse_args(argv)
    if args.runs is not None:
        args.db_runs = args.plain_runs = args.runs
    if min(args.db_tests, args.plain_tests, args.db_runs, args.plain_runs) < 1:
        parser.error("test counts and runs must be 1 or more")
    return args


def compile_like_a_wheel() -> str:
    """Byte-compile the plugin's modules, as pip does when it installs a wheel.

    An editable install is compiled on first import, unless PYTHONDONTWRITEBYTECODE is
    set: then every run compiles the modules again, which is not what users pay.
    """
    import compileall

    import pytest_safe_cleanup

    folder = Path(pytest_safe_cleanup.__file__).parent
    compileall.compile_dir(str(folder), quiet=1)
    return "the plugin's modules were byte-compiled first, as a wheel install does"


def main(argv: list[str] | None = None) -> int:
    """Generate both suites, time them, print the tables."""
    args = parse_args(argv)
    started = time.perf_counter()
    compiled = compile_like_a_wheel()
    with (
        local_cluster(durable=not args.fsync_off) as cluster,
        tempfile.TemporaryDirectory(prefix="safe-cleanup-suite-") as tmp,
    ):
        header = [*machine_lines(cluster), compiled]
        db_folder, plain_folder = Path(tmp) / "db_suite", Path(tmp) / "plain_suite"
        head = "from bench_schema import accounts, make_tenant, users\n"
        write_suite(db_folder, args.db_tests, head, DB_TEST)
        (db_folder / "bench_schema.py").write_text(SCHEMA)
        write_suite(plain_folder, args.plain_tests, "", PLAIN_TEST)
        say(f"database suite: {args.db_tests} tests, {args.db_runs} timed runs per mode")
        db = db_suite(cluster, db_folder, args.db_tests, args.db_runs)
        say(f"plain suite: {args.plain_tests} tests, {args.plain_runs} timed runs per variant")
        plain = plain_suite(plain_folder, args.plain_tests, args.plain_runs)
        say("per-connection identity check ...")
        identity = identity_cost(cluster.url, args.connections)
    say("import cost of the plugin module ...")
    imported = import_cost(5)

    rows = []

    def add(suite: str, label: str, times: dict[str, list[float]], key: str, base: str) -> None:
        wall, cpu = statistics.median(times[key]), statistics.median(times[f"{key} cpu"])
        base_wall, base_cpu = (
            statistics.median(times[base]),
            statistics.median(times[f"{base} cpu"]),
        )
        tests = int(suite.split()[0])
        rows.append(
            [
                suite,
                label,
                f"{wall:.2f}",
                f"{min(times[key]):.2f}",
                f"{max(times[key]):.2f}",
                f"{wall / base_wall:.3f}x",
                f"{(wall - base_wall) / tests * 1000:+.2f}",
                f"{cpu:.2f}",
                f"{cpu / base_cpu:.3f}x",
            ]
        )

    for mode in MODES:
        add(f"{args.db_tests} db tests", f"--safe-cleanup={mode}", db, mode, "off")
    for name in ("-p no:safe_cleanup", "plugin installed"):
        add(f"{args.plain_tests} no-db tests", name, plain, name, "-p no:safe_cleanup")
    base = statistics.median(plain["-p no:safe_cleanup"])
    overhead = (statistics.median(plain["plugin installed"]) / base - 1) * 100
    base_cpu = statistics.median(plain["-p no:safe_cleanup cpu"])
    cpu_overhead = (statistics.median(plain["plugin installed cpu"]) / base_cpu - 1) * 100

    print("\n".join(header))
    print(
        f"`{Path(sys.executable).name} -m pytest -q -p no:cacheprovider` per run: wall and CPU "
        f"(user+sys) time, medians of {args.db_runs} (db) and {args.plain_runs} (no-db) runs "
        "after a warm-up; ratio and ms/test against the first line of each suite\n"
    )
    print(
        render(
            rows,
            [
                "suite",
                "run with",
                "wall s",
                "min",
                "max",
                "ratio",
                "ms/test",
                "cpu s",
                "cpu ratio",
            ],
            left=2,
        )
    )
    print(
        f"\nno-db suite overhead with the plugin installed: {overhead:+.1f}% "
        f"(target under 2%: {'ok' if overhead < 2 else 'MISSED'}); in CPU time {cpu_overhead:+.1f}%"
    )
    print(
        f"importing pytest_safe_cleanup.plugin after pytest: {imported * 1000:.0f} ms "
        "(median of 5, part of that overhead)"
    )
    connect_extra = identity["watched connect"] - identity["bare connect"]
    statement_extra = identity["watched statement"] - identity["bare statement"]
    print(
        f"new connection: {identity['bare connect']:.0f} us bare, "
        f"{identity['watched connect']:.0f} us watched ({connect_extra:+.0f} us for the identity "
        f"check, {identity['watched connect'] / identity['bare connect']:.2f}x); "
        f"a statement on an open connection: {identity['bare statement']:.1f} us bare, "
        f"{identity['watched statement']:.1f} us watched ({statement_extra:+.1f} us)"
    )
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
