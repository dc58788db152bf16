"""What the console's pages show, read from the host's database.

Each function opens one unit of work, reads, and returns plain data for a
template: no page writes. Amounts stay integer minor units with their
currency (the templates format them; the charts get integers too). Days are
UTC days of the host's clock (``host.now()``), so a test clock moves them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from tallypurse.core.errors import TallypurseError
from tallypurse.core.protocol import EventKind, TxType
from tallypurse.credit.metrics import psi
from tallypurse.host.credit import letter
from tallypurse.host.db.models import (
    Account,
    BatchRow,
    Card,
    CardEventConflict,
    CardEventRow,
    Cardholder,
    CreditDecision,
    CreditEvent,
    CreditOverride,
    Debt,
    LedgerTransaction,
    ListEntry,
    LoadRow,
    Merchant,
    OnlineAuth,
    PaymentFile,
    Posting,
    Settlement,
    Terminal,
    WriteBackAction,
)
from tallypurse.host.errors import NOT_FOUND, HostError
from tallypurse.host.ledger import Kind
from tallypurse.host.lists import ACTIONS, BLACKLIST
from tallypurse.host.registry import CardInfo
from tallypurse.host.service import Host
from tallypurse.host.settlement import sales_in
from tallypurse.host.tms import TerminalStatus

log = logging.getLogger("tallypurse.host.console")
DAY = 86_400
RECENT_DAYS = 14

# Debt states as an operator reads them.
DEBT_GROUPS: dict[str, tuple[str, ...]] = {
    "pending": ("open", "bank_pending"),
    "collected online": ("settled",),
    "collected from bank": ("settled_bank",),
    "failed, in collection": ("collection",),
    "repaid by a load": ("repaid",),
    "written off": ("written_off",),
    "cancelled": ("cancelled",),
}


def day_of(unix: int) -> dt.date:
    return dt.datetime.fromtimestamp(unix, dt.UTC).date()


def tx_type_name(value: int) -> str:
    try:
        return TxType(value).name.lower()
    except ValueError:
        return f"type {value}"


@dataclass
class Tally:
    count: int = 0
    amount: int = 0

    def add(self, count: int, amount: int) -> None:
        self.count += count
        self.amount += amount


# --- dashboard ---------------------------------------------------------------------------------
@dataclass
class Dashboard:
    today: dt.date
    days: list[dt.date]
    currency: str
    currencies: list[str]
    # today, by channel (offline, split, online, loads) and by purchase type
    today_channels: dict[str, Tally]
    today_types: dict[str, Tally]
    # recent days: purchase volume (minor units) per type per day, and channel totals
    series: dict[str, list[int]]
    recent_channels: dict[str, Tally]
    debts: dict[str, Tally]
    clones: list[dict[str, Any]]
    broken_chains: list[dict[str, Any]]
    old_gaps: list[dict[str, Any]]
    mismatches: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    stale_terminals: list[TerminalStatus]

    def chart(self) -> dict[str, Any]:
        labels = [d.isoformat() for d in self.days]
        return {
            "volume": {"labels": labels, "currency": self.currency,
                       "series": [{"label": k, "data": v} for k, v in self.series.items()]},
            "shares": {"currency": self.currency,
                       "labels": ["offline", "split", "online"],
                       "data": [self.recent_channels[k].amount
                                for k in ("offline", "split", "online")]},
        }


def _primary_currency(s: Session) -> tuple[str, list[str]]:
    rows = s.execute(select(Card.currency, func.count()).group_by(Card.currency)
                     .order_by(func.count().desc())).all()
    merchants = s.scalars(select(Merchant.currency).distinct()).all()
    found = [c for c, _ in rows] + [c for c in merchants if c not in {r[0] for r in rows}]
    return (found[0] if found else "EUR"), found or ["EUR"]


def dashboard(host: Host, currency: str | None = None, days: int = RECENT_DAYS) -> Dashboard:
    now = host.now()
    today_n = now // DAY
    first = today_n - days + 1
    day_list = [day_of((first + i) * DAY) for i in range(days)]
    with host.uow() as uow:
        s = uow.session
        primary, currencies = _primary_currency(s)
        cur = currency if currency in currencies else primary
        day_col = (CardEventRow.time // DAY).label("d")
        is_split = case((CardEventRow.split > 0, 1), else_=0).label("is_split")
        events = s.execute(
            select(day_col, CardEventRow.kind, CardEventRow.tx_type, is_split, func.count(),
                   func.coalesce(func.sum(CardEventRow.amount + CardEventRow.split), 0))
            .where(CardEventRow.time >= first * DAY, CardEventRow.currency == cur,
                   CardEventRow.kind.in_((EventKind.DEBIT, EventKind.LOAD)))
            .group_by(day_col, CardEventRow.kind, CardEventRow.tx_type, is_split)).all()
        online_day = (OnlineAuth.created // DAY).label("d")
        online = s.execute(
            select(online_day, func.count(), func.coalesce(func.sum(OnlineAuth.amount), 0))
            .where(OnlineAuth.created >= first * DAY, OnlineAuth.status == "approved",
                   OnlineAuth.currency == cur)
            .group_by(online_day)).all()
        debt_rows = s.execute(
            select(Debt.status, func.count(), func.coalesce(func.sum(Debt.amount), 0))
            .where(Debt.currency == cur).group_by(Debt.status)).all()
        mismatched = s.execute(
            select(BatchRow.terminal_id, BatchRow.batch_id, BatchRow.received)
            .where(BatchRow.mismatch.is_(True)).order_by(BatchRow.id.desc()).limit(20)).all()
    today_channels = {k: Tally() for k in ("offline", "split", "online", "loads")}
    recent_channels = {k: Tally() for k in ("offline", "split", "online", "loads")}
    today_types: dict[str, Tally] = {}
    series: dict[str, list[int]] = {}
    for d, kind, tx_type, split_flag, count, amount in events:
        d, count, amount = int(d), int(count), int(amount)
        if not first <= d <= today_n:
            continue  # a card clock ahead of the host's
        channel = "loads" if kind == EventKind.LOAD else ("split" if split_flag else "offline")
        recent_channels[channel].add(count, amount)
        if d == today_n:
            today_channels[channel].add(count, amount)
        if kind == EventKind.DEBIT:
            name = tx_type_name(tx_type)
            series.setdefault(name, [0] * days)[d - first] += amount
            if d == today_n:
                today_types.setdefault(name, Tally()).add(count, amount)
    for d, count, amount in online:
        d = int(d)
        recent_channels["online"].add(int(count), int(amount))
        series.setdefault("online", [0] * days)[d - first] += int(amount)
        if d == today_n:
            today_channels["online"].add(int(count), int(amount))
            today_types.setdefault("online", Tally()).add(int(count), int(amount))
    by_status = {status: (int(n), int(a)) for status, n, a in debt_rows}
    debts = {}
    for label, states in DEBT_GROUPS.items():
        t = Tally()
        for st in states:
            t.add(*by_status.get(st, (0, 0)))
        debts[label] = t
    clones = host.reports.clones()
    alerts = host.reports.alerts(limit=10)
    return Dashboard(
        today=day_of(now), days=day_list, currency=cur, currencies=currencies,
        today_channels=today_channels, today_types=dict(sorted(today_types.items())),
        series=dict(sorted(series.items())), recent_channels=recent_channels, debts=debts,
        clones=[c for c in clones if c["conflicting_events"]],
        broken_chains=[c for c in clones if not c["conflicting_events"]],
        old_gaps=host.reports.gaps(),
        mismatches=[{"terminal_id": t, "batch_id": b, "received": r} for t, b, r in mismatched],
        alerts=alerts,
        stale_terminals=[t for t in host.tms.terminals() if t.stale],
    )


# --- cards -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CardRow:
    card_id: str
    status: str
    blacklisted: bool
    cardholder_id: str | None
    cardholder_name: str
    issued: int
    currency: str


def search_cards(host: Host, query: str = "", limit: int = 50) -> list[CardRow]:
    """Cards whose id starts with ``query``, or whose cardholder's id or name contains it."""
    q = query.strip()
    stmt = (select(Card, Cardholder.name).outerjoin(Cardholder,
                                                   Cardholder.id == Card.cardholder_id)
            .order_by(Card.issued.desc(), Card.card_id).limit(limit))
    if q:
        q = q.lower()
        stmt = stmt.where(or_(Card.card_id.startswith(q, autoescape=True),
                              func.lower(Cardholder.id).contains(q, autoescape=True),
                              func.lower(Cardholder.name).contains(q, autoescape=True)))
    with host.uow() as uow:
        return [CardRow(c.card_id, c.status, c.blacklisted, c.cardholder_id, name or "",
                        c.issued, c.currency) for c, name in uow.session.execute(stmt)]


