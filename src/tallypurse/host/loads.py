"""Loads (top-ups): host-signed load authorisations and their confirmation.

A terminal (or a phone in reader mode) reads the card's load counter and
challenge (INITIALIZE LOAD) and asks for an authorisation, funded by cash
taken at the counter or by the cardholder's online account. The host takes
the funds into load suspense and signs a
:class:`~tallypurse.core.messages.LoadAuthorisation` with its load key, bound
to that card, load counter and challenge, so it can be used once. The card
repays its failed debts first and refuses to go over its cap; its signed
LOAD event, confirmed here or uploaded in a batch, moves the amount from
suspense into the purse float (and the repaid part into the credit
receivable).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sqlalchemy import select

from tallypurse.core.hostapi import Ack, LoadAuthorisationResponse, LoadConfirm, LoadRequest
from tallypurse.core.messages import LoadAuthorisation
from tallypurse.core.protocol import EventKind
from tallypurse.host.db.models import LoadRow
from tallypurse.host.errors import (
    CARD_BLOCKED,
    CONFLICT,
    CURRENCY_MISMATCH,
    IDEMPOTENCY_CONFLICT,
    INSUFFICIENT_FUNDS,
    LIMIT_EXCEEDED,
    NO_ONLINE_ACCOUNT,
    NOT_FOUND,
    RECORD_MISMATCH,
    VALIDATION,
    HostError,
)
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger

from .clearing import Incoming
from .common import hex_bytes, log_event, numeric_currency, payload_hash, retrying

if TYPE_CHECKING:
    from tallypurse.host.service import Host


class Loads:
    def __init__(self, host: Host) -> None:
        self.host = host

    def authorise(self, terminal_id: str, req: LoadRequest) -> LoadAuthorisationResponse:
        digest = payload_hash(req)
        return retrying(lambda: self._authorise(terminal_id, req, digest))

    def _authorise(self, terminal_id: str, req: LoadRequest,
                   digest: str) -> LoadAuthorisationResponse:
        now = self.host.now()
        challenge = hex_bytes(req.card_challenge, "card challenge")
        if len(challenge) != 8:
            raise HostError(VALIDATION, "the card challenge is 8 bytes")
        with self.host.uow() as uow:
            s = uow.session
            prior = s.scalar(select(LoadRow).where(LoadRow.terminal_id == terminal_id,
                                                   LoadRow.idempotency_key == req.idempotency_key))
            if prior is not None:
                if prior.payload_hash != digest:
                    raise HostError(IDEMPOTENCY_CONFLICT, "key used for another load")
                return _answer(prior)
            card = self.host.registry.card(s, req.card_id, lock=True)
            if card.status != "active" or card.blacklisted:
                raise HostError(CARD_BLOCKED, f"card is {card.status}"
                                + (" and blacklisted" if card.blacklisted else ""))
            if card.currency != req.currency:
                raise HostError(CURRENCY_MISMATCH, f"the card's currency is {card.currency}")
            if req.amount > min(card.cap, self.host.settings.max_load):
                raise HostError(LIMIT_EXCEEDED, "amount over the load limit or the purse cap")
            ledger = Ledger(s, now)
            if req.funding == "online_account":
                if card.cardholder_id is None:
                    raise HostError(NO_ONLINE_ACCOUNT, "the card has no online account")
                source = Acct(Kind.ONLINE, card.cardholder_id, card.currency)
                if -ledger.balance(source, lock=True) < req.amount:
                    raise HostError(INSUFFICIENT_FUNDS, "the online account holds too little")
            else:
                source = Acct.system(Kind.CASH, card.currency)
            auth_id = secrets.token_bytes(8)
            auth = LoadAuthorisation(bytes.fromhex(card.card_id), req.load_counter, req.amount,
                                     numeric_currency(card.currency), challenge, auth_id, now)
            ref = self.host.load_key()
            row = LoadRow(
                terminal_id=terminal_id, idempotency_key=req.idempotency_key,
                payload_hash=digest, card_id=card.card_id, load_counter=req.load_counter,
                amount=req.amount, currency=card.currency, funding=req.funding,
                auth_id=auth_id.hex(), authorisation=auth.to_bytes().hex(),
                signature=self.host.keys.sign(ref, auth.signed_data()).hex(),
                load_certificate=self.host.trust.load_certificate(
                    ref, bytes.fromhex(card.certificate)).hex(),
                status="authorised", created=now)
            s.add(row)
            s.flush()
            ledger.post(Entry("load_funding", auth_id.hex(), [
                (source, req.amount),
                (Acct.system(Kind.LOAD_SUSPENSE, card.currency), -req.amount),
            ], value_time=now, card_id=card.card_id, memo=f"load funded by {req.funding}"))
            answer = _answer(row)
            uow.commit()
        log_event("load_authorised", terminal=terminal_id, card=req.card_id, amount=req.amount,
                  funding=req.funding)
        return answer

    def confirm(self, terminal_id: str, req: LoadConfirm) -> Ack:
        with self.host.uow() as uow:
            s = uow.session
            row = s.scalar(select(LoadRow).where(LoadRow.terminal_id == terminal_id,
                                                 LoadRow.idempotency_key == req.idempotency_key))
            if row is None:
                raise HostError(NOT_FOUND, "no load authorised under this key")
            if row.status == "voided":
                raise HostError(CONFLICT, "this load authorisation was voided")
            cards = self.host.clearing.lock_cards(s, {row.card_id})
            signed = self.host.clearing.verify(cards, hex_bytes(req.record, "record"))
            e = signed.event
            if (e.kind != EventKind.LOAD or e.card_id.hex() != row.card_id
                    or e.terminal_challenge.hex() != row.auth_id or e.amount != row.amount):
                raise HostError(RECORD_MISMATCH, "the card's record is not this load")
            merchant_id = self.host.tms.merchant_of(s, terminal_id)
            self.host.clearing.take(s, cards, [Incoming(signed, terminal_id, merchant_id)])
            uow.commit()
        return Ack()

    def void(self, auth_id: str) -> None:
        """Give back the funds of an authorisation the card never used (operator action,
        after the card's later events show its load counter moved on without it)."""
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            row = s.scalar(uow.lock(select(LoadRow).where(LoadRow.auth_id == auth_id)))
            if row is None:
                raise HostError(NOT_FOUND, f"no load {auth_id}")
            if row.status != "authorised":
                raise HostError(CONFLICT, f"load is {row.status}")
            card = self.host.registry.card(s, row.card_id)
            if row.funding == "online_account":
                assert card.cardholder_id is not None
                target = Acct(Kind.ONLINE, card.cardholder_id, row.currency)
            else:
                target = Acct.system(Kind.CASH, row.currency)
            Ledger(s, now).post(Entry("load_void", auth_id, [
                (Acct.system(Kind.LOAD_SUSPENSE, row.currency), row.amount),
                (target, -row.amount),
            ], value_time=now, card_id=row.card_id))
            row.status = "voided"
            uow.commit()


def _answer(row: LoadRow) -> LoadAuthorisationResponse:
    return LoadAuthorisationResponse(idempotency_key=row.idempotency_key,
                                     authorisation=row.authorisation, signature=row.signature,
                                     load_certificate=row.load_certificate)
