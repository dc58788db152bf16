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

**Unconfirmed loads and their void.** A terminal that handed an authorisation
to a card and never confirmed it (the card was pulled, the network dropped, the
terminal crashed) leaves the funds in load suspense: the card may or may not
have committed the load, and only the card's LOAD event, at confirmation or in
clearing, proves it did. The authorisation is bound to the card's challenge of
that one session, so the card can no longer use it once the session ended; it
can only already have used it. :meth:`Loads.unconfirmed` lists such loads with
what clearing knows: ``unused`` (the card's load at this load counter was
another authorisation: this one can never reach the card), ``pending`` (the
card's later events show a load at this counter whose own event has not
arrived: it may be this one) or ``none`` (no later event of the card yet).
:meth:`Loads.void` gives the funds back to where they came from (cash or the
online account), with who and why in the audit trail; it refuses a load that
is confirmed, that clearing has seen (its event came in a batch, or the
``pending`` case), or that is voided already. A voided load whose LOAD event
reaches the host afterwards is still taken: the card holds the value. The
host then books the amount from the operator's losses back into load suspense
(``load_void_reversed``), so the ledger stays whole, marks the load
confirmed, and raises a ``load_void_reversed`` alert: the funds were given
back and are also on the card.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tallypurse.core.errors import DecodeError
from tallypurse.core.hostapi import Ack, LoadAuthorisationResponse, LoadConfirm, LoadRequest
from tallypurse.core.messages import CardEvent, LoadAuthorisation, SignedEvent
from tallypurse.core.protocol import EventKind
from tallypurse.host.db.models import Alert, CardEventRow, JournalRecord, LoadRow
from tallypurse.host.errors import (
    CARD_BLOCKED,
    CONFLICT,
    CURRENCY_MISMATCH,
    IDEMPOTENCY_CONFLICT,
    INSUFFICIENT_FUNDS,
    LIMIT_EXCEEDED,
    LOAD_CLEARED,
    LOAD_CONFIRMED,
    LOAD_UNKNOWN,
    LOAD_VOIDED,
    NO_ONLINE_ACCOUNT,
    NOT_FOUND,
    RECORD_MISMATCH,
    VALIDATION,
    HostError,
)
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger

from .clearing import Incoming
from .common import hex_bytes, log_event, log_on_commit, numeric_currency, payload_hash, retrying

if TYPE_CHECKING:
    from tallypurse.host.service import Host

