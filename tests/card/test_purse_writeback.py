"""WRITE-BACK: host outcomes carried to the card under its APP key."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tallypurse.card.card import Card
from tallypurse.core import crypto
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import (
    FREE_SLOT,
    MSG_WRITEBACK,
    DebtOutcome,
    DebtSlot,
    WriteBackHeader,
    WriteBackReceipt,
    app_subkeys,
    domain,
    receipt_mac,
    seal_writeback,
)
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    FLAG_BLOCKED,
    FLAG_FAILED_DEBT,
    DebtState,
    Ins,
    TxType,
    WriteBackAction,
)
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.keys import app_key
from tallypurse.host.tsm.personalise import signed_credit_record
from tallypurse.lab import Lab
from tallypurse.sam import Sam


def assert_refused(card: Card, raw: bytes, sw: int) -> None:
    """The card answers ``sw`` with no data and its memory is exactly as before."""
    before = card.eeprom.snapshot()
    resp = Response.parse(card.transmit(raw))
    assert (resp.sw, resp.data) == (sw, b""), f"{resp.sw:04X}"
    assert card.eeprom.snapshot() == before


def purse_of(card: Card) -> PurseClient:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse


def write_back_apdu(sealed: bytes) -> bytes:
    return Command(CLA_PROPRIETARY, Ins.WRITE_BACK, 0, 0, sealed, 0).to_bytes()


def sealed_for(
    lab: Lab,
    card: Card,
    action: WriteBackAction,
    payload: bytes = b"",
    *,
    seq: int,
    card_id: bytes | None = None,
) -> bytes:
    """A write-back sealed with ``card``'s APP key (naming ``card_id`` if given)."""
    _, key = app_key(lab.keystore, card.serial)
    header = WriteBackHeader(card_id or card.serial, seq, int(action))
    return write_back_apdu(seal_writeback(key, header, payload))


def pending_debt(lab: Lab, card: Card, sam: Sam, amount: int = 500) -> int:
    return lab.purchase(card, sam, 0, split=amount, tx_type=TxType.CANTEEN).result.atc


def test_settling_a_debt_frees_its_slot_and_the_receipt_mac_verifies(
    lab: Lab, card: Card, sam: Sam
) -> None:
    ref = pending_debt(lab, card, sam)
    purse = purse_of(card)
    receipt, mac = purse.write_back(
        lab.seal_writeback(
            card.serial, WriteBackAction.SETTLE_DEBT, DebtOutcome(ref, 500).to_bytes()
        )
    )
    _, key = app_key(lab.keystore, card.serial)
    assert crypto.constant_time_equal(mac, receipt_mac(key, receipt))
    assert receipt == WriteBackReceipt(card.serial, 1, WriteBackAction.SETTLE_DEBT, 0, ref, 0)
    assert purse.debts() == [FREE_SLOT] * 4
    assert purse.counters().writeback_seq == 1


def test_settling_an_unknown_debt_is_acknowledged_with_nothing_to_do(
    lab: Lab, card: Card, sam: Sam
) -> None:
    ref = pending_debt(lab, card, sam)
    receipt = lab.settle_debt(card, ref + 1, 500)
    assert receipt.result == 1
    assert purse_of(card).debts()[0] == DebtSlot(DebtState.PENDING, ref, 500)


def test_failing_a_debt_marks_it_failed(lab: Lab, card: Card, sam: Sam) -> None:
    ref = pending_debt(lab, card, sam)
    assert lab.fail_debt(card, ref, 500).result == 0
    purse = purse_of(card)
    assert purse.debts()[0] == DebtSlot(DebtState.FAILED, ref, 500)
    assert purse.card_data().flags & FLAG_FAILED_DEBT
    assert lab.fail_debt(card, ref, 500).result == 1  # already failed


def test_a_failed_debt_can_still_be_settled(lab: Lab, card: Card, sam: Sam) -> None:
    ref = pending_debt(lab, card, sam)
    lab.fail_debt(card, ref, 500)
    assert lab.settle_debt(card, ref, 500).result == 0
    purse = purse_of(card)
    assert purse.debts() == [FREE_SLOT] * 4
    assert not purse.card_data().flags & FLAG_FAILED_DEBT


