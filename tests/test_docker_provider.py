"""The docker provider of disposable_postgres against a real Docker-compatible engine.

Tests that need an engine run where DOCKER_HOST is set and answers (CI brings one up with
ci/container-engine.sh); elsewhere they skip with the reason, and with
SAFE_CLEANUP_REQUIRE_DOCKER=1 the skip becomes a failure.  The image is
SAFE_CLEANUP_TEST_IMAGE (CI: localhost/postgres:15, built without a registry), else the
provider's default.  The fallback tests need no engine at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DISPOSABLE_PROJECT
from sqlalchemy import create_engine, text

from pytest_safe_cleanup.providers import (
    DEFAULT_IMAGE,
    IMAGE_ENV,
    ProviderUnavailable,
    start_disposable,
)
from pytest_safe_cleanup.providers.docker import DockerPostgres, probe_engine
from pytest_safe_cleanup.providers.local import find_bindir

IMAGE = os.environ.get("SAFE_CLEANUP_TEST_IMAGE", "").strip() or DEFAULT_IMAGE


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """DOCKER_HOST of an engine that answers; skip (or fail when required) otherwise."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    reason = probe_engine(os.environ) if host else "DOCKER_HOST is not set"
    if reason is not None:
        message = f"no Docker engine for the docker provider tests: {reason}"
        if os.environ.get("SAFE_CLEANUP_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{message} (SAFE_CLEANUP_REQUIRE_DOCKER=1)", pytrace=False)
        pytest.skip(message)
    return host


@pytest.fixture
def dead_socket(tmp_path: Path) -> str:
    """A DOCKER_HOST where nothing listens."""
    return f"unix://{tmp_path / 'nothing-listens.sock'}"


