"""The audit log becomes a hash chain: ``prev_hash`` and ``hash`` on every row, and
``audit_head`` (the newest row's id and hash). Rows already there are chained here,
in id order, with the append-only triggers held off for the time of it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tallypurse.host.audit import FIELDS, GENESIS, HEAD_ID, row_hash

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = [
    """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
]


def _triggers_off(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    else:
        op.execute("DROP TRIGGER audit_log_no_update")
        op.execute("DROP TRIGGER audit_log_no_delete")


def _triggers_on(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.add_column("audit_log", sa.Column("prev_hash", sa.String(length=64), nullable=False,
                                         server_default=""))
    op.add_column("audit_log", sa.Column("hash", sa.String(length=64), nullable=False,
                                         server_default=""))
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    log = sa.table("audit_log", *(sa.column(f) for f in (*FIELDS, "prev_hash", "hash")))
    rows = bind.execute(sa.select(*(log.c[f] for f in FIELDS)).order_by(log.c.id)).all()
    prev_id, prev = 0, GENESIS
    if rows:
        _triggers_off(dialect)
        for row in rows:
            values = dict(zip(FIELDS, row, strict=True))
            digest = row_hash(prev, values)
            bind.execute(sa.update(log).where(log.c.id == values["id"])
                         .values(prev_hash=prev, hash=digest))
            prev_id, prev = int(values["id"]), digest
        _triggers_on(dialect)
    head = sa.table("audit_head", sa.column("id"), sa.column("last_id"), sa.column("last_hash"))
    bind.execute(sa.insert(head).values(id=HEAD_ID, last_id=prev_id, last_hash=prev))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table("audit_head")
    if dialect == "postgresql":
        op.drop_column("audit_log", "hash")
        op.drop_column("audit_log", "prev_hash")
    else:
        op.execute("ALTER TABLE audit_log DROP COLUMN hash")
        op.execute("ALTER TABLE audit_log DROP COLUMN prev_hash")
