"""The host's own rows, turned into the event records the credit indicators are made of.

:func:`load_inputs` reads, for a set of cardholders and a moment ``as_of``, with a
fixed handful of statements per call (never one per cardholder):

=========================  ===============================================================
indicator input            host rows
=========================  ===============================================================
taps                       cleared DEBIT events of the cardholder's cards (``card_events``)
                           and approved online purchases (``online_auths``)
top-ups                    loads whose LOAD event cleared (``loads``, status confirmed) not
                           funded from the online account, and bank transfers into the
                           online account (``fund_online`` ledger transactions)
balances                   one snapshot per day of the window, rebuilt from the ledger:
                           the purse float of the cardholder's cards (the host's view of
                           the purses) and the online account, at each day's ``as_of`` time
split debts                ``debts`` and how each ended (settled online, settled by the
                           bank, in collection since, repaid later, written off)
blacklist history          ``list_entries`` adding one of the cardholder's cards to the
                           blacklist (a replaced card's entry does not count)
bank account verified      an active linked bank account with a direct-debit mandate
card evaluation            the card verification results each cleared DEBIT event of the
                           last 90 days carries (``card_events.record``, signed by the
                           card): one evaluation per purchase (``evaluate_cvr``), averaged
                           by the indicators; missing when there is none
=========================  ===============================================================

Events after ``as_of`` are left out, so the same call gives the inputs as of a
past day (a debt repaid after ``as_of`` counts as it stood then).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tallypurse.core.messages import EVENT_RECORD_LEN, CardEvent
from tallypurse.core.protocol import EventKind
from tallypurse.credit import (
    BalanceSnapshot,
    BlacklistEntry,
    CardEvaluation,
    Indicators,
    SplitDebt,
    SplitOutcome,
    Tap,
    TopUp,
    compute_indicators,
)
from tallypurse.credit.indicators import DAY, DEFAULT_WINDOW_DAYS, EVALUATION_DAYS
from tallypurse.host.db.models import (
    Account,
    BankAccount,
    Card,
    CardEventRow,
    Cardholder,
    Debt,
    LedgerTransaction,
    ListEntry,
    LoadRow,
    OnlineAuth,
    Posting,
)
from tallypurse.host.ledger import Kind

OPEN_DEBTS = ("open", "bank_pending", "collection")
NOT_ADVERSE_BLACKLISTING = frozenset({"replaced"})
CHUNK = 500  # ids per IN (...) list
# where the card verification results sit in a signed event record, as hex digits
# (the CardEvent's last field, 2 bytes; docs/protocol.md 11.3)
_CVR_HEX = slice(2 * (CardEvent.size() - 2), 2 * CardEvent.size())
_RECORD_HEX_LEN = 2 * EVENT_RECORD_LEN


def record_cvr(record_hex: str) -> int | None:
    """The card verification results of a stored signed event record (hex, as clearing
    keeps it after checking its TAC); None for a record of another layout."""
    if len(record_hex) != _RECORD_HEX_LEN:
        return None
    try:
        return int(record_hex[_CVR_HEX], 16)
    except ValueError:
        return None


@dataclass(slots=True)
class HolderInputs:
    """One cardholder's event records, and what the host knows of them now."""

    holder_id: str
    currency: str
    opened_at: int
    card_ids: list[str] = field(default_factory=list)
    taps: list[Tap] = field(default_factory=list)
    topups: list[TopUp] = field(default_factory=list)
    balances: list[BalanceSnapshot] = field(default_factory=list)
    debts: list[SplitDebt] = field(default_factory=list)
    blacklist: list[BlacklistEntry] = field(default_factory=list)
    evaluations: list[CardEvaluation] = field(default_factory=list)
    bank_account_verified: bool = False
    online_balance: int = 0  # at as_of, minor units (what the cardholder holds)
    outstanding: int = 0  # unpaid split debts, now

    def indicators(self, as_of: int, window_days: int = DEFAULT_WINDOW_DAYS) -> Indicators:
        return compute_indicators(
            as_of=as_of, opened_at=min(self.opened_at, as_of), taps=self.taps,
            topups=self.topups, balances=self.balances, debts=self.debts,
            blacklist=self.blacklist, evaluations=self.evaluations,
            bank_account_verified=self.bank_account_verified, window_days=window_days)


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i:i + CHUNK])


