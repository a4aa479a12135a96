"""Real PostgreSQL, no mocks: local clusters made with initdb, databases on the machine's server."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.providers import (
    BINDIR_ENV,
    URL_ENV,
    DisposableDatabase,
    ProviderUnavailable,
    start_disposable,
)
from pytest_safe_cleanup.providers.local import LocalCluster
from pytest_safe_cleanup.providers.server import ServerDatabase, is_server_url, mask_url

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PROVIDERS_DIR = Path(__file__).resolve().parents[1] / "src" / "pytest_safe_cleanup" / "providers"


def _port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _roundtrip(db: DisposableDatabase, rows: int = 3) -> int:
    """Create a table, insert rows, count them: proves the database is usable."""
    engine = create_engine(db.url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE item (id serial PRIMARY KEY, name text NOT NULL)"))
            conn.execute(
                text("INSERT INTO item (name) VALUES (:name)"),
                [{"name": f"n{i}"} for i in range(rows)],
            )
        with engine.connect() as conn:
            count: int = conn.execute(text("SELECT count(*) FROM item")).scalar_one()
            assert conn.execute(text("SELECT current_database()")).scalar_one() == (
                make_url(db.url).database
            )
        return count
    finally:
        engine.dispose()


def _one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message, message


@pytest.fixture(scope="module")
def server_url() -> str:
    """The machine's PostgreSQL; skip when absent unless SAFE_CLEANUP_REQUIRE_POSTGRES=1."""
    url = os.environ.get(URL_ENV) or DEFAULT_SERVER
    engine = create_engine(
        make_url(url).set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        connect_args={"connect_timeout": 3},
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        reason = f"no PostgreSQL server at {mask_url(url)}: {str(exc).splitlines()[0]}"
        if os.environ.get("SAFE_CLEANUP_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def admin(server_url: str) -> Iterator[Engine]:
    engine = create_engine(
        make_url(server_url).set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
    )
    yield engine
    engine.dispose()


def _database_exists(admin: Engine, name: str) -> bool:
    with admin.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        return found.first() is not None


# --- local cluster -------------------------------------------------------------------


def test_local_cluster_roundtrip_and_cleanup() -> None:
    cluster = LocalCluster()
    started = time.perf_counter()
    db = cluster.start()
    try:
        print(f"LocalCluster.start: {time.perf_counter() - started:.2f}s")
        folder, port = cluster.folder, cluster.port
        assert folder is not None and folder.is_dir() and port is not None
        assert db.kind == "local"
        assert db.url == f"postgresql+psycopg://postgres@127.0.0.1:{port}/safe_cleanup"
        assert db.async_url == f"postgresql+asyncpg://postgres@127.0.0.1:{port}/safe_cleanup"
        where = re.escape(f"127.0.0.1:{port} in {folder}")
        assert re.fullmatch(
            rf"local cluster \(PostgreSQL [\d.]+\) on {where}(, run as \w+)?",
            db.detail,
        ), db.detail
        if os.geteuid() == 0:
            # PostgreSQL refuses root: the cluster must belong to an unprivileged user.
            assert (folder / "data").stat().st_uid != 0
            assert ", run as " in db.detail
        assert (folder / "server.log").is_file()
        assert _roundtrip(db) == 3
        asyncpg = pytest.importorskip("asyncpg")

        async def via_asyncpg() -> str:
            conn = await asyncpg.connect(db.async_url.replace("+asyncpg", "", 1))
            try:
                return str(await conn.fetchval("SELECT current_database()"))
            finally:
                await conn.close()

        assert asyncio.run(via_asyncpg()) == "safe_cleanup"
    finally:
        stopping = time.perf_counter()
        cluster.stop()
        print(f"LocalCluster.stop: {time.perf_counter() - stopping:.2f}s")
    assert not folder.exists()
    assert _port_refuses(port)
    assert cluster.folder is None
    cluster.stop()  # idempotent


def test_two_local_clusters_started_concurrently() -> None:
    clusters = [LocalCluster(), LocalCluster()]
    results: dict[int, DisposableDatabase | BaseException] = {}

    def run(index: int) -> None:
        try:
            results[index] = clusters[index].start()
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        dbs = [results[0], results[1]]
        assert all(isinstance(db, DisposableDatabase) for db in dbs), dbs
        ports = {make_url(db.url).port or 0 for db in dbs if isinstance(db, DisposableDatabase)}
        assert len(ports) == 2
        assert clusters[0].folder != clusters[1].folder
        for db in dbs:
            assert isinstance(db, DisposableDatabase)
            assert _roundtrip(db, rows=2) == 2  # separate clusters: no "table exists"
    finally:
        folders = [c.folder for c in clusters]
        for cluster in clusters:
            cluster.stop()
    assert not any(folder is not None and folder.exists() for folder in folders)
    assert all(_port_refuses(port) for port in ports)


def test_crashed_process_leaves_no_cluster_behind() -> None:
    script = (
        "from pytest_safe_cleanup.providers.local import LocalCluster\n"
        "c = LocalCluster(); c.start()\n"
        "print(c.folder, c.port, flush=True)\n"
        "raise RuntimeError('session crashed without calling stop')\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 1 and "session crashed" in child.stderr, child.stderr
    folder, port = child.stdout.split()
    assert not Path(folder).exists()  # atexit stopped the server and removed the folder
    assert _port_refuses(int(port))


def test_local_start_failure_leaves_nothing_behind() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = LocalCluster(port=port)
        with pytest.raises(ProviderUnavailable) as caught:
            cluster.start()
    message = str(caught.value)
    _one_line(message)
    assert "server.log:" in message and "Address already in use" in message
    found = re.search(r" in (\S+) on 127\.0\.0\.1", message)
    assert found, message
    assert not Path(found.group(1)).exists()
    assert cluster.folder is None
    cluster.stop()


def test_local_missing_binaries_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        LocalCluster(bindir=tmp_path).start()
    message = str(caught.value)
    _one_line(message)
    assert "install the PostgreSQL server binaries" in message and str(tmp_path) in message


# --- server ------------------------------------------------------------------------------


def test_server_database_created_and_dropped(server_url: str, admin: Engine) -> None:
    provider = ServerDatabase(server_url)
    db = provider.start()
    name = provider.name
    try:
        assert name is not None and re.fullmatch(r"sc_disposable_[0-9a-f]{12}", name)
        assert db.kind == "server"
        assert make_url(db.url).drivername == "postgresql+psycopg"
        assert make_url(db.url).database == name
        assert make_url(db.async_url).drivername == "postgresql+asyncpg"
        assert make_url(db.async_url).database == name
        password = make_url(server_url).password
        assert not password or str(password) not in db.detail
        assert _database_exists(admin, name)
        assert _roundtrip(db) == 3
        # A session still open at stop must not keep the database alive (WITH (FORCE)).
        lingering = create_engine(db.url, poolclass=NullPool).connect()
    finally:
        provider.stop()
    lingering.close()
    assert not _database_exists(admin, name)
    provider.stop()  # idempotent


def test_server_unreachable_is_one_masked_line() -> None:
    url = f"postgresql://someone:s3cret@127.0.0.1:{_closed_port()}/postgres"
    with pytest.raises(ProviderUnavailable) as caught:
        ServerDatabase(url).start()
    message = str(caught.value)
    _one_line(message)
    assert "s3cret" not in message and "***" in message
    assert f"someone:***@127.0.0.1:{make_url(url).port}" in message


def test_server_without_createdb_privilege(server_url: str, admin: Engine) -> None:
    role = f"sc_test_nocreatedb_{os.getpid()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD 'pw-secret'")
    try:
        url = make_url(server_url).set(username=role, password="pw-secret")
        with pytest.raises(ProviderUnavailable) as caught:
            ServerDatabase(url.render_as_string(hide_password=False)).start()
        message = str(caught.value)
        _one_line(message)
        assert "pw-secret" not in message
        assert "permission denied" in message
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")


def test_url_helpers() -> None:
    assert is_server_url("postgresql://h/db") and is_server_url("postgres://h/db")
    assert is_server_url("postgresql+asyncpg://h/db")
    assert not is_server_url("auto") and not is_server_url("mysql://h/db")
    assert mask_url("postgres://u:pw@h:1/db") == "postgresql://u:***@h:1/db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?password=sekrit",
        "postgres://u@h/db?PASSWORD=sekrit&sslmode=require",
        "postgresql+psycopg://u:sekrit@h/db?password=sekrit",
        "postgresql://u@h/db?sslpassword=sekrit",
    ],
)
def test_mask_url_hides_a_password_in_the_query_string(url: str) -> None:
    shown = mask_url(url)
    assert "sekrit" not in shown
    assert shown.startswith("postgresql") and "@h/db" in shown


