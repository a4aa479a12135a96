"""Throwaway PostgreSQL databases for the ``disposable_postgres`` fixture.

A provider makes a database nobody else uses, so tests may clean it up for real,
and removes every trace of it afterwards.  The modules here never import pytest:
the plugin decides when to start and stop, they only know how.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BINDIR_ENV",
    "URL_ENV",
    "DisposableDatabase",
    "Provider",
    "ProviderUnavailable",
    "start_disposable",
]

URL_ENV = "SAFE_CLEANUP_POSTGRES_URL"
"""Server that ``auto`` falls back to when no local cluster can be made."""

BINDIR_ENV = "SAFE_CLEANUP_PG_BINDIR"
"""Folder holding ``initdb``/``pg_ctl``; when set, the local provider looks nowhere else."""

_DOCKER_UNAVAILABLE = (
    "the docker provider is not available in this version; use local or a server URL"
)
_WHAT_TO_DO = (
    "install the PostgreSQL server binaries (initdb, pg_ctl) "
    f"or set {URL_ENV} to a server where you may CREATE DATABASE"
)


@dataclass(frozen=True)
class DisposableDatabase:
    """Where the throwaway database is, in the forms tests and the report need."""

    url: str
    async_url: str
    kind: str
    detail: str


class ProviderUnavailable(Exception):
    """One-line reason this provider cannot run here (says what to install or set)."""


class Provider(Protocol):
    """What the plugin needs from a provider: start once, stop any number of times."""

    kind: str

    def start(self) -> DisposableDatabase:
        """Make the database; raise ProviderUnavailable, leaving nothing behind, if it can't."""
        ...

    def stop(self) -> None:
        """Remove everything start made; idempotent and never raises."""
        ...


def one_line(text: str) -> str:
    """Squash a multi-line message so report headers and errors stay one line."""
    return " | ".join(part.strip() for part in text.splitlines() if part.strip())


def _start(provider: Provider) -> DisposableDatabase:
    """Start, making sure a half-started provider is torn down on any failure."""
    try:
        return provider.start()
    except BaseException:
        provider.stop()
        raise


def start_disposable(
    setting: str, environ: Mapping[str, str]
) -> tuple[DisposableDatabase, Provider, str]:
    """Start the provider chosen by ``setting`` ("auto" | "local" | "docker" | a server URL).

    Returns the database, the provider to stop later and a why-line for the report
    header.  ``auto`` tries a local cluster, then the server in SAFE_CLEANUP_POSTGRES_URL;
    when nothing works the ProviderUnavailable message is one line naming every reason.
    """
    from pytest_safe_cleanup.providers.local import LocalCluster
    from pytest_safe_cleanup.providers.server import ServerDatabase, is_server_url, mask_url

    choice = setting.strip()
    if choice == "docker":
        raise ProviderUnavailable(_DOCKER_UNAVAILABLE)
    if choice == "local":
        local = LocalCluster(bindir=environ.get(BINDIR_ENV) or None, path=environ.get("PATH"))
        try:
            return _start(local), local, "local (requested)"
        except ProviderUnavailable as exc:
            raise ProviderUnavailable(f"local: {one_line(str(exc))}") from exc
    if is_server_url(choice):
        server = ServerDatabase(choice)
        try:
            return _start(server), server, f"server {mask_url(choice)} (requested)"
        except ProviderUnavailable as exc:
            raise ProviderUnavailable(f"server: {one_line(str(exc))}") from exc
    if choice != "auto":
        raise ProviderUnavailable(
            f"unknown disposable PostgreSQL setting {mask_url(choice)!r}: "
            "use auto, local, docker or a postgresql:// server URL"
        )

    reasons: list[str] = []
    local = LocalCluster(bindir=environ.get(BINDIR_ENV) or None, path=environ.get("PATH"))
    try:
        return _start(local), local, "auto: local (docker: not available yet)"
    except ProviderUnavailable as exc:
        reasons.append(f"local: {one_line(str(exc))}")

    server_url = environ.get(URL_ENV, "").strip()
    if not server_url:
        reasons.append(f"server: {URL_ENV} is not set")
    else:
        server = ServerDatabase(server_url)
        try:
            database = _start(server)
        except ProviderUnavailable as exc:
            reasons.append(f"server: {one_line(str(exc))}")
        else:
            tried = "; ".join(reasons)
            return database, server, f"auto: server ({tried}; docker: not available yet)"

    raise ProviderUnavailable(f"no disposable PostgreSQL: {'; '.join(reasons)} - {_WHAT_TO_DO}")
