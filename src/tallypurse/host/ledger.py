"""The double-entry ledger: accounts, balanced transactions, immutable postings, audit.

Every movement of money is one ledger transaction made of postings whose
amounts (integer minor units, debits positive, credits negative) sum to zero
in each currency. :meth:`Ledger.post` and :meth:`Ledger.post_many` are the
only places postings are written and they refuse anything unbalanced; the
database refuses any change to a posting once written (triggers, see the
migrations). Each transaction has a ``(kind, reference)`` that is unique, so
that a business event cannot be booked twice. An account's ``balance`` is
kept beside its postings and :func:`audit` proves that the two agree.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tallypurse.core.errors import TallypurseError
from tallypurse.host.db.models import Account, LedgerTransaction, Posting, table


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




class LedgerError(TallypurseError):
    """A transaction that the ledger refuses (unbalanced, malformed, booked twice)."""

    code = 2801


@dataclass(frozen=True, slots=True)
class Acct:
    """An account's identity: kind, owner and currency."""

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


class Ledger:
    """Books balanced transactions in the caller's session (its unit of work)."""

    def __init__(self, session: Session, now: int) -> None:
        self.session = session
        self.now = now

    # --- accounts ---------------------------------------------------------------------------
    def account_ids(self, accts: Iterable[Acct]) -> dict[Acct, int]:
        """Ids of these accounts, creating the missing ones."""
        wanted = set(accts)
        if not wanted:
            return {}
        rows = self.session.execute(
            select(Account.id, Account.kind, Account.owner, Account.currency).where(
                tuple_(Account.kind, Account.owner, Account.currency).in_(
                    [(a.kind.value, a.owner, a.currency) for a in wanted]
                )
            )
        ).all()
        out = {Acct(Kind(r.kind), r.owner, r.currency): r.id for r in rows}
        for acct in wanted - out.keys():
            out[acct] = self._create(acct)
        return out

    def _create(self, acct: Acct) -> int:
        try:
            with self.session.begin_nested():
                row = Account(kind=acct.kind.value, owner=acct.owner, currency=acct.currency,
                              balance=0, created=self.now)
                self.session.add(row)
                self.session.flush()
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
        """The account's balance (debit-positive); 0 for an account never used."""
        stmt = select(Account.balance).where(
            Account.kind == acct.kind.value, Account.owner == acct.owner,
            Account.currency == acct.currency,
        )
        if lock and self.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        value = self.session.scalar(stmt)
        return int(value or 0)

    # --- posting ------------------------------------------------------------------------------
    def post(self, entry: Entry) -> int:
        """Book one balanced transaction; returns its id."""
        return self.post_many([entry])[0]

    def post_many(self, entries: Sequence[Entry]) -> list[int]:
        """Book several balanced transactions with a few statements in all."""
        checked = [(e, check_balanced(e)) for e in entries]
        if not checked:
            return []
        ids = self.account_ids(acct for _, legs in checked for acct, _ in legs)
        txn_rows = [
            {
                "kind": e.kind,
                "reference": e.reference,
                "created": self.now,
                "value_time": e.value_time,
                "value_day": day_of(e.value_time),
                "merchant_id": e.merchant_id,
                "card_id": e.card_id,
                "memo": e.memo[:200],
            }
            for e, _ in checked
        ]
        if len({(r["kind"], r["reference"]) for r in txn_rows}) != len(txn_rows):
            raise LedgerError("the same transaction appears twice in one posting")
        txns = table(LedgerTransaction)
        txn_ids = list(self.session.scalars(
            insert(txns).returning(txns.c.id, sort_by_parameter_order=True), txn_rows))
        postings: list[dict[str, Any]] = []
        deltas: dict[int, int] = defaultdict(int)
        for txn_id, (_, legs) in zip(txn_ids, checked, strict=True):
            for acct, amount in legs:
                aid = ids[acct]
                postings.append({"transaction_id": txn_id, "account_id": aid, "amount": amount,
                                 "currency": acct.currency})
                deltas[aid] += amount
        self.session.execute(insert(table(Posting)), postings)
        accounts = table(Account)
        changes = [{"b_id": aid, "b_delta": d} for aid, d in sorted(deltas.items()) if d]
        if changes:
            self.session.execute(
                update(accounts)
                .where(accounts.c.id == bindparam("b_id"))
                .values(balance=accounts.c.balance + bindparam("b_delta")),
                changes,
            )
        return txn_ids

    def exists(self, kind: str, reference: str) -> bool:
        return self.session.scalar(
            select(func.count()).select_from(LedgerTransaction).where(
                LedgerTransaction.kind == kind, LedgerTransaction.reference == reference)
        ) != 0


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
