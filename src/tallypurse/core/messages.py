"""Fixed binary layouts of everything that is signed or MACed in the card protocol.

Each signed structure is prefixed, when signed, by a 4-byte domain separator
``b"TP" || protocol version (0x01) || message type`` so that a signature over
one kind of message can never be replayed as another. All integers are
unsigned big-endian. See docs/protocol.md section "Signed data".
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, fields
from typing import ClassVar, Self

from tallypurse.core import crypto
from tallypurse.core.errors import DecodeError
from tallypurse.core.protocol import DebtState, EventKind, WriteBackAction

PROTOCOL_VERSION = 0x01

MSG_DEBIT_ORDER = 0x01
MSG_CARD_EVENT = 0x02
MSG_CANCEL_ORDER = 0x03
MSG_LOAD_AUTH = 0x04
MSG_ONLINE_AUTH = 0x06
MSG_CREDIT_RECORD = 0x07
MSG_WRITEBACK = 0x08
MSG_WRITEBACK_RECEIPT = 0x09


def domain(msg_type: int) -> bytes:
    return b"TP" + bytes([PROTOCOL_VERSION, msg_type])


_SHAPES: dict[type, tuple[list[str], list[tuple[int, int]]]] = {}


def _shape(cls: type) -> tuple[list[str], list[tuple[int, int]]]:
    """Field names in order and (index, size) of each fixed-size bytes field."""
    shape = _SHAPES.get(cls)
    if shape is None:
        names = [f.name for f in fields(cls)]
        codes = re.findall(r"(\d*)([a-zA-Z?])", cls.FORMAT)  # type: ignore[attr-defined]
        byte_fields = [(i, int(n)) for i, (n, c) in enumerate(codes) if c == "s"]
        shape = _SHAPES[cls] = (names, byte_fields)
    return shape


class Layout:
    """Mixin for frozen dataclasses with a fixed struct layout."""

    FORMAT: ClassVar[str]
    MSG: ClassVar[int]

    @classmethod
    def size(cls) -> int:
        return struct.calcsize(cls.FORMAT)

    def to_bytes(self) -> bytes:
        names, byte_fields = _shape(type(self))
        values = [getattr(self, n) for n in names]
        for i, size in byte_fields:  # struct would silently pad or truncate "Ns" fields
            if len(values[i]) != size:
                raise ValueError(
                    f"{type(self).__name__}.{names[i]} has the wrong length (must be {size} bytes)"
                )
        return struct.pack(self.FORMAT, *values)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        if len(raw) != cls.size():
            raise DecodeError(f"{cls.__name__} must be {cls.size()} bytes, got {len(raw)}", 0)
        values = struct.unpack(cls.FORMAT, raw)
        obj = cls(*values)
        obj.check()
        return obj

    def check(self) -> None:
        """Range checks beyond the struct layout; raise DecodeError."""

    def signed_data(self) -> bytes:
        return domain(self.MSG) + self.to_bytes()


@dataclass(frozen=True, slots=True)
class DebitOrder(Layout):
    """What a terminal's SAM signs to ask a card for a debit (and, with type
    MSG_CANCEL_ORDER, to cancel the card's last debit)."""

    FORMAT: ClassVar[str] = ">8sIIIHB8sII8s8s"
    MSG: ClassVar[int] = MSG_DEBIT_ORDER

    card_id: bytes
    atc: int  # the card's ATC as reported by INITIALIZE PURCHASE
    amount: int  # purse part, minor units
    split: int  # online remainder recorded as a debt, minor units (0: none)
    currency: int  # ISO 4217 numeric
    tx_type: int
    terminal_id: bytes
    terminal_seq: int
    time: int  # unix seconds, terminal clock
    card_challenge: bytes
    terminal_challenge: bytes


@dataclass(frozen=True, slots=True)
class CancelOrder(DebitOrder):
    MSG: ClassVar[int] = MSG_CANCEL_ORDER