def test_a_credit_record_with_a_higher_version_replaces_the_old_one(lab: Lab, card: Card) -> None:
    record = lab.credit_record(card.serial, version=2, grade=4, per_tap_overdraft=500)
    assert lab.new_credit_record(card, record).result == 0
    signed = purse_of(card).credit_record()
    assert signed.record == record
    assert signed.verify(lab.host_list_key())


def test_a_credit_record_with_a_lower_or_equal_version_is_ignored(lab: Lab, card: Card) -> None:
    lab.new_credit_record(card, lab.credit_record(card.serial, version=5))
    for version in (4, 5):
        receipt = lab.new_credit_record(
            card, lab.credit_record(card.serial, version=version, grade=1)
        )
        assert receipt.result == 1
    assert purse_of(card).credit_record().record.version == 5
    assert purse_of(card).credit_record().record.grade == 2
    assert purse_of(card).counters().writeback_seq == 3


def test_a_credit_record_reaches_a_card_that_had_none(
    lab: Lab, make_card: Callable[..., Card]
) -> None:
    card = make_card(credit=False)
    record = lab.credit_record(card.serial)
    assert lab.new_credit_record(card, record).result == 0
    assert purse_of(card).credit_record().record == record


def test_a_credit_record_for_another_card_is_refused(lab: Lab, card: Card) -> None:
    payload = signed_credit_record(lab.keystore, lab.credit_record(b"\x20" * 8, version=2))
    raw = sealed_for(lab, card, WriteBackAction.CREDIT_RECORD, payload, seq=1)
    purse_of(card)
    assert_refused(card, raw, SW.WRONG_DATA)


def test_a_credit_record_in_another_currency_is_refused(lab: Lab, card: Card) -> None:
    record = lab.credit_record(card.serial, version=2, currency=840)
    payload = signed_credit_record(lab.keystore, record)
    raw = sealed_for(lab, card, WriteBackAction.CREDIT_RECORD, payload, seq=1)
    purse_of(card)
    assert_refused(card, raw, SW.WRONG_DATA)


def test_a_credit_record_of_the_wrong_length_is_refused(lab: Lab, card: Card) -> None:
    payload = signed_credit_record(lab.keystore, lab.credit_record(card.serial, version=2))
    raw = sealed_for(lab, card, WriteBackAction.CREDIT_RECORD, payload[:-1], seq=1)
    purse_of(card)
    assert_refused(card, raw, SW.WRONG_LENGTH)