@dataclass
class CardPage:
    card: Card
    holder: Cardholder | None
    online_balance: int | None
    bank_linked: bool
    info: CardInfo  # the host's view of the purse and the card's clearing progress
    events: list[CardEventRow]
    gaps: list[tuple[int, int]]
    conflicts: list[CardEventConflict]
    online: list[OnlineAuth]
    loads: list[LoadRow]
    debts: list[Debt]
    credit_events: list[CreditEvent]
    blacklist_entries: list[ListEntry]
    open_actions: list[WriteBackAction]
    replacement_candidates: list[str] = field(default_factory=list)

    @property
    def on_blacklist(self) -> bool:
        return self.card.blacklisted

    @property
    def purse_host_view(self) -> int:
        return self.info.purse_host_view

    def chain(self) -> dict[str, Any]:
        """The balance chain for the chart: one point per event, in counter order."""
        return {"currency": self.card.currency,
                "labels": [f"#{e.seqno}" for e in self.events],
                "before": [e.balance_before for e in self.events],
                "after": [e.balance_after for e in self.events]}


EVENT_LIMIT = 500


def card_page(host: Host, card_id: str) -> CardPage:
    with host.uow() as uow:
        s = uow.session
        card = host.registry.card(s, card_id)
        holder = s.get(Cardholder, card.cardholder_id) if card.cardholder_id else None
        events = list(reversed(s.scalars(
            select(CardEventRow).where(CardEventRow.card_id == card_id)
            .order_by(CardEventRow.seqno.desc()).limit(EVENT_LIMIT)).all()))
        gaps = [(a.seqno, b.seqno) for a, b in pairwise(events)
                if b.seqno != a.seqno + 1]
        conflicts = list(s.scalars(select(CardEventConflict).where(
            CardEventConflict.card_id == card_id).order_by(CardEventConflict.id)))
        online = list(s.scalars(select(OnlineAuth).where(OnlineAuth.card_id == card_id)
                                .order_by(OnlineAuth.id.desc()).limit(100)))
        loads = list(s.scalars(select(LoadRow).where(LoadRow.card_id == card_id)
                               .order_by(LoadRow.id.desc()).limit(100)))
        debts = list(s.scalars(select(Debt).where(Debt.card_id == card_id)
                               .order_by(Debt.atc.desc())))
        credit_events = list(s.scalars(select(CreditEvent).where(CreditEvent.card_id == card_id)
                                       .order_by(CreditEvent.id.desc()).limit(100)))
        blacklist_entries = list(s.scalars(
            select(ListEntry).where(ListEntry.list_name == BLACKLIST,
                                    ListEntry.card_id == card_id)
            .order_by(ListEntry.version.desc())))
        open_actions = list(s.scalars(select(WriteBackAction).where(
            WriteBackAction.card_id == card_id, WriteBackAction.status == "pending")
            .order_by(WriteBackAction.seq)))
        bank_linked = host.registry.bank_account(s, card.cardholder_id) is not None
        candidates: list[str] = []
        if holder is not None:
            candidates = list(s.scalars(select(Card.card_id).where(
                Card.cardholder_id == holder.id, Card.card_id != card_id,
                Card.status == "active").order_by(Card.card_id)))
        s.expunge_all()  # the rows outlive the (read-only, rolled back) transaction
    info = host.registry.card_info(card_id)
    balance = host.registry.online_balance(holder.id) if holder is not None else None
    return CardPage(card, holder, balance, bank_linked, info, events, gaps,
                    conflicts, online, loads, debts, credit_events, blacklist_entries,
                    open_actions, candidates)


