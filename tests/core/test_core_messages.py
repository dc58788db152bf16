"""Fixed binary layouts of signed and MACed protocol messages, and write-back sealing."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallypurse.core import crypto, messages
from tallypurse.core.errors import CryptoError, DecodeError
from tallypurse.core.messages import (
    CancelOrder,
    CardEvent,
    CreditRecord,
    DebitOrder,
    DebtOutcome,
    DebtSlot,
    Layout,
    LoadAuthorisation,
    OnlineRequest,
    SignedEvent,
    WriteBackHeader,
    WriteBackReceipt,
    open_writeback,
    seal_writeback,
)
from tallypurse.core.protocol import DebtState, EventKind, TxType, WriteBackAction

CARD_ID = bytes.fromhex("0102030405060708")
TERMINAL_ID = b"TERM0001"
APP_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
CARD_KEY = crypto.private_key_from_scalar(bytes.fromhex("41" * 32))
CARD_PUB = crypto.encode_public_key(CARD_KEY.public_key())

ORDER = DebitOrder(
    CARD_ID, 7, 1250, 0, 978, TxType.CANTEEN, TERMINAL_ID, 42, 1_750_000_000, b"C" * 8, b"T" * 8
)
EVENT = CardEvent(
    EventKind.DEBIT,
    CARD_ID,
    8,
    3,
    1250,
    0,
    978,
    TxType.CANTEEN,
    5000,
    3750,
    TERMINAL_ID,
    42,
    1_750_000_000,
    b"C" * 8,
    b"T" * 8,
    0xFF,
    0x0081,
)

SAMPLES: dict[type[Layout], Layout] = {
    DebitOrder: ORDER,
    CancelOrder: CancelOrder(
        CARD_ID, 8, 1250, 0, 978, TxType.CANTEEN, TERMINAL_ID, 43, 1_750_000_100, b"C" * 8, b"U" * 8
    ),
    CardEvent: EVENT,
    LoadAuthorisation: LoadAuthorisation(
        CARD_ID, 3, 10000, 978, b"c" * 8, b"AUTH0001", 1_750_000_000
    ),
    OnlineRequest: OnlineRequest(
        CARD_ID, 2, 500, 978, TxType.RETAIL, TERMINAL_ID, 1_750_000_000, b"h" * 16
    ),
    CreditRecord: CreditRecord(
        CARD_ID, 1, 3, 2000, 10000, 4, 0b0111_1111, 9, 1500, 1_750_000_000, 1_760_000_000, 978
    ),
    WriteBackHeader: WriteBackHeader(CARD_ID, 17, WriteBackAction.SETTLE_DEBT),
    DebtOutcome: DebtOutcome(12, 750),
    WriteBackReceipt: WriteBackReceipt(CARD_ID, 17, WriteBackAction.SETTLE_DEBT, 0, 9, 3750),
}


def all_layouts(cls: type = Layout) -> set[type[Layout]]:
    # dataclass(slots=True) replaces each class; keep only the ones the module exports
    out: set[type[Layout]] = set()
    for sub in cls.__subclasses__():
        if getattr(messages, sub.__name__, None) is sub:
            out |= {sub} | all_layouts(sub)
    return out


def test_messages_every_layout_class_has_a_sample_in_these_tests() -> None:
    assert all_layouts() == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_messages_every_layout_round_trips_through_to_bytes_and_parse(cls: type[Layout]) -> None:
    sample = SAMPLES[cls]
    raw = sample.to_bytes()
    assert len(raw) == cls.size()
    parsed = cls.parse(raw)
    assert parsed == sample
    assert type(parsed) is cls
    assert parsed.to_bytes() == raw


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (DebitOrder, 55),
        (CancelOrder, 55),
        (CardEvent, 71),
        (LoadAuthorisation, 38),
        (OnlineRequest, 47),
        (CreditRecord, 41),
        (WriteBackHeader, 13),
        (DebtOutcome, 8),
        (WriteBackReceipt, 22),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_messages_layouts_have_their_documented_sizes(cls: type[Layout], size: int) -> None:
    assert cls.size() == size
    assert len(SAMPLES[cls].to_bytes()) == size


def test_messages_derived_record_lengths() -> None:
    assert messages.EVENT_RECORD_LEN == 71 + 64
    assert messages.SIGNED_CREDIT_RECORD_LEN == 41 + 64
    assert DebtSlot.size() == 9


def test_messages_layouts_are_big_endian_without_padding() -> None:
    raw = ORDER.to_bytes()
    assert raw[:8] == CARD_ID
    assert raw[8:12] == (7).to_bytes(4, "big")
    assert raw[12:16] == (1250).to_bytes(4, "big")
    assert raw[20:22] == (978).to_bytes(2, "big")
    assert raw[22] == TxType.CANTEEN
    assert raw[23:31] == TERMINAL_ID
    assert raw[-16:] == b"C" * 8 + b"T" * 8
    for cls in SAMPLES:
        assert cls.FORMAT.startswith(">")


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_messages_signed_data_starts_with_the_domain_separator(cls: type[Layout]) -> None:
    sample = SAMPLES[cls]
    data = sample.signed_data()
    assert data[:4] == b"TP\x01" + bytes([cls.MSG])
    assert data[4:] == sample.to_bytes()


def test_messages_message_types_are_distinct_for_signed_structures() -> None:
    signed = [
        DebitOrder,
        CancelOrder,
        CardEvent,
        LoadAuthorisation,
        OnlineRequest,
        CreditRecord,
        WriteBackHeader,
        WriteBackReceipt,
    ]
    assert len({c.MSG for c in signed}) == len(signed)


def test_messages_debit_and_cancel_orders_with_equal_fields_sign_different_data() -> None:
    cancel = CancelOrder(*(getattr(ORDER, f) for f in messages.field_names(DebitOrder)))
    assert cancel.to_bytes() == ORDER.to_bytes()
    assert cancel.signed_data() != ORDER.signed_data()
    assert ORDER.signed_data()[:4] == b"TP\x01\x01"
    assert cancel.signed_data()[:4] == b"TP\x01\x03"
    assert cancel != ORDER
    sig = crypto.sign(CARD_KEY, ORDER.signed_data())
    assert not crypto.verify(CARD_PUB, sig, cancel.signed_data())


# --- parse refusals ----------------------------------------------------------


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_messages_parse_refuses_the_wrong_length(cls: type[Layout]) -> None:
    raw = SAMPLES[cls].to_bytes()
    for bad in (b"", raw[:-1], raw + b"\x00"):
        with pytest.raises(DecodeError, match=f"{cls.__name__} must be {cls.size()} bytes"):
            cls.parse(bad)


@pytest.mark.parametrize("kind", [0, 4, 0xFF])
def test_messages_card_event_parse_refuses_an_unknown_kind(kind: int) -> None:
    raw = bytes([kind]) + EVENT.to_bytes()[1:]
    with pytest.raises(DecodeError, match=f"unknown event kind {kind}"):
        CardEvent.parse(raw)


@pytest.mark.parametrize("kind", list(EventKind))
def test_messages_card_event_parse_accepts_every_known_kind(kind: EventKind) -> None:
    assert CardEvent.parse(bytes([kind]) + EVENT.to_bytes()[1:]).kind == kind


@pytest.mark.parametrize("action", [0, 6, 0xFF])
def test_messages_write_back_header_parse_refuses_an_unknown_action(action: int) -> None:
    with pytest.raises(DecodeError, match=f"unknown write-back action {action}"):
        WriteBackHeader.parse(CARD_ID + (1).to_bytes(4, "big") + bytes([action]))


@pytest.mark.parametrize("grade", [6, 0xFF])
def test_messages_credit_record_parse_refuses_a_grade_above_e(grade: int) -> None:
    raw = bytearray(SAMPLES[CreditRecord].to_bytes())
    raw[12] = grade
    with pytest.raises(DecodeError, match="grade"):
        CreditRecord.parse(bytes(raw))


def test_messages_credit_record_grade_letters() -> None:
    base = SAMPLES[CreditRecord].to_bytes()
    letters = [
        CreditRecord.parse(base[:12] + bytes([g]) + base[13:]).grade_letter for g in range(6)
    ]
    assert letters == ["-", "A", "B", "C", "D", "E"]


def test_messages_debt_slot_round_trips_and_refuses_unknown_states() -> None:
    slot = DebtSlot(DebtState.PENDING, 8, 750)
    assert DebtSlot.parse(slot.to_bytes()) == slot
    assert messages.FREE_SLOT.to_bytes() == b"\x00" * 9
    with pytest.raises(DecodeError, match="unknown debt state 3"):
        DebtSlot.parse(b"\x03" + b"\x00" * 8)
    with pytest.raises(DecodeError, match="9 bytes"):
        DebtSlot.parse(b"\x00" * 8)


@pytest.mark.parametrize("cls", [DebitOrder, CardEvent, WriteBackHeader], ids=lambda c: c.__name__)
@pytest.mark.parametrize("length", [7, 9])
def test_messages_to_bytes_refuses_a_byte_field_of_the_wrong_length(
    cls: type[Layout], length: int
) -> None:
    # struct would silently pad or truncate, so the signed bytes would name another card
    bad = dataclasses.replace(SAMPLES[cls], card_id=b"\x01" * length)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="wrong length"):
        bad.to_bytes()


def test_messages_to_bytes_refuses_an_integer_out_of_range() -> None:
    with pytest.raises(struct.error):
        DebtOutcome(1, 2**32).to_bytes()
    with pytest.raises(struct.error):
        DebtOutcome(-1, 0).to_bytes()


@given(st.binary(min_size=71, max_size=71))
def test_messages_card_event_parse_of_random_bytes_raises_only_decode_error(raw: bytes) -> None:
    try:
        event = CardEvent.parse(raw)
    except DecodeError:
        assert raw[0] not in {int(k) for k in EventKind}
    else:
        assert event.to_bytes() == raw


# --- signed events -----------------------------------------------------------


def test_messages_signed_event_verifies_with_the_card_key() -> None:
    se = SignedEvent(EVENT, crypto.sign(CARD_KEY, EVENT.signed_data()))
    assert se.verify(CARD_PUB)
    raw = se.to_bytes()
    assert len(raw) == messages.EVENT_RECORD_LEN
    assert SignedEvent.parse(raw) == se
    assert SignedEvent.parse(raw).verify(CARD_PUB)


def test_messages_signed_event_refuses_another_key_a_changed_event_or_a_bad_tac() -> None:
    tac = crypto.sign(CARD_KEY, EVENT.signed_data())
    other = crypto.encode_public_key(crypto.private_key_from_scalar(b"\x42" * 32).public_key())
    assert not SignedEvent(EVENT, tac).verify(other)
    changed = CardEvent(*(getattr(EVENT, f) for f in messages.field_names(CardEvent)[:-1]), 0)
    assert not SignedEvent(changed, tac).verify(CARD_PUB)
    assert not SignedEvent(EVENT, tac[:-1] + bytes([tac[-1] ^ 1])).verify(CARD_PUB)
    assert not SignedEvent(EVENT, b"\x00" * 64).verify(CARD_PUB)


def test_messages_card_verification_results_are_the_last_two_bytes_and_covered_by_the_tac() -> None:
    se = SignedEvent(EVENT, crypto.sign(CARD_KEY, EVENT.signed_data()))
    raw = se.to_bytes()
    size = CardEvent.size()
    assert raw[size - 2:size] == bytes.fromhex("0081")  # cvr, big-endian, just before the TAC
    for offset in (size - 2, size - 1):
        for bit in range(8):
            forged = bytearray(raw)
            forged[offset] ^= 1 << bit  # a flag set or cleared after the card signed
            parsed = SignedEvent.parse(bytes(forged))
            assert parsed.event.cvr != EVENT.cvr
            assert not parsed.verify(CARD_PUB)
    assert SignedEvent.parse(raw).verify(CARD_PUB)


def test_messages_signed_event_does_not_verify_a_signature_over_the_bare_layout() -> None:
    tac = crypto.sign(CARD_KEY, EVENT.to_bytes())  # missing domain separator
    assert not SignedEvent(EVENT, tac).verify(CARD_PUB)


def test_messages_signed_event_parse_refuses_the_wrong_length_and_bad_kinds() -> None:
    raw = SignedEvent(EVENT, b"\x01" * 64).to_bytes()
    for bad in (raw[:-1], raw + b"\x00", b""):
        with pytest.raises(DecodeError, match="event record"):
            SignedEvent.parse(bad)
    with pytest.raises(DecodeError, match="unknown event kind"):
        SignedEvent.parse(b"\x09" + raw[1:])


# --- write-back sealing ------------------------------------------------------

HEADER = WriteBackHeader(CARD_ID, 17, WriteBackAction.SETTLE_DEBT)
PAYLOAD = DebtOutcome(12, 750).to_bytes()


def test_messages_seal_then_open_writeback_round_trips() -> None:
    sealed = seal_writeback(APP_KEY, HEADER, PAYLOAD)
    assert open_writeback(APP_KEY, sealed) == (HEADER, PAYLOAD)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 41, 100])
def test_messages_writeback_round_trips_payloads_of_any_length(length: int) -> None:
    payload = bytes(range(length))
    sealed = seal_writeback(APP_KEY, HEADER, payload)
    hl = WriteBackHeader.size()
    assert len(sealed) == hl + (length // 16 + 1) * 16 + 16
    assert open_writeback(APP_KEY, sealed) == (HEADER, payload)


def test_messages_writeback_layout_is_header_ciphertext_then_mac() -> None:
    sealed = seal_writeback(APP_KEY, HEADER, PAYLOAD)
    hl = WriteBackHeader.size()
    assert sealed[:hl] == HEADER.to_bytes()
    k_enc, k_mac = messages.app_subkeys(APP_KEY)
    assert k_enc == crypto.scp03_derive(APP_KEY, 0x21, b"tallypurse-app", 128)
    assert k_mac == crypto.scp03_derive(APP_KEY, 0x22, b"tallypurse-app", 128)
    ct, mac = sealed[hl:-16], sealed[-16:]
    assert mac == crypto.aes_cmac(k_mac, b"TP\x01\x08" + sealed[:hl] + ct)
    iv = crypto.aes_ecb_block(k_enc, CARD_ID + (17).to_bytes(4, "big") + b"\x00" * 4)
    assert crypto.aes_cbc_decrypt(k_enc, iv, ct) == crypto.pad_iso9797_m2(PAYLOAD)
    assert PAYLOAD not in sealed


def test_messages_writeback_ciphertext_depends_on_the_sequence_number() -> None:
    a = seal_writeback(APP_KEY, HEADER, PAYLOAD)
    b = seal_writeback(APP_KEY, WriteBackHeader(CARD_ID, 18, HEADER.action), PAYLOAD)
    hl = WriteBackHeader.size()
    assert a[hl:-16] != b[hl:-16]


def test_messages_open_writeback_refuses_a_flipped_bit_anywhere() -> None:
    sealed = seal_writeback(APP_KEY, HEADER, PAYLOAD)
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= bit
            with pytest.raises(CryptoError, match="MAC does not verify"):
                open_writeback(APP_KEY, bytes(bad))


@pytest.mark.parametrize("part", ["header", "ciphertext", "mac"])
def test_messages_open_writeback_refuses_a_flipped_bit_in_each_part(part: str) -> None:
    sealed = bytearray(seal_writeback(APP_KEY, HEADER, PAYLOAD))
    index = {"header": 12, "ciphertext": 13, "mac": len(sealed) - 1}[part]
    sealed[index] ^= 0x04
    with pytest.raises(CryptoError):
        open_writeback(APP_KEY, bytes(sealed))


def test_messages_open_writeback_refuses_a_different_app_key() -> None:
    sealed = seal_writeback(APP_KEY, HEADER, PAYLOAD)
    with pytest.raises(CryptoError):
        open_writeback(bytes(16), sealed)
    with pytest.raises(CryptoError):
        open_writeback(APP_KEY[:-1] + b"\x0e", sealed)


@pytest.mark.parametrize("length", [0, 1, 13, 28, 29, 44, 46, 60, 62, 76])
def test_messages_open_writeback_refuses_wrong_lengths_with_decode_error(length: int) -> None:
    with pytest.raises(DecodeError, match="wrong length"):
        open_writeback(APP_KEY, bytes(length))


def test_messages_open_writeback_refuses_a_truncated_or_extended_sealed_message() -> None:
    sealed = seal_writeback(APP_KEY, HEADER, bytes(40))  # three cipher blocks
    with pytest.raises(DecodeError):
        open_writeback(APP_KEY, sealed[:-1])
    with pytest.raises(DecodeError):
        open_writeback(APP_KEY, sealed + b"\x00")
    with pytest.raises(CryptoError):  # a whole block less still has a valid length
        open_writeback(APP_KEY, sealed[:-32] + sealed[-16:])


def test_messages_open_writeback_refuses_a_header_spliced_from_another_card() -> None:
    sealed = seal_writeback(APP_KEY, HEADER, PAYLOAD)
    other = WriteBackHeader(b"\x09" * 8, HEADER.seq, HEADER.action).to_bytes()
    with pytest.raises(CryptoError):
        open_writeback(APP_KEY, other + sealed[WriteBackHeader.size() :])


def test_messages_open_writeback_refuses_an_unknown_action_even_under_a_valid_mac() -> None:
    sealed = seal_writeback(APP_KEY, WriteBackHeader(CARD_ID, 1, 99), PAYLOAD)
    with pytest.raises(DecodeError, match="unknown write-back action 99"):
        open_writeback(APP_KEY, sealed)


def test_messages_seal_writeback_refuses_a_card_id_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="wrong length"):
        seal_writeback(APP_KEY, WriteBackHeader(CARD_ID[:7], 1, 1), PAYLOAD)


@given(st.binary(max_size=80))
def test_messages_open_writeback_of_random_bytes_raises_decode_or_crypto_error(data: bytes) -> None:
    with pytest.raises((DecodeError, CryptoError)):
        open_writeback(APP_KEY, data)


def test_messages_receipt_mac_is_a_cmac_under_the_app_mac_key() -> None:
    receipt = SAMPLES[WriteBackReceipt]
    assert isinstance(receipt, WriteBackReceipt)
    mac = messages.receipt_mac(APP_KEY, receipt)
    k_mac = messages.app_subkeys(APP_KEY)[1]
    assert mac == crypto.aes_cmac(k_mac, b"TP\x01\x09" + receipt.to_bytes())
    assert messages.receipt_mac(bytes(16), receipt) != mac
