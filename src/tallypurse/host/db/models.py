"""The host's tables (SQLAlchemy 2 declarative models).

Conventions: money is a BigInteger of minor units with a 3-letter ISO 4217
code beside it (never a float); times are BigInteger unix seconds; binary
values (certificates, card records, sealed write-backs) are lowercase hex
text so that a row reads the same in every database and in the API.

The schema itself is created by the Alembic migrations in
``tallypurse/host/db/migrations``; a test checks that they match these models.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT primary keys, but SQLite only auto-numbers an INTEGER PRIMARY KEY.
PK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def table(model: type[Base]) -> Table:
    """A model's Core table: bulk inserts through it skip the ORM's per-row work."""
    return cast(Table, model.__table__)


def Money() -> Mapped[int]:  # noqa: N802 - reads as a column type
    return mapped_column(BigInteger, nullable=False, default=0)


def Time(*, nullable: bool = False) -> Mapped[int]:  # noqa: N802
    return mapped_column(BigInteger, nullable=nullable)


# --- ledger ---------------------------------------------------------------------------------
class Account(Base):
    """A ledger account. ``balance`` is the sum of its postings (debits positive)."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(64), default="")
    currency: Mapped[str] = mapped_column(String(3))
    balance: Mapped[int] = Money()
    created: Mapped[int] = Time()
    __table_args__ = (
        UniqueConstraint("kind", "owner", "currency"),
        # An online account is a liability: its balance is zero or a credit.
        CheckConstraint("kind <> 'online' OR balance <= 0", name="online_not_overdrawn"),
    )


class LedgerTransaction(Base):
    """A balanced set of postings. Immutable except for ``settlement_id`` (set once)."""

    __tablename__ = "ledger_transactions"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(160))
    created: Mapped[int] = Time()
    value_time: Mapped[int] = Time()  # when the business event happened (card or terminal time)
    value_day: Mapped[dt.date] = mapped_column(Date)
    merchant_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    card_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    memo: Mapped[str] = mapped_column(String(200), default="")
    settlement_id: Mapped[int | None] = mapped_column(
        ForeignKey("settlements.id"), nullable=True
    )
    __table_args__ = (
        UniqueConstraint("kind", "reference"),
        Index(None, "merchant_id", "settlement_id"),
        Index(None, "card_id"),
    )


class Posting(Base):
    __tablename__ = "postings"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    __table_args__ = (CheckConstraint("amount <> 0", name="nonzero"),)


# --- registry ---------------------------------------------------------------------------------
class Cardholder(Base):
    __tablename__ = "cardholders"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="active")
    credit_grade: Mapped[int] = mapped_column(Integer, default=2)
    created: Mapped[int] = Time()


class BankAccount(Base):
    """A cardholder's linked bank account with its direct-debit mandate."""

    __tablename__ = "bank_accounts"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    cardholder_id: Mapped[str] = mapped_column(ForeignKey("cardholders.id"), index=True)
    iban: Mapped[str] = mapped_column(String(34))
    bic: Mapped[str] = mapped_column(String(11))
    holder_name: Mapped[str] = mapped_column(String(140))
    mandate_id: Mapped[str] = mapped_column(String(35))
    mandate_signed: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created: Mapped[int] = Time()


class Card(Base):
    __tablename__ = "cards"
    card_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    cardholder_id: Mapped[str | None] = mapped_column(
        ForeignKey("cardholders.id"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="active")
    currency: Mapped[str] = mapped_column(String(3))
    certificate: Mapped[str] = mapped_column(Text)
    public_key: Mapped[str] = mapped_column(String(130))
    issued: Mapped[int] = Time()
    expiry: Mapped[int] = Time()
    cap: Mapped[int] = Money()
    app_key_version: Mapped[int] = mapped_column(Integer)
    writeback_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # last one sealed
    online_counter: Mapped[int] = mapped_column(BigInteger, default=0)  # last one accepted
    credit_version: Mapped[int] = mapped_column(BigInteger, default=0)
    blacklisted: Mapped[bool] = mapped_column(Boolean, default=False)
    replaced_by: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Merchant(Base):
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(140))
    iban: Mapped[str] = mapped_column(String(34))
    bic: Mapped[str] = mapped_column(String(11))
    currency: Mapped[str] = mapped_column(String(3))
    fee_basis_points: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created: Mapped[int] = Time()


