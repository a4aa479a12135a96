"""The example suite's database: SQLite in a temporary file, or the configured URL.

Run it with ``pytest conftest_examples --safe-cleanup=dry`` (SQLite) or add
``--safe-cleanup-url postgresql+psycopg://user@localhost/app_test``. Async examples
reach the same database through ``safe_cleanup_async_engine`` (aiosqlite or asyncpg).
"""

from __future__ import annotations

import pytest
from demo_app import Base
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from pytest_safe_cleanup import get_settings

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


@pytest.fixture(scope="session")
def safe_cleanup_engine(pytestconfig, tmp_path_factory):
    url = get_settings(pytestconfig).url
    if url is None:
        url = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo_app.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # xdist workers share one database: create the schema one at a time.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(72201)")
        Base.metadata.create_all(conn)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def safe_cleanup_async_engine(safe_cleanup_engine):
    """The same database through an async driver, for ``async_safe_cleanup``."""
    from sqlalchemy.ext.asyncio import create_async_engine

    url = safe_cleanup_engine.url
    url = url.set(drivername=ASYNC_DRIVERS[url.get_backend_name()])
    # No pool: each test runs on its own event loop, and pooled connections belong to one.
    return create_async_engine(url, poolclass=NullPool)


@pytest.fixture
def db(safe_cleanup_engine):
    with Session(safe_cleanup_engine, expire_on_commit=False) as session:
        yield session