# --- terminals, merchants, settlement ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MerchantRow:
    id: str
    name: str
    currency: str
    fee_basis_points: int
    status: str
    terminals: int
    payable: int


def merchants(host: Host, merchant_id: str | None = None) -> list[MerchantRow]:
    with host.uow() as uow:
        s = uow.session
        counts = dict(s.execute(select(Terminal.merchant_id, func.count())
                                .group_by(Terminal.merchant_id)).all())
        stmt = select(Merchant).order_by(Merchant.name, Merchant.id)
        if merchant_id is not None:
            stmt = stmt.where(Merchant.id == merchant_id)
        rows = list(s.scalars(stmt))
        s.expunge_all()
    return [MerchantRow(m.id, m.name, m.currency, m.fee_basis_points, m.status,
                        int(counts.get(m.id, 0)), host.settlement.merchant_balance(m.id))
            for m in rows]


def merchant_names(host: Host) -> dict[str, str]:
    with host.uow() as uow:
        return dict(uow.session.execute(select(Merchant.id, Merchant.name)).all())


@dataclass(frozen=True, slots=True)
class DayTotal:
    day: str
    currency: str
    merchants: int
    count: int
    gross: int
    fees: int
    net: int
    open: int  # settlements not yet in a payout file


def settlement_days(host: Host, limit: int = 60) -> list[DayTotal]:
    with host.uow() as uow:
        rows = uow.session.execute(
            select(Settlement.business_day, Settlement.currency, func.count(),
                   func.sum(Settlement.count), func.sum(Settlement.gross),
                   func.sum(Settlement.fees), func.sum(Settlement.net),
                   func.sum(case((Settlement.payment_file_id.is_(None), 1), else_=0)))
            .group_by(Settlement.business_day, Settlement.currency)
            .order_by(Settlement.business_day.desc()).limit(limit)).all()
    return [DayTotal(d.isoformat(), c, int(n), int(k or 0), int(g or 0), int(f or 0),
                     int(net or 0), int(o or 0)) for d, c, n, k, g, f, net, o in rows]


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    kind: str
    message_id: str
    business_day: str
    count: int
    total: int
    currency: str
    created: int