# --- terminal management -------------------------------------------------------------------------
class Terminal(Base):
    __tablename__ = "terminals"
    terminal_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    public_key: Mapped[str | None] = mapped_column(String(130), nullable=True)
    certificate: Mapped[str | None] = mapped_column(Text, nullable=True)
    cert_not_after: Mapped[int | None] = Time(nullable=True)
    csr_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enrolled_at: Mapped[int | None] = Time(nullable=True)
    last_contact: Mapped[int | None] = Time(nullable=True)
    blacklist_version: Mapped[int] = mapped_column(BigInteger, default=0)
    actions_version: Mapped[int] = mapped_column(BigInteger, default=0)
    parameters_version: Mapped[int] = mapped_column(BigInteger, default=0)
    last_batch_at: Mapped[int | None] = Time(nullable=True)
    journal_contiguous: Mapped[int] = mapped_column(BigInteger, default=0)
    journal_max: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[int] = Time()


class EnrolmentToken(Base):
    __tablename__ = "enrolment_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"), index=True)
    expires: Mapped[int] = Time()
    used_at: Mapped[int | None] = Time(nullable=True)
    created: Mapped[int] = Time()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchants.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    created: Mapped[int] = Time()
    revoked_at: Mapped[int | None] = Time(nullable=True)


class ParameterSet(Base):
    __tablename__ = "parameter_sets"
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    document: Mapped[str] = mapped_column(Text)  # the SignedParameters JSON
    created: Mapped[int] = Time()


class RequestNonce(Base):
    """Nonces of signed terminal requests seen within the replay window."""

    __tablename__ = "request_nonces"
    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[int] = mapped_column(BigInteger, index=True)


# --- lists and write-backs ------------------------------------------------------------------------
class ListHead(Base):
    __tablename__ = "list_heads"
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class ListEntry(Base):
    """One change to a list; its version is the list's version after the change, given
    by the publisher once the writer's transaction has committed (NULL until then)."""

    __tablename__ = "list_entries"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    list_name: Mapped[str] = mapped_column(String(16))
    version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    card_id: Mapped[str] = mapped_column(String(16))
    op: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(64), default="")
    action_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[int] = Time()
    __table_args__ = (
        UniqueConstraint("list_name", "version"),
        Index(None, "list_name", "card_id"),
        Index(None, "action_id"),
    )


class WriteBackAction(Base):
    __tablename__ = "writeback_actions"
    action_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.card_id"))
    kind: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)
    sealed: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    debt_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created: Mapped[int] = Time()
    applied_at: Mapped[int | None] = Time(nullable=True)
    receipt: Mapped[str | None] = mapped_column(Text, nullable=True)
    __table_args__ = (UniqueConstraint("card_id", "seq"),)


# --- clearing -------------------------------------------------------------------------------------
class CardGap(Base):
    """A card whose cleared events have a gap (card events are numbered seqno = ATC + load
    counter, each event moves one): its events are contiguous up to ``contiguous_seqno``
    and some above are cleared already, since ``since``. A card without a row has its
    events contiguous up to its newest; its highest seqno is always that of its newest
    event (``card_events``), so clearing writes nothing of a card's progress in the common
    case, where the next event follows the newest."""

    __tablename__ = "card_gaps"
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.card_id"), primary_key=True)
    contiguous_seqno: Mapped[int] = mapped_column(BigInteger)
    since: Mapped[int] = mapped_column(BigInteger, index=True)


class CardEventRow(Base):
    """A card-signed balance event taken by clearing: one per (card, seqno)."""

    __tablename__ = "card_events"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    card_id: Mapped[str] = mapped_column(String(16))
    seqno: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[int] = mapped_column(Integer)
    atc: Mapped[int] = mapped_column(BigInteger)
    load_counter: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = Money()
    split: Mapped[int] = Money()
    currency: Mapped[str] = mapped_column(String(3))
    tx_type: Mapped[int] = mapped_column(Integer)
    balance_before: Mapped[int] = Money()
    balance_after: Mapped[int] = Money()
    terminal_id: Mapped[str] = mapped_column(String(16))
    terminal_seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[int] = Time()
    record: Mapped[str] = mapped_column(Text)
    cleared_at: Mapped[int] = Time()
    # The ledger transaction that booked the event (a batch's debits share one per value
    # day); None for an event that moved no money.
    transaction_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    __table_args__ = (UniqueConstraint("card_id", "seqno"),)


class CardEventConflict(Base):
    """A second, different event for a (card, seqno) already taken: evidence of a clone."""

    __tablename__ = "card_event_conflicts"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    card_id: Mapped[str] = mapped_column(String(16), index=True)
    seqno: Mapped[int] = mapped_column(BigInteger)
    terminal_id: Mapped[str] = mapped_column(String(16))
    record: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[int] = Time()
    __table_args__ = (UniqueConstraint("card_id", "seqno", "record"),)


