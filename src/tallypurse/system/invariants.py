"""The system's rules (docs/architecture.md), checked against the host's books and
the cards themselves. Each check returns (holds, detail)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select

from tallypurse.card.card import Card
from tallypurse.core.protocol import DebtState, EventKind
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.db.models import Card as CardRow
from tallypurse.host.db.models import CardEventRow, Debt, LedgerTransaction, Merchant
from tallypurse.host.service import Host

Check = tuple[bool, str]
SETTLED = ("settled", "settled_bank", "repaid", "cancelled")
FAILED = ("collection", "written_off")


def money_conserved(host: Host, cards: Iterable[Card], *, skip: set[str]) -> Check:
    """The ledger balances to zero and, for every card, the host's view of the purse
    after clearing equals the card's own balance chain."""
    audit = host.reports.audit()
    if not audit["balanced"]:
        return False, f"ledger audit: {audit['differences']}"
    with host.uow() as uow:
        for card in cards:
            cid = card.serial.hex()
            if cid in skip:
                continue
            purse = PurseClient(ApduClient(card))
            purse.select()
            balance = purse.counters().balance
            last = uow.session.scalars(
                select(CardEventRow.balance_after).where(CardEventRow.card_id == cid)
                .order_by(CardEventRow.seqno.desc()).limit(1)).first()
            if (last or 0) != balance:
                return False, f"card {cid}: card says {balance}, host's chain says {last}"
    return True, "ledger balanced; every card's balance equals the host's chain"


def no_double_charge(host: Host) -> Check:
    """Every (card, ATC) and every ledger business event was taken once."""
    with host.uow() as uow:
        s = uow.session
        dup_events = s.execute(
            select(CardEventRow.card_id, CardEventRow.seqno, func.count())
            .group_by(CardEventRow.card_id, CardEventRow.seqno).having(func.count() > 1)
        ).all()
        dup_tx = s.execute(
            select(LedgerTransaction.kind, LedgerTransaction.reference, func.count())
            .group_by(LedgerTransaction.kind, LedgerTransaction.reference)
            .having(func.count() > 1)
        ).all()
    if dup_events or dup_tx:
        return False, f"taken twice: events {dup_events[:3]}, ledger {dup_tx[:3]}"
    return True, "each card event and each business event taken once"


def nothing_lost(host: Host, cards: Iterable[Card], *, skip: set[str]) -> Check:
    """Every event a card committed (as far as its log reaches) is known to the host."""
    with host.uow() as uow:
        for card in cards:
            cid = card.serial.hex()
            if cid in skip:
                continue
            purse = PurseClient(ApduClient(card))
            purse.select()
            for rec in purse.log():
                e = rec.event
                row = uow.session.scalars(select(CardEventRow).where(
                    CardEventRow.card_id == cid, CardEventRow.atc == e.atc,
                    CardEventRow.load_counter == e.load_counter,
                    CardEventRow.kind == int(e.kind))).first()
                if row is None:
                    kind = EventKind(e.kind).name
                    return False, f"card {cid}: {kind} ATC {e.atc} never reached the host"
    return True, "every event the cards committed reached the host"


def debts_resolved(host: Host, cards: Iterable[Card]) -> Check:
    """Every split debt is settled or failed-and-in-collection, and the card agrees."""
    with host.uow() as uow:
        debts = [(d.id, d.card_id, d.atc, d.status) for d in uow.session.scalars(select(Debt))]
    by_card = {c.serial.hex(): c for c in cards}
    for debt_id, card_id, atc, status in debts:
        if status not in SETTLED + FAILED:
            return False, f"debt {debt_id} is still {status}"
        card = by_card.get(card_id)
        if card is None:
            continue
        purse = PurseClient(ApduClient(card))
        purse.select()
        slots = [s for s in purse.debts() if s.state != DebtState.FREE and s.ref == atc]
        if status in SETTLED and slots:
            return False, f"debt {debt_id} settled at the host but still open on the card"
        if status in FAILED and not (slots and slots[0].state == DebtState.FAILED):
            return False, f"debt {debt_id} failed at the host but the card does not know"
    return True, f"{len(debts)} split debts: each settled or in collection, cards agree"


def clones_caught(host: Host, injected: set[str]) -> Check:
    with host.uow() as uow:
        listed = {c for (c,) in uow.session.execute(
            select(CardRow.card_id).where(CardRow.blacklisted.is_(True)))}
    missing = injected - listed
    if missing:
        return False, f"cloned cards not blacklisted: {sorted(missing)}"
    return True, f"{len(injected)} cloned card(s) detected and blacklisted"


def only_host_creates_value(host: Host, cards: Iterable[Card], *, skip: set[str]) -> Check:
    """A card's balance is exactly its loads minus its debits plus its cancels, each
    signed by the card and cleared by the host."""
    with host.uow() as uow:
        for card in cards:
            cid = card.serial.hex()
            if cid in skip:
                continue
            rows = uow.session.scalars(select(CardEventRow).where(
                CardEventRow.card_id == cid).order_by(CardEventRow.seqno)).all()
            balance = 0
            for r in rows:
                if r.balance_before != balance:
                    return False, f"card {cid}: chain broken at event {r.seqno}"
                if r.kind == EventKind.LOAD:
                    balance += r.amount - r.split
                elif r.kind == EventKind.DEBIT:
                    balance -= r.amount
                else:
                    balance += r.amount
                if r.balance_after != balance:
                    return False, f"card {cid}: event {r.seqno} does not add up"
    return True, "every balance is host-signed loads minus card-signed debits"


def merchants_paid_once(host: Host) -> Check:
    """Every accepted debit is in exactly one merchant settlement, and each settlement
    paid out exactly what the merchant was owed (its payable account is back to zero)."""
    with host.uow() as uow:
        s = uow.session
        unsettled = s.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.merchant_id.is_not(None),
            LedgerTransaction.settlement_id.is_(None))) or 0
        merchants = list(s.scalars(select(Merchant.id)))
    if unsettled:
        return False, f"{unsettled} merchant transaction(s) in no settlement"
    owed = {m: host.settlement.merchant_balance(m) for m in merchants}
    if any(owed.values()):
        return False, f"merchant payables not settled to zero: {owed}"
    return True, "every merchant transaction is in exactly one settlement, paid in full"
