"""A card's clearing progress leaves the card's row: its highest seqno is that of its
newest event, and only a card with a gap has a row in ``card_gaps`` (its contiguous
seqno and since when). Clearing then writes nothing of a card's progress when the next
event follows the newest, the common case.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} cannot drop a column in place: "
                           "this migration needs SQLite 3.35 or later")
    op.create_table(
        "card_gaps",
        sa.Column("card_id", sa.String(length=16), nullable=False),
        sa.Column("contiguous_seqno", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["card_id"], ["cards.card_id"],
                                name=op.f("fk_card_gaps_card_id_cards")),
        sa.PrimaryKeyConstraint("card_id", name=op.f("pk_card_gaps")),
    )
    with op.batch_alter_table("card_gaps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_card_gaps_since"), ["since"], unique=False)
    op.execute("INSERT INTO card_gaps (card_id, contiguous_seqno, since) "
               "SELECT card_id, contiguous_seqno, COALESCE(gap_since, 0) FROM cards "
               "WHERE contiguous_seqno < max_seqno")
    # In place on both databases (SQLite 3.35 and later drops a plain column itself): a
    # copy of the table could not replace it while other tables' rows refer to its cards.
    for column in ("gap_since", "max_seqno", "contiguous_seqno"):
        op.drop_column("cards", column)


def downgrade() -> None:
    op.add_column("cards", sa.Column("contiguous_seqno", sa.BigInteger(), nullable=False,
                                     server_default="0"))
    op.add_column("cards", sa.Column("max_seqno", sa.BigInteger(), nullable=False,
                                     server_default="0"))
    op.add_column("cards", sa.Column("gap_since", sa.BigInteger(), nullable=True))
    op.execute("UPDATE cards SET max_seqno = COALESCE((SELECT MAX(e.seqno) FROM card_events e "
               "WHERE e.card_id = cards.card_id), 0)")
    op.execute("UPDATE cards SET contiguous_seqno = max_seqno")
    op.execute("UPDATE cards SET contiguous_seqno = (SELECT g.contiguous_seqno FROM card_gaps g "
               "WHERE g.card_id = cards.card_id), gap_since = (SELECT g.since FROM card_gaps g "
               "WHERE g.card_id = cards.card_id) "
               "WHERE card_id IN (SELECT card_id FROM card_gaps)")
    if op.get_bind().dialect.name == "postgresql":  # SQLite keeps the default: no harm
        op.alter_column("cards", "contiguous_seqno", server_default=None)
        op.alter_column("cards", "max_seqno", server_default=None)
    op.drop_table("card_gaps")
