"""A self-contained issuer, cards and SAMs wired together in one process.

The composition root for the card demo, the card benchmark and tests: it is
allowed to import the card, the host's TSM and the SAM, which never import
each other. Nothing here is a shortcut around the card: every operation is
an APDU exchange with the card emulator.
"""

from __future__ import annotations

import os
import time as _time
from dataclasses import dataclass
from pathlib import Path

from tallypurse.card.card import Card
from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.messages import (
    CancelOrder,
    CreditRecord,
    DebitOrder,
    DebtOutcome,
    LoadAuthorisation,
    SignedEvent,
    WriteBackHeader,
    WriteBackReceipt,
    receipt_mac,
    seal_writeback,
)
from tallypurse.core.protocol import CertRole, TxType, WriteBackAction
from tallypurse.core.purse_client import DebitResult, PurchaseSession, PurseClient, debit_event
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.keys import app_key
from tallypurse.host.tsm.personalise import IssuedCard, PursePolicy, personalise
from tallypurse.keystore.base import HOST_LIST, HOST_LOAD, ISSUER_ROOT, KeyStore
from tallypurse.keystore.software import KdfParams, SoftwareKeyStore
from tallypurse.sam import Sam

# Cheap Argon2id parameters for throw-away lab keystores only.
LAB_KDF = KdfParams(memory_cost=8 * 1024, iterations=1, lanes=1)
YEAR = 365 * 24 * 3600


@dataclass
class Tap:
    """One purchase as the lab performed it."""

    session: PurchaseSession
    order: DebitOrder
    result: DebitResult
    event: SignedEvent | None = None