def payment_files(host: Host, limit: int = 50) -> list[FileRow]:
    with host.uow() as uow:
        return [FileRow(f.id, f.kind, f.message_id, f.business_day.isoformat(), f.count,
                        f.total, f.currency, f.created)
                for f in uow.session.scalars(select(PaymentFile)
                                             .order_by(PaymentFile.id.desc()).limit(limit))]


def payment_file(host: Host, file_id: int) -> tuple[FileRow, str]:
    """A stored payout or collection file and its XML."""
    with host.uow() as uow:
        f = uow.session.get(PaymentFile, file_id)
        if f is None:
            raise HostError(NOT_FOUND, f"no payment file {file_id}")
        return (FileRow(f.id, f.kind, f.message_id, f.business_day.isoformat(), f.count,
                        f.total, f.currency, f.created), f.xml)


@dataclass(frozen=True, slots=True)
class UnsettledDay:
    day: str
    count: int  # sales
    amount: int  # what the merchant is owed for the day (refunds and cancels netted)


def unsettled(host: Host, merchant_id: str) -> list[UnsettledDay]:
    """What the merchant is owed, by value day, that no settlement took yet."""
    payable = select(Account.id).where(Account.kind == Kind.MERCHANT_PAYABLE.value,
                                       Account.owner == merchant_id).scalar_subquery()
    sales = func.sum(sales_in())
    with host.uow() as uow:
        rows = uow.session.execute(
            select(LedgerTransaction.value_day, sales, func.sum(Posting.amount))
            .join(Posting, Posting.transaction_id == LedgerTransaction.id)
            .where(LedgerTransaction.merchant_id == merchant_id,
                   LedgerTransaction.settlement_id.is_(None), Posting.account_id == payable)
            .group_by(LedgerTransaction.value_day)
            .order_by(LedgerTransaction.value_day.desc()).limit(60)).all()
    return [UnsettledDay(d.isoformat(), int(n or 0), -int(a or 0)) for d, n, a in rows]


