"""Disposable PostgreSQL in a container, through testcontainers and any Docker-compatible engine.

The container is started once per session and removed at its end (and at exit, should the
session die first).  ``testcontainers`` and the ``docker`` SDK come with the ``docker`` extra
and are imported only when this provider is used, so the package works without them.

The engine is whatever ``DOCKER_HOST`` names (default ``unix:///var/run/docker.sock``); it is
asked first with a short timeout so a stopped or missing engine costs seconds, not minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import secrets
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import URL

from pytest_safe_cleanup.providers import (
    DEFAULT_IMAGE,
    DisposableDatabase,
    Provider,
    ProviderUnavailable,
    one_line,
)
from pytest_safe_cleanup.target import first_line

__all__ = [
    "DATABASE",
    "DEFAULT_ENDPOINT",
    "ENGINE_TIMEOUT",
    "SUPERUSER",
    "ContainerDumpError",
    "DockerPostgres",
    "engine_endpoint",
    "probe_engine",
]

DATABASE = "safe_cleanup"
SUPERUSER = "postgres"
DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"
ENGINE_TIMEOUT = 3
"""Seconds the engine gets to answer before the provider counts it as absent."""

_INSTALL = "install pytest-safe-cleanup[docker]"
_PORT = 5432
_API_TIMEOUT = 60
_PULL_TIMEOUT = 600
_CONNECT_TIMEOUT = 30.0
_DUMP_MAGIC = b"PGDMP"
_SPEED_SETTINGS = (
    "-c",
    "fsync=off",
    "-c",
    "synchronous_commit=off",
    "-c",
    "full_page_writes=off",
)
_MAX_REASON = 300


class ContainerDumpError(RuntimeError):
    """pg_dump inside the container failed; the message is one line."""


def engine_endpoint(environ: Mapping[str, str]) -> str:
    """The engine address the Docker SDK will use with this environment."""
    return environ.get("DOCKER_HOST", "").strip() or DEFAULT_ENDPOINT


def _sdk_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment for docker.from_env, naming the engine explicitly.

    The SDK reads os.environ when handed an empty mapping; naming DOCKER_HOST keeps it
    on the engine this environment means.
    """
    return {**environ, "DOCKER_HOST": engine_endpoint(environ)}


def _root_cause(exc: BaseException) -> str:
    """Short, human reason from an SDK/requests exception chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileNotFoundError):
            return "no such socket"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, PermissionError):
            return "permission denied"
        if isinstance(current, TimeoutError):
            return "timed out"
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                nested = _root_cause(arg)
                if nested:
                    return nested
        current = current.__cause__ or current.__context__
    text = one_line(str(exc)) or type(exc).__name__
    lowered = text.lower()
    for needle, reason in (
        ("no such file", "no such socket"),
        ("connection refused", "connection refused"),
        ("permission denied", "permission denied"),
        ("timed out", "timed out"),
    ):
        if needle in lowered:
            return reason
    return ""


def _shorten(text: str) -> str:
    text = one_line(text)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _describe(exc: BaseException) -> str:
    """One line for an unexpected SDK/testcontainers error."""
    return _shorten(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _docker_sdk() -> Any:
    """The Docker SDK module (untyped; part of the docker extra)."""
    return importlib.import_module("docker")


def _connect_engine(environ: Mapping[str, str], timeout: int) -> tuple[Any, str | None]:
    """(client, None) when a Docker engine answers within ``timeout`` s, else (None, reason).

    Connecting runs in a daemon thread joined with the timeout, so even an endpoint that
    accepts connections and never answers cannot hold the session longer than that.
    """
    try:
        docker = _docker_sdk()
    except ImportError:
        return None, f"the docker SDK is not installed: {_INSTALL}"
    where = engine_endpoint(environ)
    outcome: list[tuple[Any, BaseException | None]] = []
    lock = threading.Lock()
    gave_up = threading.Event()

    def connect() -> None:
        client: Any = None
        try:
            # The SDK's own timeout is a second longer than the join below, so a silent
            # engine is always reported by the join, in the same words, not by a race.
            client = docker.from_env(timeout=timeout + 1, environment=_sdk_environment(environ))
            client.ping()
        except BaseException as exc:
            if client is not None:
                client.close()
            result: tuple[Any, BaseException | None] = (None, exc)
        else:
            result = (client, None)
        with lock:
            if gave_up.is_set():
                if result[0] is not None:
                    result[0].close()
                return
            outcome.append(result)

    thread = threading.Thread(target=connect, name="safe-cleanup-docker-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if not outcome:
            gave_up.set()
            return None, f"no Docker engine answered at {where} within {timeout} s"
        client, error = outcome[0]
    if error is None:
        return client, None
    cause = _root_cause(error) or _describe(error)
    return None, f"no Docker engine answered at {where} within {timeout} s ({cause})"


def probe_engine(environ: Mapping[str, str], timeout: int = ENGINE_TIMEOUT) -> str | None:
    """None when a Docker engine answers within ``timeout`` s, else the one-line reason."""
    client, reason = _connect_engine(environ, timeout)
    if client is not None:
        client.close()
    return reason


def _apply_testcontainers_settings(environ: Mapping[str, str]) -> None:
    """Honour TESTCONTAINERS_* given in ``environ`` even when not in os.environ.

    testcontainers reads its settings from os.environ once, at import; the provider may be
    handed another mapping (the plugin passes os.environ, where this changes nothing).
    """
    from testcontainers.core.config import ConnectionMode, testcontainers_config

    flags = ("yes", "true", "t", "y", "1")
    ryuk = environ.get("TESTCONTAINERS_RYUK_DISABLED")
    if ryuk is not None:
        testcontainers_config.ryuk_disabled = ryuk.strip().lower() in flags
    mode = environ.get("TESTCONTAINERS_CONNECTION_MODE", "").strip()
    if mode:
        try:
            testcontainers_config.connection_mode_override = ConnectionMode(mode)
        except ValueError as exc:
            choices = ", ".join(m.value for m in ConnectionMode)
            raise ProviderUnavailable(
                f"TESTCONTAINERS_CONNECTION_MODE={mode!r} is not one of {choices}"
            ) from exc


def _postgres_container_class() -> Any:
    """Return PostgresContainer from its newer home if there, without the move warning."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.postgres import PostgresContainer
    return PostgresContainer


