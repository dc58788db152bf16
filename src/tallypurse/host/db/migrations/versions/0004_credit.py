"""Credit system: decisions (indicator snapshots, scores, grades), the append-only
audit of grades set by hand, and the credit records given to cards.

Revision ID: 0004
Revises: 0003
"""

# ruff: noqa: E501
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE = [
    """CREATE TRIGGER credit_overrides_no_update BEFORE UPDATE ON credit_overrides
       BEGIN SELECT RAISE(ABORT, 'grades set by hand are append-only'); END""",
    """CREATE TRIGGER credit_overrides_no_delete BEFORE DELETE ON credit_overrides
       BEGIN SELECT RAISE(ABORT, 'grades set by hand are append-only'); END""",
]

POSTGRES = [
    """CREATE FUNCTION tp_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
           USING ERRCODE = 'restrict_violation';
       END $$""",
    """CREATE TRIGGER credit_overrides_append_only BEFORE UPDATE OR DELETE ON credit_overrides
       FOR EACH ROW EXECUTE FUNCTION tp_append_only()""",
]


def upgrade() -> None:
    op.create_table('credit_decisions',
    sa.Column('id', PK, nullable=False),
    sa.Column('cardholder_id', sa.String(length=40), nullable=False),
    sa.Column('as_of', sa.BigInteger(), nullable=False),
    sa.Column('batch_day', sa.Date(), nullable=True),
    sa.Column('trigger', sa.String(length=40), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('model_grade', sa.Integer(), nullable=False),
    sa.Column('grade', sa.Integer(), nullable=False),
    sa.Column('basis', sa.String(length=16), nullable=False),
    sa.Column('reasons', sa.Text(), nullable=False),
    sa.Column('indicators', sa.Text(), nullable=False),
    sa.Column('online_balance', sa.BigInteger(), nullable=False),
    sa.Column('outstanding', sa.BigInteger(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_credit_decisions_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_decisions')),
    sa.UniqueConstraint('cardholder_id', 'batch_day', name=op.f('uq_credit_decisions_cardholder_id_batch_day'))
    )
    with op.batch_alter_table('credit_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credit_decisions_cardholder_id_as_of'), ['cardholder_id', 'as_of'], unique=False)

    op.create_table('credit_overrides',
    sa.Column('id', PK, nullable=False),
    sa.Column('cardholder_id', sa.String(length=40), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('grade', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=True),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_credit_overrides_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_overrides'))
    )
    with op.batch_alter_table('credit_overrides', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credit_overrides_cardholder_id'), ['cardholder_id'], unique=False)

    op.create_table('credit_records',
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('version', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('grade', sa.Integer(), nullable=False),
    sa.Column('per_tap_overdraft', sa.BigInteger(), nullable=False),
    sa.Column('max_outstanding', sa.BigInteger(), nullable=False),
    sa.Column('max_slots', sa.Integer(), nullable=False),
    sa.Column('allowed_types', sa.Integer(), nullable=False),
    sa.Column('balance_band', sa.Integer(), nullable=False),
    sa.Column('outstanding_known', sa.BigInteger(), nullable=False),
    sa.Column('issued', sa.BigInteger(), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.Column('record', sa.Text(), nullable=False),
    sa.Column('decision_id', PK, nullable=True),
    sa.Column('action_id', sa.String(length=64), nullable=True),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['card_id'], ['cards.card_id'], name=op.f('fk_credit_records_card_id_cards')),
    sa.ForeignKeyConstraint(['decision_id'], ['credit_decisions.id'], name=op.f('fk_credit_records_decision_id_credit_decisions')),
    sa.PrimaryKeyConstraint('card_id', 'version', name=op.f('pk_credit_records'))
    )

    dialect = op.get_bind().dialect.name
    for statement in POSTGRES if dialect == "postgresql" else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER credit_overrides_append_only ON credit_overrides")
        op.execute("DROP FUNCTION tp_append_only()")
    else:
        op.execute("DROP TRIGGER credit_overrides_no_update")
        op.execute("DROP TRIGGER credit_overrides_no_delete")
    op.drop_table('credit_records')
    with op.batch_alter_table('credit_overrides', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credit_overrides_cardholder_id'))
    op.drop_table('credit_overrides')
    with op.batch_alter_table('credit_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credit_decisions_cardholder_id_as_of'))
    op.drop_table('credit_decisions')
