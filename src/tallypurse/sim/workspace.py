"""Where a simulation runs: a fresh work directory and a fresh database.

SQLite: a new file in the work directory (or a named one that must not exist
yet). PostgreSQL: a new schema of its own in the given database, dropped at
the end unless asked to keep it, so that runs never see each other's data.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tallypurse.core.errors import BadInput
from tallypurse.host.db.engine import normalise_url


@dataclass(frozen=True, slots=True)
class Workspace:
    workdir: Path
    db_url: str  # empty: SQLite in the work directory
    db_schema: str | None


def scratch_root() -> str | None:
    """Memory-backed scratch space when there is some (the simulator's files are
    throw-away; durability is simulated by cutting the power, not by the disk)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return None


@contextmanager
def workspace(db_url: str | None = None, *, workdir: Path | None = None,
              keep: bool = False) -> Iterator[Workspace]:
    """A fresh work directory and database for one run (removed afterwards unless
    ``keep`` or a ``workdir`` was given)."""
    made = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="tallypurse-sim-", dir=scratch_root()))
    else:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise BadInput(f"the work directory {workdir} must be empty")
    schema: str | None = None
    admin: sa.Engine | None = None
    url = ""
    try:
        if db_url:
            url = normalise_url(db_url)
            if url.startswith("sqlite"):
                database = make_url(url).database
                if database and database != ":memory:" and Path(database).exists():
                    raise BadInput(f"the simulator needs a fresh database; {database} exists")
            else:
                schema = f"tp_sim_{os.getpid()}_{secrets.token_hex(4)}"
                admin = sa.create_engine(url, connect_args={"connect_timeout": 5})
                try:
                    with admin.begin() as conn:
                        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
                except sa.exc.OperationalError as exc:
                    admin.dispose()
                    admin = None
                    raise BadInput(f"cannot reach PostgreSQL at {db_url}: "
                                   f"{exc.orig.__class__.__name__ if exc.orig else exc}") from None
        yield Workspace(workdir, url, schema)
    finally:
        if admin is not None:
            if not keep:
                with admin.begin() as conn:
                    conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            admin.dispose()
        if made and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
