"""Disposable database on an existing PostgreSQL server: CREATE DATABASE, later DROP it.

For machines without server binaries but with a server the tests may use (CI
services, a developer's own instance).  The database gets a random name so
concurrent runs against the same server never share or drop each other's data.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import threading
import warnings

from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup.providers import DisposableDatabase, Provider, ProviderUnavailable
from pytest_safe_cleanup.target import first_line
from pytest_safe_cleanup.target import mask_url as target_mask_url

__all__ = ["NAME_PREFIX", "ServerDatabase", "is_server_url", "mask_url"]

NAME_PREFIX = "sc_disposable_"
_SCHEMES = ("postgresql", "postgres")


def is_server_url(value: str) -> bool:
    """Tell a server URL setting apart from the provider names."""
    scheme = value.split("://", 1)[0] if "://" in value else ""
    return scheme.split("+", 1)[0].lower() in _SCHEMES


def _parse(value: str) -> URL:
    """Parse a postgresql URL, accepting the ``postgres://`` spelling SQLAlchemy rejects."""
    scheme, sep, rest = value.partition("://")
    if sep and scheme.split("+", 1)[0].lower() == "postgres":
        value = "postgresql" + scheme[len("postgres") :] + sep + rest
    return make_url(value)


def mask_url(value: str) -> str:
    """Render a URL string without its password (userinfo or query string), for messages."""
    try:
        return target_mask_url(_parse(value))
    except (ArgumentError, ValueError):
        return "<unparsable URL>"


class ServerDatabase(Provider):
    """A fresh ``sc_disposable_<hex>`` database on the server named by ``url``."""

    kind: str = "server"

    def __init__(self, url: str) -> None:
        self._given = url
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._name: str | None = None
        self._registered = False

    @property
    def name(self) -> str | None:
        """Name of the database created by start, None before start or after stop."""
        return self._name

    def start(self) -> DisposableDatabase:
        """Create the database; ProviderUnavailable (one line, password masked) if we can't."""
        try:
            import psycopg  # noqa: F401  (only checking it is installed)
        except ImportError as exc:
            raise ProviderUnavailable(
                "install pytest-safe-cleanup[postgres] (psycopg) to use a PostgreSQL server"
            ) from exc
        try:
            given = _parse(self._given)
        except (ArgumentError, ValueError) as exc:
            raise ProviderUnavailable(
                f"not a usable database URL: {mask_url(self._given)}"
            ) from exc
        if given.get_backend_name() != "postgresql":
            raise ProviderUnavailable(f"not a PostgreSQL URL: {mask_url(self._given)}")

        admin = given.set(drivername="postgresql+psycopg")
        masked = target_mask_url(admin)
        name = NAME_PREFIX + secrets.token_hex(6)
        with self._lock:
            if self._name is not None:
                raise RuntimeError("ServerDatabase.start called twice without stop")
            engine = create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            quoted = engine.dialect.identifier_preparer.quote(name)
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
            except SQLAlchemyError as exc:
                engine.dispose()
                raise ProviderUnavailable(
                    f"cannot create a database on {masked}: {first_line(exc)}"
                ) from exc
            self._engine, self._name = engine, name
            if not self._registered:
                atexit.register(self.stop)
                self._registered = True

        url = admin.set(database=name)
        return DisposableDatabase(
            url=url.render_as_string(hide_password=False),
            async_url=url.set(drivername="postgresql+asyncpg").render_as_string(
                hide_password=False
            ),
            kind=self.kind,
            detail=f"database {name} on server {target_mask_url(url)}",
        )

    def stop(self) -> None:
        """Drop the database (forcing other sessions off) and dispose the engine; never raises."""
        name: str | None = None
        try:
            with self._lock:
                engine, name = self._engine, self._name
                self._engine = self._name = None
                if self._registered:
                    atexit.unregister(self.stop)
                    self._registered = False
            if engine is None or name is None:
                return
            try:
                self._drop(engine, name)
            finally:
                engine.dispose()
        except Exception as exc:
            with contextlib.suppress(Exception):  # -W error must not make stop raise
                warnings.warn(
                    f"could not drop disposable database {name} on "
                    f"{mask_url(self._given)}: {first_line(exc)}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    @staticmethod
    def _drop(engine: Engine, name: str) -> None:
        """DROP ... WITH (FORCE), falling back to terminating sessions on PostgreSQL < 13."""
        quoted = engine.dialect.identifier_preparer.quote(name)
        with engine.connect() as conn:
            if conn.dialect.server_version_info and conn.dialect.server_version_info >= (13,):
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
                return
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
