"""Ledger guards: postings and ledger transactions cannot be changed or deleted
(a transaction's settlement id can be set once); the two list heads.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Every column of ledger_transactions but settlement_id.
TXN_COLUMNS = "id, kind, reference, created, value_time, value_day, merchant_id, card_id, memo"

SQLITE = [
    """CREATE TRIGGER postings_no_update BEFORE UPDATE ON postings
       BEGIN SELECT RAISE(ABORT, 'ledger postings are immutable'); END""",
    """CREATE TRIGGER postings_no_delete BEFORE DELETE ON postings
       BEGIN SELECT RAISE(ABORT, 'ledger postings are immutable'); END""",
    f"""CREATE TRIGGER ledger_transactions_no_update BEFORE UPDATE OF {TXN_COLUMNS}
       ON ledger_transactions
       BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable'); END""",
    """CREATE TRIGGER ledger_transactions_settle_once BEFORE UPDATE OF settlement_id
       ON ledger_transactions WHEN OLD.settlement_id IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'a ledger transaction is settled once'); END""",
    """CREATE TRIGGER ledger_transactions_no_delete BEFORE DELETE ON ledger_transactions
       BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable'); END""",
]

POSTGRES = [
    """CREATE FUNCTION tp_ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION 'ledger rows are immutable (% on %)', TG_OP, TG_TABLE_NAME
           USING ERRCODE = 'restrict_violation';
       END $$""",
    """CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings
       FOR EACH ROW EXECUTE FUNCTION tp_ledger_immutable()""",
    f"""CREATE TRIGGER ledger_transactions_immutable
       BEFORE UPDATE OF {TXN_COLUMNS} OR DELETE ON ledger_transactions
       FOR EACH ROW EXECUTE FUNCTION tp_ledger_immutable()""",
    """CREATE TRIGGER ledger_transactions_settle_once BEFORE UPDATE OF settlement_id
       ON ledger_transactions FOR EACH ROW WHEN (OLD.settlement_id IS NOT NULL)
       EXECUTE FUNCTION tp_ledger_immutable()""",
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in POSTGRES if dialect == "postgresql" else SQLITE:
        op.execute(statement)
    heads = sa.table("list_heads", sa.column("name", sa.String),
                     sa.column("version", sa.BigInteger))
    op.bulk_insert(heads, [{"name": "blacklist", "version": 0}, {"name": "actions", "version": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM list_heads")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_transactions_settle_once ON ledger_transactions")
        op.execute("DROP TRIGGER ledger_transactions_immutable ON ledger_transactions")
        op.execute("DROP TRIGGER postings_immutable ON postings")
        op.execute("DROP FUNCTION tp_ledger_immutable()")
    else:
        for name in ("postings_no_update", "postings_no_delete", "ledger_transactions_no_update",
                     "ledger_transactions_settle_once", "ledger_transactions_no_delete"):
            op.execute(f"DROP TRIGGER {name}")
