"""The reader side of the purse applet's commands: build APDUs, parse answers.

Terminals, the host's load service and phones in reader mode all speak to a
purse through this module; docs/protocol.md describes the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tallypurse.core import crypto, tlv
from tallypurse.core.apdu import Command
from tallypurse.core.errors import DecodeError
from tallypurse.core.messages import (
    SIGNED_CREDIT_RECORD_LEN,
    CancelOrder,
    CardEvent,
    CreditRecord,
    DebitOrder,
    DebtSlot,
    LoadAuthorisation,
    SignedEvent,
    WriteBackReceipt,
)
from tallypurse.core.protocol import (
    CLA_ISO,
    CLA_PROPRIETARY,
    DATA_BALANCE,
    DATA_CARD,
    DATA_CERTIFICATE,
    DATA_CREDIT_RECORD,
    DATA_DEBTS,
    PURSE_AID,
    T_APP_KEY,
    T_ATC,
    T_BALANCE,
    T_CANCEL_WINDOW,
    T_CAP,
    T_CARD_ID,
    T_CHALLENGE,
    T_CREDIT_RECORD,
    T_CURRENCY,
    T_DEBT_SLOTS,
    T_DEBTS,
    T_EXPIRY,
    T_FCI,
    T_FCI_AID,
    T_FCI_PROPRIETARY,
    T_FLAGS,
    T_LOAD_COUNTER,
    T_LOG_SIZE,
    T_OFFLINE_LIMIT,
    T_ONLINE_COUNTER,
    T_WRITEBACK_SEQ,
    Ins,
)
from tallypurse.core.transport import ApduClient


def _u(m: dict[int, bytes], tag: int, size: int) -> int:
    return tlv.uint(m[tag], size, f"tag {tag:X}")


def parse_debts(raw: bytes) -> list[DebtSlot]:
    n = DebtSlot.size()
    if len(raw) % n:
        raise DecodeError("debt slots must be a multiple of 9 bytes", 0)
    return [DebtSlot.parse(raw[i : i + n]) for i in range(0, len(raw), n)]


@dataclass(frozen=True, slots=True)
class SignedCreditRecord:
    record: CreditRecord
    signature: bytes

    @classmethod
    def parse(cls, raw: bytes) -> SignedCreditRecord:
        if len(raw) != SIGNED_CREDIT_RECORD_LEN:
            raise DecodeError("signed credit record must be 105 bytes", 0)
        return cls(CreditRecord.parse(raw[: CreditRecord.size()]), raw[CreditRecord.size() :])

    def to_bytes(self) -> bytes:
        return self.record.to_bytes() + self.signature

    def verify(self, host_list_key: bytes) -> bool:
        return crypto.verify(host_list_key, self.signature, self.record.signed_data())


@dataclass(frozen=True, slots=True)
class Selected:
    card_id: bytes
    currency: int
    flags: int


@dataclass(frozen=True, slots=True)
class PurchaseSession:
    """What INITIALIZE PURCHASE tells the terminal."""

    card_id: bytes
    atc: int
    load_counter: int
    balance: int
    currency: int
    challenge: bytes
    flags: int
    offline_limit: int
    expiry: int
    debts: list[DebtSlot]
    credit: SignedCreditRecord | None


@dataclass(frozen=True, slots=True)
class LoadSession:
    card_id: bytes
    atc: int
    load_counter: int
    balance: int
    currency: int
    challenge: bytes
    cap: int
    flags: int
    debts: list[DebtSlot]


@dataclass(frozen=True, slots=True)
class DebitResult:
    atc: int
    balance_after: int
    debt_slot: int
    tac: bytes
    cvr: int  # the card's verification results, signed in the TAC


@dataclass(frozen=True, slots=True)
class CardData:
    card_id: bytes
    currency: int
    cap: int
    offline_limit: int
    expiry: int
    cancel_window: int
    log_size: int
    debt_slots: int
    flags: int
    app_key_version: int


@dataclass(frozen=True, slots=True)
class Counters:
    balance: int
    atc: int
    load_counter: int
    online_counter: int
    writeback_seq: int


class PurseClient:
    """Typed purse commands over any card transport."""

    def __init__(self, client: ApduClient) -> None:
        self.client = client

    def select(self) -> Selected:
        fci = tlv.decode_map(self.client.select(PURSE_AID), required=(T_FCI,))
        inner = tlv.decode_map(fci[T_FCI], required=(T_FCI_AID, T_FCI_PROPRIETARY))
        prop = tlv.decode_map(inner[T_FCI_PROPRIETARY])
        if T_CARD_ID not in prop:
            return Selected(b"", 0, 0)
        return Selected(prop[T_CARD_ID], _u(prop, T_CURRENCY, 2), _u(prop, T_FLAGS, 1))

    def _get(self, tag: int) -> bytes:
        return self.client.call(
            Command(CLA_PROPRIETARY, Ins.GET_DATA, tag >> 8, tag & 0xFF, b"", 0)
        )

    def card_data(self) -> CardData:
        m = tlv.decode_map(self._get(DATA_CARD))
        return CardData(
            m[T_CARD_ID],
            _u(m, T_CURRENCY, 2),
            _u(m, T_CAP, 4),
            _u(m, T_OFFLINE_LIMIT, 4),
            _u(m, T_EXPIRY, 4),
            _u(m, T_CANCEL_WINDOW, 2),
            _u(m, T_LOG_SIZE, 1),
            _u(m, T_DEBT_SLOTS, 1),
            _u(m, T_FLAGS, 1),
            _u(m, T_APP_KEY, 1),
        )

    def counters(self) -> Counters:
        m = tlv.decode_map(self._get(DATA_BALANCE))
        return Counters(
            _u(m, T_BALANCE, 4),
            _u(m, T_ATC, 4),
            _u(m, T_LOAD_COUNTER, 4),
            _u(m, T_ONLINE_COUNTER, 4),
            _u(m, T_WRITEBACK_SEQ, 4),
        )

    def certificate(self) -> bytes:
        return self._get(DATA_CERTIFICATE)

    def credit_record(self) -> SignedCreditRecord:
        return SignedCreditRecord.parse(self._get(DATA_CREDIT_RECORD))

    def debts(self) -> list[DebtSlot]:
        return parse_debts(self._get(DATA_DEBTS))

    def read_record(self, n: int) -> SignedEvent:
        return SignedEvent.parse(
            self.client.call(Command(CLA_ISO, Ins.READ_RECORD, n, 0x04, b"", 0))
        )

    def log(self) -> list[SignedEvent]:
        """Every log record, most recent first."""
        from tallypurse.core import sw as SW

        out = []
        for n in range(1, 33):
            resp = self.client.send(Command(CLA_ISO, Ins.READ_RECORD, n, 0x04, b"", 0))
            if resp.sw == SW.RECORD_NOT_FOUND:
                break
            if resp.sw != SW.OK:
                from tallypurse.core.errors import CardError

                raise CardError(resp.sw)
            out.append(SignedEvent.parse(resp.data))
        return out

    def initialize_purchase(self, terminal_certificate: bytes) -> PurchaseSession:
        m = tlv.decode_map(
            self.client.call(
                Command(CLA_PROPRIETARY, Ins.INITIALIZE_PURCHASE, 0, 0, terminal_certificate, 0)
            )
        )
        credit = m.get(T_CREDIT_RECORD)
        return PurchaseSession(
            card_id=m[T_CARD_ID],
            atc=_u(m, T_ATC, 4),
            load_counter=_u(m, T_LOAD_COUNTER, 4),
            balance=_u(m, T_BALANCE, 4),
            currency=_u(m, T_CURRENCY, 2),
            challenge=m[T_CHALLENGE],
            flags=_u(m, T_FLAGS, 1),
            offline_limit=_u(m, T_OFFLINE_LIMIT, 4),
            expiry=_u(m, T_EXPIRY, 4),
            debts=parse_debts(m[T_DEBTS]),
            credit=SignedCreditRecord.parse(credit) if credit is not None else None,
        )

    def debit(self, order: DebitOrder, signature: bytes) -> DebitResult:
        out = self.client.call(
            Command(CLA_PROPRIETARY, Ins.DEBIT, 0, 0, order.to_bytes() + signature, 0)
        )
        if len(out) != 11 + crypto.SIG_LEN:
            raise DecodeError("DEBIT answer has a wrong length", len(out))
        atc, bal, slot, cvr = struct.unpack(">IIBH", out[:11])
        return DebitResult(atc, bal, slot, out[11:], cvr)

    def cancel(self, order: CancelOrder, signature: bytes) -> DebitResult:
        out = self.client.call(
            Command(CLA_PROPRIETARY, Ins.CANCEL_LAST_DEBIT, 0, 0, order.to_bytes() + signature, 0)
        )
        if len(out) != 10 + crypto.SIG_LEN:
            raise DecodeError("CANCEL answer has a wrong length", len(out))
        atc, bal, cvr = struct.unpack(">IIH", out[:10])
        return DebitResult(atc, bal, 0xFF, out[10:], cvr)

    def transaction_proof(self, atc: int) -> SignedEvent:
        return SignedEvent.parse(
            self.client.call(
                Command(CLA_PROPRIETARY, Ins.GET_TRANSACTION_PROOF, 0, 0, atc.to_bytes(4, "big"), 0)
            )
        )

    def online_authorise(
        self, *, amount: int, currency: int, tx_type: int, time: int, host_challenge: bytes
    ) -> tuple[int, bytes]:
        if len(host_challenge) != 16:
            raise ValueError("host challenge must be 16 bytes")
        out = self.client.call(
            Command(
                CLA_PROPRIETARY,
                Ins.ONLINE_AUTHORISE,
                0,
                0,
                struct.pack(">IHBI", amount, currency, tx_type, time) + host_challenge,
                0,
            )
        )
        if len(out) != 4 + crypto.SIG_LEN:
            raise DecodeError("ONLINE AUTHORISE answer has a wrong length", len(out))
        return int.from_bytes(out[:4], "big"), out[4:]

    def initialize_load(self) -> LoadSession:
        m = tlv.decode_map(
            self.client.call(Command(CLA_PROPRIETARY, Ins.INITIALIZE_LOAD, 0, 0, b"", 0))
        )
        return LoadSession(
            card_id=m[T_CARD_ID],
            atc=_u(m, T_ATC, 4),
            load_counter=_u(m, T_LOAD_COUNTER, 4),
            balance=_u(m, T_BALANCE, 4),
            currency=_u(m, T_CURRENCY, 2),
            challenge=m[T_CHALLENGE],
            cap=_u(m, T_CAP, 4),
            flags=_u(m, T_FLAGS, 1),
            debts=parse_debts(m[T_DEBTS]),
        )

    def credit(self, auth: LoadAuthorisation, signature: bytes, load_cert: bytes) -> SignedEvent:
        return SignedEvent.parse(
            self.client.call(
                Command(
                    CLA_PROPRIETARY, Ins.CREDIT, 0, 0, auth.to_bytes() + signature + load_cert, 0
                )
            )
        )

    def write_back(self, sealed: bytes) -> tuple[WriteBackReceipt, bytes]:
        out = self.client.call(Command(CLA_PROPRIETARY, Ins.WRITE_BACK, 0, 0, sealed, 0))
        n = WriteBackReceipt.size()
        if len(out) != n + 16:
            raise DecodeError("WRITE-BACK answer has a wrong length", len(out))
        return WriteBackReceipt.parse(out[:n]), out[n:]


def debit_event(session: PurchaseSession, order: DebitOrder, result: DebitResult) -> CardEvent:
    """The card event a DEBIT answer stands for, rebuilt by the terminal from what it
    sent and what the card said, so that the TAC can be verified without reading the log."""
    from tallypurse.core.protocol import EventKind

    return CardEvent(
        kind=EventKind.DEBIT,
        card_id=session.card_id,
        atc=result.atc,
        load_counter=session.load_counter,
        amount=order.amount,
        split=order.split,
        currency=order.currency,
        tx_type=order.tx_type,
        balance_before=session.balance,
        balance_after=result.balance_after,
        terminal_id=order.terminal_id,
        terminal_seq=order.terminal_seq,
        time=order.time,
        card_challenge=order.card_challenge,
        terminal_challenge=order.terminal_challenge,
        debt_slot=result.debt_slot,
        cvr=result.cvr,
    )