LOAD_ID_LEN = 16  # a load's id is its authorisation id: 8 bytes, hex


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
            # A voided load is taken all the same: the card's signed event proves it holds
            # the value (clearing books it back from the operator's losses and alerts).
            cards = self.host.clearing.lock_cards(s, {row.card_id})
            signed = self.host.clearing.verify(cards, hex_bytes(req.record, "record"))
            e = signed.event
            if (e.kind != EventKind.LOAD or e.card_id.hex() != row.card_id
                    or e.terminal_challenge.hex() != row.auth_id or e.amount != row.amount):
                raise HostError(RECORD_MISMATCH, "the card's record is not this load")
            merchant_id = self.host.tms.merchant_of(s, terminal_id)
            self.host.clearing.take(s, cards, [Incoming.of(signed, terminal_id, merchant_id)])
            uow.commit()
        return Ack()

    # --- unconfirmed loads and their void ------------------------------------------------------
    def unconfirmed(self, *, card_id: str | None = None, older_than_s: int = 0,
                    limit: int = 100) -> list[dict[str, Any]]:
        """Authorised loads no card event has confirmed yet, oldest first, each with what
        clearing knows of them (``evidence``: unused, pending or none)."""
        cutoff = self.host.now() - older_than_s
        with self.host.db.reader() as s:
            stmt = (select(LoadRow).where(LoadRow.status == "authorised",
                                          LoadRow.created <= cutoff)
                    .order_by(LoadRow.created, LoadRow.id).limit(limit))
            if card_id is not None:
                stmt = stmt.where(LoadRow.card_id == card_id.lower())
            return [self._view(s, row) for row in s.scalars(stmt)]

    def recent(self, *, card_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Every load, newest first (the unconfirmed ones with their evidence)."""
        with self.host.db.reader() as s:
            stmt = select(LoadRow).order_by(LoadRow.id.desc()).limit(limit)
            if card_id is not None:
                stmt = stmt.where(LoadRow.card_id == card_id.lower())
            return [self._view(s, row) for row in s.scalars(stmt)]

    def _view(self, s: Session, row: LoadRow) -> dict[str, Any]:
        out: dict[str, Any] = {
            "load_id": row.auth_id, "card_id": row.card_id, "terminal_id": row.terminal_id,
            "amount": row.amount, "currency": row.currency, "funding": row.funding,
            "load_counter": row.load_counter, "status": row.status, "created": row.created,
            "age_s": max(0, self.host.now() - row.created), "confirmed_at": row.confirmed_at}
        if row.status == "authorised":
            out["evidence"], out["evidence_detail"] = _evidence(s, row)
        return out

    def void(self, load_id: str, *, reason: str, by: str, role: str = "operator",
             source: str = "") -> dict[str, Any]:
        """Give back the funds of an authorisation no card event has confirmed (operator
        action, with who and why in the audit trail). Refused (nothing changes) when the
        load is unknown, confirmed, seen by clearing, or voided already."""
        if not reason.strip() or not by.strip():
            raise HostError(VALIDATION, "say who voids the load, and why")
        load_id = load_id.strip().lower()
        if len(load_id) != LOAD_ID_LEN:
            raise HostError(LOAD_UNKNOWN, f"no load {load_id[:40]!r} (a load id is "
                                          f"{LOAD_ID_LEN} hex digits)")
        return retrying(lambda: self._void(load_id, reason.strip(), by.strip(), role, source))

    def _void(self, load_id: str, reason: str, by: str, role: str,
              source: str) -> dict[str, Any]:
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            found = s.scalar(select(LoadRow.card_id).where(LoadRow.auth_id == load_id))
            if found is None:
                raise HostError(LOAD_UNKNOWN, f"no load {load_id}")
            # the card's row first, as clearing locks it before it confirms a load
            card = self.host.registry.card(s, found, lock=True)
            row = s.scalar(uow.lock(select(LoadRow).where(LoadRow.auth_id == load_id)))
            assert row is not None
            if row.status == "voided":
                raise HostError(LOAD_VOIDED, f"load {load_id} was voided already")
            if row.status == "confirmed":
                batch = s.scalar(select(JournalRecord.batch_id).where(
                    JournalRecord.terminal_id == row.terminal_id, JournalRecord.kind == "load",
                    JournalRecord.reference == row.idempotency_key).limit(1))
                if batch is not None:
                    raise HostError(LOAD_CLEARED, f"load {load_id} is on the card: its LOAD "
                                                  f"event came in batch {batch} of terminal "
                                                  f"{row.terminal_id}")
                raise HostError(LOAD_CONFIRMED, f"load {load_id} is on the card: terminal "
                                                f"{row.terminal_id} confirmed it")
            evidence, detail = _evidence(s, row)
            if evidence == "pending":
                raise HostError(LOAD_CLEARED, f"load {load_id}: {detail}; it may be this load, "
                                              "wait for that event")
            if row.funding == "online_account":
                if card.cardholder_id is None:
                    raise HostError(CONFLICT, f"load {load_id} was funded from an online "
                                              "account the card no longer has")
                target = Acct(Kind.ONLINE, card.cardholder_id, row.currency)
            else:
                target = Acct.system(Kind.CASH, row.currency)
            Ledger(s, now).post(Entry("load_void", load_id, [
                (Acct.system(Kind.LOAD_SUSPENSE, row.currency), row.amount),
                (target, -row.amount),
            ], value_time=now, card_id=row.card_id, memo=f"void by {by}: {reason}"[:200]))
            row.status = "voided"
            out = self._view(s, row) | {"refunded_to": str(target), "evidence": evidence,
                                        "evidence_detail": detail, "voided_at": now,
                                        "by": by, "reason": reason}
            self.host.audit.append(s, actor=by, role=role, action="load_void", target=load_id,
                                   reason=reason, outcome="done",
                                   detail=f"{row.amount} {row.currency} back to {target}; "
                                          f"evidence {evidence}: {detail}",
                                   source=source or "host loads")
            uow.commit()
        log_event("load_voided", load=load_id, card=out["card_id"], amount=out["amount"],
                  evidence=evidence, by=by)
        return out

    def seen_on_card(self, s: Session, card_id: str, e: CardEvent) -> None:
        """A card's LOAD event was just taken (confirmation or clearing, in ``s``): mark
        its authorisation confirmed. An authorisation this host never gave raises a
        ``load_unknown`` alert; a voided one is taken back from the operator's losses
        into load suspense (the card holds the value) and raises ``load_void_reversed``."""
        now = self.host.now()
        auth_id = e.terminal_challenge.hex()
        stmt = select(LoadRow).where(LoadRow.auth_id == auth_id)
        row = s.scalar(stmt.with_for_update() if self.host.db.postgres else stmt)
        if row is None or row.card_id != card_id:
            s.add(Alert(kind="load_unknown", card_id=card_id,
                        detail=f"load {auth_id} was not authorised by this host for this card",
                        created=now))
            return
        if row.status == "authorised":
            row.status, row.confirmed_at = "confirmed", now
        elif row.status == "voided":
            Ledger(s, now).post(Entry("load_void_reversed", auth_id, [
                (Acct.system(Kind.LOSSES, row.currency), row.amount),
                (Acct.system(Kind.LOAD_SUSPENSE, row.currency), -row.amount),
            ], value_time=now, card_id=card_id, memo="voided load found on the card"))
            row.status, row.confirmed_at = "confirmed", now
            s.add(Alert(kind="load_void_reversed", card_id=card_id,
                        terminal_id=row.terminal_id,
                        detail=f"load {auth_id} of {row.amount} {row.currency} was voided, "
                               f"yet the card's LOAD event arrived: the card holds the value "
                               f"and the {row.funding} funds were given back; booked to "
                               "losses", created=now))
            log_on_commit(s, "load_void_reversed", load=auth_id, card=card_id,
                          amount=row.amount)


def _evidence(s: Session, row: LoadRow) -> tuple[str, str]:
    """What the card's cleared events say of an unconfirmed authorisation."""
    n = row.load_counter + 1  # the LOAD event it would make carries this load counter
    record = s.scalar(select(CardEventRow.record).where(
        CardEventRow.card_id == row.card_id, CardEventRow.kind == int(EventKind.LOAD),
        CardEventRow.load_counter == n).limit(1))
    if record is not None:
        try:
            other = SignedEvent.parse(bytes.fromhex(record)).event.terminal_challenge.hex()
        except (DecodeError, ValueError):
            other = "?"
        if other != row.auth_id:
            return "unused", (f"the card's load at load counter {n} was load {other}: this "
                              "authorisation can no longer reach the card")
    later = s.scalar(select(func.min(CardEventRow.seqno)).where(
        CardEventRow.card_id == row.card_id, CardEventRow.load_counter >= n))
    if later is not None:
        return "pending", (f"the card's event {later} shows a load at load counter {n} whose "
                           "own event has not reached the host")
    return "none", "no event of the card after this authorisation has reached the host"


def _answer(row: LoadRow) -> LoadAuthorisationResponse:
    return LoadAuthorisationResponse(idempotency_key=row.idempotency_key,
                                     authorisation=row.authorisation, signature=row.signature,
                                     load_certificate=row.load_certificate)