# --- lists -------------------------------------------------------------------------------------
@dataclass
class ListsPage:
    heads: dict[str, int]
    blacklist_size: int
    open_actions: int
    recent: dict[str, list[ListEntry]]
    behind: list[dict[str, Any]]
    active_terminals: int
    reasons: dict[str, int]


def lists_page(host: Host) -> ListsPage:
    host.lists.publish()
    with host.uow() as uow:
        s = uow.session
        heads: dict[str, int] = {n: host.lists.head(s, n) for n in (BLACKLIST, ACTIONS)}
        size = int(s.scalar(select(func.count()).select_from(Card)
                            .where(Card.blacklisted.is_(True))) or 0)
        open_actions = int(s.scalar(select(func.count()).select_from(WriteBackAction)
                                    .where(WriteBackAction.status == "pending")) or 0)
        recent: dict[str, list[ListEntry]] = {
            n: list(s.scalars(select(ListEntry).where(ListEntry.list_name == n)
                              .order_by(ListEntry.version.desc()).limit(25)))
            for n in (BLACKLIST, ACTIONS)}
        terminals = list(s.scalars(select(Terminal).where(Terminal.status == "active")
                                   .order_by(Terminal.terminal_id)))
        s.expunge_all()
        latest = select(func.max(ListEntry.version)).where(
            ListEntry.list_name == BLACKLIST).group_by(ListEntry.card_id)
        reasons = dict(s.execute(
            select(ListEntry.reason, func.count()).where(
                ListEntry.list_name == BLACKLIST, ListEntry.version.in_(latest),
                ListEntry.op == "add").group_by(ListEntry.reason)).all())
    behind = []
    for t in terminals:
        lag_b = heads[BLACKLIST] - t.blacklist_version
        lag_a = heads[ACTIONS] - t.actions_version
        if lag_b > 0 or lag_a > 0:
            behind.append({"terminal_id": t.terminal_id, "merchant_id": t.merchant_id,
                           "blacklist_version": t.blacklist_version, "blacklist_behind": lag_b,
                           "actions_version": t.actions_version, "actions_behind": lag_a,
                           "last_contact": t.last_contact})
    return ListsPage(heads, size, open_actions, recent, behind, len(terminals),
                     {k: int(v) for k, v in reasons.items()})


# --- credit ------------------------------------------------------------------------------------
GRADES = (1, 2, 3, 4, 5, 0)  # A..E, then no grade


@dataclass
class CreditPage:
    currency: str
    model: dict[str, Any]
    grades: dict[str, int]  # letter -> cardholders (current grade in force)
    terms: dict[str, dict[str, Any]]  # letter -> the policy's terms for it
    days: list[str]  # days with stored decisions, oldest first
    grades_by_day: dict[str, list[int]]  # letter -> cardholders per day (last decision that day)
    psi_by_day: list[tuple[str, float | None]]  # grade-mix PSI against the previous day
    overrides: list[CreditOverride]
    events_by_week: dict[str, dict[str, int]]
    event_kinds: list[str]
    collection_rate: list[tuple[str, int, int]]  # week, debts opened, of which failed
    notes: list[str]

    def chart(self) -> dict[str, Any]:
        weeks = sorted(self.events_by_week)
        return {
            "grades": {"labels": list(self.grades), "data": list(self.grades.values())},
            "stability": {"labels": self.days, "series": [
                {"label": g, "data": v} for g, v in self.grades_by_day.items()]},
            "events": {"labels": weeks, "series": [
                {"label": k, "data": [self.events_by_week[w].get(k, 0) for w in weeks]}
                for k in self.event_kinds]},
        }


WEEK = 7 * DAY