@dataclass(frozen=True, slots=True)
class CardEvent(Layout):
    """A balance-changing event as the card signs it: the transaction certificate (TAC).

    For a DEBIT or CANCEL the terminal fields come from the order; for a LOAD
    ``terminal_seq`` is 0, ``terminal_challenge`` is the host's authorisation
    id and ``split`` is the amount of failed debts the load repaid. ``cvr`` is
    the card's own evaluation of the event (its card verification results).
    """

    FORMAT: ClassVar[str] = ">B8sIIIIHBII8sII8s8sBH"
    MSG: ClassVar[int] = MSG_CARD_EVENT

    kind: int
    card_id: bytes
    atc: int  # ATC after the event
    load_counter: int  # load counter after the event
    amount: int
    split: int
    currency: int
    tx_type: int
    balance_before: int
    balance_after: int
    terminal_id: bytes
    terminal_seq: int
    time: int
    card_challenge: bytes
    terminal_challenge: bytes
    debt_slot: int  # 0xFF when no debt slot was used
    cvr: int  # card verification results: the CVR_* bits of core.protocol

    def check(self) -> None:
        try:
            EventKind(self.kind)
        except ValueError:
            raise DecodeError(f"unknown event kind {self.kind}", 0) from None


EVENT_RECORD_LEN = CardEvent.size() + crypto.SIG_LEN


@dataclass(frozen=True, slots=True)
class SignedEvent:
    """A card event with the card's signature: a log record and a transaction proof."""

    event: CardEvent
    tac: bytes

    def to_bytes(self) -> bytes:
        return self.event.to_bytes() + self.tac

    @classmethod
    def parse(cls, raw: bytes) -> SignedEvent:
        if len(raw) != EVENT_RECORD_LEN:
            raise DecodeError(f"event record must be {EVENT_RECORD_LEN} bytes", 0)
        return cls(CardEvent.parse(raw[: CardEvent.size()]), raw[CardEvent.size() :])

    def verify(self, card_public_key: bytes) -> bool:
        return crypto.verify(card_public_key, self.tac, self.event.signed_data())


@dataclass(frozen=True, slots=True)
class LoadAuthorisation(Layout):
    """What the host signs (load key) to credit a card."""

    FORMAT: ClassVar[str] = ">8sIIH8s8sI"
    MSG: ClassVar[int] = MSG_LOAD_AUTH

    card_id: bytes
    load_counter: int  # the card's load counter as reported by INITIALIZE LOAD
    amount: int
    currency: int
    card_challenge: bytes
    auth_id: bytes  # host reference of this authorisation
    time: int


@dataclass(frozen=True, slots=True)
class OnlineRequest(Layout):
    """The card's signed request for a real-time debit of its online account."""

    FORMAT: ClassVar[str] = ">8sIIHB8sI16s"
    MSG: ClassVar[int] = MSG_ONLINE_AUTH

    card_id: bytes
    online_counter: int  # after increment
    amount: int
    currency: int
    tx_type: int
    terminal_id: bytes
    time: int
    host_challenge: bytes


@dataclass(frozen=True, slots=True)
class CreditRecord(Layout):
    """The card's credit record: what it may owe offline. Signed by the host's
    list key so that any terminal can verify it offline; delivered to the card
    under its APP key; enforced by the card."""

    FORMAT: ClassVar[str] = ">8sIBIIBIBIIIH"
    MSG: ClassVar[int] = MSG_CREDIT_RECORD

    card_id: bytes
    version: int
    grade: int  # 0 none, 1..5 = A..E
    per_tap_overdraft: int
    max_outstanding: int
    max_slots: int
    allowed_types: int  # bit mask of TxType
    balance_band: int  # online-account balance band at issue time (0..15)
    outstanding_known: int  # outstanding debt the host knew of at issue time
    issued: int
    expires: int
    currency: int

    def check(self) -> None:
        if self.grade > 5:
            raise DecodeError("credit grade must be 0..5", 0)

    @property
    def grade_letter(self) -> str:
        return "-ABCDE"[self.grade]


SIGNED_CREDIT_RECORD_LEN = CreditRecord.size() + crypto.SIG_LEN


@dataclass(frozen=True, slots=True)
class DebtSlot:
    FORMAT: ClassVar[str] = ">BII"
    state: int
    ref: int  # ATC of the split debit that created the debt
    amount: int

    @classmethod
    def size(cls) -> int:
        return struct.calcsize(cls.FORMAT)

    def to_bytes(self) -> bytes:
        return struct.pack(self.FORMAT, self.state, self.ref, self.amount)

    @classmethod
    def parse(cls, raw: bytes) -> DebtSlot:
        if len(raw) != cls.size():
            raise DecodeError("debt slot must be 9 bytes", 0)
        state, ref, amount = struct.unpack(cls.FORMAT, raw)
        try:
            DebtState(state)
        except ValueError:
            raise DecodeError(f"unknown debt state {state}", 0) from None
        return cls(state, ref, amount)


