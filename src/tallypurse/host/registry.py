"""Cardholders, online accounts, linked bank accounts, merchants and cards.

A card is issued through its own commands: :meth:`Registry.issue_card` runs
the TSM personalisation (:mod:`tallypurse.host.tsm.personalise`) over any
card transport (the emulator in-process, a PC/SC reader) and registers what
the card generated: its certificate and public key. The host never imports
the card: whoever calls it hands it a transport.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from tallypurse.core import cert as certs
from tallypurse.core.errors import BadInput
from tallypurse.core.messages import CreditRecord
from tallypurse.core.money import currency
from tallypurse.core.protocol import CertRole
from tallypurse.core.transport import CardTransport
from tallypurse.host.clearing import card_states
from tallypurse.host.db.models import BankAccount, Card, Cardholder, Merchant
from tallypurse.host.db.models import WriteBackAction as ActionRow
from tallypurse.host.errors import CONFLICT, NOT_FOUND, UNKNOWN_CARD, HostError
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger
from tallypurse.host.tsm.personalise import IssuedCard, PursePolicy, personalise
from tallypurse.host.tsm.rekey import RekeyPlan, plan_rekey, rekey_card

from .common import log_event, new_id

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tallypurse.host.service import Host

IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")
BIC = re.compile(r"^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$")
YEAR = 365 * 86400


def _default_grade_limits() -> dict[int, tuple[int, int, int]]:
    from tallypurse.credit import Grade, default_policy

    policy = default_policy()
    limits = {0: (0, 0, 0)}
    for g in Grade:
        t = policy.terms_for(g)
        limits[int(g)] = (t.per_tap_overdraft, t.max_outstanding, t.max_slots)
    return limits


# Grade (0 none, 1..5 = A..E) -> (per-tap overdraft, maximum outstanding, debt slots) in
# minor units, under the shipped example policy. For display only: the host's own terms
# come from its policy file (``host.credit.grade_limits()``, ``host.credit.terms()``).
GRADE_LIMITS: dict[int, tuple[int, int, int]] = _default_grade_limits()



def check_iban(iban: str) -> str:
    """Validate an IBAN (format and ISO 7064 mod 97-10 check digits)."""
    iban = iban.replace(" ", "").upper()
    if not IBAN.match(iban):
        raise BadInput(f"not an IBAN: {iban!r}")
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    if int(digits) % 97 != 1:
        raise BadInput(f"IBAN check digits are wrong: {iban!r}")
    return iban


def check_bic(bic: str) -> str:
    bic = bic.replace(" ", "").upper()
    if not BIC.match(bic):
        raise BadInput(f"not a BIC: {bic!r}")
    return bic


@dataclass(frozen=True, slots=True)
class CardInfo:
    card_id: str
    status: str
    blacklisted: bool
    cardholder_id: str | None
    currency: str
    purse_host_view: int  # what the host believes the purse holds (after clearing)
    contiguous_seqno: int  # the card's events cleared without a gap up to here
    max_seqno: int  # its highest cleared event
    gap_since: int | None  # when a gap between the two opened (None: no gap)


class Registry:
    def __init__(self, host: Host) -> None:
        self.host = host

    # --- cardholders and their accounts ---------------------------------------------------------
    def create_cardholder(self, name: str, currency_code: str = "EUR", *,
                          grade: int = 2, cardholder_id: str | None = None) -> str:
        if not name.strip() or len(name) > 200:
            raise BadInput("a cardholder needs a name of at most 200 characters")
        cur = currency(currency_code).code
        if not 0 <= grade <= 5:
            raise BadInput("credit grade is 0..5")
        now = self.host.now()
        with self.host.uow() as uow:
            holder = Cardholder(id=cardholder_id or new_id("ch"), name=name.strip(), currency=cur,
                                status="active", credit_grade=grade, created=now)
            uow.session.add(holder)
            uow.session.flush()
            Ledger(uow.session, now).account_ids([Acct(Kind.ONLINE, holder.id, cur)])
            self.host.credit.record_start(uow.session, holder.id, grade)
            uow.commit()
        log_event("cardholder_created", cardholder=holder.id)
        return holder.id

    def cardholder(self, session: Session, cardholder_id: str) -> Cardholder:
        holder = session.get(Cardholder, cardholder_id)
        if holder is None:
            raise HostError(NOT_FOUND, f"no cardholder {cardholder_id}")
        return holder

    def link_bank_account(self, cardholder_id: str, *, iban: str, bic: str, holder_name: str,
                          mandate_id: str | None = None,
                          mandate_signed: dt.date | None = None) -> int:
        iban, bic = check_iban(iban), check_bic(bic)
        if not holder_name.strip() or len(holder_name) > 140:
            raise BadInput("account holder name must be 1..140 characters")
        now = self.host.now()
        with self.host.uow() as uow:
            self.cardholder(uow.session, cardholder_id)
            for old in uow.session.scalars(select(BankAccount).where(
                    BankAccount.cardholder_id == cardholder_id, BankAccount.status == "active")):
                old.status = "replaced"
            row = BankAccount(
                cardholder_id=cardholder_id, iban=iban, bic=bic, holder_name=holder_name.strip(),
                mandate_id=mandate_id or new_id("MD", 8),
                mandate_signed=mandate_signed or dt.datetime.fromtimestamp(now, dt.UTC).date(),
                status="active", created=now,
            )
            uow.session.add(row)
            uow.commit()
            return row.id

    def bank_account(self, session: Session, cardholder_id: str | None) -> BankAccount | None:
        if cardholder_id is None:
            return None
        return session.scalar(select(BankAccount).where(
            BankAccount.cardholder_id == cardholder_id, BankAccount.status == "active"))

    def fund_online_account(self, cardholder_id: str, amount: int, reference: str) -> bool:
        """Credit an online account from a bank transfer the operator received.
        Idempotent on ``reference``; False if that reference was booked before."""
        if amount <= 0:
            raise BadInput("amount must be positive")
        now = self.host.now()
        with self.host.uow() as uow:
            holder = self.cardholder(uow.session, cardholder_id)
            ledger = Ledger(uow.session, now)
            if ledger.exists("fund_online", reference):
                return False
            ledger.post(Entry("fund_online", reference, [
                (Acct.system(Kind.BANK_CLEARING, holder.currency), amount),
                (Acct(Kind.ONLINE, holder.id, holder.currency), -amount),
            ], value_time=now, memo="bank transfer to online account"))
            uow.commit()
        return True

    def online_balance(self, cardholder_id: str) -> int:
        """What the cardholder holds in the online account (minor units)."""
        with self.host.uow() as uow:
            holder = self.cardholder(uow.session, cardholder_id)
            return -Ledger(uow.session, 0).balance(Acct(Kind.ONLINE, holder.id, holder.currency))

    # --- merchants --------------------------------------------------------------------------------
    def create_merchant(self, name: str, *, iban: str, bic: str, currency_code: str = "EUR",
                        fee_basis_points: int = 0, merchant_id: str | None = None) -> str:
        if not name.strip() or len(name) > 140:
            raise BadInput("a merchant needs a name of at most 140 characters")
        if not 0 <= fee_basis_points <= 10_000:
            raise BadInput("fee is 0..10000 basis points")
        if merchant_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", merchant_id):
            raise BadInput("merchant id: 1..40 letters, digits, '_' or '-'")
        cur = currency(currency_code).code
        now = self.host.now()
        with self.host.uow() as uow:
            mid = merchant_id or new_id("m", 6)
            if uow.session.get(Merchant, mid) is not None:
                raise HostError(CONFLICT, f"merchant {mid} exists")
            uow.session.add(Merchant(id=mid, name=name.strip(), iban=check_iban(iban),
                                     bic=check_bic(bic), currency=cur,
                                     fee_basis_points=fee_basis_points, created=now))
            uow.session.flush()
            Ledger(uow.session, now).account_ids([Acct(Kind.MERCHANT_PAYABLE, mid, cur)])
            uow.commit()
        log_event("merchant_created", merchant=mid)
        return mid

    # --- cards ------------------------------------------------------------------------------------

    def issue_card(self, transport: CardTransport, *, serial: bytes,
                   cardholder_id: str | None = None,
                   policy: PursePolicy | None = None) -> IssuedCard:
        """Personalise the blank card behind ``transport`` and register it."""
        now = self.host.now()
        cur_code = "EUR"
        if cardholder_id is not None:
            with self.host.uow() as uow:
                holder = self.cardholder(uow.session, cardholder_id)
                cur_code = holder.currency
                if uow.session.get(Card, serial.hex()) is not None:
                    raise HostError(CONFLICT, f"card {serial.hex()} is already registered")
        policy = policy or PursePolicy.default(cur_code)
        # The first credit record comes from the credit policy (tallypurse.host.credit).
        credit = None
        if cardholder_id is not None:
            credit = self.host.credit.initial_record(serial, cardholder_id,
                                                     policy.currency.code, now)
        issued = personalise(transport, self.host.keys, serial=serial, policy=policy, now=now,
                             credit=credit)
        self.register_card(issued, cardholder_id=cardholder_id, currency_code=policy.currency.code,
                           cap=policy.cap, credit=credit)
        return issued

    def register_card(self, issued: IssuedCard, *, cardholder_id: str | None, currency_code: str,
                      cap: int, credit_version: int = 0,
                      credit: CreditRecord | None = None) -> None:
        """Record a personalised card (its certificate is checked against our roots),
        with the credit record it was given, if any."""
        if credit is not None:
            credit_version = credit.version
        now = self.host.now()
        c = certs.verify(issued.certificate, self.host.roots(), role=CertRole.CARD,
                         at=certs.parse(issued.certificate).not_before, holder=issued.card_id)
        with self.host.uow() as uow:
            if uow.session.get(Card, issued.card_id.hex()) is not None:
                raise HostError(CONFLICT, f"card {issued.card_id.hex()} is already registered")
            if cardholder_id is not None:
                self.cardholder(uow.session, cardholder_id)
            uow.session.add(Card(
                card_id=issued.card_id.hex(), cardholder_id=cardholder_id, status="active",
                currency=currency(currency_code).code, certificate=issued.certificate.hex(),
                public_key=c.public_key.hex(), issued=now, expiry=issued.expiry, cap=cap,
                app_key_version=issued.app_key_version, credit_version=credit_version,
            ))
            uow.session.flush()
            if credit is not None:
                self.host.credit.remember(uow.session, credit)
            Ledger(uow.session, now).account_ids(
                [Acct(Kind.PURSE_FLOAT, issued.card_id.hex(), currency(currency_code).code)])
            uow.commit()
        log_event("card_registered", card=issued.card_id.hex(), cardholder=cardholder_id)

    def rekey_card(self, transport: CardTransport, *, dry_run: bool = False) -> RekeyPlan:
        """Bring a registered card's keys to the keystore's current versions through the
        TSM (see host.tsm.rekey) and record what it holds now: its APP key version (write-
        backs still waiting for it are sealed again under the new key) and its certificate.
        With ``dry_run``, only read the card and say what would change."""
        plan = plan_rekey(transport, self.host.keys)
        card_id = plan.before.card_id.hex()
        with self.host.uow() as uow:
            registered = bytes.fromhex(self.card(uow.session, card_id).public_key)  # ours
        if dry_run or not plan.needed:
            return plan
        plan, after = rekey_card(transport, self.host.keys, now=self.host.now(),
                                 card_key=registered)
        c = certs.verify(after.certificate, self.host.roots(), role=CertRole.CARD,
                         at=certs.parse(after.certificate).not_before,
                         holder=plan.before.card_id)
        with self.host.uow() as uow:
            s = uow.session
            card = self.card(s, card_id, lock=True)
            if c.public_key != registered:  # re-keying never changes the card's key pair
                raise BadInput("the card answers with a certificate for another key")
            card.certificate = after.certificate.hex()
            resealed = 0
            if card.app_key_version != after.app_version:
                card.app_key_version = after.app_version
                pending = s.scalars(select(ActionRow).where(
                    ActionRow.card_id == card_id, ActionRow.status == "pending")
                    .order_by(ActionRow.seq)).all()
                for old in pending:
                    self.host.writebacks.withdraw(s, old, "superseded")
                    self.host.writebacks.publish(s, card, old.kind, bytes.fromhex(old.payload),
                                                 debt_id=old.debt_id)
                resealed = len(pending)
            uow.commit()
        log_event("card_rekeyed", card=card_id, before=plan.before.to_json(),
                  after=after.to_json(), resealed=resealed)
        return plan

    def card(self, session: Session, card_id: str, *, lock: bool = False) -> Card:
        stmt = select(Card).where(Card.card_id == card_id)
        if lock and self.host.db.postgres:
            stmt = stmt.with_for_update()
        card = session.scalar(stmt)
        if card is None:
            raise HostError(UNKNOWN_CARD, f"unknown card {card_id}")
        return card

    def card_info(self, card_id: str) -> CardInfo:
        with self.host.uow() as uow:
            card = self.card(uow.session, card_id)
            float_ = Ledger(uow.session, 0).balance(Acct(Kind.PURSE_FLOAT, card_id, card.currency))
            progress = card_states(uow.session, {card_id: card.currency})[0][card_id]
            return CardInfo(card.card_id, card.status, card.blacklisted, card.cardholder_id,
                            card.currency, -float_, progress.contiguous_seqno,
                            progress.max_seqno, progress.gap_since)

    def set_card_status(self, card_id: str, status: str, *, reason: str = "") -> None:
        """Lost, stolen, blocked (blacklisted), or active again (taken off the blacklist)."""
        if status not in ("lost", "stolen", "blocked", "active"):
            raise BadInput("status is one of lost, stolen, blocked, active")
        with self.host.uow() as uow:
            card = self.card(uow.session, card_id, lock=True)
            if card.status in ("cloned", "replaced") and status == "active":
                raise HostError(CONFLICT, f"a {card.status} card cannot be reactivated")
            card.status = status
            if status == "active":
                self.host.lists.unblacklist(uow.session, card, reason or "reactivated")
            else:
                self.host.lists.blacklist(uow.session, card, reason or status)
            uow.commit()
        log_event("card_status", card=card_id, status=status)

    def replace_card(self, old_id: str, new_id_: str) -> int:
        """Move what the host holds for a lost or stolen card (its cleared purse value)
        to the cardholder's online account, from where it loads the new card.
        Run after the old card's last uploads have cleared; returns the amount moved."""
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            old = self.card(s, old_id, lock=True)
            new = self.card(s, new_id_)
            if old.status not in ("lost", "stolen", "blocked"):
                raise HostError(CONFLICT, "only a lost, stolen or blocked card is replaced")
            if old.cardholder_id is None or new.cardholder_id != old.cardholder_id:
                raise HostError(CONFLICT, "both cards must belong to the same cardholder")
            ledger = Ledger(s, now)
            value = -ledger.balance(Acct(Kind.PURSE_FLOAT, old.card_id, old.currency), lock=True)
            if value > 0:
                ledger.post(Entry("card_replaced", old.card_id, [
                    (Acct(Kind.PURSE_FLOAT, old.card_id, old.currency), value),
                    (Acct(Kind.ONLINE, old.cardholder_id, old.currency), -value),
                ], value_time=now, card_id=old.card_id, memo=f"replaced by {new.card_id}"))
            old.status = "replaced"
            old.replaced_by = new.card_id
            self.host.lists.blacklist(s, old, "replaced")
            uow.commit()
        log_event("card_replaced", old=old_id, new=new_id_, moved=value)
        return value