def test_block_and_unblock(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    assert lab.write_back(card, WriteBackAction.BLOCK).result == 0
    assert purse_of(card).card_data().flags & FLAG_BLOCKED
    assert lab.write_back(card, WriteBackAction.UNBLOCK).result == 0
    assert not purse_of(card).card_data().flags & FLAG_BLOCKED
    assert lab.purchase(card, sam, 100).result.balance_after == 900


def test_a_block_with_a_long_payload_is_refused(lab: Lab, card: Card) -> None:
    raw = sealed_for(lab, card, WriteBackAction.BLOCK, b"\x00\x00", seq=1)
    purse_of(card)
    assert_refused(card, raw, SW.WRONG_LENGTH)


def test_a_replayed_write_back_is_refused(lab: Lab, card: Card) -> None:
    raw = sealed_for(lab, card, WriteBackAction.BLOCK, seq=3)
    purse_of(card)
    assert Response.parse(card.transmit(raw)).sw == SW.OK
    assert_refused(card, sealed_for(lab, card, WriteBackAction.UNBLOCK, seq=2), SW.REPLAY)
    assert_refused(card, sealed_for(lab, card, WriteBackAction.UNBLOCK, seq=1), SW.REPLAY)


def test_the_last_write_back_sent_again_answers_the_same_receipt_and_changes_nothing(
    lab: Lab, card: Card
) -> None:
    raw = sealed_for(lab, card, WriteBackAction.BLOCK, seq=3)
    purse_of(card)
    first = Response.parse(card.transmit(raw))
    assert first.sw == SW.OK
    before = card.eeprom.snapshot()
    again = Response.parse(card.transmit(raw))
    assert again.sw == SW.OK and again.data == first.data
    assert card.eeprom.snapshot() == before
    assert (
        Response.parse(card.transmit(sealed_for(lab, card, WriteBackAction.UNBLOCK, seq=4))).sw
        == SW.OK
    )


@pytest.mark.parametrize("where", [0, 8, 12, 14, 20, -1, -16])
def test_a_tampered_write_back_fails_its_mac(lab: Lab, card: Card, where: int) -> None:
    raw = Command.parse(sealed_for(lab, card, WriteBackAction.BLOCK, seq=1))
    data = bytearray(raw.data)
    data[where] ^= 0x80
    purse_of(card)
    assert_refused(card, write_back_apdu(bytes(data)), SW.SECURITY_NOT_SATISFIED)


def test_a_write_back_sealed_for_another_card_fails_its_mac(
    lab: Lab, card: Card, make_card: Callable[..., Card]
) -> None:
    other = make_card()
    raw = sealed_for(lab, other, WriteBackAction.BLOCK, seq=1)
    purse_of(card)
    assert_refused(card, raw, SW.SECURITY_NOT_SATISFIED)


def test_a_write_back_naming_another_card_is_refused(lab: Lab, card: Card) -> None:
    raw = sealed_for(lab, card, WriteBackAction.BLOCK, seq=1, card_id=b"\x20" * 8)
    purse_of(card)
    assert_refused(card, raw, SW.WRONG_DATA)


@pytest.mark.parametrize("length", [0, 13, 29, 44, 46, 60])
def test_a_write_back_of_a_wrong_length_is_refused(lab: Lab, card: Card, length: int) -> None:
    data = Command.parse(sealed_for(lab, card, WriteBackAction.BLOCK, seq=1)).data
    data = (data * 2)[:length]
    raw = write_back_apdu(data) if data else bytes([CLA_PROPRIETARY, Ins.WRITE_BACK, 0, 0])
    purse_of(card)
    assert_refused(card, raw, SW.WRONG_DATA)


def test_a_write_back_with_an_unknown_action_is_refused(lab: Lab, card: Card) -> None:
    _, key = app_key(lab.keystore, card.serial)
    head = card.serial + (1).to_bytes(4, "big") + b"\x09"
    good = seal_writeback(key, WriteBackHeader(card.serial, 1, 1), b"")
    # re-MAC a header with action 9 the way seal_writeback does
    ct = good[len(head) : -16]
    mac = crypto.aes_cmac(app_subkeys(key)[1], domain(MSG_WRITEBACK) + head + ct)
    purse_of(card)
    assert_refused(card, write_back_apdu(head + ct + mac), SW.WRONG_DATA)


def test_a_debt_outcome_of_the_wrong_length_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    ref = pending_debt(lab, card, sam)
    payload = DebtOutcome(ref, 500).to_bytes() + b"\x00"
    raw = sealed_for(lab, card, WriteBackAction.SETTLE_DEBT, payload, seq=1)
    purse_of(card)
    assert_refused(card, raw, SW.WRONG_DATA)


def test_a_write_back_with_nonzero_p1_p2_is_refused(lab: Lab, card: Card) -> None:
    raw = bytearray(sealed_for(lab, card, WriteBackAction.BLOCK, seq=1))
    raw[3] = 0x01
    purse_of(card)
    assert_refused(card, bytes(raw), SW.INCORRECT_P1P2)


def test_a_debt_outcome_with_another_amount_applies_nothing_but_uses_its_sequence(
    lab: Lab, card: Card, sam: Sam
) -> None:
    ref = pending_debt(lab, card, sam, 500)
    assert lab.settle_debt(card, ref, 499).result == 1
    assert lab.fail_debt(card, ref, 501).result == 1
    purse = purse_of(card)
    assert purse.debts()[0] == DebtSlot(DebtState.PENDING, ref, 500)
    assert purse.counters().writeback_seq == 2


def test_a_partly_repaid_failed_debt_is_settled_with_what_is_left(
    lab: Lab, card: Card, sam: Sam
) -> None:
    ref = pending_debt(lab, card, sam, 500)
    lab.fail_debt(card, ref, 500)
    lab.load(card, 200)
    assert lab.settle_debt(card, ref, 500).result == 1
    assert lab.settle_debt(card, ref, 300).result == 0
    assert purse_of(card).debts() == [FREE_SLOT] * 4


def test_a_write_back_reaches_a_blocked_purse(lab: Lab, card: Card, sam: Sam) -> None:
    ref = pending_debt(lab, card, sam, 500)
    lab.write_back(card, WriteBackAction.BLOCK)
    assert lab.settle_debt(card, ref, 500).result == 0
    assert purse_of(card).debts() == [FREE_SLOT] * 4