FREE_SLOT = DebtSlot(DebtState.FREE, 0, 0)


@dataclass(frozen=True, slots=True)
class WriteBackHeader(Layout):
    FORMAT: ClassVar[str] = ">8sIB"
    MSG: ClassVar[int] = MSG_WRITEBACK

    card_id: bytes
    seq: int  # strictly increasing per card; replay protection
    action: int

    def check(self) -> None:
        try:
            WriteBackAction(self.action)
        except ValueError:
            raise DecodeError(f"unknown write-back action {self.action}", 0) from None


@dataclass(frozen=True, slots=True)
class DebtOutcome(Layout):
    """Payload of SETTLE_DEBT / FAIL_DEBT write-backs."""

    FORMAT: ClassVar[str] = ">II"
    MSG: ClassVar[int] = MSG_WRITEBACK
    ref: int
    amount: int


@dataclass(frozen=True, slots=True)
class WriteBackReceipt(Layout):
    """What the card MACs (APP key) to prove it applied a write-back."""

    FORMAT: ClassVar[str] = ">8sIBBII"
    MSG: ClassVar[int] = MSG_WRITEBACK_RECEIPT

    card_id: bytes
    seq: int
    action: int
    result: int  # 0 applied, 1 already applied or nothing to do
    atc: int
    balance: int


# APP-key sub-keys (derived with crypto.scp03_derive from the 16-byte APP key)
APP_KEY_ENC = 0x21
APP_KEY_MAC = 0x22


def app_subkeys(app_key: bytes) -> tuple[bytes, bytes]:
    """The encryption and MAC keys derived from an applet's APP key."""
    return (
        crypto.scp03_derive(app_key, APP_KEY_ENC, b"tallypurse-app", 128),
        crypto.scp03_derive(app_key, APP_KEY_MAC, b"tallypurse-app", 128),
    )


def seal_writeback(app_key: bytes, header: WriteBackHeader, payload: bytes) -> bytes:
    """Build WRITE-BACK command data: header || AES-CBC(payload) || CMAC (16 bytes).

    The IV is AES(K_enc, card_id || seq || zeros); the payload is padded with
    ISO 9797-1 method 2; the MAC covers the domain separator, header and ciphertext.
    """
    k_enc, k_mac = app_subkeys(app_key)
    head = header.to_bytes()
    iv = crypto.aes_ecb_block(
        k_enc, (header.card_id + header.seq.to_bytes(4, "big")).ljust(16, b"\0")
    )
    ct = crypto.aes_cbc_encrypt(k_enc, iv, crypto.pad_iso9797_m2(payload))
    mac = crypto.aes_cmac(k_mac, domain(MSG_WRITEBACK) + head + ct)
    return head + ct + mac


def open_writeback(app_key: bytes, data: bytes) -> tuple[WriteBackHeader, bytes]:
    """Check the MAC and decrypt WRITE-BACK command data. Raises DecodeError/CryptoError."""
    from tallypurse.core.errors import CryptoError

    hl = WriteBackHeader.size()
    if len(data) < hl + 16 + 16 or (len(data) - hl - 16) % 16:
        raise DecodeError("write-back has a wrong length", 0)
    head, ct, mac = data[:hl], data[hl:-16], data[-16:]
    k_enc, k_mac = app_subkeys(app_key)
    if not crypto.constant_time_equal(
        crypto.aes_cmac(k_mac, domain(MSG_WRITEBACK) + head + ct), mac
    ):
        raise CryptoError("write-back MAC does not verify")
    header = WriteBackHeader.parse(head)
    iv = crypto.aes_ecb_block(
        k_enc, (header.card_id + header.seq.to_bytes(4, "big")).ljust(16, b"\0")
    )
    return header, crypto.unpad_iso9797_m2(crypto.aes_cbc_decrypt(k_enc, iv, ct))


def receipt_mac(app_key: bytes, receipt: WriteBackReceipt) -> bytes:
    return crypto.aes_cmac(app_subkeys(app_key)[1], receipt.signed_data())


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]
