"""Tearing: a power cut at every persistent write of every state-changing purse command
leaves the card exactly as before the command or exactly as after it.

For each command the writes are counted on an uncut copy of the card; then, for every
write index, a fresh copy of the same memory (with the same deterministic random
numbers, so that the card's challenge matches the pre-signed order) runs the setup
APDUs, loses power at that write, is powered up again and is compared with the
before- and after-snapshots.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom, PowerLoss
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import (
    EVENT_RECORD_LEN,
    CancelOrder,
    DebitOrder,
    DebtOutcome,
    LoadAuthorisation,
    SignedEvent,
)
from tallypurse.core.protocol import CLA_PROPRIETARY, DebtState, Ins, TxType, WriteBackAction
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.personalise import signed_credit_record
from tallypurse.keystore.base import HOST_LOAD
from tallypurse.lab import Lab
from tallypurse.sam import Sam

Setup = Callable[[Card], None]


@dataclass
class Case:
    """A card in its before-state, the setup APDUs and the command under test."""

    base: Card
    setup: Setup
    apdu: bytes
    # what to check on a card recovered to the after-state, given the uncut answer
    check_after: Callable[[Card, bytes], None]


def copy_of(image: bytes) -> Card:
    """A card on a copy of ``image`` whose random numbers are always the same."""
    return Card(Eeprom.from_image(image), random=random.Random(20260101).randbytes)


def purse_of(card: Card) -> PurseClient:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse


def send(card: Card, raw: bytes) -> Response:
    return Response.parse(card.transmit(raw))


def purchase_works(lab: Lab, card: Card, sam: Sam) -> None:
    balance = purse_of(card).counters().balance
    if balance:
        tap = lab.purchase(card, sam, min(balance, 100))
    else:
        tap = lab.purchase(card, sam, 0, split=100, tx_type=TxType.CANTEEN)
    assert tap.event is not None


# --- the commands ---------------------------------------------------------------------------


def purchase_setup(sam: Sam) -> Setup:
    def setup(card: Card) -> None:
        purse_of(card).initialize_purchase(sam.certificate)

    return setup


def select_setup(card: Card) -> None:
    purse_of(card)


def check_proof(offset: int) -> Callable[[Card, bytes], None]:
    """After a DEBIT or CANCEL: GET TRANSACTION PROOF of the new ATC gives the lost TAC."""

    def check(card: Card, answer: bytes) -> None:
        atc = int.from_bytes(answer[:4], "big")
        proof = purse_of(card).transaction_proof(atc)
        assert proof.tac == answer[offset : offset + 64]
        assert proof.event.atc == atc

    return check


def order_apdu(
    lab: Lab,
    base: Card,
    sam: Sam,
    layout: type[DebitOrder],
    ins: int,
    amount: int,
    split: int = 0,
    tx_type: int = 0,
) -> bytes:
    probe = copy_of(base.eeprom.to_image())
    session = purse_of(probe).initialize_purchase(sam.certificate)
    order = layout(
        card_id=session.card_id,
        atc=session.atc,
        amount=amount,
        split=split,
        currency=session.currency,
        tx_type=tx_type,
        terminal_id=sam.terminal_id,
        terminal_seq=sam.next_sequence(),
        time=lab.now,
        card_challenge=session.challenge,
        terminal_challenge=b"TERMCHAL",
    )
    data = order.to_bytes() + sam.sign_debit_order(order)
    return Command(CLA_PROPRIETARY, ins, 0, 0, data, 0).to_bytes()


def debit_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 5_000)
    raw = order_apdu(lab, card, sam, DebitOrder, Ins.DEBIT, 1_000)
    return Case(card, purchase_setup(sam), raw, check_proof(11))


def split_debit_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    raw = order_apdu(lab, card, sam, DebitOrder, Ins.DEBIT, 1_000, 500, TxType.CANTEEN)

    def check(card: Card, answer: bytes) -> None:
        check_proof(11)(card, answer)
        slot = purse_of(card).debts()[answer[8]]
        assert (slot.state, slot.ref, slot.amount) == (DebtState.PENDING, 1, 500)

    return Case(card, purchase_setup(sam), raw, check)


def cancel_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    lab.purchase(card, sam, 400)
    raw = order_apdu(lab, card, sam, CancelOrder, Ins.CANCEL_LAST_DEBIT, 400)
    return Case(card, purchase_setup(sam), raw, check_proof(10))


def cancel_split_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 300)
    lab.purchase(card, sam, 300, split=700, tx_type=TxType.CANTEEN)
    raw = order_apdu(lab, card, sam, CancelOrder, Ins.CANCEL_LAST_DEBIT, 300, 700, TxType.CANTEEN)

    def check(card: Card, answer: bytes) -> None:
        check_proof(10)(card, answer)
        assert all(s.state == DebtState.FREE for s in purse_of(card).debts())

    return Case(card, purchase_setup(sam), raw, check)


def online_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    data = struct.pack(">IHBI", 2_500, 978, TxType.RETAIL, lab.now) + bytes(range(16))
    raw = Command(CLA_PROPRIETARY, Ins.ONLINE_AUTHORISE, 0, 0, data, 0).to_bytes()

    def check(card: Card, answer: bytes) -> None:
        assert purse_of(card).counters().online_counter == int.from_bytes(answer[:4], "big")

    return Case(card, purchase_setup(sam), raw, check)


def load_apdu(lab: Lab, base: Card, amount: int) -> bytes:
    probe = copy_of(base.eeprom.to_image())
    session = purse_of(probe).initialize_load()
    auth = LoadAuthorisation(
        session.card_id,
        session.load_counter,
        amount,
        session.currency,
        session.challenge,
        b"AUTH0001",
        lab.now,
    )
    ref = lab.keystore.current(HOST_LOAD)
    data = (
        auth.to_bytes()
        + lab.keystore.sign(ref, auth.signed_data())
        + lab.keystore.certificate(ref).encode()
    )
    return Command(CLA_PROPRIETARY, Ins.CREDIT, 0, 0, data, 0).to_bytes()


def load_setup(card: Card) -> None:
    purse_of(card).initialize_load()


def check_load(card: Card, answer: bytes) -> None:
    assert len(answer) == EVENT_RECORD_LEN
    assert purse_of(card).read_record(1) == SignedEvent.parse(answer)


def load_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    return Case(card, load_setup, load_apdu(lab, card, 2_000), check_load)


def with_failed_debt(lab: Lab, card: Card, sam: Sam) -> int:
    """Balance 300 and one FAILED debt of 500; returns its reference."""
    lab.load(card, 1_000)
    ref = lab.purchase(card, sam, 1_000, split=500, tx_type=TxType.CANTEEN).result.atc
    lab.load(card, 300)
    lab.fail_debt(card, ref, 500)
    return ref


def load_repaying_case(lab: Lab, card: Card, sam: Sam) -> Case:
    with_failed_debt(lab, card, sam)

    def check(card: Card, answer: bytes) -> None:
        check_load(card, answer)
        assert SignedEvent.parse(answer).event.split == 500
        assert all(s.state == DebtState.FREE for s in purse_of(card).debts())

    return Case(card, load_setup, load_apdu(lab, card, 2_000), check)


def write_back_case(lab: Lab, card: Card, action: WriteBackAction, payload: bytes = b"") -> Case:
    sealed = lab.seal_writeback(card.serial, action, payload)
    raw = Command(CLA_PROPRIETARY, Ins.WRITE_BACK, 0, 0, sealed, 0).to_bytes()
    seq = int.from_bytes(sealed[8:12], "big")

    def check(card: Card, answer: bytes) -> None:
        assert purse_of(card).counters().writeback_seq == seq

    return Case(card, select_setup, raw, check)


def settle_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    ref = lab.purchase(card, sam, 1_000, split=500, tx_type=TxType.CANTEEN).result.atc
    lab.load(card, 300)
    outcome = DebtOutcome(ref, 500).to_bytes()
    return write_back_case(lab, card, WriteBackAction.SETTLE_DEBT, outcome)


def fail_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    ref = lab.purchase(card, sam, 1_000, split=500, tx_type=TxType.CANTEEN).result.atc
    lab.load(card, 300)
    return write_back_case(lab, card, WriteBackAction.FAIL_DEBT, DebtOutcome(ref, 500).to_bytes())


def credit_record_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    record = lab.credit_record(card.serial, version=2, grade=3, per_tap_overdraft=900)
    return write_back_case(
        lab, card, WriteBackAction.CREDIT_RECORD, signed_credit_record(lab.keystore, record)
    )


def block_case(lab: Lab, card: Card, sam: Sam) -> Case:
    lab.load(card, 1_000)
    return write_back_case(lab, card, WriteBackAction.BLOCK)


CASES: dict[str, Callable[[Lab, Card, Sam], Case]] = {
    "debit": debit_case,
    "split debit": split_debit_case,
    "credit (load)": load_case,
    "credit repaying a failed debt": load_repaying_case,
    "write-back settle": settle_case,
    "write-back fail": fail_case,
    "write-back credit record": credit_record_case,
    "write-back block": block_case,
    "cancel": cancel_case,
    "cancel of a split debit": cancel_split_case,
    "online authorise": online_case,
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_power_cut_at_any_write_leaves_the_purse_before_or_after_the_command(
    lab: Lab, card: Card, sam: Sam, name: str
) -> None:
    case = CASES[name](lab, card, sam)
    image = case.base.eeprom.to_image()
    before = case.base.eeprom.snapshot()

    # the uncut run: how many persistent writes, and what the card looks like after
    uncut = copy_of(image)
    case.setup(uncut)
    start = uncut.eeprom.writes
    answer = send(uncut, case.apdu)
    assert answer.sw == SW.OK, f"{answer.sw:04X}"
    writes = uncut.eeprom.writes - start
    after = uncut.eeprom.snapshot()
    assert writes > 0 and after != before

    outcomes = []
    for i in range(writes):
        torn = copy_of(image)
        case.setup(torn)
        torn.eeprom.cut_at = torn.eeprom.writes + i
        with pytest.raises(PowerLoss):
            torn.transmit(case.apdu)
        torn.power_up()
        state = torn.eeprom.snapshot()
        if state == before:
            outcomes.append("before")
            retry = copy_of(torn.eeprom.to_image())
            case.setup(retry)
            assert send(retry, case.apdu).sw == SW.OK
            assert retry.eeprom.snapshot() == after
            purchase_works(lab, torn, sam)
        else:
            assert state == after, f"cut at write {i} of {writes} left a mixed state"
            outcomes.append("after")
            case.check_after(torn, answer.data)
    assert set(outcomes) == {"before", "after"}, outcomes


def test_a_cut_beyond_the_commands_last_write_does_not_fire(lab: Lab, card: Card, sam: Sam) -> None:
    case = debit_case(lab, card, sam)
    image = case.base.eeprom.to_image()
    probe = copy_of(image)
    case.setup(probe)
    start = probe.eeprom.writes
    assert send(probe, case.apdu).sw == SW.OK
    writes = probe.eeprom.writes - start
    whole = copy_of(image)
    case.setup(whole)
    whole.eeprom.cut_at = whole.eeprom.writes + writes
    assert send(whole, case.apdu).sw == SW.OK
    assert whole.eeprom.snapshot() == probe.eeprom.snapshot()


def test_a_torn_debit_is_learned_through_the_transaction_proof(
    lab: Lab, card: Card, sam: Sam
) -> None:
    # a terminal that lost the DEBIT answer asks the card for the ATC it expected
    case = debit_case(lab, card, sam)
    image = case.base.eeprom.to_image()
    torn = copy_of(image)
    case.setup(torn)
    torn.eeprom.cut_at = torn.eeprom.writes + 5  # the last write of the commit
    with pytest.raises(PowerLoss):
        torn.transmit(case.apdu)
    torn.power_up()
    proof = purse_of(torn).transaction_proof(1)
    assert (proof.event.amount, proof.event.balance_after) == (1_000, 4_000)