class JournalRecord(Base):
    """A terminal journal entry as uploaded in a batch."""

    __tablename__ = "journal_records"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    card_id: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = Money()
    split: Mapped[int] = Money()
    currency: Mapped[str] = mapped_column(String(3))
    time: Mapped[int] = Time()
    reference: Mapped[str] = mapped_column(String(160), default="")
    entry_hash: Mapped[str] = mapped_column(String(128))
    batch_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    code: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (UniqueConstraint("terminal_id", "seq"),)


class BatchRow(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(16))
    batch_id: Mapped[str] = mapped_column(String(128))
    payload_hash: Mapped[str] = mapped_column(String(64))
    received: Mapped[int] = Time()
    entries: Mapped[int] = mapped_column(Integer)
    mismatch: Mapped[bool] = mapped_column(Boolean, default=False)
    ack: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (UniqueConstraint("terminal_id", "batch_id"),)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    card_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    terminal_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    detail: Mapped[str] = mapped_column(String(500))
    created: Mapped[int] = Time()


# --- agent debits, collections, bank --------------------------------------------------------------
class Debt(Base):
    """The online remainder of a split purchase, owed by the cardholder to the operator."""

    __tablename__ = "debts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.card_id"))
    atc: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = Money()
    currency: Mapped[str] = mapped_column(String(3))
    terminal_id: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str] = mapped_column(String(40))
    cardholder_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    tx_type: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    payload_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(16))
    event_time: Mapped[int] = Time()
    created: Mapped[int] = Time()
    updated: Mapped[int] = Time()
    collection_since: Mapped[int | None] = Time(nullable=True)
    repaid: Mapped[int] = Money()
    __table_args__ = (
        UniqueConstraint("card_id", "atc"),
        UniqueConstraint("terminal_id", "idempotency_key"),
        Index(None, "status"),
    )


class BankInstruction(Base):
    """A direct debit (collection) or a payout sent to the bank; its id is the
    end-to-end id the bank sees, so that a resubmission is recognised there."""

    __tablename__ = "bank_instructions"
    id: Mapped[str] = mapped_column(String(35), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    debt_id: Mapped[str | None] = mapped_column(ForeignKey("debts.id"), nullable=True, index=True)
    settlement_id: Mapped[int | None] = mapped_column(ForeignKey("settlements.id"), nullable=True)
    amount: Mapped[int] = Money()
    currency: Mapped[str] = mapped_column(String(3))
    iban: Mapped[str] = mapped_column(String(34))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(100), default="")
    created: Mapped[int] = Time()
    updated: Mapped[int] = Time()


class CreditEvent(Base):
    __tablename__ = "credit_events"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    cardholder_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    card_id: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = Money()
    reference: Mapped[str] = mapped_column(String(64), default="")
    created: Mapped[int] = Time()


# --- online purchases and loads -------------------------------------------------------------------
class OnlineChallengeRow(Base):
    __tablename__ = "online_challenges"
    challenge: Mapped[str] = mapped_column(String(32), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(16))
    expires: Mapped[int] = Time()
    used_at: Mapped[int | None] = Time(nullable=True)


class OnlineAuth(Base):
    __tablename__ = "online_auths"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    payload_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    card_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    merchant_id: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = Money()
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[int] = mapped_column(Integer, default=0)
    auth_code: Mapped[str] = mapped_column(String(16), default="")
    available_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created: Mapped[int] = Time()
    reversed_at: Mapped[int | None] = Time(nullable=True)
    __table_args__ = (UniqueConstraint("terminal_id", "idempotency_key"),)


class LoadRow(Base):
    __tablename__ = "loads"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    payload_hash: Mapped[str] = mapped_column(String(64))
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.card_id"))
    load_counter: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = Money()
    currency: Mapped[str] = mapped_column(String(3))
    funding: Mapped[str] = mapped_column(String(16))
    auth_id: Mapped[str] = mapped_column(String(16), unique=True)
    authorisation: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    load_certificate: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created: Mapped[int] = Time()
    confirmed_at: Mapped[int | None] = Time(nullable=True)
    __table_args__ = (UniqueConstraint("terminal_id", "idempotency_key"),)


# --- settlement -----------------------------------------------------------------------------------
class Settlement(Base):
    __tablename__ = "settlements"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    business_day: Mapped[dt.date] = mapped_column(Date)
    currency: Mapped[str] = mapped_column(String(3))
    count: Mapped[int] = mapped_column(Integer)
    gross: Mapped[int] = Money()
    fees: Mapped[int] = Money()
    net: Mapped[int] = Money()
    status: Mapped[str] = mapped_column(String(16), default="open")
    payment_file_id: Mapped[int | None] = mapped_column(
        ForeignKey("payment_files.id"), nullable=True
    )
    created: Mapped[int] = Time()
    __table_args__ = (UniqueConstraint("merchant_id", "business_day", "currency"),)


