"""Persistence: models, engines, the unit of work and the Alembic migrations."""

from tallypurse.host.db.engine import Database, UnitOfWork, make_engine, sqlite_url
from tallypurse.host.db.migrate import current_revision, head_revision, upgrade

__all__ = [
    "Database",
    "UnitOfWork",
    "current_revision",
    "head_revision",
    "make_engine",
    "sqlite_url",
    "upgrade",
]
