"""The console's queries on PostgreSQL: the same seeded traffic, the same numbers on
every page as on SQLite (integer day arithmetic, grouped expressions, subqueries).
Skipped with a message when the server is unreachable, as the host's PostgreSQL tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from host.world import Clock
from tallypurse.host.api import create_app
from tallypurse.host.config import HostSettings
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import upgrade
from tallypurse.host.service import Host
from tallypurse.lab import Lab

from .conftest import console_for
from .seed import seed
from .test_console_routes import EXPECTED, text_of

PG_URL = os.environ.get("TALLYPURSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_host(lab: Lab, tmp_path: Path) -> Iterator[Host]:
    try:
        admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = f"tp_console_{os.getpid()}_{secrets.token_hex(3)}"
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({exc.__class__.__name__}); "
                    "start it or set TALLYPURSE_TEST_PG to run the PostgreSQL tests")
    db = Database.connect(PG_URL, schema=schema)
    upgrade(db)
    yield Host(db, lab.keystore, settings=HostSettings(data_dir=tmp_path),
               clock=Clock(lab.now + 3600))
    db.dispose()
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_every_page_shows_the_same_numbers_on_postgresql(pg_host: Host, lab: Lab,
                                                         tmp_path: Path) -> None:
    assert isinstance(pg_host.clock, Clock)
    world = seed(pg_host, lab, pg_host.clock, tmp_path)
    x = world.expected
    try:
        for c in console_for(create_app(pg_host)):
            c.login("olga")
            html = c.get("/").text
            for channel in ("offline", "split", "online"):
                assert text_of(html, f"today-{channel}-count") == str(x[f"{channel}_count"])
            assert text_of(html, "clones") == "1" and text_of(html, "old-gaps") == "1"
            for path in EXPECTED:
                assert c.get(path.format(**world.cards)).status_code == 200, path
            assert text_of(c.get("/lists").text, "blacklist-size") == "1"
    finally:
        world.close()
