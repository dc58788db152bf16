"""Split DEBIT: the purse pays what it holds, the card records the rest as a debt."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import FREE_SLOT, DebitOrder, DebtSlot
from tallypurse.core.protocol import CLA_PROPRIETARY, DebtState, EventKind, Ins, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import YEAR, Lab
from tallypurse.sam import Sam


def assert_refused(card: Card, raw: bytes, sw: int) -> None:
    """The card answers ``sw`` with no data and its memory is exactly as before."""
    before = card.eeprom.snapshot()
    resp = Response.parse(card.transmit(raw))
    assert (resp.sw, resp.data) == (sw, b""), f"{resp.sw:04X}"
    assert card.eeprom.snapshot() == before


def split_order(
    lab: Lab,
    card: Card,
    sam: Sam,
    amount: int,
    split: int,
    tx_type: int = TxType.CANTEEN,
    time: int | None = None,
) -> bytes:
    """SELECT + INITIALIZE PURCHASE, then the signed DEBIT APDU (not sent)."""
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
        time=time or lab.now,
        card_challenge=session.challenge,
        terminal_challenge=os.urandom(8),
    )
    data = order.to_bytes() + sam.sign_debit_order(order)
    return Command(CLA_PROPRIETARY, Ins.DEBIT, 0, 0, data, 0).to_bytes()


def debts(card: Card) -> list[DebtSlot]:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse.debts()


def test_a_split_debit_empties_the_purse_and_records_the_rest_as_a_pending_debt(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 1_000, split=1_500, tx_type=TxType.CANTEEN)
    assert (tap.result.atc, tap.result.balance_after, tap.result.debt_slot) == (1, 0, 0)
    assert debts(card) == [DebtSlot(DebtState.PENDING, 1, 1_500), FREE_SLOT, FREE_SLOT, FREE_SLOT]
    purse = PurseClient(ApduClient(card))
    purse.select()
    proof = purse.transaction_proof(1)
    assert proof.tac == tap.result.tac
    assert proof.verify(cert.parse(purse.certificate()).public_key)
    e = proof.event
    assert (e.kind, e.amount, e.split, e.debt_slot, e.tx_type) == (
        EventKind.DEBIT,
        1_000,
        1_500,
        0,
        TxType.CANTEEN,
    )


def test_a_split_debit_on_an_empty_purse_is_all_debt(lab: Lab, card: Card, sam: Sam) -> None:
    tap = lab.purchase(card, sam, 0, split=800, tx_type=TxType.TRANSIT)
    assert (tap.result.balance_after, tap.result.debt_slot) == (0, 0)
    assert debts(card)[0] == DebtSlot(DebtState.PENDING, tap.result.atc, 800)


def test_split_debts_take_the_next_free_slot_with_the_new_atc_as_reference(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 100)
    lab.purchase(card, sam, 40)
    refs = [
        lab.purchase(card, sam, 60 if n == 0 else 0, split=500, tx_type=TxType.CANTEEN).result
        for n in range(3)
    ]
    assert [r.debt_slot for r in refs] == [0, 1, 2]
    assert [(s.state, s.ref, s.amount) for s in debts(card)] == [
        (DebtState.PENDING, 2, 500),
        (DebtState.PENDING, 3, 500),
        (DebtState.PENDING, 4, 500),
        (DebtState.FREE, 0, 0),
    ]


def test_a_split_debit_reaches_exactly_the_per_tap_overdraft(
    lab: Lab, card: Card, sam: Sam
) -> None:
    assert lab.purchase(card, sam, 0, split=2_000, tx_type=TxType.CANTEEN).result.debt_slot == 0


def test_a_split_debit_of_a_type_not_allowed_on_credit_is_refused(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 100)
    raw = split_order(lab, card, sam, 100, 500, tx_type=TxType.RETAIL)
    assert_refused(card, raw, SW.CREDIT_NOT_ALLOWED)


def test_a_split_debit_of_a_type_beyond_the_mask_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    assert_refused(card, split_order(lab, card, sam, 0, 500, tx_type=33), SW.CREDIT_NOT_ALLOWED)


def test_a_split_debit_over_the_per_tap_overdraft_is_refused(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 100)
    assert_refused(card, split_order(lab, card, sam, 100, 2_001), SW.CREDIT_NOT_ALLOWED)


def test_a_split_debit_over_the_maximum_outstanding_debt_is_refused(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.purchase(card, sam, 0, split=2_000, tx_type=TxType.CANTEEN)
    lab.purchase(card, sam, 0, split=2_000, tx_type=TxType.CANTEEN)
    assert_refused(card, split_order(lab, card, sam, 0, 1_001), SW.CREDIT_NOT_ALLOWED)
    assert lab.purchase(card, sam, 0, split=1_000, tx_type=TxType.CANTEEN).result.debt_slot == 2


def test_a_split_debit_with_no_free_debt_slot_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    for _ in range(4):
        lab.purchase(card, sam, 0, split=1_000, tx_type=TxType.CANTEEN)
    assert_refused(card, split_order(lab, card, sam, 0, 1_000), SW.NO_FREE_DEBT_SLOT)


def test_the_credit_records_slot_limit_is_enforced(lab: Lab, card: Card, sam: Sam) -> None:
    lab.new_credit_record(card, lab.credit_record(card.serial, version=2, max_slots=1))
    lab.purchase(card, sam, 0, split=100, tx_type=TxType.CANTEEN)
    assert_refused(card, split_order(lab, card, sam, 0, 100), SW.NO_FREE_DEBT_SLOT)


def test_a_split_debit_while_a_failed_debt_is_outstanding_is_refused(
    lab: Lab, card: Card, sam: Sam
) -> None:
    tap = lab.purchase(card, sam, 0, split=300, tx_type=TxType.CANTEEN)
    lab.fail_debt(card, tap.result.atc, 300)
    assert_refused(card, split_order(lab, card, sam, 0, 300), SW.CREDIT_NOT_ALLOWED)


def test_a_split_debit_without_a_credit_record_is_refused(
    lab: Lab, make_card: Callable[..., Card], sam: Sam
) -> None:
    card = make_card(credit=False)
    lab.load(card, 100)
    assert_refused(card, split_order(lab, card, sam, 100, 300), SW.CREDIT_NOT_ALLOWED)


@pytest.mark.parametrize("amount", [0, 999, 1])
def test_a_split_debit_whose_purse_part_is_not_the_balance_is_refused(
    lab: Lab, card: Card, sam: Sam, amount: int
) -> None:
    lab.load(card, 1_000)
    assert_refused(card, split_order(lab, card, sam, amount, 300), SW.WRONG_DATA)


def test_a_split_debit_after_the_credit_record_expired_is_refused(
    lab: Lab, card: Card, sam: Sam
) -> None:
    raw = split_order(lab, card, sam, 0, 300, time=lab.now + YEAR + 1)
    assert_refused(card, raw, SW.CREDIT_NOT_ALLOWED)


def test_a_split_debit_with_a_grade_zero_credit_record_is_refused(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.new_credit_record(card, lab.credit_record(card.serial, version=2, grade=0))
    assert_refused(card, split_order(lab, card, sam, 0, 300), SW.CREDIT_NOT_ALLOWED)


def test_a_settled_debt_frees_its_slot_for_a_new_split(lab: Lab, card: Card, sam: Sam) -> None:
    for _ in range(4):
        lab.purchase(card, sam, 0, split=1_000, tx_type=TxType.CANTEEN)
    lab.settle_debt(card, 3, 1_000)
    assert lab.purchase(card, sam, 0, split=1_000, tx_type=TxType.CANTEEN).result.debt_slot == 2
