"""The double-entry ledger: accounts, balanced transactions, immutable postings, audit.

Every movement of money is one ledger transaction made of postings whose
amounts (integer minor units, debits positive, credits negative) sum to zero
in each currency. :meth:`Ledger.post` and :meth:`Ledger.post_many` are the
only places postings are written and they refuse anything unbalanced; the
database refuses any change to a posting once written (triggers, see the
migrations). Each transaction has a ``(kind, reference)`` that is unique, so
that a business event cannot be booked twice (clearing books a batch's debits
as one transaction per value day; each card event names its transaction, see
:mod:`tallypurse.host.clearing`). An account's ``balance`` is
kept beside its postings (moved when the transaction commits, see
:func:`apply_pending_balances`) and :func:`audit` proves that the two agree.

Accounts (kind, owner):

==================  ============  =================================================
kind                owner         what it is
==================  ============  =================================================
purse_float         card id       value held on a card's purse (liability)
online              cardholder    the cardholder's online account (liability)
credit_receivable   ""            split debts the operator is owed (asset)
merchant_payable    merchant id   what the operator owes a merchant (liability)
bank_clearing       ""            the operator's bank account (asset)
fees                ""            fee income (income)
losses              ""            written-off debts, clone losses (expense)
cash                ""            cash taken for loads at terminals (asset)
load_suspense       ""            loads authorised, not yet seen on the card
==================  ============  =================================================
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from tallypurse.core.errors import TallypurseError
from tallypurse.host.db import bulk
from tallypurse.host.db.models import Account, LedgerTransaction, Posting


class Kind(StrEnum):
    PURSE_FLOAT = "purse_float"
    ONLINE = "online"
    CREDIT_RECEIVABLE = "credit_receivable"
    MERCHANT_PAYABLE = "merchant_payable"
    BANK_CLEARING = "bank_clearing"
    FEES = "fees"
    LOSSES = "losses"
    CASH = "cash"
    LOAD_SUSPENSE = "load_suspense"


KINDS = {k.value: k for k in Kind}  # an account kind by its stored name

ACCOUNT_KEY: list[bulk.Column] = [("kind", "text"), ("owner", "text"), ("currency", "text")]
TXN_COLUMNS: list[bulk.Column] = [
    ("kind", "text"), ("reference", "text"), ("created", "bigint"), ("value_time", "bigint"),
    ("value_day", "date"), ("merchant_id", "text"), ("card_id", "text"), ("memo", "text")]
POSTING_COLUMNS: list[bulk.Column] = [
    ("transaction_id", "bigint"), ("account_id", "bigint"), ("amount", "bigint"),
    ("currency", "text")]
PENDING_BALANCES = "tallypurse_ledger_balances"  # Session.info: account id -> delta to apply
CREATED_ACCOUNTS = "tallypurse_ledger_created"  # Session.info: ids of accounts made by this txn


class LedgerError(TallypurseError):
    """A transaction that the ledger refuses (unbalanced, malformed, booked twice)."""

    code = 2801


class Acct(NamedTuple):
    """An account's identity: kind, owner and currency (a tuple: hashed in C, as hot
    paths key thousands of postings by it)."""

    kind: Kind
    owner: str
    currency: str

    @classmethod
    def system(cls, kind: Kind, currency: str) -> Acct:
        return cls(kind, "", currency)

    def __str__(self) -> str:
        return f"{self.kind}:{self.owner}:{self.currency}" if self.owner else (
            f"{self.kind}:{self.currency}"
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """A transaction to book: its legs and what it is about."""

    kind: str
    reference: str
    legs: Sequence[tuple[Acct, int]]
    value_time: int
    merchant_id: str | None = None
    card_id: str | None = None
    memo: str = ""


def day_of(unix: int) -> dt.date:
    return dt.datetime.fromtimestamp(unix, dt.UTC).date()


def check_balanced(entry: Entry) -> list[tuple[Acct, int]]:
    """The entry's non-zero legs; LedgerError unless they balance in every currency."""
    legs: list[tuple[Acct, int]] = []
    for acct, amount in entry.legs:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise LedgerError(f"{entry.kind} {entry.reference}: amounts are integer minor units")
        if amount:
            legs.append((acct, amount))
    if len(legs) < 2:
        raise LedgerError(f"{entry.kind} {entry.reference}: a transaction needs two postings")
    sums: dict[str, int] = defaultdict(int)
    for acct, amount in legs:
        sums[acct.currency] += amount
    unbalanced = {c: s for c, s in sums.items() if s}
    if unbalanced:
        raise LedgerError(f"{entry.kind} {entry.reference}: unbalanced by {unbalanced}")
    if not entry.kind or not entry.reference:
        raise LedgerError("a transaction needs a kind and a reference")
    return legs