def split_debt(d: Debt) -> SplitDebt | None:
    """A host debt as the indicators see it; None for a cancelled one (it never was)."""
    failed = d.collection_since
    if d.status == "cancelled":
        return None
    if d.status in ("open", "bank_pending"):
        return SplitDebt(d.event_time, d.amount, SplitOutcome.PENDING)
    if d.status in ("collection", "written_off"):
        return SplitDebt(d.event_time, d.amount, SplitOutcome.IN_COLLECTION,
                         failed_at=failed if failed is not None else d.updated)
    resolved = max(d.updated, d.event_time)
    if failed is not None or d.status == "repaid":  # repaid after its collection failed
        return SplitDebt(d.event_time, d.amount, SplitOutcome.REPAID_LATE,
                         failed_at=failed if failed is not None else d.updated,
                         resolved_at=resolved)
    outcome = SplitOutcome.SETTLED_BANK if d.status == "settled_bank" else (
        SplitOutcome.SETTLED_ONLINE)
    return SplitDebt(d.event_time, d.amount, outcome, resolved_at=resolved)


def _daily_balances(opening: int, moves: list[tuple[int, int]], as_of: int,
                    days: int) -> list[tuple[int, int]]:
    """(time, balance) at ``as_of - k days`` for k < days, from an opening balance
    (before the first move) and time-ordered (time, amount) moves."""
    times = [t for t, _ in moves]
    running = [opening]
    for _, amount in moves:
        running.append(running[-1] + amount)
    out = []
    for k in range(days):
        at = as_of - k * DAY
        out.append((at, running[bisect.bisect_right(times, at)]))
    return out


def load_inputs(session: Session, holder_ids: Sequence[str], as_of: int, *,
                window_days: int = DEFAULT_WINDOW_DAYS) -> dict[str, HolderInputs]:
    """The inputs of every cardholder in ``holder_ids`` as of ``as_of``."""
    out: dict[str, HolderInputs] = {}
    for chunk in _chunks(sorted(set(holder_ids))):
        out.update(_load_chunk(session, chunk, as_of, window_days))
    return out


def _load_chunk(s: Session, ids: list[str], as_of: int,
                window_days: int) -> dict[str, HolderInputs]:
    start = as_of - window_days * DAY
    out = {h.id: HolderInputs(h.id, h.currency, h.created)
           for h in s.scalars(select(Cardholder).where(Cardholder.id.in_(ids)))}
    owner: dict[str, str] = {}
    for card_id, holder_id in s.execute(
            select(Card.card_id, Card.cardholder_id).where(Card.cardholder_id.in_(ids))
            .order_by(Card.card_id)):
        if holder_id in out:
            owner[card_id] = holder_id
            out[holder_id].card_ids.append(card_id)
    cards = sorted(owner)

    for card_ids in _chunks(cards):
        # taps: cleared purchases from the purse, and online purchases
        for cid, at, amount, split in s.execute(
                select(CardEventRow.card_id, CardEventRow.time, CardEventRow.amount,
                       CardEventRow.split)
                .where(CardEventRow.card_id.in_(card_ids),
                       CardEventRow.kind == int(EventKind.DEBIT),
                       CardEventRow.time >= start, CardEventRow.time <= as_of)):
            out[owner[cid]].taps.append(Tap(at, amount + split, split))
        for online_card, at, amount in s.execute(
                select(OnlineAuth.card_id, OnlineAuth.created, OnlineAuth.amount)
                .where(OnlineAuth.card_id.in_(card_ids), OnlineAuth.status == "approved",
                       OnlineAuth.created >= start, OnlineAuth.created <= as_of)):
            if online_card is not None:
                out[owner[online_card]].taps.append(Tap(at, amount))
        # top-ups of the purse that reached the card (money from outside, not the
        # online account moving to the purse)
        for cid, at, amount in s.execute(
                select(LoadRow.card_id, LoadRow.created, LoadRow.amount)
                .where(LoadRow.card_id.in_(card_ids), LoadRow.status == "confirmed",
                       LoadRow.funding != "online_account",
                       LoadRow.created >= start, LoadRow.created <= as_of)):
            out[owner[cid]].topups.append(TopUp(at, amount))
        # the card's own evaluation of each purchase of the last 90 days
        for cid, at, record in s.execute(
                select(CardEventRow.card_id, CardEventRow.time, CardEventRow.record)
                .where(CardEventRow.card_id.in_(card_ids),
                       CardEventRow.kind == int(EventKind.DEBIT),
                       CardEventRow.time > as_of - EVALUATION_DAYS * DAY,
                       CardEventRow.time <= as_of)):
            cvr = record_cvr(record)
            if cvr is not None:
                out[owner[cid]].evaluations.append(CardEvaluation.of_event(at, cvr))
        # blacklist history
        for cid, at, reason in s.execute(
                select(ListEntry.card_id, ListEntry.created, ListEntry.reason)
                .where(ListEntry.list_name == "blacklist", ListEntry.op == "add",
                       ListEntry.card_id.in_(card_ids), ListEntry.created <= as_of)):
            if reason not in NOT_ADVERSE_BLACKLISTING:
                out[owner[cid]].blacklist.append(BlacklistEntry(at, reason))

    # split debts, whole history (taken by as_of)
    for d in s.scalars(select(Debt).where(Debt.cardholder_id.in_(ids),
                                          Debt.event_time <= as_of)):
        holder = out.get(d.cardholder_id or "")
        if holder is None:
            continue
        sd = split_debt(d)
        if sd is not None:
            holder.debts.append(sd)
        if d.status in OPEN_DEBTS:
            holder.outstanding += d.amount - d.repaid

    for holder_id in s.scalars(select(BankAccount.cardholder_id).where(
            BankAccount.cardholder_id.in_(ids), BankAccount.status == "active",
            BankAccount.mandate_id != "")):
        out[holder_id].bank_account_verified = True

    _balances(s, out, owner, as_of, start, window_days)
    return out


