"""What the console's pages show, read from the host's database.

Each function opens one unit of work, reads, and returns plain data for a
template: no page writes. Amounts stay integer minor units with their
currency (the templates format them; the charts get integers too). Days are
UTC days of the host's clock (``host.now()``), so a test clock moves them.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from tallypurse.core.protocol import EventKind, TxType
from tallypurse.host.db.models import (
    Account,
    BatchRow,
    Card,
    CardEventConflict,
    CardEventRow,
    Cardholder,
    CreditEvent,
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
from tallypurse.host.ledger import Kind
from tallypurse.host.lists import ACTIONS, BLACKLIST
from tallypurse.host.registry import GRADE_LIMITS
from tallypurse.host.service import Host
from tallypurse.host.settlement import SALES
from tallypurse.host.tms import TerminalStatus

DAY = 86_400
RECENT_DAYS = 14

# Debt states as an operator reads them (agent debits, DESIGN section 6.6).
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
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(Card.card_id.startswith(q.lower()),
                              func.lower(Cardholder.id).like(like),
                              func.lower(Cardholder.name).like(like)))
    with host.uow() as uow:
        return [CardRow(c.card_id, c.status, c.blacklisted, c.cardholder_id, name or "",
                        c.issued, c.currency) for c, name in uow.session.execute(stmt)]


@dataclass
class CardPage:
    card: Card
    holder: Cardholder | None
    online_balance: int | None
    bank_linked: bool
    purse_host_view: int
    events: list[CardEventRow]
    gaps: list[tuple[int, int]]
    conflicts: list[CardEventConflict]
    online: list[OnlineAuth]
    loads: list[LoadRow]
    debts: list[Debt]
    credit_events: list[CreditEvent]
    blacklist_entries: list[ListEntry]
    open_actions: list[WriteBackAction]
    grade_limits: tuple[int, int, int] | None
    replacement_candidates: list[str] = field(default_factory=list)

    @property
    def on_blacklist(self) -> bool:
        return self.card.blacklisted

    def chain(self) -> dict[str, Any]:
        """The balance chain for the chart: one point per event, in counter order."""
        return {"currency": self.card.currency,
                "labels": [f"#{e.seqno}" for e in self.events],
                "times": [e.time for e in self.events],
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
    info = host.registry.card_info(card_id)
    balance = host.registry.online_balance(holder.id) if holder is not None else None
    return CardPage(card, holder, balance, bank_linked, info.purse_host_view, events, gaps,
                    conflicts, online, loads, debts, credit_events, blacklist_entries,
                    open_actions, GRADE_LIMITS.get(holder.credit_grade) if holder else None,
                    candidates)


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
                                .group_by(Terminal.merchant_id)).tuples().all())
        stmt = select(Merchant).order_by(Merchant.name, Merchant.id)
        if merchant_id is not None:
            stmt = stmt.where(Merchant.id == merchant_id)
        rows = list(s.scalars(stmt))
    return [MerchantRow(m.id, m.name, m.currency, m.fee_basis_points, m.status,
                        int(counts.get(m.id, 0)), host.settlement.merchant_balance(m.id))
            for m in rows]


def merchant_names(host: Host) -> dict[str, str]:
    with host.uow() as uow:
        return dict(uow.session.execute(select(Merchant.id, Merchant.name)).tuples().all())


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


@dataclass(frozen=True, slots=True)
class UnsettledDay:
    day: str
    count: int  # sales
    amount: int  # what the merchant is owed for the day (refunds and cancels netted)


def unsettled(host: Host, merchant_id: str) -> list[UnsettledDay]:
    """What the merchant is owed, by value day, that no settlement took yet."""
    payable = select(Account.id).where(Account.kind == Kind.MERCHANT_PAYABLE.value,
                                       Account.owner == merchant_id).scalar_subquery()
    sales = func.sum(case((LedgerTransaction.kind.in_(SALES), 1), else_=0))
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
        latest = select(func.max(ListEntry.version)).where(
            ListEntry.list_name == BLACKLIST).group_by(ListEntry.card_id)
        reasons = dict(s.execute(
            select(ListEntry.reason, func.count()).where(
                ListEntry.list_name == BLACKLIST, ListEntry.version.in_(latest),
                ListEntry.op == "add").group_by(ListEntry.reason)).tuples().all())
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
@dataclass
class CreditPage:
    grades: dict[int, int]
    limits: dict[int, tuple[int, int, int]]
    events_by_week: dict[str, dict[str, int]]
    event_kinds: list[str]
    collection_rate: list[tuple[str, int, int]]  # week, debts opened, of which failed
    model: dict[str, Any] | None
    overrides: list[dict[str, Any]]
    notes: list[str]

    def chart(self) -> dict[str, Any]:
        weeks = sorted(self.events_by_week)
        return {
            "grades": {"labels": [f"grade {g}" for g in self.grades],
                       "data": list(self.grades.values())},
            "events": {"labels": weeks, "series": [
                {"label": k, "data": [self.events_by_week[w].get(k, 0) for w in weeks]}
                for k in self.event_kinds]},
        }


WEEK = 7 * DAY


def credit_page(host: Host, weeks: int = 12) -> CreditPage:
    since = host.now() - weeks * WEEK
    with host.uow() as uow:
        s = uow.session
        grades = dict(s.execute(select(Cardholder.credit_grade, func.count())
                                .group_by(Cardholder.credit_grade)).tuples().all())
        week_col = (CreditEvent.created // WEEK).label("w")
        rows = s.execute(select(week_col, CreditEvent.kind, func.count())
                         .where(CreditEvent.created >= since)
                         .group_by(week_col, CreditEvent.kind)).all()
        debt_week = (Debt.created // WEEK).label("w")
        failed = case((Debt.status.in_(("collection", "written_off")), 1), else_=0)
        rates = s.execute(select(debt_week, func.count(), func.sum(failed))
                          .where(Debt.created >= since).group_by(debt_week)
                          .order_by(debt_week)).all()
    by_week: dict[str, dict[str, int]] = defaultdict(dict)
    kinds: set[str] = set()
    for w, kind, n in rows:
        by_week[day_of(int(w) * WEEK).isoformat()][kind] = int(n)
        kinds.add(kind)
    model, overrides, notes = credit_model(host)
    return CreditPage(
        grades={g: int(grades.get(g, 0)) for g in sorted(GRADE_LIMITS)},
        limits=dict(GRADE_LIMITS), events_by_week=dict(by_week), event_kinds=sorted(kinds),
        collection_rate=[(day_of(int(w) * WEEK).isoformat(), int(n), int(f or 0))
                         for w, n, f in rates],
        model=model, overrides=overrides, notes=notes)


def credit_model(host: Host) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[str]]:
    """The scoring model in use and operator overrides, from the host's credit service
    when it has one (``host.credit``); the page shows what the database holds otherwise."""
    service = getattr(host, "credit", None)
    if service is None:
        return None, [], ["The host has no credit service yet: grades are the cardholders' "
                          "grades as recorded, without a model version or overrides."]
    notes: list[str] = []
    model: dict[str, Any] | None = None
    overrides: list[dict[str, Any]] = []
    describe = getattr(service, "model_info", None)
    if callable(describe):
        try:
            model = dict(describe())
        except Exception as exc:  # a page renders whatever the service does
            notes.append(f"model information unavailable: {exc}")
    listing = getattr(service, "overrides", None)
    if callable(listing):
        try:
            overrides = [dict(o) for o in listing()]
        except Exception as exc:
            notes.append(f"overrides unavailable: {exc}")
    return model, overrides, notes


def credit_explanation(host: Host, cardholder_id: str) -> tuple[dict[str, Any] | None, str]:
    """A cardholder's score with its reasons, if the host's credit service explains one."""
    service = getattr(host, "credit", None)
    explain = getattr(service, "explain", None)
    if not callable(explain):
        return None, "no credit service on this host: the grade is as recorded"
    try:
        return dict(explain(cardholder_id)), ""
    except Exception as exc:  # shown to the operator, never hidden
        return None, f"no explanation: {exc}"