class AccountIds:
    """Account ids a process has read, kept across transactions (an account is never
    deleted and its id never changes). Only ids of rows that another transaction
    committed are kept: an account created by the current transaction is not, since
    the transaction may still roll back."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.ids: dict[Acct, int] = {}

    def keep(self, session: Session, found: dict[Acct, int]) -> None:
        mine: set[int] = session.info.get(CREATED_ACCOUNTS, set())
        if len(self.ids) + len(found) > self.limit:
            self.ids.clear()
        for acct, aid in found.items():
            if aid not in mine:
                self.ids[acct] = aid


class Ledger:
    """Books balanced transactions in the caller's session (its unit of work).

    ``known``: account ids kept across transactions (a hot path's own cache)."""

    def __init__(self, session: Session, now: int, known: AccountIds | None = None) -> None:
        self.session = session
        self.now = now
        self.known = known

    # --- accounts ---------------------------------------------------------------------------
    def account_ids(self, accts: Iterable[Acct]) -> dict[Acct, int]:
        """Ids of these accounts, creating the missing ones."""
        wanted = set(accts)
        if not wanted:
            return {}
        out: dict[Acct, int] = {}
        if self.known is not None:
            ids = self.known.ids
            out = {a: i for a in wanted if (i := ids.get(a)) is not None}
        missing = wanted - out.keys() if out else wanted
        if missing:
            rows = bulk.select_with(
                self.session, ACCOUNT_KEY, [(a.kind.value, a.owner, a.currency) for a in missing],
                "SELECT a.id, a.kind, a.owner, a.currency FROM accounts a JOIN v ON "
                "a.kind = v.kind AND a.owner = v.owner AND a.currency = v.currency")
            found = {Acct(KINDS[k], o, c): int(i) for i, k, o, c in rows}
            if self.known is not None:
                self.known.keep(self.session, found)
            out.update(found)
            for acct in sorted(missing - found.keys(), key=str):
                out[acct] = self._create(acct)
        return out

    def _create(self, acct: Acct) -> int:
        try:
            with self.session.begin_nested():
                row = Account(kind=acct.kind.value, owner=acct.owner, currency=acct.currency,
                              balance=0, created=self.now)
                self.session.add(row)
                self.session.flush()
                self.session.info.setdefault(CREATED_ACCOUNTS, set()).add(row.id)
                return row.id
        except IntegrityError:  # created meanwhile by another transaction
            found = self.session.scalar(
                select(Account.id).where(Account.kind == acct.kind.value,
                                         Account.owner == acct.owner,
                                         Account.currency == acct.currency)
            )
            if found is None:
                raise
            return found

    def balance(self, acct: Acct, *, lock: bool = False) -> int:
        """The account's balance (debit-positive); 0 for an account never used. It
        includes what this transaction posted (see :func:`apply_pending_balances`)."""
        stmt = select(Account.id, Account.balance).where(
            Account.kind == acct.kind.value, Account.owner == acct.owner,
            Account.currency == acct.currency,
        )
        if lock and self.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(key_share=True)  # FOR NO KEY UPDATE: see below
        row = self.session.execute(stmt).first()
        if row is None:
            return 0
        pending: dict[int, int] = self.session.info.get(PENDING_BALANCES, {})
        return int(row.balance) + pending.get(int(row.id), 0)

    # --- posting ------------------------------------------------------------------------------
    def post(self, entry: Entry) -> int:
        """Book one balanced transaction; returns its id."""
        return self.post_many([entry])[0]

    def post_many(self, entries: Sequence[Entry], *,
                  known: Mapping[Acct, int] | None = None) -> list[int]:
        """Book several balanced transactions with a few statements in all (whatever
        their number: rows go in bulk, see :mod:`tallypurse.host.db.bulk`). ``known``:
        account ids the caller has already read (the others are looked up)."""
        checked = [(e, check_balanced(e)) for e in entries]
        if not checked:
            return []
        if len({(e.kind, e.reference) for e, _ in checked}) != len(checked):
            raise LedgerError("the same transaction appears twice in one posting")
        s = self.session
        accts = {acct for _, legs in checked for acct, _ in legs}
        ids = {a: i for a, i in (known or {}).items() if a in accts}
        ids.update(self.account_ids(accts - ids.keys()))
        s.flush()
        postgres = bulk.is_postgres(s)
        days: dict[int, Any] = {}
        txn_rows = []
        for e, _ in checked:
            day = days.get(e.value_time)
            if day is None:
                day = days[e.value_time] = day_of(e.value_time)
            txn_rows.append((e.kind, e.reference, self.now, e.value_time,
                             day if postgres else day.isoformat(), e.merchant_id, e.card_id,
                             e.memo[:200]))
        if postgres:
            got = bulk.insert(s, "ledger_transactions", TXN_COLUMNS, txn_rows,
                              returning="id, kind, reference")
            by_ref = {(k, r): int(i) for i, k, r in got}
            txn_ids = [by_ref[(e.kind, e.reference)] for e, _ in checked]
        else:  # SQLite: this transaction holds the database's write lock (BEGIN IMMEDIATE)
            first = int(s.connection().exec_driver_sql(
                "SELECT COALESCE(MAX(id), 0) FROM ledger_transactions").scalar_one()) + 1
            txn_ids = list(range(first, first + len(txn_rows)))
            bulk.insert(s, "ledger_transactions", [("id", "bigint"), *TXN_COLUMNS],
                        [(i, *r) for i, r in zip(txn_ids, txn_rows, strict=True)])
        postings: list[tuple[int, int, int, str]] = []
        deltas: dict[int, int] = defaultdict(int)
        for txn_id, (_, legs) in zip(txn_ids, checked, strict=True):
            for acct, amount in legs:
                aid = ids[acct]
                postings.append((txn_id, aid, amount, acct.currency))
                deltas[aid] += amount
        bulk.insert(s, "postings", POSTING_COLUMNS, postings)
        pending: dict[int, int] = s.info.setdefault(PENDING_BALANCES, {})
        for aid, d in deltas.items():
            pending[aid] = pending.get(aid, 0) + d
        return txn_ids

    def _add_to_balances(self, changes: list[tuple[int, int]]) -> None:
        """Move account balances, locking the rows in id order (no deadlock between two
        writers that share accounts). The lock is FOR NO KEY UPDATE, the lock an UPDATE
        of the balance takes: FOR UPDATE would also wait for the key-share locks that
        every posting's foreign key takes on its account, so that two writers that had
        both posted to an account would wait for each other at commit."""
        s = self.session
        changes = [(aid, d) for aid, d in changes if d]
        if not changes:
            return
        postgres = bulk.is_postgres(s)
        if postgres and len(changes) == 1:
            (aid, delta), = changes
            bulk.plain(s, "UPDATE accounts SET balance = balance + :delta WHERE id = :id",
                       {"id": aid, "delta": delta})
            return
        if postgres:  # two statements whatever the number (psycopg's executemany spins)
            bulk.plain(s, "SELECT id FROM accounts WHERE id = ANY(CAST(:ids AS bigint[])) "
                          "ORDER BY id FOR NO KEY UPDATE",
                       {"ids": bulk.array_literal([aid for aid, _ in changes])})
        # SQLite: this transaction holds the database's write lock (BEGIN IMMEDIATE)
        bulk.update(s, "accounts", ("id", "bigint"),
                    [("balance", "bigint", "{t} + {v}")], changes)

    def exists(self, kind: str, reference: str) -> bool:
        return self.session.scalar(
            select(func.count()).select_from(LedgerTransaction).where(
                LedgerTransaction.kind == kind, LedgerTransaction.reference == reference)
        ) != 0


# --- balances, moved when the transaction commits ------------------------------------------------
def apply_pending_balances(session: Session) -> None:
    """Move the account balances that this transaction's postings changed.

    Postings are written at once, but the ``balance`` beside them moves just before
    the transaction commits, in account order: the rows that many writers share
    (a merchant's payable, the credit receivable) are locked for the commit only,
    and a transaction whose postings cancel out on an account (a debt opened and
    collected at once) does not touch it. Runs by itself before every commit; call it
    to read balances with plain SQL inside the transaction (the audit does).
    """
    pending: dict[int, int] | None = session.info.pop(PENDING_BALANCES, None)
    if pending:
        Ledger(session, 0)._add_to_balances(sorted(pending.items()))


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if not session.in_nested_transaction():
        apply_pending_balances(session)


@event.listens_for(Session, "after_transaction_create")
def _fresh_transaction(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # nothing of a rolled-back transaction carries over
        session.info.pop(PENDING_BALANCES, None)
        session.info.pop(CREATED_ACCOUNTS, None)


# --- audit ------------------------------------------------------------------------------------
@dataclass
class AuditReport:
    balanced: bool
    totals: dict[str, int]  # per currency: sum of every posting (must be 0)
    unbalanced_transactions: list[dict[str, Any]] = field(default_factory=list)
    account_differences: list[dict[str, Any]] = field(default_factory=list)
    currency_mismatches: list[dict[str, Any]] = field(default_factory=list)
    accounts: int = 0
    transactions: int = 0
    postings: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "balanced": self.balanced,
            "totals": self.totals,
            "differences": {
                "unbalanced_transactions": self.unbalanced_transactions,
                "accounts": self.account_differences,
                "currency_mismatches": self.currency_mismatches,
            },
            "counts": {"accounts": self.accounts, "transactions": self.transactions,
                       "postings": self.postings},
        }


def audit(session: Session, *, limit: int = 100) -> AuditReport:
    """Prove that the ledger sums to zero, that every transaction balances and that
    every account's balance equals the sum of its postings."""
    apply_pending_balances(session)
    totals = {
        cur: int(total)
        for cur, total in session.execute(
            select(Posting.currency, func.sum(Posting.amount)).group_by(Posting.currency)
        ).all()
    }
    unbalanced = [
        {"transaction_id": t, "currency": c, "sum": int(s)}
        for t, c, s in session.execute(
            select(Posting.transaction_id, Posting.currency, func.sum(Posting.amount))
            .group_by(Posting.transaction_id, Posting.currency)
            .having(func.sum(Posting.amount) != 0)
            .limit(limit)
        ).all()
    ]
    sums = (
        select(Posting.account_id, func.sum(Posting.amount).label("total"))
        .group_by(Posting.account_id)
        .subquery()
    )
    differences = [
        {"account": str(Acct(Kind(k), o, c)), "balance": int(b), "postings": int(p)}
        for k, o, c, b, p in session.execute(
            select(Account.kind, Account.owner, Account.currency, Account.balance,
                   func.coalesce(sums.c.total, 0))
            .outerjoin(sums, sums.c.account_id == Account.id)
            .where(Account.balance != func.coalesce(sums.c.total, 0))
            .limit(limit)
        ).all()
    ]
    mismatches = [
        {"posting_id": pid, "posting_currency": pc, "account_currency": ac}
        for pid, pc, ac in session.execute(
            select(Posting.id, Posting.currency, Account.currency)
            .join(Account, Account.id == Posting.account_id)
            .where(Posting.currency != Account.currency)
            .limit(limit)
        ).all()
    ]
    return AuditReport(
        balanced=not unbalanced and not differences and not mismatches
        and all(v == 0 for v in totals.values()),
        totals=totals,
        unbalanced_transactions=unbalanced,
        account_differences=differences,
        currency_mismatches=mismatches,
        accounts=session.scalar(select(func.count()).select_from(Account)) or 0,
        transactions=session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0,
        postings=session.scalar(select(func.count()).select_from(Posting)) or 0,
    )
