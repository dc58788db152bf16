"""Agent debits: the online remainder of split purchases, and how the host collects it.

A terminal forwards each split remainder, as the cardholder's agent, with an
idempotency key bound to a hash of the payload. The host checks the card's
signed record of the split debit, then:

1. pays the merchant at once (credit receivable -> merchant payable): the
   operator carries the credit risk;
2. debits the cardholder's online account if it holds enough;
3. otherwise asks the bank connector for a direct debit on the linked
   account (asynchronous: the outcome may come later);
4. if there is no linked account or the bank refuses, the debt goes to
   collection: it stays a receivable on the ledger, a credit event is
   recorded, and after ``collection_blacklist_after_s`` the card is
   blacklisted.

Every outcome is published as a write-back (settle or fail the card's debt
slot). The debt is unique per (card, ATC) whoever reports it first: the agent
debit, or clearing when the split debit's batch arrives before it.

The common case (2, with accounts already in use) is written for many debits at
once by the process's group writer (:mod:`tallypurse.host.agent_groups`); every
other case, and any debit a group gives back, is taken here one at a time
(:meth:`AgentDebits._submit`), with the same rows.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from tallypurse.core.errors import BadInput, DecodeError
from tallypurse.core.hostapi import AgentDebitAck, AgentDebitRequest
from tallypurse.core.messages import CardEvent, DebtOutcome, SignedEvent
from tallypurse.core.protocol import EventKind, TxType
from tallypurse.host.agent_groups import (
    AgentGroups,
    CardKey,
    OneByOne,
    Taken,
    TerminalChangedResult,
    Waiting,
    nonce_is_new,
)
from tallypurse.host.bank import BankAnswer, BankUnavailable, DirectDebit, Outcome
from tallypurse.host.db.bulk import plain
from tallypurse.host.db.models import BankInstruction, Card, CreditEvent, Debt
from tallypurse.host.errors import (
    CONFLICT,
    CURRENCY_MISMATCH,
    IDEMPOTENCY_CONFLICT,
    NOT_FOUND,
    RECORD_INVALID,
    RECORD_MISMATCH,
    REPLAY,
    TERMINAL_MISMATCH,
    UNKNOWN_CARD,
    UNKNOWN_TERMINAL,
    HostError,
)
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger
from tallypurse.host.tms import terminal_refusal

from .common import (
    hex_bytes,
    log_event,
    log_on_commit,
    new_id,
    numeric_currency,
    payload_hash,
    retrying,
)

if TYPE_CHECKING:
    from tallypurse.host.service import Host

OPEN_STATES = ("open", "bank_pending", "collection")


class CardFacts(Protocol):
    """What checking a card's record needs (a ``Card`` row has it)."""

    @property
    def card_id(self) -> str: ...

    @property
    def currency(self) -> str: ...

    @property
    def public_key(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SignedBy:
    """A terminal's request whose RFC 9421 signature verified with ``key``; its nonce is
    recorded in the agent debit's own transaction (a replay then changes nothing)."""

    terminal_id: str
    key: bytes
    nonce: str


class TerminalChanged(Exception):
    """The terminal's key, status or certificate is not what the signature was checked
    against (a cached key went stale): check the request again with a fresh key."""


@dataclass(frozen=True, slots=True)
class CardRow:
    card_id: str
    cardholder_id: str | None
    currency: str
    public_key: str
    app_key_version: int


# Everything an agent debit reads, in one statement: the terminal, the card, an earlier
# debt with this idempotency key or for this (card, ATC), and the ledger accounts it posts to.
DEBIT_READ = text("""
SELECT t.merchant_id, t.status, t.public_key, t.cert_not_after,
       c.card_id, c.cardholder_id, c.currency, c.public_key AS card_key, c.app_key_version,
       k.id AS prior_id, k.payload_hash AS prior_hash,
       d.id AS same_id,
       r.id AS receivable_id, m.id AS payable_id, o.id AS online_id
FROM terminals t
LEFT JOIN cards c ON c.card_id = :card_id
LEFT JOIN debts k ON k.terminal_id = t.terminal_id AND k.idempotency_key = :key
LEFT JOIN debts d ON d.card_id = :card_id AND d.atc = :atc
LEFT JOIN accounts r ON r.kind = 'credit_receivable' AND r.owner = '' AND r.currency = c.currency
LEFT JOIN accounts m ON m.kind = 'merchant_payable' AND m.owner = t.merchant_id
                    AND m.currency = c.currency
LEFT JOIN accounts o ON o.kind = 'online' AND o.owner = c.cardholder_id AND o.currency = c.currency
WHERE t.terminal_id = :terminal_id
""")
CARD_KEYS_KEPT = 100_000  # cards whose key a process keeps (then it starts again)
def record_nonce(s: Session, key_id: str, nonce: str, now: int) -> None:
    """Record a request's nonce in the caller's transaction; REPLAY if it was seen before."""
    if not nonce_is_new(s, key_id, nonce, now):
        raise HostError(REPLAY, "this request was seen before (nonce reused)")


@dataclass(frozen=True, slots=True)
class DebtView:
    id: str
    card_id: str
    atc: int
    amount: int
    currency: str
    status: str
    merchant_id: str


class AgentDebits:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.groups = AgentGroups(self)
        self._card_keys: dict[str, CardKey] = {}

    # --- the terminal's request -------------------------------------------------------------------
    def submit(self, terminal_id: str, req: AgentDebitRequest, *,
               signed: SignedBy | None = None) -> AgentDebitAck:
        """Take an agent debit (once per terminal and idempotency key). ``signed``: the
        request's verified signature, whose nonce is recorded in the debit's transaction."""
        digest = self.digest(terminal_id, req)
        offered = self.offer(terminal_id, req, digest, signed, self.cached_card(req.card_id))
        result = offered.result() if isinstance(offered, Future) else offered
        return self.finish(terminal_id, req, digest, signed, result)

    # The three steps of :meth:`submit`, for a caller that waits for the group writer
    # without holding a thread (the HTTP server's event loop).
    @staticmethod
    def digest(terminal_id: str, req: AgentDebitRequest) -> str:
        """The payload hash that binds the idempotency key (after the first check)."""
        if req.terminal_id != terminal_id:
            raise HostError(TERMINAL_MISMATCH, "the agent debit names another terminal")
        return payload_hash(req)

    def offer(self, terminal_id: str, req: AgentDebitRequest, digest: str,
              signed: SignedBy | None, card: CardKey | None) -> Future[Taken] | OneByOne:
        """Check the card's record against ``card`` (:meth:`cached_card`), then hand the debit
        to the group writer (:mod:`tallypurse.host.agent_groups`), whose future gives
        the outcome. A request that fails a check goes the one-debit way at once, which
        answers it in the usual order (a replayed or retried request first)."""
        waiting = self.prepare(terminal_id, req, digest, signed, card)
        if isinstance(waiting, OneByOne):
            return waiting
        self.groups.take(waiting)
        return waiting.future

    def prepare(self, terminal_id: str, req: AgentDebitRequest, digest: str,
                signed: SignedBy | None, card: CardKey | None) -> Waiting | OneByOne:
        """The debit as the group writer takes it, its card's record checked against
        ``card`` (:meth:`cached_card`); with no card, checked but for its signature,
        which the group writer checks with the key its read finds. A record that fails
        goes the one-debit way, which answers it in the usual order."""
        try:
            record = self._record(terminal_id, req)
        except HostError:
            return OneByOne(False)
        if card is not None and (card.currency != req.currency
                                 or not record.verify(bytes.fromhex(card.public_key))):
            return OneByOne(False)
        return Waiting(terminal_id, req, digest, record.event, card, signed, Future(),
                       unverified=record if card is None else None)

    def finish(self, terminal_id: str, req: AgentDebitRequest, digest: str,
               signed: SignedBy | None, result: Taken) -> AgentDebitAck:
        """The answer from the group writer's outcome; the one-debit way if it gave the
        debit back (this may block on the database)."""
        if isinstance(result, AgentDebitAck):
            return result
        if isinstance(result, TerminalChangedResult):
            raise TerminalChanged(terminal_id)
        if isinstance(result, BaseException):
            raise result
        if result.nonce_recorded:  # the group committed the nonce; the rest goes one by one
            signed = None
        ack, pending = retrying(lambda: self._submit(terminal_id, req, digest, signed))
        for instruction in pending:
            self.process_instruction(instruction)
        return ack

    def cached_card(self, card_id: str) -> CardKey | None:
        """A card's certified key and currency (fixed at issuance) if this process has
        met the card before; no database."""
        return self._card_keys.get(card_id)

    def remember_card(self, card: CardKey) -> None:
        if len(self._card_keys) >= CARD_KEYS_KEPT:
            self._card_keys.clear()
        self._card_keys[card.card_id] = card

    def _submit(self, terminal_id: str, req: AgentDebitRequest, digest: str,
                signed: SignedBy | None) -> tuple[AgentDebitAck, list[str]]:
        """One debit in one transaction, through the ORM: the way of every debit that the
        group writer (:mod:`tallypurse.host.agent_groups`) does not take, such as a retried
        key, a debt that clearing opened first, an online account that holds too little
        (the bank, then collection), a first use of an account, twins in one group. One
        statement reads everything."""
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            row = plain(s, DEBIT_READ.text, {
                "terminal_id": terminal_id, "card_id": req.card_id,
                "key": req.idempotency_key, "atc": req.atc}).first()
            if row is None:
                if signed is not None:
                    raise TerminalChanged(terminal_id)
                raise HostError(UNKNOWN_TERMINAL, f"unknown terminal {terminal_id}")
            if signed is not None:
                if (terminal_refusal(terminal_id, row.status, row.public_key,
                                     row.cert_not_after, now) is not None
                        or bytes.fromhex(row.public_key) != signed.key):
                    raise TerminalChanged(terminal_id)
                record_nonce(s, terminal_id, signed.nonce, now)
            if row.prior_id is not None:
                if row.prior_hash != digest:
                    raise HostError(IDEMPOTENCY_CONFLICT,
                                    "this idempotency key was used for another agent debit")
                uow.commit()  # the nonce
                return AgentDebitAck(idempotency_key=req.idempotency_key, status="duplicate",
                                     debt_id=row.prior_id), []
            if row.card_id is None:
                raise HostError(UNKNOWN_CARD, f"unknown card {req.card_id}")
            card = CardRow(row.card_id, row.cardholder_id, row.currency, row.card_key,
                           row.app_key_version)
            event = self._check(card, terminal_id, req)
            merchant_id: str = row.merchant_id
            # Everything else (a debt already known, no online funds: the bank, collection).
            # The card is locked first, as every path does (then the online account).
            card_row = self.host.registry.card(s, req.card_id, lock=True)
            if row.same_id is not None:
                same = s.get(Debt, row.same_id)
                assert same is not None
                # Clearing (or another key) reported this split first: no second effect.
                if same.amount != req.amount:
                    raise HostError(CONFLICT, "a debt for this card and ATC has another amount")
                status: Literal["accepted", "duplicate"] = "duplicate"
                if same.idempotency_key is None:
                    same.idempotency_key, same.payload_hash = req.idempotency_key, digest
                    status = "accepted"
                uow.commit()
                return AgentDebitAck(idempotency_key=req.idempotency_key, status=status,
                                     debt_id=same.id), []
            debt = self._open(s, card_row, event, terminal_id, merchant_id, origin="agent",
                              key=req.idempotency_key, digest=digest)
            pending = self._collect(s, card_row, debt)
            uow.commit()
        log_event("agent_debit", terminal=terminal_id, card=req.card_id, atc=req.atc,
                  amount=req.amount, debt=debt.id, status=debt.status)
        return AgentDebitAck(idempotency_key=req.idempotency_key, status="accepted",
                             debt_id=debt.id), pending

    def _check(self, card: CardFacts, terminal_id: str, req: AgentDebitRequest) -> CardEvent:
        if card.currency != req.currency:
            raise HostError(CURRENCY_MISMATCH, f"the card's currency is {card.currency}")
        record = self._record(terminal_id, req)
        if not record.verify(bytes.fromhex(card.public_key)):
            raise HostError(RECORD_INVALID, "the card's signature (TAC) does not verify")
        return record.event

    @staticmethod
    def _record(terminal_id: str, req: AgentDebitRequest) -> SignedEvent:
        """The card's record of the split, parsed and matched with the request (its
        signature is the caller's to check, with the card's key)."""
        if req.amount <= 0:
            raise HostError(RECORD_MISMATCH, "an agent debit is for a positive amount")
        try:
            record = SignedEvent.parse(hex_bytes(req.record, "record"))
        except DecodeError as exc:
            raise HostError(RECORD_INVALID, f"card record: {exc.message}") from None
        if record.event.card_id.hex() != req.card_id:
            raise HostError(RECORD_MISMATCH, "the record is another card's")
        event = record.event
        try:
            tx_type = TxType.parse(req.tx_type)
        except BadInput as exc:
            raise HostError(RECORD_MISMATCH, exc.message) from None
        if (event.kind != EventKind.DEBIT or event.atc != req.atc or event.split != req.amount
                or event.terminal_id.hex() != terminal_id or event.tx_type != tx_type
                or event.currency != numeric_currency(req.currency)):
            raise HostError(RECORD_MISMATCH, "the card's record does not match this agent debit")
        return record

    # --- opening, collecting, closing debts -------------------------------------------------------
    def _open(self, s: Session, card: Card, event: CardEvent, terminal_id: str, merchant_id: str,
              *, origin: str, key: str | None = None, digest: str | None = None,
              status: str = "open", atc: int | None = None) -> Debt:
        """Record the debt of a split debit (``atc`` overrides the event's, for a cancel)."""
        now = self.host.now()
        atc = event.atc if atc is None else atc
        debt = Debt(id=new_id("debt"), card_id=card.card_id, atc=atc, amount=event.split,
                    currency=card.currency, terminal_id=terminal_id, merchant_id=merchant_id,
                    cardholder_id=card.cardholder_id, tx_type=event.tx_type,
                    idempotency_key=key, payload_hash=digest, status=status, origin=origin,
                    event_time=event.time, created=now, updated=now, repaid=0)
        s.add(debt)
        s.flush()  # the unique (card, atc) and (terminal, key) decide races here
        if status == "open":
            Ledger(s, now).post(Entry("debt_open", debt.id, [
                (Acct.system(Kind.CREDIT_RECEIVABLE, debt.currency), debt.amount),
                (Acct(Kind.MERCHANT_PAYABLE, merchant_id, debt.currency), -debt.amount),
            ], value_time=event.time, merchant_id=merchant_id, card_id=card.card_id,
                memo=f"split remainder of ATC {atc}"))
        return debt

    def _collect(self, s: Session, card: Card, debt: Debt) -> list[str]:
        """First attempt: online account, else a bank instruction, else collection.
        Returns bank instruction ids to submit after commit."""
        now = self.host.now()
        ledger = Ledger(s, now)
        if debt.cardholder_id is not None:
            online = Acct(Kind.ONLINE, debt.cardholder_id, debt.currency)
            if -ledger.balance(online, lock=True) >= debt.amount:
                ledger.post(Entry("debt_collect_online", debt.id, [
                    (online, debt.amount),
                    (Acct.system(Kind.CREDIT_RECEIVABLE, debt.currency), -debt.amount),
                ], value_time=now, card_id=debt.card_id))
                self._settled(s, card, debt, "settled", "debt_settled_online")
                return []
            account = self.host.registry.bank_account(s, debt.cardholder_id)
            if account is not None:
                instruction = BankInstruction(
                    id=new_id("DD", 12)[:35], kind="direct_debit", debt_id=debt.id,
                    amount=debt.amount, currency=debt.currency, iban=account.iban,
                    status="new", created=now, updated=now)
                s.add(instruction)
                debt.status, debt.updated = "bank_pending", now
                return [instruction.id]
        self._to_collection(s, card, debt, "no online funds and no bank account")
        return []

    def _settled(self, s: Session, card: Card, debt: Debt, status: str, event: str) -> None:
        debt.status, debt.updated = status, self.host.now()
        self._credit_event(s, debt, event)
        self.host.writebacks.publish(s, card, "settle_debt",
                                     DebtOutcome(debt.atc, debt.amount).to_bytes(),
                                     debt_id=debt.id)

    def _to_collection(self, s: Session, card: Card, debt: Debt, why: str) -> None:
        now = self.host.now()
        debt.status, debt.updated, debt.collection_since = "collection", now, now
        self._credit_event(s, debt, "debt_collection")
        self.host.writebacks.publish(s, card, "fail_debt",
                                     DebtOutcome(debt.atc, debt.amount).to_bytes(),
                                     debt_id=debt.id)
        log_on_commit(s, "debt_collection", debt=debt.id, card=card.card_id, why=why)

    def _credit_event(self, s: Session, debt: Debt, kind: str, amount: int | None = None) -> None:
        s.add(CreditEvent(cardholder_id=debt.cardholder_id, card_id=debt.card_id, kind=kind,
                          amount=debt.amount if amount is None else amount, reference=debt.id,
                          created=self.host.now()))
        # Outcomes that matter re-score the cardholder (tallypurse.host.credit).
        self.host.credit.note_event(s, debt.cardholder_id, kind,
                                    after_failure=debt.collection_since is not None)

    # --- from clearing ----------------------------------------------------------------------------
    def open_from_clearing(self, s: Session, card: Card, event: CardEvent, terminal_id: str,
                           merchant_id: str) -> list[str]:
        """A split debit seen in a batch: open its debt unless the agent debit did."""
        if s.scalar(select(Debt.id).where(Debt.card_id == card.card_id,
                                          Debt.atc == event.atc)) is not None:
            return []
        debt = self._open(s, card, event, terminal_id, merchant_id, origin="clearing")
        return self._collect(s, card, debt)

    def cancel(self, s: Session, card: Card, cancel: CardEvent, terminal_id: str,
               merchant_id: str) -> None:
        """A cancelled split debit: the card freed its debt slot; undo the debt."""
        atc = cancel.atc - 1
        debt = s.scalar(select(Debt).where(Debt.card_id == card.card_id, Debt.atc == atc))
        now = self.host.now()
        if debt is None:  # the agent debit has not arrived: leave a tombstone for it
            self._open(s, card, cancel, terminal_id, merchant_id, origin="clearing",
                       status="cancelled", atc=atc)
            return
        ledger = Ledger(s, now)
        payable = Acct(Kind.MERCHANT_PAYABLE, debt.merchant_id, debt.currency)
        if debt.status in ("open", "bank_pending", "collection"):
            ledger.post(Entry("debt_cancel", debt.id, [
                (payable, debt.amount - debt.repaid),
                (Acct.system(Kind.CREDIT_RECEIVABLE, debt.currency), -(debt.amount - debt.repaid)),
            ], value_time=cancel.time, merchant_id=debt.merchant_id, card_id=debt.card_id))
            if debt.repaid and debt.cardholder_id is not None:
                self._refund(ledger, debt, debt.repaid, cancel.time)
        elif debt.status in ("settled", "settled_bank", "repaid") and debt.cardholder_id:
            self._refund(ledger, debt, debt.amount, cancel.time)
        else:
            return
        debt.status, debt.updated = "cancelled", now
        self.host.writebacks.withdraw_for_debt(s, debt.id)
        self._credit_event(s, debt, "debt_cancelled")

    def _refund(self, ledger: Ledger, debt: Debt, amount: int, when: int) -> None:
        """Give a collected amount back to the online account (the merchant pays it back)."""
        assert debt.cardholder_id is not None
        ledger.post(Entry("debt_refund", debt.id, [
            (Acct(Kind.MERCHANT_PAYABLE, debt.merchant_id, debt.currency), amount),
            (Acct(Kind.ONLINE, debt.cardholder_id, debt.currency), -amount),
        ], value_time=when, merchant_id=debt.merchant_id, card_id=debt.card_id))

    def repaid_by_load(self, s: Session, card: Card, amount: int) -> None:
        """A load on the card repaid ``amount`` of its failed debts, oldest first (the
        ledger side is in the load's own transaction)."""
        left = amount
        for debt in s.scalars(select(Debt).where(Debt.card_id == card.card_id,
                                                 Debt.status == "collection")
                              .order_by(Debt.atc)):
            if not left:
                break
            pay = min(left, debt.amount - debt.repaid)
            debt.repaid += pay
            left -= pay
            if debt.repaid == debt.amount:
                debt.status, debt.updated = "repaid", self.host.now()
                self.host.writebacks.withdraw_for_debt(s, debt.id)
            self._credit_event(s, debt, "debt_repaid_load", pay)
        if left:
            log_on_commit(s, "load_repaid_unknown_debt", card=card.card_id, amount=left)

    # --- the bank ---------------------------------------------------------------------------------
    def process_instruction(self, instruction_id: str) -> str:
        """Submit a direct debit or ask for its outcome, and book the outcome."""
        with self.host.uow() as uow:
            s = uow.session
            ins = s.get(BankInstruction, instruction_id)
            if ins is None or ins.status not in ("new", "submitted") or ins.debt_id is None:
                return str(ins.status) if ins else "unknown"
            debt = s.get(Debt, ins.debt_id)
            assert debt is not None
            account = self.host.registry.bank_account(s, debt.cardholder_id)
            if account is None:
                return ins.status
            order = DirectDebit(ins.id, account.iban, account.bic, account.holder_name,
                                account.mandate_id, account.mandate_signed, ins.amount,
                                ins.currency, f"tallypurse {debt.card_id} ATC {debt.atc}")
            submitted, created, status = ins.status == "submitted", ins.created, ins.status
        now = self.host.now()
        try:
            answer = (self.host.bank.status(order, submitted=created, now=now) if submitted
                      else self.host.bank.submit_direct_debit(order, now=now))
        except BankUnavailable:
            return status
        return self._book_outcome(instruction_id, answer)

    def _book_outcome(self, instruction_id: str, answer: BankAnswer) -> str:
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            ins = s.scalar(uow.lock(select(BankInstruction).where(
                BankInstruction.id == instruction_id)))
            if ins is None or ins.debt_id is None:
                raise HostError(NOT_FOUND, f"no direct debit {instruction_id}")
            if ins.status not in ("new", "submitted"):
                return str(ins.status)
            debt = s.scalar(uow.lock(select(Debt).where(Debt.id == ins.debt_id)))
            assert debt is not None
            card = self.host.registry.card(s, debt.card_id)
            ins.updated = now
            if answer.outcome == Outcome.PENDING:
                ins.status = "submitted"
            elif answer.outcome == Outcome.SETTLED:
                ins.status = "settled"
                ledger = Ledger(s, now)
                ledger.post(Entry("debt_collect_bank", debt.id, [
                    (Acct.system(Kind.BANK_CLEARING, debt.currency), ins.amount),
                    (Acct.system(Kind.CREDIT_RECEIVABLE, debt.currency), -ins.amount),
                ], value_time=now, card_id=debt.card_id))
                if debt.status == "cancelled" and debt.cardholder_id is not None:
                    # Cancelled while the bank worked: the money goes to the online account.
                    ledger.post(Entry("debt_refund_bank", debt.id, [
                        (Acct.system(Kind.CREDIT_RECEIVABLE, debt.currency), ins.amount),
                        (Acct(Kind.ONLINE, debt.cardholder_id, debt.currency), -ins.amount),
                    ], value_time=now, card_id=debt.card_id))
                elif debt.status in OPEN_STATES:
                    self._settled(s, card, debt, "settled_bank", "debt_settled_bank")
            else:
                ins.status, ins.reason = "failed", answer.reason[:100]
                if debt.status == "bank_pending":
                    self._to_collection(s, card, debt, f"bank: {answer.reason}")
            uow.commit()
            return str(ins.status)

    def record_bank_outcome(self, instruction_id: str, settled: bool, reason: str = "") -> str:
        """Book the bank's answer to a direct debit sent in a pain.008 file."""
        return self._book_outcome(instruction_id, BankAnswer(
            Outcome.SETTLED if settled else Outcome.FAILED, reason))

    def process_bank(self) -> dict[str, int]:
        """Submit new direct debits and fetch outcomes of submitted ones."""
        with self.host.uow() as uow:
            ids = list(uow.session.scalars(select(BankInstruction.id).where(
                BankInstruction.kind == "direct_debit",
                BankInstruction.status.in_(("new", "submitted")))))
        counts: dict[str, int] = {}
        for iid in ids:
            status = self.process_instruction(iid)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def sweep_collections(self) -> int:
        """Blacklist the cards of debts in collection for longer than the limit."""
        limit = self.host.now() - self.host.settings.collection_blacklist_after_s
        done = 0
        with self.host.uow() as uow:
            s = uow.session
            for debt in s.scalars(select(Debt).where(Debt.status == "collection",
                                                     Debt.collection_since <= limit)):
                card = self.host.registry.card(s, debt.card_id, lock=True)
                if self.host.lists.blacklist(s, card, "defaulted"):
                    self._credit_event(s, debt, "defaulted")
                    done += 1
            uow.commit()
        return done

    def write_off(self, debt_id: str) -> None:
        """Give up a debt in collection: the receivable becomes a loss."""
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            debt = s.scalar(uow.lock(select(Debt).where(Debt.id == debt_id)))
            if debt is None:
                raise HostError(NOT_FOUND, f"no debt {debt_id}")
            if debt.status != "collection":
                raise HostError(CONFLICT, f"debt is {debt.status}, not in collection")
            left = debt.amount - debt.repaid
            Ledger(s, now).post(Entry("debt_write_off", debt.id, [
                (Acct.system(Kind.LOSSES, debt.currency), left),
                (Acct.system(Kind.CREDIT_RECEIVABLE, debt.currency), -left),
            ], value_time=now, card_id=debt.card_id))
            debt.status, debt.updated = "written_off", now
            self._credit_event(s, debt, "debt_written_off", left)
            uow.commit()

    def debt(self, debt_id: str) -> DebtView:
        with self.host.uow() as uow:
            d = uow.session.get(Debt, debt_id)
            if d is None:
                raise HostError(NOT_FOUND, f"no debt {debt_id}")
            return DebtView(d.id, d.card_id, d.atc, d.amount, d.currency, d.status, d.merchant_id)
