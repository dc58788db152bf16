"""Alembic environment: migrations always run on a connection handed in by
:func:`tallypurse.host.db.migrate.upgrade` (never from an ini file URL)."""

from __future__ import annotations

from alembic import context

from tallypurse.host.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - guarded by migrate.upgrade
    raise RuntimeError("run migrations through tallypurse.host.db.migrate.upgrade")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
