"""Initial schema: ledger, registry, terminals, lists, clearing, debts, loads, settlement.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 15:00:31.626116
"""

# ruff: noqa: E501
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('balance', sa.BigInteger(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.CheckConstraint("kind <> 'online' OR balance <= 0", name=op.f('ck_accounts_online_not_overdrawn')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('kind', 'owner', 'currency', name=op.f('uq_accounts_kind_owner_currency'))
    )
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=True),
    sa.Column('terminal_id', sa.String(length=16), nullable=True),
    sa.Column('detail', sa.String(length=500), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_table('batches',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('batch_id', sa.String(length=128), nullable=False),
    sa.Column('payload_hash', sa.String(length=64), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('entries', sa.Integer(), nullable=False),
    sa.Column('mismatch', sa.Boolean(), nullable=False),
    sa.Column('ack', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches')),
    sa.UniqueConstraint('terminal_id', 'batch_id', name=op.f('uq_batches_terminal_id_batch_id'))
    )
    op.create_table('card_event_conflicts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('seqno', sa.BigInteger(), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('record', sa.Text(), nullable=False),
    sa.Column('detected_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_card_event_conflicts')),
    sa.UniqueConstraint('card_id', 'seqno', 'record', name=op.f('uq_card_event_conflicts_card_id_seqno_record'))
    )
    with op.batch_alter_table('card_event_conflicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_card_event_conflicts_card_id'), ['card_id'], unique=False)

    op.create_table('card_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('seqno', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.Integer(), nullable=False),
    sa.Column('atc', sa.BigInteger(), nullable=False),
    sa.Column('load_counter', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('split', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('tx_type', sa.Integer(), nullable=False),
    sa.Column('balance_before', sa.BigInteger(), nullable=False),
    sa.Column('balance_after', sa.BigInteger(), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('terminal_seq', sa.BigInteger(), nullable=False),
    sa.Column('time', sa.BigInteger(), nullable=False),
    sa.Column('record', sa.Text(), nullable=False),
    sa.Column('cleared_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_card_events')),
    sa.UniqueConstraint('card_id', 'seqno', name=op.f('uq_card_events_card_id_seqno'))
    )
    op.create_table('cardholders',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('credit_grade', sa.Integer(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cardholders'))
    )
    op.create_table('credit_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('cardholder_id', sa.String(length=40), nullable=True),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('reference', sa.String(length=64), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_events'))
    )
    with op.batch_alter_table('credit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credit_events_cardholder_id'), ['cardholder_id'], unique=False)

    op.create_table('journal_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('split', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('time', sa.BigInteger(), nullable=False),
    sa.Column('reference', sa.String(length=160), nullable=False),
    sa.Column('entry_hash', sa.String(length=128), nullable=False),
    sa.Column('batch_id', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('code', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journal_records')),
    sa.UniqueConstraint('terminal_id', 'seq', name=op.f('uq_journal_records_terminal_id_seq'))
    )
    op.create_table('list_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('list_name', sa.String(length=16), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('op', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('action_id', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=True),
    sa.Column('seq', sa.BigInteger(), nullable=True),
    sa.Column('sealed', sa.Text(), nullable=True),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_list_entries')),
    sa.UniqueConstraint('list_name', 'version', name=op.f('uq_list_entries_list_name_version'))
    )
    with op.batch_alter_table('list_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_list_entries_action_id'), ['action_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_list_entries_list_name_card_id'), ['list_name', 'card_id'], unique=False)

    op.create_table('list_heads',
    sa.Column('name', sa.String(length=16), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_list_heads'))
    )
    op.create_table('merchants',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=140), nullable=False),
    sa.Column('iban', sa.String(length=34), nullable=False),
    sa.Column('bic', sa.String(length=11), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('fee_basis_points', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merchants'))
    )
    op.create_table('online_auths',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('payload_hash', sa.String(length=64), nullable=True),
    sa.Column('card_id', sa.String(length=16), nullable=True),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason_code', sa.Integer(), nullable=False),
    sa.Column('auth_code', sa.String(length=16), nullable=False),
    sa.Column('available_after', sa.BigInteger(), nullable=True),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('reversed_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_online_auths')),
    sa.UniqueConstraint('terminal_id', 'idempotency_key', name=op.f('uq_online_auths_terminal_id_idempotency_key'))
    )
    op.create_table('online_challenges',
    sa.Column('challenge', sa.String(length=32), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.Column('used_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('challenge', name=op.f('pk_online_challenges'))
    )
    op.create_table('parameter_sets',
    sa.Column('version', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_parameter_sets'))
    )
    op.create_table('payment_files',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('message_id', sa.String(length=35), nullable=False),
    sa.Column('business_day', sa.Date(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('xml', sa.Text(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_files')),
    sa.UniqueConstraint('message_id', name=op.f('uq_payment_files_message_id'))
    )
    op.create_table('request_nonces',
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('nonce', sa.String(length=64), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key_id', 'nonce', name=op.f('pk_request_nonces'))
    )
    with op.batch_alter_table('request_nonces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_request_nonces_created'), ['created'], unique=False)

    op.create_table('settings',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_settings'))
    )
    op.create_table('api_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=True),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('revoked_at', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchants.id'], name=op.f('fk_api_tokens_merchant_id_merchants')),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_api_tokens'))
    )
    op.create_table('bank_accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('cardholder_id', sa.String(length=40), nullable=False),
    sa.Column('iban', sa.String(length=34), nullable=False),
    sa.Column('bic', sa.String(length=11), nullable=False),
    sa.Column('holder_name', sa.String(length=140), nullable=False),
    sa.Column('mandate_id', sa.String(length=35), nullable=False),
    sa.Column('mandate_signed', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_bank_accounts_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bank_accounts'))
    )
    with op.batch_alter_table('bank_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bank_accounts_cardholder_id'), ['cardholder_id'], unique=False)

    op.create_table('cards',
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('cardholder_id', sa.String(length=40), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('certificate', sa.Text(), nullable=False),
    sa.Column('public_key', sa.String(length=130), nullable=False),
    sa.Column('issued', sa.BigInteger(), nullable=False),
    sa.Column('expiry', sa.BigInteger(), nullable=False),
    sa.Column('cap', sa.BigInteger(), nullable=False),
    sa.Column('app_key_version', sa.Integer(), nullable=False),
    sa.Column('writeback_seq', sa.BigInteger(), nullable=False),
    sa.Column('online_counter', sa.BigInteger(), nullable=False),
    sa.Column('credit_version', sa.BigInteger(), nullable=False),
    sa.Column('contiguous_seqno', sa.BigInteger(), nullable=False),
    sa.Column('max_seqno', sa.BigInteger(), nullable=False),
    sa.Column('gap_since', sa.BigInteger(), nullable=True),
    sa.Column('blacklisted', sa.Boolean(), nullable=False),
    sa.Column('replaced_by', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_cards_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('card_id', name=op.f('pk_cards'))
    )
    with op.batch_alter_table('cards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cards_cardholder_id'), ['cardholder_id'], unique=False)

    op.create_table('settlements',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('business_day', sa.Date(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('gross', sa.BigInteger(), nullable=False),
    sa.Column('fees', sa.BigInteger(), nullable=False),
    sa.Column('net', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('payment_file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchants.id'], name=op.f('fk_settlements_merchant_id_merchants')),
    sa.ForeignKeyConstraint(['payment_file_id'], ['payment_files.id'], name=op.f('fk_settlements_payment_file_id_payment_files')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_settlements')),
    sa.UniqueConstraint('merchant_id', 'business_day', 'currency', name=op.f('uq_settlements_merchant_id_business_day_currency'))
    )
    op.create_table('terminals',
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('public_key', sa.String(length=130), nullable=True),
    sa.Column('certificate', sa.Text(), nullable=True),
    sa.Column('cert_not_after', sa.BigInteger(), nullable=True),
    sa.Column('csr_hash', sa.String(length=64), nullable=True),
    sa.Column('enrolled_at', sa.BigInteger(), nullable=True),
    sa.Column('last_contact', sa.BigInteger(), nullable=True),
    sa.Column('blacklist_version', sa.BigInteger(), nullable=False),
    sa.Column('actions_version', sa.BigInteger(), nullable=False),
    sa.Column('parameters_version', sa.BigInteger(), nullable=False),
    sa.Column('last_batch_at', sa.BigInteger(), nullable=True),
    sa.Column('journal_contiguous', sa.BigInteger(), nullable=False),
    sa.Column('journal_max', sa.BigInteger(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchants.id'], name=op.f('fk_terminals_merchant_id_merchants')),
    sa.PrimaryKeyConstraint('terminal_id', name=op.f('pk_terminals'))
    )
    with op.batch_alter_table('terminals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_terminals_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('debts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('atc', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('cardholder_id', sa.String(length=40), nullable=True),
    sa.Column('tx_type', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('payload_hash', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('event_time', sa.BigInteger(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.Column('collection_since', sa.BigInteger(), nullable=True),
    sa.Column('repaid', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['card_id'], ['cards.card_id'], name=op.f('fk_debts_card_id_cards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_debts')),
    sa.UniqueConstraint('card_id', 'atc', name=op.f('uq_debts_card_id_atc')),
    sa.UniqueConstraint('terminal_id', 'idempotency_key', name=op.f('uq_debts_terminal_id_idempotency_key'))
    )
    with op.batch_alter_table('debts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_debts_status'), ['status'], unique=False)

    op.create_table('enrolment_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.Column('used_at', sa.BigInteger(), nullable=True),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['terminal_id'], ['terminals.terminal_id'], name=op.f('fk_enrolment_tokens_terminal_id_terminals')),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_enrolment_tokens'))
    )
    with op.batch_alter_table('enrolment_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_enrolment_tokens_terminal_id'), ['terminal_id'], unique=False)

    op.create_table('ledger_transactions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('reference', sa.String(length=160), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('value_time', sa.BigInteger(), nullable=False),
    sa.Column('value_day', sa.Date(), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=True),
    sa.Column('card_id', sa.String(length=16), nullable=True),
    sa.Column('memo', sa.String(length=200), nullable=False),
    sa.Column('settlement_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['settlement_id'], ['settlements.id'], name=op.f('fk_ledger_transactions_settlement_id_settlements')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_transactions')),
    sa.UniqueConstraint('kind', 'reference', name=op.f('uq_ledger_transactions_kind_reference'))
    )
    with op.batch_alter_table('ledger_transactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_transactions_card_id'), ['card_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_transactions_merchant_id_settlement_id'), ['merchant_id', 'settlement_id'], unique=False)

    op.create_table('loads',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('payload_hash', sa.String(length=64), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('load_counter', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('funding', sa.String(length=16), nullable=False),
    sa.Column('auth_id', sa.String(length=16), nullable=False),
    sa.Column('authorisation', sa.Text(), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('load_certificate', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('confirmed_at', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['card_id'], ['cards.card_id'], name=op.f('fk_loads_card_id_cards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_loads')),
    sa.UniqueConstraint('auth_id', name=op.f('uq_loads_auth_id')),
    sa.UniqueConstraint('terminal_id', 'idempotency_key', name=op.f('uq_loads_terminal_id_idempotency_key'))
    )
    op.create_table('writeback_actions',
    sa.Column('action_id', sa.String(length=64), nullable=False),
    sa.Column('card_id', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('sealed', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('debt_id', sa.String(length=40), nullable=True),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('applied_at', sa.BigInteger(), nullable=True),
    sa.Column('receipt', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['card_id'], ['cards.card_id'], name=op.f('fk_writeback_actions_card_id_cards')),
    sa.PrimaryKeyConstraint('action_id', name=op.f('pk_writeback_actions')),
    sa.UniqueConstraint('card_id', 'seq', name=op.f('uq_writeback_actions_card_id_seq'))
    )
    op.create_table('bank_instructions',
    sa.Column('id', sa.String(length=35), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('debt_id', sa.String(length=40), nullable=True),
    sa.Column('settlement_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('iban', sa.String(length=34), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=100), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['debt_id'], ['debts.id'], name=op.f('fk_bank_instructions_debt_id_debts')),
    sa.ForeignKeyConstraint(['settlement_id'], ['settlements.id'], name=op.f('fk_bank_instructions_settlement_id_settlements')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bank_instructions'))
    )
    with op.batch_alter_table('bank_instructions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bank_instructions_debt_id'), ['debt_id'], unique=False)

    op.create_table('postings',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('transaction_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.CheckConstraint('amount <> 0', name=op.f('ck_postings_nonzero')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_postings_account_id_accounts')),
    sa.ForeignKeyConstraint(['transaction_id'], ['ledger_transactions.id'], name=op.f('fk_postings_transaction_id_ledger_transactions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_postings'))
    )
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_postings_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_postings_transaction_id'), ['transaction_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_postings_transaction_id'))
        batch_op.drop_index(batch_op.f('ix_postings_account_id'))

    op.drop_table('postings')
    with op.batch_alter_table('bank_instructions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bank_instructions_debt_id'))

    op.drop_table('bank_instructions')
    op.drop_table('writeback_actions')
    op.drop_table('loads')
    with op.batch_alter_table('ledger_transactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_transactions_merchant_id_settlement_id'))
        batch_op.drop_index(batch_op.f('ix_ledger_transactions_card_id'))

    op.drop_table('ledger_transactions')
    with op.batch_alter_table('enrolment_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_enrolment_tokens_terminal_id'))

    op.drop_table('enrolment_tokens')
    with op.batch_alter_table('debts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_debts_status'))

    op.drop_table('debts')
    with op.batch_alter_table('terminals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_terminals_merchant_id'))

    op.drop_table('terminals')
    op.drop_table('settlements')
    with op.batch_alter_table('cards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cards_cardholder_id'))

    op.drop_table('cards')
    with op.batch_alter_table('bank_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bank_accounts_cardholder_id'))

    op.drop_table('bank_accounts')
    op.drop_table('api_tokens')
    op.drop_table('settings')
    with op.batch_alter_table('request_nonces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_request_nonces_created'))

    op.drop_table('request_nonces')
    op.drop_table('payment_files')
    op.drop_table('parameter_sets')
    op.drop_table('online_challenges')
    op.drop_table('online_auths')
    op.drop_table('merchants')
    op.drop_table('list_heads')
    with op.batch_alter_table('list_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_list_entries_list_name_card_id'))
        batch_op.drop_index(batch_op.f('ix_list_entries_action_id'))

    op.drop_table('list_entries')
    op.drop_table('journal_records')
    with op.batch_alter_table('credit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credit_events_cardholder_id'))

    op.drop_table('credit_events')
    op.drop_table('cardholders')
    op.drop_table('card_events')
    with op.batch_alter_table('card_event_conflicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_card_event_conflicts_card_id'))

    op.drop_table('card_event_conflicts')
    op.drop_table('batches')
    op.drop_table('alerts')
    op.drop_table('accounts')
