"""The system's rules (docs/architecture.md), checked against the cards, terminals and host.

This is the one implementation of the rule checks: the simulator runs them on
its city, and ``tallypurse demo`` on its day (:mod:`tallypurse.system.invariants`).
Each gives a :class:`Subject`: the host, the cards as their own APDUs tell them,
the copied cards, the terminals and their merchants, the online receipts the
terminals printed, and where a violation goes.

The checks do not take the host's word for anything it could get wrong: each
card's counters, balance and debt slots are read from the card itself; the
events the host cleared are re-verified against the card's key and chained
again here; merchants' expected takings are summed from those events and the
terminals' online receipts, then compared with what settlement paid.

``daily()`` runs at the end of every simulated day (cheap: the ledger audit,
effects booked twice, wrongly blacklisted cards, settlement arithmetic);
``final()`` runs once everything has been delivered.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from random import Random
from typing import Protocol

from sqlalchemy import func, select

from tallypurse.core.messages import SignedEvent
from tallypurse.core.protocol import DebtState, EventKind
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.db.models import (
    Account,
    Alert,
    Card,
    CardEventConflict,
    CardEventRow,
    CardGap,
    Debt,
    LedgerTransaction,
    LoadRow,
    Merchant,
    OnlineAuth,
    Posting,
    Settlement,
    WriteBackAction,
)
from tallypurse.host.ledger import Kind
from tallypurse.host.service import Host
from tallypurse.host.settlement import fee_of
from tallypurse.terminal.engine import Terminal

from .city import CardPort

MAX_VERIFY = 200_000  # card signatures re-verified at the end (beyond: a seeded sample)
CLEAR_KINDS = ("clear_debit", "clear_cancel", "clear_load")


@dataclass(frozen=True, slots=True)
class CardState:
    """A card as the card itself tells it."""

    balance: int
    atc: int
    load_counter: int
    slots: list[tuple[int, int, int]]  # (state, ref, amount) of non-free debt slots

    @property
    def seqno(self) -> int:
        return self.atc + self.load_counter


def read_card(port: CardPort) -> CardState:
    port.present()
    purse = PurseClient(ApduClient(port))
    purse.select()
    c = purse.counters()
    slots = [(int(s.state), s.ref, s.amount) for s in purse.debts() if s.state]
    return CardState(c.balance, c.atc, c.load_counter, slots)


@dataclass(frozen=True, slots=True)
class Copy:
    """A card whose memory was copied: the original, the copy, and the card's event
    number when it was copied."""

    card_id: str
    original: CardPort
    copy: CardPort
    seqno: int


class Subject(Protocol):
    """What the checks look at (a simulated city, the demo's day) and where they report."""

    @property
    def host(self) -> Host: ...

    counts: Counter[str]  # what was checked, for the report
    rng: Random  # samples the signatures re-verified beyond MAX_VERIFY
    final_sync_at: int  # when the terminals last synced before the cards' final taps
    online_receipts: list[tuple[str, str, int]]  # (terminal, auth code, amount) printed
    clones_seen_detected: set[str]  # cards already reported as wrongly marked cloned

    def violation(self, rule: str, detail: str) -> None: ...

    def cards(self) -> dict[str, CardPort]:
        """Every card (its original, for a copied one) by card id."""
        ...

    def copies(self) -> list[Copy]: ...

    def merchants(self) -> list[str]: ...

    def terminals(self) -> dict[str, str]:
        """Terminal id -> merchant id, for every terminal."""
        ...

    def terminal(self, terminal_id: str) -> Terminal: ...

    def bank_collections(self) -> list[str] | None:
        """The debt reference of every direct debit the bank settled (None: not known)."""
        ...


class Checks:
    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.host = subject.host

    def fail(self, rule: str, detail: str) -> None:
        self.subject.violation(rule, detail)

    # --- every day -------------------------------------------------------------------------------
    def daily(self) -> None:
        self.ledger_balances()
        self.nothing_booked_twice()
        self.no_honest_card_cloned()
        self.settlement_arithmetic()

    def ledger_balances(self) -> None:
        audit = self.host.reports.audit()
        if not audit["balanced"]:
            self.fail("money_conserved", f"the ledger audit fails: {audit['differences']}"[:800])

    def nothing_booked_twice(self) -> None:
        with self.host.uow() as uow:
            twice = uow.session.execute(
                select(LedgerTransaction.kind, LedgerTransaction.reference, func.count())
                .group_by(LedgerTransaction.kind, LedgerTransaction.reference)
                .having(func.count() > 1).limit(5)).all()
        for kind, ref, n in twice:
            self.fail("no_double_charge", f"ledger {kind} {ref} booked {n} times")

    def no_honest_card_cloned(self) -> None:
        cloned_on_purpose = {c.card_id for c in self.subject.copies()}
        with self.host.uow() as uow:
            flagged = list(uow.session.scalars(select(Card.card_id).where(
                Card.status == "cloned")))
        for cid in flagged:
            if cid not in cloned_on_purpose:
                self.fail("clones_caught", f"card {cid} was never copied, yet the host marked it "
                                           "cloned (a broken balance chain of an honest card)")
                self.subject.clones_seen_detected.add(cid)

    def settlement_arithmetic(self) -> None:
        with self.host.uow() as uow:
            s = uow.session
            bp = dict(s.execute(select(Merchant.id, Merchant.fee_basis_points)).all())
            for row in s.scalars(select(Settlement)):
                if row.net + row.fees != row.gross or row.fees != fee_of(row.gross,
                                                                          bp[row.merchant_id]):
                    self.fail("merchants_paid_once",
                              f"settlement {row.id} of {row.merchant_id}: gross {row.gross}, "
                              f"fees {row.fees}, net {row.net}")

    # --- at the end ----------------------------------------------------------------------------
    def final(self) -> None:
        self.daily()
        clone_ids = {c.card_id for c in self.subject.copies()}
        cards, events, host_cards, purse_view, conflicts, debts, gaps = self._book()
        self.signatures(events, conflicts, host_cards)
        self.card_chains(cards, events, gaps, purse_view, clone_ids)
        self.effects_once(events)
        self.terminals_hold_nothing()
        self.debts_and_slots(cards, debts, clone_ids)
        self.loads(events)
        self.value(cards, events, debts, clone_ids)
        self.online_once()
        self.merchants(events, conflicts)
        self.clones(host_cards)
        self.alerts()

    def money(self) -> None:
        """Rule 1 alone: the ledger balances and every card's chain is the host's view."""
        self.ledger_balances()
        cards, events, _, purse_view, _, _, gaps = self._book()
        self.card_chains(cards, events, gaps, purse_view,
                         {c.card_id for c in self.subject.copies()})

    def _book(self) -> tuple[dict[str, CardState], dict[str, list[CardEventRow]],
                             dict[str, Card], dict[str, int], list[CardEventConflict],
                             list[Debt], dict[str, CardGap]]:
        """The cards as they are, and what the host recorded of them."""
        cards = {cid: read_card(port) for cid, port in self.subject.cards().items()}
        with self.host.uow() as uow:
            s = uow.session
            events: dict[str, list[CardEventRow]] = defaultdict(list)
            for ev in s.scalars(select(CardEventRow).order_by(CardEventRow.card_id,
                                                              CardEventRow.seqno)):
                events[ev.card_id].append(ev)
            host_cards = {c.card_id: c for c in s.scalars(select(Card))}
            purse_view = {o: -int(b) for o, b in s.execute(
                select(Account.owner, Account.balance).where(
                    Account.kind == Kind.PURSE_FLOAT.value)).all()}
            conflicts = list(s.scalars(select(CardEventConflict)))
            debts = list(s.scalars(select(Debt)))
            gaps = {g.card_id: g for g in s.scalars(select(CardGap))}
            s.expunge_all()  # keep what was read when the unit of work ends
        return cards, events, host_cards, purse_view, conflicts, debts, gaps

    def signatures(self, events: dict[str, list[CardEventRow]],
                   conflicts: list[CardEventConflict], host_cards: dict[str, Card]) -> None:
        """Rule 6: every cleared event carries the card's own signature and says what the
        host recorded of it."""
        rows: list[tuple[str, str, CardEventRow | None]] = [
            (ev.card_id, ev.record, ev) for evs in events.values() for ev in evs]
        rows += [(c.card_id, c.record, None) for c in conflicts]
        if len(rows) > MAX_VERIFY:
            rows = self.subject.rng.sample(rows, MAX_VERIFY)
        bad = 0
        for cid, record, row in rows:
            signed = SignedEvent.parse(bytes.fromhex(record))
            e = signed.event
            ok = signed.verify(bytes.fromhex(host_cards[cid].public_key)) and e.card_id.hex() == cid
            if ok and row is not None:
                ok = (e.kind, e.atc, e.load_counter, e.amount, e.split, e.balance_before,
                      e.balance_after) == (row.kind, row.atc, row.load_counter, row.amount,
                                           row.split, row.balance_before, row.balance_after)
            if not ok:
                bad += 1
                if bad <= 5:
                    self.fail("only_host_creates_value",
                              f"card {cid}: a cleared event does not carry the card's signature "
                              "or differs from it")
        self.subject.counts["checked.signatures"] += len(rows)

    def card_chains(self, cards: dict[str, CardState], events: dict[str, list[CardEventRow]],
                    gaps: dict[str, CardGap], purse_view: dict[str, int],
                    clone_ids: set[str]) -> None:
        """Rules 1 and 3: every event each card committed reached the host, they chain
        from zero to the card's balance, and the host's purse view is that balance."""
        for cid, card in cards.items():
            if cid in clone_ids:
                continue
            evs = events.get(cid, [])
            numbers = [e.seqno for e in evs]
            if numbers != list(range(1, card.seqno + 1)):
                missing = sorted(set(range(1, card.seqno + 1)) - set(numbers))
                self.fail("nothing_lost", f"card {cid} committed {card.seqno} events; the host "
                                          f"holds {len(numbers)} (missing {missing[:5]})")
                continue
            if (gap := gaps.get(cid)) is not None:
                self.fail("nothing_lost", f"card {cid}: the host has a gap after event "
                                          f"{gap.contiguous_seqno}, the card none")
            balance, atc, lc = 0, 0, 0
            broken = ""
            for e in evs:
                step_ok = ((e.atc, e.load_counter) == (atc, lc + 1) if e.kind == EventKind.LOAD
                           else (e.atc, e.load_counter) == (atc + 1, lc))
                if not step_ok or e.balance_before != balance:
                    broken = f"event {e.seqno} does not follow"
                    break
                if e.kind == EventKind.DEBIT:
                    after = balance - e.amount
                elif e.kind == EventKind.CANCEL:
                    after = balance + e.amount
                else:
                    after = balance + e.amount - e.split
                if after != e.balance_after:
                    broken = f"event {e.seqno} does not add up"
                    break
                balance, atc, lc = after, e.atc, e.load_counter
            if broken:
                self.fail("money_conserved", f"card {cid}: the host's events break the chain "
                                             f"({broken})")
            elif balance != card.balance:
                self.fail("money_conserved", f"card {cid}: its events end at {balance}, the "
                                             f"card holds {card.balance}")
            if purse_view.get(cid, 0) != card.balance:
                self.fail("money_conserved", f"card {cid}: the host's purse view is "
                                             f"{purse_view.get(cid, 0)}, the card holds "
                                             f"{card.balance}")
        self.subject.counts["checked.cards"] += len(cards)

    def effects_once(self, events: dict[str, list[CardEventRow]]) -> None:
        """Rule 2: one ledger effect per card event, per debt, per collection, per payout."""
        # What each clearing transaction did to each purse, and what its card events say it
        # did (a batch's debits of one day share one transaction; every other event has
        # its own): the two must be the same, transaction by transaction.
        said: dict[int, Counter[str]] = defaultdict(Counter)
        never = []
        for cid, evs in events.items():
            for e in evs:
                if not e.amount:
                    continue
                if e.transaction_id is None:
                    never.append(f"{cid}:{e.seqno}")
                    continue
                said[e.transaction_id][cid] += (
                    e.amount if e.kind == EventKind.DEBIT else
                    -e.amount if e.kind == EventKind.CANCEL else -(e.amount - e.split))
        with self.host.uow() as uow:
            s = uow.session
            clear = dict(s.execute(select(LedgerTransaction.id, LedgerTransaction.reference)
                                   .where(LedgerTransaction.kind.in_(CLEAR_KINDS))).all())
            did: dict[int, Counter[str]] = defaultdict(Counter)
            for txn, owner, amount in s.execute(
                    select(Posting.transaction_id, Account.owner, Posting.amount)
                    .join(Account, Account.id == Posting.account_id)
                    .join(LedgerTransaction, LedgerTransaction.id == Posting.transaction_id)
                    .where(LedgerTransaction.kind.in_(CLEAR_KINDS),
                           Account.kind == Kind.PURSE_FLOAT.value)).all():
                did[txn][owner] += amount
            debt_refs = Counter(s.scalars(select(LedgerTransaction.reference).where(
                LedgerTransaction.kind == "debt_open")))
            collected = Counter(s.scalars(select(LedgerTransaction.reference).where(
                LedgerTransaction.kind.in_(("debt_collect_online", "debt_collect_bank")))))
            payouts = Counter(s.scalars(select(LedgerTransaction.reference).where(
                LedgerTransaction.kind == "settlement_payout")))
            settlement_ids = list(s.scalars(select(Settlement.id)))
            splits = Counter((d.card_id, d.atc) for d in s.scalars(select(Debt)))
        def moved(by_card: Counter[str] | None) -> dict[str, int]:
            return {c: n for c, n in (by_card or {}).items() if n}

        twice = [clear[t] for t in sorted(clear) if moved(did.get(t)) != moved(said.get(t))]
        if twice:
            self.fail("no_double_charge", f"{len(twice)} clearing transactions book other than "
                                          f"their card events (twice, or without one), e.g. "
                                          f"{twice[:3]}")
        never += [f"transaction {t}" for t in sorted(set(said) - set(clear))]
        if never:
            self.fail("no_double_charge", f"{len(never)} card events never booked, "
                                          f"e.g. {never[:3]}")
        split_events = {(cid, e.atc) for cid, evs in events.items() for e in evs
                        if e.kind == EventKind.DEBIT and e.split}
        missing = split_events - set(splits)
        if missing:
            self.fail("no_double_charge", f"{len(missing)} split debits have no debt, e.g. "
                                          f"{sorted(missing)[:3]}")
        for what, counter in (("debt opened", debt_refs), ("debt collected", collected),
                              ("payout", payouts)):
            many = [r for r, n in counter.items() if n > 1]
            if many:
                self.fail("no_double_charge", f"{what} more than once: {many[:3]}")
        no_payout = [i for i in settlement_ids if payouts.get(str(i), 0) != 1]
        if no_payout:
            self.fail("no_double_charge", f"settlements without exactly one payout: "
                                          f"{no_payout[:5]}")
        bank_refs = Counter(self.subject.bank_collections() or ())
        many = [r for r, n in bank_refs.items() if n > 1]
        if many:
            self.fail("no_double_charge", f"the bank collected one debt twice: {many[:3]}")

    def terminals_hold_nothing(self) -> None:
        """Rule 3: after the final delivery every terminal's journal and outbox are empty
        and the host refused nothing."""
        for terminal_id in self.subject.terminals():
            t = self.subject.terminal(terminal_id)
            problems = []
            if t.journal.open_entries:
                problems.append(f"{t.journal.open_entries} entries not acknowledged")
            if t.journal.open_attempts_for():
                problems.append(f"{len(t.journal.open_attempts_for())} attempts unresolved")
            if t.outbox.due(include_waiting=True):
                problems.append(f"{len(t.outbox.due(include_waiting=True))} outbox items queued")
            if t.outbox.rejected():
                problems.append(f"outbox items refused by the host: {t.outbox.rejected()[:2]}")
            if t.journal.rejected_entries():
                problems.append(f"journal entries refused: {t.journal.rejected_entries()[:2]}")
            if problems:
                self.fail("nothing_lost", f"terminal {terminal_id}: " + "; ".join(problems))

    def debts_and_slots(self, cards: dict[str, CardState], debts: list[Debt],
                        clone_ids: set[str]) -> None:
        """Rule 4: no debt is left open; each outcome is on the card."""
        by_card: dict[str, dict[int, Debt]] = defaultdict(dict)
        for d in debts:
            self.subject.counts[f"debts.{d.status}"] += 1
            if d.status in ("open", "bank_pending"):
                self.fail("debts_resolved", f"debt {d.id} (card {d.card_id}, ATC {d.atc}) is still "
                                            f"{d.status}")
            by_card[d.card_id][d.atc] = d
        with self.host.uow() as uow:
            pending = list(uow.session.scalars(select(WriteBackAction).where(
                WriteBackAction.status == "pending")))
            uow.session.expunge_all()
        for a in pending:
            if a.card_id not in clone_ids:
                synced = a.created <= self.subject.final_sync_at
                when = ("at its next tap after the terminal synced" if synced
                        else "after three rounds of taps")
                self.fail("debts_resolved", f"write-back {a.action_id} ({a.kind}) did not reach "
                                            f"card {a.card_id} {when}")
        for cid, card in cards.items():
            if cid in clone_ids:
                continue
            host = by_card.get(cid, {})
            for state, ref, amount in card.slots:
                found = host.get(ref)
                if state == DebtState.PENDING:
                    self.fail("debts_resolved",
                              f"card {cid}: debt of ATC {ref} still pending on the card "
                              f"(host: {found.status if found else 'unknown'})")
                elif (found is None or found.status != "collection"
                      or found.amount - found.repaid != amount):
                    self.fail("debts_resolved",
                              f"card {cid}: failed debt of ATC {ref} ({amount}) but the host has "
                              f"{(found.status, found.amount - found.repaid) if found else None}")
            on_card = {ref for _, ref, _ in card.slots}
            for atc, d in host.items():
                if d.status == "collection" and d.amount > d.repaid and atc not in on_card:
                    self.fail("debts_resolved", f"card {cid}: the host's failed debt of ATC {atc} "
                                                "never reached the card")

    def loads(self, events: dict[str, list[CardEventRow]]) -> None:
        """Rules 2 and 6: each load on a card was authorised by the host, once; no voided
        load is on a card; what was authorised and never loaded was voided (the
        operator's job, done before these checks), so the suspense account is empty."""
        on_cards: dict[str, tuple[str, int]] = {}
        for cid, evs in events.items():
            for e in evs:
                if e.kind == EventKind.LOAD:
                    auth = SignedEvent.parse(bytes.fromhex(e.record)).event.terminal_challenge.hex()
                    if auth in on_cards:
                        self.fail("no_double_charge", f"load {auth} on a card twice")
                    on_cards[auth] = (cid, e.amount)
        with self.host.uow() as uow:
            rows = list(uow.session.scalars(select(LoadRow)))
            uow.session.expunge_all()
        known = {r.auth_id: r for r in rows}
        for auth, (cid, amount) in on_cards.items():
            r = known.get(auth)
            if r is None or r.card_id != cid or r.amount != amount:
                self.fail("only_host_creates_value",
                          f"card {cid} holds a load {auth} the host never authorised")
            elif r.status != "confirmed":
                self.fail("no_double_charge", f"load {auth} is on card {cid} but the host has "
                                              f"it {r.status}")
        left = [r.auth_id for r in rows if r.status == "authorised"]
        if left:
            self.fail("only_host_creates_value", f"{len(left)} load authorisations neither on a "
                                                 f"card nor voided, e.g. {left[:3]}")
        with self.host.uow() as uow:
            suspense = uow.session.scalar(select(func.coalesce(func.sum(Account.balance), 0))
                                          .where(Account.kind == Kind.LOAD_SUSPENSE.value))
        if suspense:
            self.fail("only_host_creates_value",
                      f"load suspense holds {-int(suspense or 0)} after every load was "
                      "confirmed or voided")

    def value(self, cards: dict[str, CardState], events: dict[str, list[CardEventRow]],
              debts: list[Debt], clone_ids: set[str]) -> None:
        """Rule 6: what the cards hold is what the host loaded less what they paid; what
        they owe is what the host has in collection."""
        honest = [cid for cid in cards if cid not in clone_ids]
        held = sum(cards[c].balance for c in honest)
        flows = 0
        for cid in honest:
            for e in events.get(cid, []):
                if e.kind == EventKind.LOAD:
                    flows += e.amount - e.split
                elif e.kind == EventKind.DEBIT:
                    flows -= e.amount
                else:
                    flows += e.amount
        if held != flows:
            self.fail("only_host_creates_value",
                      f"the cards hold {held}; loads less debits come to {flows}")
        owed_cards = sum(a for c in honest for st, _, a in cards[c].slots
                         if st == DebtState.FAILED)
        owed_host = sum(d.amount - d.repaid for d in debts
                        if d.status == "collection" and d.card_id not in clone_ids)
        if owed_cards != owed_host:
            self.fail("only_host_creates_value",
                      f"the cards' failed debts total {owed_cards}; the host has {owed_host} "
                      "in collection")
        self.subject.counts["value.on_cards"] = held
        self.subject.counts["value.in_collection"] = owed_host

    def online_once(self) -> None:
        """Rule 2: an online purchase is charged once, exactly when the terminal printed it."""
        with self.host.uow() as uow:
            approved = {(a.terminal_id, a.auth_code): a.amount for a in uow.session.scalars(
                select(OnlineAuth).where(OnlineAuth.status == "approved"))}
            reversed_ = uow.session.scalar(select(func.count()).select_from(OnlineAuth).where(
                OnlineAuth.status == "reversed")) or 0
        printed = {(tid, code) for tid, code, _ in self.subject.online_receipts}
        if len(printed) != len(self.subject.online_receipts):
            self.fail("no_double_charge", "one online authorisation printed twice")
        extra = set(approved) - printed
        if extra:
            self.fail("no_double_charge", f"{len(extra)} online payments charged without a "
                                          f"receipt, e.g. {sorted(extra)[:2]}")
        lost = printed - set(approved)
        if lost:
            self.fail("merchants_paid_once", f"{len(lost)} printed online payments are not "
                                             f"charged, e.g. {sorted(lost)[:2]}")
        self.subject.counts["online.reversed"] = int(reversed_)

    def merchants(self, events: dict[str, list[CardEventRow]],
                  conflicts: list[CardEventConflict]) -> None:
        """Rule 7: each merchant was paid, once, what the cards signed at its terminals and
        what its online receipts say, less its fees; nothing is left owed."""
        shop_of = self.subject.terminals()
        expected: Counter[str] = Counter()
        for evs in events.values():
            for e in evs:
                if e.kind == EventKind.DEBIT:
                    expected[shop_of[e.terminal_id]] += e.amount + e.split
                elif e.kind == EventKind.CANCEL:
                    expected[shop_of[e.terminal_id]] -= e.amount + e.split
        for c in conflicts:
            clone = SignedEvent.parse(bytes.fromhex(c.record)).event
            if clone.kind == EventKind.DEBIT:
                expected[shop_of[c.terminal_id]] += clone.amount
            elif clone.kind == EventKind.CANCEL:
                expected[shop_of[c.terminal_id]] -= clone.amount
        for tid, _, amount in self.subject.online_receipts:
            expected[shop_of[tid]] += amount
        with self.host.uow() as uow:
            s = uow.session
            gross: Counter[str] = Counter(dict(s.execute(
                select(Settlement.merchant_id, func.sum(Settlement.gross))
                .group_by(Settlement.merchant_id)).all()))
            owed = {o: -int(b) for o, b in s.execute(select(Account.owner, Account.balance).where(
                Account.kind == Kind.MERCHANT_PAYABLE.value)).all()}
            unsettled = s.scalar(select(func.count()).select_from(LedgerTransaction).where(
                LedgerTransaction.merchant_id.is_not(None),
                LedgerTransaction.settlement_id.is_(None))) or 0
            payouts = s.scalar(select(func.coalesce(func.sum(Posting.amount), 0))
                               .join(LedgerTransaction,
                                     LedgerTransaction.id == Posting.transaction_id)
                               .where(LedgerTransaction.kind == "settlement_payout",
                                      Posting.amount < 0)) or 0
            nets = s.scalar(select(func.coalesce(func.sum(Settlement.net), 0))) or 0
        for mid in self.subject.merchants():
            if int(gross.get(mid, 0)) != expected.get(mid, 0):
                self.fail("merchants_paid_once", f"merchant {mid} was settled {gross.get(mid, 0)}"
                                                 f" for sales of {expected.get(mid, 0)}")
            if owed.get(mid, 0):
                self.fail("merchants_paid_once", f"merchant {mid} is still owed {owed[mid]} after "
                                                 "the last settlement")
        if unsettled:
            self.fail("merchants_paid_once", f"{unsettled} merchant transactions never settled")
        if -int(payouts) != int(nets):
            self.fail("merchants_paid_once", f"payouts {-int(payouts)} differ from the "
                                             f"settlements' net {nets}")
        self.subject.counts["merchants.gross"] = sum(int(v) for v in gross.values())

    def clones(self, host_cards: dict[str, Card]) -> None:
        """Rule 5 at the end: every copy that was spent beside its original is caught."""
        for c in self.subject.copies():
            original, copy = read_card(c.original), read_card(c.copy)
            cid = c.card_id
            if original.seqno <= c.seqno or copy.seqno <= c.seqno:
                self.subject.counts["clones.not_spent_both"] += 1
                continue
            self.subject.counts["clones.injected"] += 1
            hc = host_cards[cid]
            if hc.status == "cloned" and hc.blacklisted:
                self.subject.counts["clones.detected"] += 1
            else:
                self.fail("clones_caught", f"card {cid} was copied and both copies were spent; "
                                           f"the host has it {hc.status}, blacklisted "
                                           f"{hc.blacklisted}")

    def alerts(self) -> None:
        with self.host.uow() as uow:
            kinds = uow.session.execute(select(Alert.kind, func.count()).group_by(
                Alert.kind)).all()
        for kind, n in kinds:
            self.subject.counts[f"alerts.{kind}"] = int(n)
            if kind in ("totals_mismatch", "journal_chain"):
                self.fail("nothing_lost", f"{n} {kind} alert(s) at the host")
            elif kind in ("record_invalid", "load_unknown", "load_void_reversed"):
                self.fail("only_host_creates_value", f"{n} {kind} alert(s) at the host")
