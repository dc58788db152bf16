"""Fixtures for the simulator tests: a scratch work directory and the databases."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("TALLYPURSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL test database (each simulation makes a schema of its own there)."""
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({exc.__class__.__name__}); "
                    "start it or set TALLYPURSE_TEST_PG to run the PostgreSQL simulation")
    return PG_URL
