"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import current_revision, head_revision, upgrade
from tallypurse.host.db.models import Base


def test_the_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    assert diff == []


def test_migrating_again_is_a_no_op(database: Database) -> None:
    assert current_revision(database) == head_revision()
    assert upgrade(database) == head_revision()
