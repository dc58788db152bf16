"""Clearing books a batch's debits in one ledger transaction per value day: each
card event names the ledger transaction that booked it (existing events get the
transaction of their own, found by its reference ``card:seqno``).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BACKFILL = """UPDATE card_events SET transaction_id = (
    SELECT t.id FROM ledger_transactions t
    WHERE t.kind IN ('clear_debit', 'clear_cancel', 'clear_load')
      AND t.reference = card_events.card_id || ':' || {seqno})"""


def upgrade() -> None:
    with op.batch_alter_table("card_events") as batch:
        batch.add_column(sa.Column("transaction_id", sa.BigInteger(), nullable=True))
        batch.create_index("ix_card_events_transaction_id", ["transaction_id"])
    seqno = "CAST(card_events.seqno AS TEXT)"
    op.execute(BACKFILL.format(seqno=seqno))


def downgrade() -> None:
    with op.batch_alter_table("card_events") as batch:
        batch.drop_index("ix_card_events_transaction_id")
        batch.drop_column("transaction_id")