class DockerPostgres(Provider):
    """PostgreSQL in a container from ``image`` on the engine named by ``environ``'s DOCKER_HOST.

    ``environ`` defaults to os.environ.  After start, ``container_id`` names the container and
    ``exec_pg_dump`` dumps the database with the container's own pg_dump (matching the
    server's version whatever the host has).
    """

    kind: str = "docker"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        *,
        environ: Mapping[str, str] | None = None,
        engine_timeout: int = ENGINE_TIMEOUT,
    ) -> None:
        self.image = image.strip() or DEFAULT_IMAGE
        self._environ = _sdk_environment(os.environ if environ is None else environ)
        self._engine_timeout = engine_timeout
        self._lock = threading.Lock()
        self._container: Any = None  # testcontainers PostgresContainer while running
        self._password = ""
        self._server_version: str | None = None
        self._registered = False

    @property
    def endpoint(self) -> str:
        """The engine this provider talks to."""
        return engine_endpoint(self._environ)

    @property
    def container_id(self) -> str | None:
        """Full id of the running container, None before start or after stop."""
        container = self._container
        if container is None or container._container is None:
            return None
        return str(container._container.id)

    @property
    def server_version(self) -> str | None:
        """PostgreSQL server_version once started (e.g. "16.4")."""
        return self._server_version

    def start(self) -> DisposableDatabase:
        """Start the container; ProviderUnavailable (one line), with nothing left, if we can't."""
        try:
            return self._start()
        except ProviderUnavailable:
            self.stop()
            raise
        except Exception as exc:
            self.stop()
            raise ProviderUnavailable(
                f"container from image {self.image} on {self.endpoint} did not start: "
                f"{_describe(exc)}"
            ) from exc
        except BaseException:
            self.stop()
            raise

    def _start(self) -> DisposableDatabase:
        try:
            _docker_sdk()
            container_class = _postgres_container_class()
        except ImportError as exc:
            raise ProviderUnavailable(f"testcontainers is not installed: {_INSTALL}") from exc
        try:
            import psycopg  # noqa: F401  (the URL we hand out uses it)
        except ImportError as exc:
            raise ProviderUnavailable(
                "install pytest-safe-cleanup[postgres] (psycopg) to use PostgreSQL"
            ) from exc

        client, reason = _connect_engine(self._environ, self._engine_timeout)
        if reason is not None:
            raise ProviderUnavailable(reason)
        try:
            _apply_testcontainers_settings(self._environ)
            client.api.timeout = _PULL_TIMEOUT
            self._ensure_image(client)
            api_version = str(client.api.api_version)
        finally:
            client.close()

        with self._lock:
            if self._container is not None:
                raise RuntimeError("DockerPostgres.start called twice without stop")
            self._password = secrets.token_hex(12)
            container = container_class(
                self.image,
                username=SUPERUSER,
                password=self._password,
                dbname=DATABASE,
                driver="psycopg",
                docker_client_kw={
                    "environment": self._environ,
                    "timeout": _API_TIMEOUT,
                    "version": api_version,  # saves asking again (slow on podman)
                },
            )
            container.with_name(f"safe-cleanup-pg-{secrets.token_hex(4)}")
            # A throwaway needs no durability (the official image's entrypoint honours both).
            container.with_env("POSTGRES_INITDB_ARGS", "--no-sync")
            container.with_command(["postgres", *_SPEED_SETTINGS])
            self._container = container
            if not self._registered:
                atexit.register(self.stop)
                self._registered = True
        container.start()

        host = str(container.get_container_host_ip())
        port = int(container.get_exposed_port(_PORT))
        url = URL.create(
            "postgresql+psycopg",
            username=SUPERUSER,
            password=self._password,
            host=host,
            port=port,
            database=DATABASE,
        )
        self._server_version = self._wait_for_host_connection(url)
        return DisposableDatabase(
            url=url.render_as_string(hide_password=False),
            async_url=url.set(drivername="postgresql+asyncpg").render_as_string(
                hide_password=False
            ),
            kind=self.kind,
            detail=(
                f"container {container._name} from image {self.image} "
                f"(PostgreSQL {self._server_version}) on {host}:{port}"
            ),
            pg_dump=self.exec_pg_dump,
        )

    def _ensure_image(self, client: Any) -> None:
        """Pull the image if the engine lacks it; one clear line when it cannot be had."""
        errors = importlib.import_module("docker.errors")
        docker_exception, image_not_found = errors.DockerException, errors.ImageNotFound
        try:
            client.images.get(self.image)
            return
        except image_not_found:
            pass
        error = ""
        try:
            for event in client.api.pull(self.image, stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    error = str(event["error"])
        except docker_exception as exc:
            error = _describe(exc)
        if not error:
            try:
                client.images.get(self.image)
                return
            except image_not_found:
                error = "the engine reported no error but has no such image"
        raise ProviderUnavailable(
            f"image {self.image} is not on the engine at {self.endpoint} and could not be "
            f"pulled: {_shorten(error)} - pull or build it, or set "
            "safe_cleanup_postgres_image to an image the engine has"
        )

    def _wait_for_host_connection(self, url: URL) -> str:
        """Connect from this side of the port mapping (it may lag the in-container check)."""
        import psycopg

        deadline = time.monotonic() + _CONNECT_TIMEOUT
        while True:
            try:
                with psycopg.connect(
                    host=url.host,
                    port=url.port,
                    user=url.username,
                    password=url.password,
                    dbname=url.database,
                    connect_timeout=5,
                ) as conn:
                    return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    first = first_line(exc)
                    raise ProviderUnavailable(
                        f"container from image {self.image} started but {url.host}:{url.port} "
                        f"refused connections for {_CONNECT_TIMEOUT:g} s: {first}"
                    ) from exc
                time.sleep(0.2)

    def exec_pg_dump(self, dest: str | os.PathLike[str], *, extra_args: Sequence[str] = ()) -> Path:
        """Run ``pg_dump -Fc`` inside the container and stream the archive into ``dest``.

        Uses the container's own pg_dump, so it works when the host's is older than the
        server.  Returns dest; raises ContainerDumpError (one line) on failure, leaving no
        partial file behind.
        """
        container = self._container
        container_id = self.container_id
        if container is None or container_id is None:
            raise ContainerDumpError("the docker provider's container is not running")
        api = container.get_docker_client().client.api
        command = ["pg_dump", "-Fc", "-U", SUPERUSER, "-d", DATABASE, *extra_args]
        target = Path(dest)
        partial = target.with_name(target.name + ".partial")
        errors = bytearray()
        try:
            exec_id = api.exec_create(
                container_id,
                command,
                stdout=True,
                stderr=True,
                environment={"PGPASSWORD": self._password},
            )
            with partial.open("wb") as out:
                for stdout, stderr in api.exec_start(exec_id, stream=True, demux=True):
                    if stdout:
                        out.write(stdout)
                    if stderr:
                        errors.extend(stderr)
            code = api.exec_inspect(exec_id).get("ExitCode")
        except ContainerDumpError:
            raise
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise ContainerDumpError(
                f"pg_dump in container {container._name} failed: {_describe(exc)}"
            ) from exc
        said = _shorten(errors.decode("utf-8", "replace"))
        if code != 0:
            partial.unlink(missing_ok=True)
            raise ContainerDumpError(
                f"pg_dump in container {container._name} exited with {code}: {said or '?'}"
            )
        with partial.open("rb") as check:
            magic = check.read(len(_DUMP_MAGIC))
        if magic != _DUMP_MAGIC:
            partial.unlink(missing_ok=True)
            raise ContainerDumpError(
                f"pg_dump in container {container._name} wrote no custom-format archive"
                + (f": {said}" if said else "")
            )
        partial.replace(target)
        return target

    def stop(self) -> None:
        """Remove the container (and its volumes); idempotent and never raises."""
        container: Any = None
        try:
            with self._lock:
                container, self._container = self._container, None
                self._server_version = None
                if self._registered:
                    atexit.unregister(self.stop)
                    self._registered = False
            if container is None:
                return
            try:
                wrapped = container._container
                if wrapped is not None:
                    with contextlib.suppress(Exception):
                        wrapped.kill()
                    wrapped.remove(force=True, v=True)
            finally:
                container.get_docker_client().client.close()
        except Exception as exc:
            with contextlib.suppress(Exception):  # -W error must not make stop raise
                name = getattr(container, "_name", None) or "?"
                warnings.warn(
                    f"could not remove disposable PostgreSQL container {name} "
                    f"on {self.endpoint}: {_describe(exc)}",
                    RuntimeWarning,
                    stacklevel=2,
                )