def _balances(s: Session, out: dict[str, HolderInputs], owner: dict[str, str], as_of: int,
              start: int, window_days: int) -> None:
    """Daily balance snapshots from the ledger, and bank transfers in as top-ups."""
    accounts: dict[int, tuple[str, str]] = {}  # account id -> (holder, "purse" | "online")
    rows = list(s.execute(select(Account.id, Account.kind, Account.owner).where(
        Account.kind == Kind.ONLINE.value, Account.owner.in_(list(out)))))
    for card_ids in _chunks(sorted(owner)):
        rows += s.execute(select(Account.id, Account.kind, Account.owner).where(
            Account.kind == Kind.PURSE_FLOAT.value, Account.owner.in_(card_ids)))
    for acc_id, kind, acc_owner in rows:
        holder_id = acc_owner if kind == Kind.ONLINE.value else owner[acc_owner]
        accounts[acc_id] = (holder_id, "online" if kind == Kind.ONLINE.value else "purse")
    if not accounts:
        return
    opening: dict[tuple[str, str], int] = defaultdict(int)
    moves: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    ids = sorted(accounts)
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        for acc_id, total in s.execute(
                select(Posting.account_id, func.sum(Posting.amount))
                .join(LedgerTransaction, LedgerTransaction.id == Posting.transaction_id)
                .where(Posting.account_id.in_(part), LedgerTransaction.value_time < start)
                .group_by(Posting.account_id)):
            opening[accounts[acc_id]] -= int(total)  # liabilities: credit-negative
        for acc_id, at, amount, kind in s.execute(
                select(Posting.account_id, LedgerTransaction.value_time, Posting.amount,
                       LedgerTransaction.kind)
                .join(LedgerTransaction, LedgerTransaction.id == Posting.transaction_id)
                .where(Posting.account_id.in_(part), LedgerTransaction.value_time >= start,
                       LedgerTransaction.value_time <= as_of)):
            key = accounts[acc_id]
            moves[key].append((at, -amount))
            if kind == "fund_online" and key[1] == "online" and amount < 0:
                out[key[0]].topups.append(TopUp(at, -amount))
    for holder in out.values():
        days = max(1, min(window_days, (as_of - holder.opened_at) // DAY + 1))
        series = {}
        for which in ("purse", "online"):
            key = (holder.holder_id, which)
            ordered = sorted(moves.get(key, []))
            series[which] = _daily_balances(opening.get(key, 0), ordered, as_of, days)
        holder.online_balance = series["online"][0][1]
        holder.balances = [BalanceSnapshot(at, max(purse, 0), online)
                           for (at, purse), (_, online) in zip(series["purse"], series["online"],
                                                               strict=True)]