class Lab:
    def __init__(self, keystore: KeyStore, directory: Path, now: int) -> None:
        self.keystore = keystore
        self.directory = directory
        self.now = now
        self._writeback_seq: dict[bytes, int] = {}
        self.card_keys: dict[bytes, bytes] = {}

    @classmethod
    def create(cls, directory: Path, *, now: int | None = None, passphrase: str = "lab") -> Lab:
        now = int(_time.time()) if now is None else now
        directory = Path(directory)
        ks = SoftwareKeyStore.create(
            directory / "keystore", passphrase, now=now, kdf_params=LAB_KDF
        )
        return cls(ks, directory, now)

    # --- trust ---------------------------------------------------------------------------
    def roots(self) -> dict[KeyRef, bytes]:
        ref = self.keystore.current(ISSUER_ROOT)
        return {ref: self.keystore.public_key(ref)}

    # --- cards -------------------------------------------------------------------------------
    def new_card(
        self,
        serial: bytes,
        *,
        policy: PursePolicy | None = None,
        credit: CreditRecord | None = None,
        path: Path | None = None,
        random: object = None,
    ) -> tuple[Card, IssuedCard]:
        card = Card.manufacture(serial, path=path, random=random)  # type: ignore[arg-type]
        issued = personalise(
            card,
            self.keystore,
            serial=serial,
            policy=policy or PursePolicy.default(),
            now=self.now,
            credit=credit,
        )
        return card, issued

    def credit_record(
        self,
        card_id: bytes,
        *,
        version: int = 1,
        grade: int = 2,
        per_tap_overdraft: int = 2_000,
        max_outstanding: int = 5_000,
        max_slots: int = 4,
        allowed: tuple[TxType, ...] = (TxType.CANTEEN, TxType.TRANSIT),
        currency: int = 978,
    ) -> CreditRecord:
        mask = 0
        for t in allowed:
            mask |= t.bit
        return CreditRecord(
            card_id,
            version,
            grade,
            per_tap_overdraft,
            max_outstanding,
            max_slots,
            mask,
            3,
            0,
            self.now,
            self.now + YEAR,
            currency,
        )

    # --- terminals --------------------------------------------------------------------------
    def new_sam(self, path: Path, terminal_id: bytes, *, passphrase: str = "sam") -> Sam:
        sam = Sam.create(path, passphrase, terminal_id=terminal_id)
        c = self.keystore.issue_certificate(
            holder=terminal_id,
            role=CertRole.TERMINAL,
            public_key=sam.public_key,
            not_before=self.now,
            not_after=self.now + 3 * YEAR,
        )
        sam.install_certificate(c.encode(), self.roots(), at=self.now)
        return sam

    # --- flows ----------------------------------------------------------------------------------
    def purchase(
        self,
        card: Card,
        sam: Sam,
        amount: int,
        *,
        split: int = 0,
        tx_type: int = TxType.GENERAL,
        time: int | None = None,
        verify: bool = True,
    ) -> Tap:
        purse = PurseClient(ApduClient(card))
        purse.select()
        session = purse.initialize_purchase(sam.certificate)
        order = DebitOrder(
            card_id=session.card_id,
            atc=session.atc,
            amount=amount,
            split=split,
            currency=session.currency,
            tx_type=int(tx_type),
            terminal_id=sam.terminal_id,
            terminal_seq=sam.next_sequence(),
            time=time or self.now,
            card_challenge=session.challenge,
            terminal_challenge=os.urandom(8),
        )
        result = purse.debit(order, sam.sign_debit_order(order))
        tap = Tap(session, order, result)
        if verify:
            card_key = self.card_keys.get(session.card_id)
            if card_key is None:
                card_key = sam.verify_card_certificate(
                    purse.certificate(), card_id=session.card_id, at=order.time
                )
                self.card_keys[session.card_id] = card_key
            tap.event = SignedEvent(debit_event(session, order, result), result.tac)
            if not sam.verify_tac(tap.event, card_key):
                raise AssertionError("TAC does not verify")
        return tap

    def cancel_last(
        self, card: Card, sam: Sam, tap: Tap, *, time: int | None = None
    ) -> DebitResult:
        purse = PurseClient(ApduClient(card))
        purse.select()
        session = purse.initialize_purchase(sam.certificate)
        order = CancelOrder(
            card_id=session.card_id,
            atc=session.atc,
            amount=tap.order.amount,
            split=tap.order.split,
            currency=session.currency,
            tx_type=tap.order.tx_type,
            terminal_id=sam.terminal_id,
            terminal_seq=sam.next_sequence(),
            time=time or self.now,
            card_challenge=session.challenge,
            terminal_challenge=os.urandom(8),
        )
        return purse.cancel(order, sam.sign_debit_order(order))

    def load(self, card: Card, amount: int, *, time: int | None = None) -> SignedEvent:
        purse = PurseClient(ApduClient(card))
        purse.select()
        session = purse.initialize_load()
        auth = LoadAuthorisation(
            session.card_id,
            session.load_counter,
            amount,
            session.currency,
            session.challenge,
            os.urandom(8),
            time or self.now,
        )
        ref = self.keystore.current(HOST_LOAD)
        signature = self.keystore.sign(ref, auth.signed_data())
        return purse.credit(auth, signature, self.keystore.certificate(ref).encode())

    def host_list_key(self) -> bytes:
        return self.keystore.public_key(self.keystore.current(HOST_LIST))

    def seal_writeback(
        self, card_id: bytes, action: WriteBackAction, payload: bytes, seq: int | None = None
    ) -> bytes:
        if seq is None:
            seq = self._writeback_seq.get(card_id, 0) + 1
        self._writeback_seq[card_id] = max(seq, self._writeback_seq.get(card_id, 0))
        _, key = app_key(self.keystore, card_id)
        return seal_writeback(key, WriteBackHeader(card_id, seq, int(action)), payload)

    def write_back(
        self, card: Card, action: WriteBackAction, payload: bytes = b"", seq: int | None = None
    ) -> WriteBackReceipt:
        purse = PurseClient(ApduClient(card))
        selected = purse.select()
        sealed = self.seal_writeback(selected.card_id, action, payload, seq)
        receipt, mac = purse.write_back(sealed)
        _, key = app_key(self.keystore, selected.card_id)
        if not crypto.constant_time_equal(mac, receipt_mac(key, receipt)):
            raise AssertionError("write-back receipt MAC does not verify")
        return receipt

    def settle_debt(self, card: Card, ref: int, amount: int) -> WriteBackReceipt:
        return self.write_back(
            card, WriteBackAction.SETTLE_DEBT, DebtOutcome(ref, amount).to_bytes()
        )

    def fail_debt(self, card: Card, ref: int, amount: int) -> WriteBackReceipt:
        return self.write_back(card, WriteBackAction.FAIL_DEBT, DebtOutcome(ref, amount).to_bytes())

    def new_credit_record(self, card: Card, record: CreditRecord) -> WriteBackReceipt:
        from tallypurse.host.tsm.personalise import signed_credit_record

        return self.write_back(
            card, WriteBackAction.CREDIT_RECORD, signed_credit_record(self.keystore, record)
        )
