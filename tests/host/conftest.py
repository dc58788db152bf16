"""Host fixtures: a database on SQLite and on PostgreSQL (each test gets a fresh
one), a host on the lab's keystore, and a world with an enrolled terminal."""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.exceptions import StarletteDeprecationWarning

from tallypurse.core.cert import KeyRef
from tallypurse.core.hostapi import EnrolRequest
from tallypurse.host.api import create_app
from tallypurse.host.bank import SandboxBank
from tallypurse.host.config import HostSettings
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import upgrade
from tallypurse.host.service import Host
from tallypurse.lab import Lab
from tallypurse.sam import Sam

from .client import SignedClient
from .world import Clock, World

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx works the same
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PG_URL = os.environ.get("TALLYPURSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KEEP = ("alembic_version", "list_heads")


# --- databases ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.sqlite3"
    db = Database.connect(f"sqlite:///{path}")
    upgrade(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """A schema of its own for this test run in the test database, dropped at the end."""
    try:
        admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            schema = f"tp_test_{os.getpid()}_{secrets.token_hex(3)}"
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({exc.__class__.__name__}); "
                    "start it or set TALLYPURSE_TEST_PG to run the PostgreSQL tests")
    db = Database.connect(PG_URL, schema=schema)
    upgrade(db)
    db.dispose()
    yield schema
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_database(pg_schema: str) -> Iterator[Database]:
    db = Database.connect(PG_URL, schema=pg_schema)
    yield db
    db.dispose()


def _pg_clean(db: Database) -> None:
    tables = [t for t in sa.inspect(db.engine).get_table_names() if t not in KEEP]
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        conn.execute(sa.text("UPDATE list_heads SET version = 0"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated database: a copy of a template file, or a cleaned PG schema."""
    if request.param == "sqlite":
        path = tmp_path / "host.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        db = Database.connect(f"sqlite:///{path}")
        yield db
        db.dispose()
    else:
        db = request.getfixturevalue("pg_database")
        _pg_clean(db)
        yield db


def _database_at(kind: str, tmp_path: Path, revision: str) -> Iterator[Database]:
    """A database of its own migrated to ``revision`` only (to test later migrations)."""
    if kind == "sqlite":
        db = Database.connect(f"sqlite:///{tmp_path / 'old.sqlite3'}")
        upgrade(db, revision)
        yield db
        db.dispose()
        return
    schema = f"tp_mig_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({exc.__class__.__name__}); "
                    "start it or set TALLYPURSE_TEST_PG to run the PostgreSQL tests")
    db = Database.connect(PG_URL, schema=schema)
    try:
        upgrade(db, revision)
        yield db
    finally:
        db.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def at_0004(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from _database_at(request.param, tmp_path, "0004")


@pytest.fixture(params=["sqlite", "postgresql"])
def at_0007(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from _database_at(request.param, tmp_path, "0007")


@pytest.fixture
def clock(lab: Lab) -> Clock:
    return Clock(lab.now + 3600)


@pytest.fixture
def bank() -> SandboxBank:
    return SandboxBank()


@pytest.fixture
def host(database: Database, lab: Lab, clock: Clock, bank: SandboxBank, tmp_path: Path) -> Host:
    return Host(database, lab.keystore, settings=HostSettings(data_dir=tmp_path), clock=clock,
                bank=bank)


@pytest.fixture
def http(host: Host) -> Iterator[TestClient]:
    with TestClient(create_app(host)) as client:
        yield client


@pytest.fixture
def world(host: Host, lab: Lab, clock: Clock, tmp_path: Path, http: TestClient) -> Iterator[World]:
    """A merchant and an enrolled terminal (enrolment over signed HTTP)."""
    w = World(host, lab, clock, tmp_path, http)
    w.merchant_id = host.registry.create_merchant("Canteen", iban="DE89370400440532013000",
                                                  bic="COBADEFFXXX", fee_basis_points=150)
    tid, token = host.tms.create_terminal(w.merchant_id)
    w.terminal_id = tid
    w.sam = Sam.create(tmp_path / "sam.json", "sam", terminal_id=bytes.fromhex(tid))
    w.client = SignedClient(http, w.sam, clock)
    answer = w.client.enrol(EnrolRequest(terminal_id=tid, csr=w.sam.certificate_request().hex(),
                                         token=token))
    w.sam.install_certificate(
        bytes.fromhex(answer.certificate),
        {KeyRef.decode(k.encode()): bytes.fromhex(v) for k, v in answer.roots.items()},
        at=clock())
    yield w
    w.sam.close()
