"""Test helpers for the host: a settable clock and a small world (merchant, enrolled
terminal with a real SAM, cardholders, cards issued by the host) that drives real
card-signed flows."""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tallypurse.card.card import Card
from tallypurse.core import crypto
from tallypurse.core.hostapi import (
    AgentDebitRequest,
    BatchAck,
    BatchUpload,
    JournalEntry,
    LoadConfirm,
    LoadRequest,
    Totals,
    canonical,
)
from tallypurse.core.httpsig import batch_signed_bytes
from tallypurse.core.messages import LoadAuthorisation, SignedEvent
from tallypurse.core.protocol import EventKind, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.samproto import PURPOSE_BATCH, PURPOSE_JOURNAL
from tallypurse.core.transport import ApduClient
from tallypurse.host.service import Host
from tallypurse.lab import Lab, Tap
from tallypurse.sam import Sam

from .client import SignedClient

_serials = itertools.count(1)


class Clock:
    """A settable clock for the host (unix seconds)."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: int) -> None:
        self.t += seconds


def new_serial() -> bytes:
    return (0x2000_0000_0000_0000 + os.getpid() % 1000 * 1_000_000 + next(_serials)).to_bytes(
        8, "big")


@dataclass
class World:
    host: Host
    lab: Lab
    clock: Clock
    tmp: Path
    http: httpx.Client
    merchant_id: str = ""
    terminal_id: str = ""
    sam: Sam | None = None
    client: SignedClient | None = None
    journal: list[JournalEntry] = field(default_factory=list)
    head: str = "00" * 32

    @property
    def tid(self) -> str:
        return self.terminal_id

    # people and cards
    def cardholder(self, *, funds: int = 0, iban: str | None = None, grade: int = 2) -> str:
        holder = self.host.registry.create_cardholder("Ada Lovelace", "EUR", grade=grade)
        if funds:
            self.host.registry.fund_online_account(holder, funds, f"fund-{holder}")
        if iban is not None:
            self.host.registry.link_bank_account(holder, iban=iban, bic="COBADEFFXXX",
                                                 holder_name="Ada Lovelace")
        return holder

    def card(self, holder: str | None = None) -> Card:
        serial = new_serial()
        card = Card.manufacture(serial)
        self.host.registry.issue_card(card, serial=serial, cardholder_id=holder)
        return card

    # terminal flows (offline, with the world's SAM)
    def purchase(self, card: Card, amount: int, *, split: int = 0,
                 tx_type: TxType = TxType.GENERAL, time: int | None = None) -> SignedEvent:
        assert self.sam is not None
        tap: Tap = self.lab.purchase(card, self.sam, amount, split=split, tx_type=tx_type,
                                     time=time or self.clock())
        assert tap.event is not None
        return tap.event

    def load(self, card: Card, amount: int, *, funding: str = "cash",
             confirm: bool = True) -> SignedEvent:
        """A load through the host: authorise over HTTP, credit the card, confirm."""
        assert self.client is not None
        purse = PurseClient(ApduClient(card))
        purse.select()
        session = purse.initialize_load()
        key = f"load-{secrets.token_hex(6)}"
        answer = self.client.load_authorisation(LoadRequest(
            idempotency_key=key, card_id=session.card_id.hex(),
            load_counter=session.load_counter, card_challenge=session.challenge.hex(),
            amount=amount, currency="EUR", funding=funding))  # type: ignore[arg-type]
        event = purse.credit(LoadAuthorisation.parse(bytes.fromhex(answer.authorisation)),
                             bytes.fromhex(answer.signature),
                             bytes.fromhex(answer.load_certificate))
        if confirm:
            self.client.confirm_load(LoadConfirm(idempotency_key=key,
                                                 record=event.to_bytes().hex()))
        return event

    def agent_request(self, split: SignedEvent, key: str | None = None) -> AgentDebitRequest:
        """The agent debit a terminal forwards for a split debit."""
        e = split.event
        return AgentDebitRequest(
            idempotency_key=key or f"agent-{e.card_id.hex()}-{e.atc}", terminal_id=self.tid,
            card_id=e.card_id.hex(), atc=e.atc, amount=e.split, currency="EUR",
            tx_type=TxType(e.tx_type).name.lower(), record=split.to_bytes().hex())

    # journal and batches
    def entry(self, event: SignedEvent | None = None, *, kind: str | None = None,
              card_id: str = "", amount: int = 0, reference: str = "") -> JournalEntry:
        assert self.sam is not None
        if event is not None:
            e = event.event
            kind = kind or {EventKind.DEBIT: "debit", EventKind.CANCEL: "cancel",
                            EventKind.LOAD: "load"}[EventKind(e.kind)]
            card_id, amount = e.card_id.hex(), e.amount
        seq = len(self.journal) + 1
        fields = {"seq": seq, "kind": kind, "time": self.clock(), "card_id": card_id,
                  "tx_type": "general", "amount": amount,
                  "split": event.event.split if event else 0, "currency": "EUR",
                  "record": event.to_bytes().hex() if event else "", "reference": reference,
                  "prev_hash": self.head}
        entry_hash = crypto.sha256(canonical(fields)).hex()
        entry = JournalEntry.model_validate({
            **fields, "entry_hash": entry_hash,
            "sam_signature": self.sam.sign(bytes.fromhex(entry_hash),
                                           purpose=PURPOSE_JOURNAL).hex()})
        self.head = entry_hash
        self.journal.append(entry)
        return entry

    def batch(self, entries: list[JournalEntry], batch_id: str | None = None,
              totals: dict[str, Totals] | None = None) -> BatchUpload:
        assert self.sam is not None
        if totals is None:
            totals = {}
            for e in entries:
                t = totals.get(e.kind, Totals(count=0, amount=0))
                totals[e.kind] = Totals(count=t.count + 1, amount=t.amount + e.amount)
        unsigned = BatchUpload(batch_id=batch_id or f"batch-{secrets.token_hex(6)}",
                               terminal_id=self.terminal_id, entries=entries, totals=totals,
                               signature="")
        return unsigned.model_copy(update={"signature": self.sam.sign(
            batch_signed_bytes(unsigned), purpose=PURPOSE_BATCH).hex()})

    def upload(self, *events: SignedEvent) -> BatchAck:
        ack: BatchAck = self.host.clearing.upload(self.tid,
                                                  self.batch([self.entry(e) for e in events]))
        return ack