def credit_page(host: Host, weeks: int = 12, days: int = 30) -> CreditPage:
    now = host.now()
    since = now - weeks * WEEK
    first_day = now // DAY - days + 1
    notes: list[str] = []
    with host.uow() as uow:
        s = uow.session
        cur, _ = _primary_currency(s)
        grades = dict(s.execute(select(Cardholder.credit_grade, func.count())
                                .group_by(Cardholder.credit_grade)).all())
        day_col = (CreditDecision.as_of // DAY).label("d")
        last_of_day = (select(func.max(CreditDecision.id))
                       .where(CreditDecision.as_of >= first_day * DAY)
                       .group_by(CreditDecision.cardholder_id, day_col))
        decided = s.execute(select(day_col, CreditDecision.grade, func.count())
                            .where(CreditDecision.id.in_(last_of_day))
                            .group_by(day_col, CreditDecision.grade)).all()
        overrides = list(s.scalars(select(CreditOverride)
                                   .where(CreditOverride.action != "start")
                                   .order_by(CreditOverride.id.desc()).limit(50)))
        s.expunge_all()
        week_col = (CreditEvent.created // WEEK).label("w")
        rows = s.execute(select(week_col, CreditEvent.kind, func.count())
                         .where(CreditEvent.created >= since)
                         .group_by(week_col, CreditEvent.kind)).all()
        debt_week = (Debt.created // WEEK).label("w")
        failed = case((Debt.status.in_(("collection", "written_off")), 1), else_=0)
        rates = s.execute(select(debt_week, func.count(), func.sum(failed))
                          .where(Debt.created >= since).group_by(debt_week)
                          .order_by(debt_week)).all()
    try:
        registry = host.credit.model_registry()
        card = host.credit.scorecard()
        model: dict[str, Any] = {
            "version": card.version, "kind": card.spec.kind,
            "built in": not registry.current_file.exists(), "registry": str(registry.root),
            "promotions": [p.to_dict() for p in registry.history()][-10:],
        }
    except TallypurseError as exc:
        model = {}
        notes.append(f"model registry unreadable: {exc.message}")
    terms = {}
    for g in GRADES:
        t = host.credit.terms(g, cur)
        terms[letter(g)] = {"per_tap_overdraft": t.per_tap_overdraft,
                            "max_outstanding": t.max_outstanding, "max_slots": t.max_slots,
                            "types": ", ".join(sorted(x.name.lower() for x in t.allowed_types))}
    day_numbers = sorted({int(d) for d, _, _ in decided})
    by_day: dict[str, list[int]] = {letter(g): [0] * len(day_numbers) for g in GRADES}
    for d, g, n in decided:
        by_day[letter(int(g))][day_numbers.index(int(d))] = int(n)
    mixes = [[by_day[letter(g)][i] for g in GRADES] for i in range(len(day_numbers))]
    psi_by_day: list[tuple[str, float | None]] = []
    for i, d in enumerate(day_numbers):
        value = None
        if i and sum(mixes[i - 1]) and sum(mixes[i]):
            value = round(psi(mixes[i - 1], mixes[i]), 4)
        psi_by_day.append((day_of(d * DAY).isoformat(), value))
    by_week: dict[str, dict[str, int]] = defaultdict(dict)
    kinds: set[str] = set()
    for w, kind, n in rows:
        by_week[day_of(int(w) * WEEK).isoformat()][kind] = int(n)
        kinds.add(kind)
    return CreditPage(
        currency=cur, model=model,
        grades={letter(g): int(grades.get(g, 0)) for g in GRADES}, terms=terms,
        days=[day_of(d * DAY).isoformat() for d in day_numbers],
        grades_by_day={k: v for k, v in by_day.items() if any(v)}, psi_by_day=psi_by_day,
        overrides=overrides, events_by_week=dict(by_week), event_kinds=sorted(kinds),
        collection_rate=[(day_of(int(w) * WEEK).isoformat(), int(n), int(f or 0))
                         for w, n, f in rates],
        notes=notes)


def credit_explanation(host: Host, card_id: str) -> tuple[dict[str, Any] | None, str]:
    """The cardholder's score now with its reasons (nothing stored), or why there is none."""
    try:
        return host.credit.explain(card_id), ""
    except TallypurseError as exc:
        return None, exc.message
    except Exception as exc:  # the page still shows the card when the credit service fails
        log.exception("credit explanation failed for card %s", card_id)
        return None, f"credit explanation unavailable ({exc.__class__.__name__}); see the log"