def _our_containers() -> set[str]:
    """Names of the provider's containers on the engine (running or not)."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        return {
            c.name
            for c in client.containers.list(all=True)
            if c.name.startswith("safe-cleanup-pg-")
        }
    finally:
        client.close()


def _container_exists(container_id: str) -> bool:
    import docker
    from docker.errors import NotFound

    client = docker.from_env(timeout=10)
    try:
        client.containers.get(container_id)
        return True
    except NotFound:
        return False
    finally:
        client.close()


def _unreachable(url: str) -> bool:
    engine = create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return False
    except Exception:
        return True
    finally:
        engine.dispose()


async def _async_count(url: str) -> int:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM widgets"))).scalar_one())
    finally:
        await engine.dispose()


def _major(version_text: str) -> int:
    match = re.search(r"(\d+)(?:\.\d+)?", version_text)
    assert match, version_text
    return int(match.group(1))


def test_real_container_rows_dump_and_removal(docker_engine: str, tmp_path: Path) -> None:
    provider = DockerPostgres(IMAGE)
    started = time.monotonic()
    database = provider.start()
    try:
        assert database.kind == "docker"
        assert database.url.startswith("postgresql+psycopg://")
        assert database.async_url.startswith("postgresql+asyncpg://")
        host_port = database.url.rsplit("@", 1)[1].split("/", 1)[0]
        assert f"from image {IMAGE} " in database.detail and host_port in database.detail
        container_id = provider.container_id
        assert container_id and _container_exists(container_id)

        engine = create_engine(database.url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE widgets (id serial PRIMARY KEY, name text)"))
                conn.execute(text("INSERT INTO widgets (name) VALUES ('a'), ('b'), ('ç')"))
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM widgets")).scalar_one() == 3
                # UTF8, not SQL_ASCII: drivers get str back, not bytes
                assert conn.execute(text("SHOW server_encoding")).scalar_one() == "UTF8"
                assert conn.execute(text("SELECT name FROM widgets WHERE id = 3")).scalar() == "ç"
        finally:
            engine.dispose()
        assert asyncio.run(_async_count(database.async_url)) == 3

        # pg_dump runs inside the container, whatever the host's pg_dump version.
        assert database.pg_dump is not None
        dump = database.pg_dump(tmp_path / "widgets.dump")
        assert dump == tmp_path / "widgets.dump"
        content = dump.read_bytes()
        assert content.startswith(b"PGDMP") and len(content) > 100
        assert not (tmp_path / "widgets.dump.partial").exists()
        pg_restore = shutil.which("pg_restore")
        server = provider.server_version or ""
        if pg_restore:
            host_version = subprocess.run(
                [pg_restore, "--version"], capture_output=True, text=True, check=True
            ).stdout
            if _major(host_version) >= _major(server):
                listing = subprocess.run(
                    [pg_restore, "--list", str(dump)], capture_output=True, text=True, check=True
                ).stdout
                assert re.search(r"TABLE DATA public widgets", listing), listing
        # a failing dump says why and leaves no file
        from pytest_safe_cleanup.providers.docker import ContainerDumpError

        with pytest.raises(ContainerDumpError, match=r"pg_dump in container .* exited with"):
            provider.exec_pg_dump(tmp_path / "bad.dump", extra_args=["--table=no_such_table"])
        assert not (tmp_path / "bad.dump").exists()
        assert not (tmp_path / "bad.dump.partial").exists()
    finally:
        provider.stop()
    assert time.monotonic() - started < 120
    assert not _container_exists(container_id)
    assert _unreachable(database.url)
    provider.stop()  # idempotent, never raises
    assert provider.container_id is None
    with pytest.raises(ContainerDumpError, match="not running"):
        provider.exec_pg_dump(tmp_path / "late.dump")


def test_image_that_cannot_be_had_is_one_line_and_leaves_nothing(docker_engine: str) -> None:
    before = _our_containers()
    image = "localhost/safe-cleanup-no-such-image:0"
    started = time.monotonic()
    # image= (from ini safe_cleanup_postgres_image) wins over SAFE_CLEANUP_POSTGRES_IMAGE
    env = {**os.environ, IMAGE_ENV: "localhost/safe-cleanup-other:0"}
    with pytest.raises(ProviderUnavailable) as caught:
        start_disposable("docker", env, image=image)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"docker: image {image} is not on the engine at {docker_engine}")
    assert "could not be pulled" in message and "safe_cleanup_postgres_image" in message
    # without image=, the variable names it
    with pytest.raises(ProviderUnavailable, match="image localhost/safe-cleanup-other:0 is not"):
        start_disposable("docker", env)
    assert time.monotonic() - started < 60
    assert _our_containers() == before


def test_auto_falls_back_to_local_when_no_engine_answers(dead_socket: str) -> None:
    try:
        find_bindir()
    except ProviderUnavailable as exc:
        pytest.skip(f"needs PostgreSQL server binaries for the local provider: {exc}")
    env = {**os.environ, "DOCKER_HOST": dead_socket}
    env.pop("SAFE_CLEANUP_PG_BINDIR", None)
    started = time.monotonic()
    database, provider, why = start_disposable("auto", env)
    try:
        elapsed = time.monotonic() - started
        assert database.kind == "local"
        assert why == (
            f"auto: local (docker: no Docker engine answered at {dead_socket} within 3 s "
            "(no such socket))"
        )
        assert elapsed < 15, elapsed  # the probe gives up after 3 s; the cluster takes ~2 s
        engine = create_engine(database.url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE t (id int)"))
                conn.execute(text("INSERT INTO t VALUES (1), (2)"))
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 2
        finally:
            engine.dispose()
    finally:
        provider.stop()


def test_engine_that_never_answers_costs_three_seconds(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(8)  # accepts connections, never answers
        env = {**os.environ, "DOCKER_HOST": f"unix://{path}"}
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as caught:
            start_disposable("docker", env)
        elapsed = time.monotonic() - started
    assert str(caught.value) == f"docker: no Docker engine answered at unix://{path} within 3 s"
    assert elapsed < 5, elapsed


def test_docker_setting_without_engine_or_package(
    dead_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "DOCKER_HOST": dead_socket}
    with pytest.raises(ProviderUnavailable) as caught:
        start_disposable("docker", env)
    assert str(caught.value) == (
        f"docker: no Docker engine answered at {dead_socket} within 3 s (no such socket)"
    )

    # Without the docker extra: a None entry makes every import of the package fail.
    for name in list(sys.modules):
        if name.split(".")[0] in ("testcontainers", "docker"):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "testcontainers", None)
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(ProviderUnavailable) as caught:
        start_disposable("docker", env)
    assert str(caught.value) == (
        "docker: testcontainers is not installed: install pytest-safe-cleanup[docker]"
    )
    assert probe_engine(env) == (
        "the docker SDK is not installed: install pytest-safe-cleanup[docker]"
    )


def test_default_image() -> None:
    assert DockerPostgres().image == DEFAULT_IMAGE == "postgres:16-alpine"


PROJECT = DISPOSABLE_PROJECT


def test_plugin_runs_on_a_docker_disposable_postgres(
    pytester: pytest.Pytester, docker_engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_engine)
    # The variable names an image no engine has: only the ini key (which wins over it)
    # lets the session start, so passing shows the ini image was the one used.
    monkeypatch.setenv(IMAGE_ENV, "localhost/safe-cleanup-no-such-image:0")
    before = _our_containers()
    pytester.makepyfile(test_notes=PROJECT)
    pytester.makeini(
        "[pytest]\nsafe_cleanup_backup = none\nsafe_cleanup_postgres = docker\n"
        f"safe_cleanup_postgres_image = {IMAGE}\n"
    )
    result = pytester.runpytest_subprocess("--safe-cleanup=apply", "-p", "no:asyncio")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"*disposable_postgres: container safe-cleanup-pg-* from image {IMAGE} "
            f"(PostgreSQL *) on *:* (docker {IMAGE} (requested))*",
        ]
    )
    seen = json.loads((pytester.path / "seen.json").read_text())
    assert seen["kind"] == "docker"
    # the cleanup really ran in the container: the 2 tagged rows went, the 2 kept stayed
    assert (pytester.path / "after.txt").read_text() == "2"
    # the container went with the session
    assert _our_containers() == before
    assert _unreachable(seen["url"])