def test_server_messages_hide_a_query_string_password() -> None:
    url = f"postgresql://someone@127.0.0.1:{_closed_port()}/postgres?password=s3cret"
    with pytest.raises(ProviderUnavailable) as caught:
        ServerDatabase(url).start()
    message = str(caught.value)
    _one_line(message)
    assert "s3cret" not in message and "someone@127.0.0.1" in message
    with pytest.raises(ProviderUnavailable) as caught:
        ServerDatabase("mysql://u@h/db?password=s3cret").start()
    assert "s3cret" not in str(caught.value)


def test_server_detail_hides_a_query_string_password(server_url: str, admin: Engine) -> None:
    given = make_url(server_url).update_query_dict({"password": "q-s3cret"})
    text = given.render_as_string(hide_password=False)
    db, provider, why = start_disposable(text, {})
    try:
        assert db.kind == "server"
        assert "q-s3cret" not in db.detail and "q-s3cret" not in why
        _one_line(db.detail)
    finally:
        provider.stop()
    assert not _database_exists(admin, str(make_url(db.url).database))


# --- start_disposable --------------------------------------------------------------------


def test_auto_prefers_a_local_cluster() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, BINDIR_ENV)}
    db, provider, why = start_disposable("auto", env)
    try:
        assert db.kind == "local" and provider.kind == "local"
        assert why.startswith("auto: local (docker: ")
        assert _roundtrip(db) == 3
    finally:
        provider.stop()


