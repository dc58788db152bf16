"""List entries are numbered after their writer commits (``version`` is NULL until then).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("list_entries", schema=None) as batch_op:
        batch_op.alter_column("version", existing_type=sa.BigInteger(), nullable=True)


def downgrade() -> None:
    # Number what is still waiting first, in the order it was written.
    conn = op.get_bind()
    for (name,) in conn.execute(sa.text("SELECT name FROM list_heads")).all():
        head = conn.execute(sa.text("SELECT version FROM list_heads WHERE name = :n"),
                            {"n": name}).scalar_one()
        ids = conn.execute(sa.text("SELECT id FROM list_entries WHERE list_name = :n "
                                   "AND version IS NULL ORDER BY id"), {"n": name}).scalars()
        for i, entry_id in enumerate(list(ids), start=1):
            conn.execute(sa.text("UPDATE list_entries SET version = :v WHERE id = :i"),
                         {"v": head + i, "i": entry_id})
            conn.execute(sa.text("UPDATE list_heads SET version = :v WHERE name = :n"),
                         {"v": head + i, "n": name})
    with op.batch_alter_table("list_entries", schema=None) as batch_op:
        batch_op.alter_column("version", existing_type=sa.BigInteger(), nullable=False)
