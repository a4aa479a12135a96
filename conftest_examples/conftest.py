"""The example suite's database: SQLite in a temporary file, or the configured URL.

Run it with ``pytest conftest_examples --safe-cleanup=dry`` (SQLite) or add
``--safe-cleanup-url postgresql+psycopg://user@localhost/app_test``.
"""

from __future__ import annotations

import pytest
from demo_app import Base
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from pytest_safe_cleanup import get_settings


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


@pytest.fixture
def db(safe_cleanup_engine):
    with Session(safe_cleanup_engine, expire_on_commit=False) as session:
        yield session
