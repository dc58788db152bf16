"""Reports for operators and auditors: the ledger audit, clearing gaps and clones,
alerts, and the operator's reconciliation (taken in, paid out, outstanding,
in collection, written off)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from tallypurse.host.db.models import (
    Account,
    Alert,
    Card,
    CardEventConflict,
    CardEventRow,
    CardGap,
    Debt,
    LedgerTransaction,
    Posting,
)
from tallypurse.host.ledger import Kind, audit

if TYPE_CHECKING:
    from tallypurse.host.service import Host


class Reports:
    def __init__(self, host: Host) -> None:
        self.host = host

    def audit(self) -> dict[str, Any]:
        """The ledger audit plus, for every card whose events have no gap (and whose value
        was not moved to a replacement, and that is not a detected clone), the check that
        the host's purse float equals the card's own balance chain."""
        with self.host.uow() as uow:
            s = uow.session
            report = audit(s).to_json()
            newest = (select(CardEventRow.card_id, func.max(CardEventRow.seqno).label("seqno"))
                      .group_by(CardEventRow.card_id).subquery())
            last = (
                select(CardEventRow.card_id, CardEventRow.balance_after)
                .join(newest, (newest.c.card_id == CardEventRow.card_id)
                      & (newest.c.seqno == CardEventRow.seqno))
                .join(Card, Card.card_id == CardEventRow.card_id)
                .outerjoin(CardGap, CardGap.card_id == Card.card_id)
                # a cloned card has no single balance chain: its copies' events interleave
                # (the clone report and the losses account carry it)
                .where(CardGap.card_id.is_(None), Card.status.not_in(("replaced", "cloned")))
                .subquery()
            )
            rows = s.execute(
                select(last.c.card_id, last.c.balance_after, Account.balance)
                .join(Account, (Account.owner == last.c.card_id)
                      & (Account.kind == Kind.PURSE_FLOAT.value))
                .where(last.c.balance_after != -Account.balance)
                .limit(100)
            ).all()
            purses = [{"card_id": c, "card_balance": int(b), "host_view": -int(a)}
                      for c, b, a in rows]
            report["differences"]["purses"] = purses
            report["balanced"] = report["balanced"] and not purses
            return report

    def gaps(self, *, older_than_s: int | None = None) -> list[dict[str, Any]]:
        """Cards with missing events (open counter gaps), oldest first."""
        limit = self.host.settings.gap_report_after_s if older_than_s is None else older_than_s
        cutoff = self.host.now() - limit
        with self.host.uow() as uow:
            top = func.coalesce(select(func.max(CardEventRow.seqno))
                                .where(CardEventRow.card_id == CardGap.card_id)
                                .scalar_subquery(), CardGap.contiguous_seqno)
            rows = uow.session.execute(
                select(CardGap.card_id, CardGap.contiguous_seqno, top, CardGap.since)
                .where(CardGap.since <= cutoff)
                .order_by(CardGap.since, CardGap.card_id)).all()
            return [{"card_id": cid, "contiguous_seqno": int(c), "max_seqno": int(m),
                     "gap_since": int(since)} for cid, c, m, since in rows]

    def clones(self) -> list[dict[str, Any]]:
        with self.host.uow() as uow:
            rows = uow.session.execute(
                select(CardEventConflict.card_id, func.count(), func.min(
                    CardEventConflict.detected_at))
                .group_by(CardEventConflict.card_id)).all()
            cloned = uow.session.scalars(select(Card.card_id).where(Card.status == "cloned")).all()
            counts = {c: (n, t) for c, n, t in rows}
            return [{"card_id": c, "conflicting_events": counts.get(c, (0, None))[0],
                     "first_detected": counts.get(c, (0, None))[1]} for c in cloned]

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.host.uow() as uow:
            return [{"id": a.id, "kind": a.kind, "card_id": a.card_id,
                     "terminal_id": a.terminal_id, "detail": a.detail, "created": a.created}
                    for a in uow.session.scalars(select(Alert).order_by(Alert.id.desc())
                                                 .limit(limit))]

    def reconciliation(self) -> dict[str, Any]:
        """Per currency: what came in, went out, is owed, is in collection, was lost."""
        with self.host.uow() as uow:
            s = uow.session
            by_kind: dict[tuple[str, str], int] = {
                (k, c): int(b) for k, c, b in s.execute(
                    select(Account.kind, Account.currency, func.sum(Account.balance))
                    .group_by(Account.kind, Account.currency)).all()}
            flows: dict[tuple[str, str], int] = {
                (k, c): int(v) for k, c, v in s.execute(
                    select(LedgerTransaction.kind, Posting.currency,
                           func.sum(func.abs(Posting.amount)) / 2)
                    .join(Posting, Posting.transaction_id == LedgerTransaction.id)
                    .group_by(LedgerTransaction.kind, Posting.currency)).all()}
            collection = {c: int(v) for c, v in s.execute(
                select(Debt.currency, func.sum(Debt.amount - Debt.repaid))
                .where(Debt.status == "collection").group_by(Debt.currency)).all()}
        out: dict[str, Any] = {}
        for cur in sorted({c for _, c in by_kind} | {c for _, c in flows}):
            def bal(kind: Kind, cur: str = cur) -> int:
                return by_kind.get((kind.value, cur), 0)

            def flow(kind: str, cur: str = cur) -> int:
                return flows.get((kind, cur), 0)

            out[cur] = {
                "taken_in": {"cash_for_loads": bal(Kind.CASH),
                             "online_funding": flow("fund_online"),
                             "bank_collections": flow("debt_collect_bank")},
                "paid_out": {"merchant_payouts": flow("settlement_payout"),
                             "fees_earned": -bal(Kind.FEES)},
                "outstanding": {"purse_float": -bal(Kind.PURSE_FLOAT),
                                "online_accounts": -bal(Kind.ONLINE),
                                "merchant_payable": -bal(Kind.MERCHANT_PAYABLE),
                                "loads_in_flight": -bal(Kind.LOAD_SUSPENSE),
                                "credit_receivable": bal(Kind.CREDIT_RECEIVABLE)},
                "in_collection": collection.get(cur, 0),
                "written_off": flow("debt_write_off"),
                "losses": bal(Kind.LOSSES),
                "bank_clearing": bal(Kind.BANK_CLEARING),
            }
        return out
