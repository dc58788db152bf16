"""Run the Alembic migrations programmatically (``tallypurse host migrate``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from tallypurse.host.db.engine import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["database"] = db
    return cfg


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# Several hosts starting at once on one PostgreSQL database migrate one after the other.
ADVISORY_LOCK = 0x7470_6D69  # "tpmi"


def upgrade(db: Database, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; returns the revision it is at afterwards."""
    cfg = _config(db)
    with db.engine.begin() as conn:
        if db.postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(db)


def downgrade(db: Database, revision: str) -> str | None:
    cfg = _config(db)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    return current_revision(db)


def revision(db: Database, message: str) -> None:  # pragma: no cover - developer tool
    """Autogenerate a new migration from the models (developers only)."""
    cfg = _config(db)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