def test_auto_falls_back_to_the_server(tmp_path: Path, server_url: str, admin: Engine) -> None:
    env = {BINDIR_ENV: str(tmp_path), URL_ENV: server_url}
    db, provider, why = start_disposable("auto", env)
    name = make_url(db.url).database
    try:
        assert db.kind == "server" and name is not None
        _one_line(why)
        assert why.startswith("auto: server (docker: ") and "; local: no initdb" in why
        assert _roundtrip(db) == 3
    finally:
        provider.stop()
    assert not _database_exists(admin, name)


def test_url_setting_means_the_server(server_url: str, admin: Engine) -> None:
    db, provider, why = start_disposable(server_url, {})
    try:
        assert db.kind == "server" and why.startswith("server ")
    finally:
        provider.stop()
    assert not _database_exists(admin, str(make_url(db.url).database))


def test_nothing_available_is_one_line_naming_both_reasons(tmp_path: Path) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        start_disposable("auto", {BINDIR_ENV: str(tmp_path)})
    message = str(caught.value)
    _one_line(message)
    assert "local: no initdb" in message
    assert f"server: {URL_ENV} is not set" in message
    assert "install the PostgreSQL server binaries" in message and f"set {URL_ENV}" in message

    bad = f"postgresql://u:s3cret@127.0.0.1:{_closed_port()}/postgres"
    with pytest.raises(ProviderUnavailable) as caught:
        start_disposable("auto", {BINDIR_ENV: str(tmp_path), URL_ENV: bad})
    message = str(caught.value)
    _one_line(message)
    assert "local: no initdb" in message and "server: cannot create a database" in message
    assert "s3cret" not in message


def test_docker_and_unknown_settings() -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        start_disposable("docker", {"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert str(caught.value) == (
        "docker: no Docker engine answered at unix:///nonexistent.sock within 3 s (no such socket)"
    )
    with pytest.raises(ProviderUnavailable, match="unknown disposable PostgreSQL setting"):
        start_disposable("sqlite", {})


def test_providers_do_not_import_pytest() -> None:
    for module in PROVIDERS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] in ("pytest", "_pytest") for n in names), module
