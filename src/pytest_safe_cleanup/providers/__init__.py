"""Throwaway PostgreSQL databases for the ``disposable_postgres`` fixture.

A provider makes a database nobody else uses, so tests may clean it up for real,
and removes every trace of it afterwards.  The modules here never import pytest:
the plugin decides when to start and stop, they only know how.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "BINDIR_ENV",
    "DEFAULT_IMAGE",
    "IMAGE_ENV",
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

IMAGE_ENV = "SAFE_CLEANUP_POSTGRES_IMAGE"
"""Image of the docker provider when the caller passes none (ini safe_cleanup_postgres_image)."""

DEFAULT_IMAGE = "postgres:16-alpine"

_WHAT_TO_DO = (
    "start a Docker engine (and install pytest-safe-cleanup[docker]), "
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
    pg_dump: Callable[[str | os.PathLike[str]], Path] | None = field(
        default=None, compare=False, repr=False
    )
    """Writes a ``pg_dump -Fc`` archive of this database to the path with a pg_dump matching
    the server (docker: the container's own); None where the host's pg_dump is the one to use."""


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
    setting: str, environ: Mapping[str, str], *, image: str | None = None
) -> tuple[DisposableDatabase, Provider, str]:
    """Start the provider chosen by ``setting`` ("auto" | "local" | "docker" | a server URL).

    Returns the database, the provider to stop later and a why-line for the report
    header.  ``auto`` tries a container where a Docker engine answers (within a few
    seconds), then a local cluster, then the server in SAFE_CLEANUP_POSTGRES_URL; when
    nothing works the ProviderUnavailable message is one line naming every reason.
    ``image`` is the docker provider's image (default: SAFE_CLEANUP_POSTGRES_IMAGE in
    ``environ``, else postgres:16-alpine).
    """
    from pytest_safe_cleanup.providers.docker import DockerPostgres
    from pytest_safe_cleanup.providers.local import LocalCluster
    from pytest_safe_cleanup.providers.server import ServerDatabase, is_server_url, mask_url

    choice = setting.strip()
    image = (image or "").strip() or environ.get(IMAGE_ENV, "").strip() or DEFAULT_IMAGE
    docker = DockerPostgres(image, environ=environ)
    if choice == "docker":
        try:
            return _start(docker), docker, f"docker {image} (requested)"
        except ProviderUnavailable as exc:
            raise ProviderUnavailable(f"docker: {one_line(str(exc))}") from exc
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
    try:
        return _start(docker), docker, f"auto: docker ({image} on {docker.endpoint})"
    except ProviderUnavailable as exc:
        reasons.append(f"docker: {one_line(str(exc))}")

    local = LocalCluster(bindir=environ.get(BINDIR_ENV) or None, path=environ.get("PATH"))
    try:
        return _start(local), local, f"auto: local ({reasons[0]})"
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
            return database, server, f"auto: server ({tried})"

    raise ProviderUnavailable(f"no disposable PostgreSQL: {'; '.join(reasons)} - {_WHAT_TO_DO}")