class PaymentFile(Base):
    __tablename__ = "payment_files"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str] = mapped_column(String(35), unique=True)
    business_day: Mapped[dt.date] = mapped_column(Date)
    count: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = Money()
    currency: Mapped[str] = mapped_column(String(3))
    xml: Mapped[str] = mapped_column(Text)
    created: Mapped[int] = Time()


class SettingRow(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# --- operator console -----------------------------------------------------------------------------
class ConsoleUser(Base):
    """A person who logs in to the operator console (``host/console``). The password is
    kept only as an Argon2id hash; a merchant user names its merchant."""

    __tablename__ = "console_users"
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchants.id"), nullable=True)
    display_name: Mapped[str] = mapped_column(String(100), default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created: Mapped[int] = Time()
    last_login: Mapped[int | None] = Time(nullable=True)


class AuditRecord(Base):
    """One operator action: who did what to what, when, why, and how it ended.
    Append-only: the database refuses any UPDATE or DELETE (triggers). Hash-chained:
    ``hash`` is SHA-256 over the row and ``prev_hash`` (the hash of the row before it),
    see :mod:`tallypurse.host.audit`."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    at: Mapped[int] = Time()
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(48))
    target: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(String(500), default="")
    outcome: Mapped[str] = mapped_column(String(16))  # done, refused, failed
    detail: Mapped[str] = mapped_column(String(1000), default="")
    source: Mapped[str] = mapped_column(String(64), default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index(None, "at"), Index(None, "target"))


class AuditHead(Base):
    """The audit chain's newest link (one row, ``id`` 1): the last row's id and hash,
    so that rows cut off the end of the log are seen too."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


# --- credit system (see tallypurse.host.credit) ---------------------------------------------------
class CreditDecision(Base):
    """One scoring of a cardholder: the indicators it came from, the model's score and
    grade with its reason codes, and the grade in force after overrides and the
    starting-grade rule. Append-only history; ``batch_day`` is set by the daily batch
    (once per cardholder and day)."""

    __tablename__ = "credit_decisions"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    cardholder_id: Mapped[str] = mapped_column(ForeignKey("cardholders.id"))
    as_of: Mapped[int] = Time()
    batch_day: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    trigger: Mapped[str] = mapped_column(String(40))
    model_version: Mapped[str] = mapped_column(String(64))
    score: Mapped[int] = mapped_column(Integer)
    model_grade: Mapped[int] = mapped_column(Integer)
    grade: Mapped[int] = mapped_column(Integer)  # in force: 0 none, 1..5 = A..E
    basis: Mapped[str] = mapped_column(String(16))  # model, starting or override
    reasons: Mapped[str] = mapped_column(Text)  # JSON list of reason codes with their points
    indicators: Mapped[str] = mapped_column(Text)  # JSON object of the 17 indicators
    online_balance: Mapped[int] = Money()
    outstanding: Mapped[int] = Money()
    created: Mapped[int] = Time()
    __table_args__ = (
        UniqueConstraint("cardholder_id", "batch_day"),
        Index(None, "cardholder_id", "as_of"),
    )


class CreditOverride(Base):
    """Grades set by hand: the starting grade given at registration, operator overrides
    (with an optional expiry) and their withdrawal (``clear``), with who, when and why.
    Append-only (the database refuses changes); overrides also go to ``audit_log``."""

    __tablename__ = "credit_overrides"
    id: Mapped[int] = mapped_column(PK, primary_key=True)
    cardholder_id: Mapped[str] = mapped_column(ForeignKey("cardholders.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # start, override, clear
    grade: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(100))
    expires: Mapped[int | None] = Time(nullable=True)
    created: Mapped[int] = Time()


class CreditRecordRow(Base):
    """Every credit record the host gave a card (at personalisation or as a write-back)."""

    __tablename__ = "credit_records"
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.card_id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    grade: Mapped[int] = mapped_column(Integer)
    per_tap_overdraft: Mapped[int] = Money()
    max_outstanding: Mapped[int] = Money()
    max_slots: Mapped[int] = mapped_column(Integer)
    allowed_types: Mapped[int] = mapped_column(Integer)
    balance_band: Mapped[int] = mapped_column(Integer)
    outstanding_known: Mapped[int] = Money()
    issued: Mapped[int] = Time()
    expires: Mapped[int] = Time()
    record: Mapped[str] = mapped_column(Text)  # the CreditRecord bytes (hex), unsigned
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("credit_decisions.id"),
                                                    nullable=True)
    action_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the write-back
    created: Mapped[int] = Time()
