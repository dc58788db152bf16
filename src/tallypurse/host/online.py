"""Online purchases: the card as the key to the cardholder's online account.

The terminal asks for a one-time host challenge; the card signs an
:class:`~tallypurse.core.messages.OnlineRequest` over the amount, the
challenge, the terminal and its online counter; the host checks that
signature with the card's certified key and debits the online account in
real time, or declines with a reason code. Authorisations are idempotent on
(terminal, key). A reversal undoes an approved authorisation whose answer
the terminal never got; a reversal that arrives before its authorisation
leaves a tombstone, so that the late authorisation is declined, not taken.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from tallypurse.core import crypto
from tallypurse.core.errors import DecodeError
from tallypurse.core.hostapi import (
    OnlineAuthoriseRequest,
    OnlineAuthoriseResponse,
    OnlineChallenge,
    ReversalRequest,
    ReversalResponse,
)
from tallypurse.core.messages import OnlineRequest
from tallypurse.host.db.models import Card, OnlineAuth, OnlineChallengeRow
from tallypurse.host.errors import (
    CHALLENGE_INVALID,
    IDEMPOTENCY_CONFLICT,
    RECORD_INVALID,
    TERMINAL_MISMATCH,
    HostError,
)
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger

from .common import alpha_currency, hex_bytes, log_event, payload_hash, retrying

if TYPE_CHECKING:
    from tallypurse.host.service import Host

# Decline reason codes (ISO 8583 response codes where one fits).
APPROVED = 0
INVALID_CARD = 14
INSUFFICIENT_FUNDS = 51
EXPIRED_CARD = 54
NOT_PERMITTED = 57  # no online account
RESTRICTED_CARD = 62  # blocked, blacklisted, lost, stolen, cloned
REVERSED = 94  # reversed before it arrived (duplicate transmission)
WRONG_CURRENCY = 13


class Online:
    def __init__(self, host: Host) -> None:
        self.host = host

    def challenge(self, terminal_id: str) -> OnlineChallenge:
        now = self.host.now()
        value = secrets.token_bytes(16).hex()
        expires = now + self.host.settings.challenge_ttl_s
        with self.host.uow() as uow:
            uow.session.add(OnlineChallengeRow(challenge=value, terminal_id=terminal_id,
                                               expires=expires))
            uow.commit()
        return OnlineChallenge(challenge=value, expires=expires)

    def authorise(self, terminal_id: str, req: OnlineAuthoriseRequest) -> OnlineAuthoriseResponse:
        digest = payload_hash(req)
        return retrying(lambda: self._authorise(terminal_id, req, digest))

    def _authorise(self, terminal_id: str, req: OnlineAuthoriseRequest,
                   digest: str) -> OnlineAuthoriseResponse:
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            prior = s.scalar(select(OnlineAuth).where(OnlineAuth.terminal_id == terminal_id,
                                                      OnlineAuth.idempotency_key ==
                                                      req.idempotency_key))
            if prior is not None:
                if prior.payload_hash is None:  # reversed before it arrived
                    return _answer(prior)
                if prior.payload_hash != digest:
                    raise HostError(IDEMPOTENCY_CONFLICT, "key used for another authorisation")
                return _answer(prior)
            try:
                request = OnlineRequest.parse(hex_bytes(req.request, "request"))
            except DecodeError as exc:
                raise HostError(RECORD_INVALID, f"online request: {exc.message}") from None
            if request.terminal_id.hex() != terminal_id:
                raise HostError(TERMINAL_MISMATCH, "the card signed for another terminal")
            self._use_challenge(s, terminal_id, request.host_challenge.hex(), now)
            card = self.host.registry.card(s, request.card_id.hex(), lock=True)
            if not _card_signed(card, request, hex_bytes(req.signature, "signature")):
                raise HostError(RECORD_INVALID, "the card's signature does not verify")
            if request.online_counter <= card.online_counter:
                raise HostError(RECORD_INVALID, "online counter replayed")
            card.online_counter = request.online_counter
            merchant_id = self.host.tms.merchant_of(s, terminal_id)
            row = OnlineAuth(terminal_id=terminal_id, idempotency_key=req.idempotency_key,
                             payload_hash=digest, card_id=card.card_id, merchant_id=merchant_id,
                             amount=request.amount, currency=card.currency, status="declined",
                             created=now)
            s.add(row)
            s.flush()
            reason = self._decline_reason(card, request, now)
            ledger = Ledger(s, now)
            if reason == APPROVED and card.cardholder_id is not None:
                online = Acct(Kind.ONLINE, card.cardholder_id, card.currency)
                available = -ledger.balance(online, lock=True)
                if available < request.amount:
                    reason = INSUFFICIENT_FUNDS
                    row.available_after = available
                else:
                    ledger.post(Entry("online_purchase", f"{terminal_id}:{req.idempotency_key}", [
                        (online, request.amount),
                        (Acct(Kind.MERCHANT_PAYABLE, merchant_id, card.currency), -request.amount),
                    ], value_time=request.time, merchant_id=merchant_id, card_id=card.card_id))
                    row.status = "approved"
                    row.auth_code = secrets.token_hex(3).upper()
                    row.available_after = available - request.amount
            row.reason_code = reason
            answer = _answer(row)
            uow.commit()
        log_event("online_authorise", terminal=terminal_id, card=card.card_id,
                  amount=request.amount, approved=answer.approved, reason=reason)
        return answer

    def _use_challenge(self, s: Session, terminal_id: str, challenge: str, now: int) -> None:
        used = s.execute(
            update(OnlineChallengeRow).where(OnlineChallengeRow.challenge == challenge,
                                             OnlineChallengeRow.terminal_id == terminal_id,
                                             OnlineChallengeRow.used_at.is_(None),
                                             OnlineChallengeRow.expires >= now)
            .values(used_at=now))
        if cast(CursorResult[Any], used).rowcount != 1:
            raise HostError(CHALLENGE_INVALID, "challenge unknown, used or expired")

    @staticmethod
    def _decline_reason(card: Card, request: OnlineRequest, now: int) -> int:
        if card.status != "active" or card.blacklisted:
            return RESTRICTED_CARD
        if card.expiry < request.time:
            return EXPIRED_CARD
        if alpha_currency(request.currency) != card.currency:
            return WRONG_CURRENCY
        if card.cardholder_id is None:
            return NOT_PERMITTED
        return APPROVED

    def reverse(self, terminal_id: str, req: ReversalRequest) -> ReversalResponse:
        return retrying(lambda: self._reverse(terminal_id, req))

    def _reverse(self, terminal_id: str, req: ReversalRequest) -> ReversalResponse:
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            row = s.scalar(uow.lock(select(OnlineAuth).where(
                OnlineAuth.terminal_id == terminal_id,
                OnlineAuth.idempotency_key == req.idempotency_key)))
            if row is None:
                # Never seen: leave a tombstone so that a late authorisation is refused.
                s.add(OnlineAuth(terminal_id=terminal_id, idempotency_key=req.idempotency_key,
                                 payload_hash=None, card_id=None,
                                 merchant_id=self.host.tms.merchant_of(s, terminal_id),
                                 amount=0, currency="XXX", status="reversed",
                                 reason_code=REVERSED, created=now, reversed_at=now))
                uow.commit()
                return ReversalResponse(idempotency_key=req.idempotency_key, reversed=True)
            if row.status == "approved":
                assert row.card_id is not None
                card = self.host.registry.card(s, row.card_id)
                assert card.cardholder_id is not None
                Ledger(s, now).post(Entry(
                    "online_reversal", f"{terminal_id}:{req.idempotency_key}", [
                        (Acct(Kind.MERCHANT_PAYABLE, row.merchant_id, row.currency), row.amount),
                        (Acct(Kind.ONLINE, card.cardholder_id, row.currency), -row.amount),
                    ], value_time=now, merchant_id=row.merchant_id, card_id=row.card_id,
                    memo=req.reason[:100]))
                row.status, row.reversed_at, row.reason_code = "reversed", now, REVERSED
                uow.commit()
                log_event("online_reversal", terminal=terminal_id, key=req.idempotency_key)
                return ReversalResponse(idempotency_key=req.idempotency_key, reversed=True)
            # declined (nothing to undo) or already reversed
            return ReversalResponse(idempotency_key=req.idempotency_key,
                                    reversed=row.status == "reversed")


def _card_signed(card: Card, request: OnlineRequest, signature: bytes) -> bool:
    return crypto.verify(bytes.fromhex(card.public_key), signature, request.signed_data())


def _answer(row: OnlineAuth) -> OnlineAuthoriseResponse:
    return OnlineAuthoriseResponse(
        idempotency_key=row.idempotency_key,
        approved=row.status == "approved",
        reason_code=row.reason_code if row.status != "approved" else APPROVED,
        auth_code=row.auth_code,
        available_after=row.available_after,
    )
