"""CANCEL LAST DEBIT: the terminal that took a debit may undo it within the window."""

from __future__ import annotations

import os
from pathlib import Path

from tallypurse.card.card import Card
from tallypurse.core import cert
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import FREE_SLOT, CancelOrder, DebitOrder
from tallypurse.core.protocol import CLA_PROPRIETARY, DebtState, EventKind, Ins, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab, Tap
from tallypurse.sam import Sam


def assert_refused(card: Card, raw: bytes, sw: int) -> None:
    """The card answers ``sw`` with no data and its memory is exactly as before."""
    before = card.eeprom.snapshot()
    resp = Response.parse(card.transmit(raw))
    assert (resp.sw, resp.data) == (sw, b""), f"{resp.sw:04X}"
    assert card.eeprom.snapshot() == before


def cancel_apdu(
    card: Card,
    sam: Sam,
    tap: Tap,
    *,
    time: int,
    layout: type[DebitOrder] = CancelOrder,
    amount: int | None = None,
) -> bytes:
    """SELECT + INITIALIZE PURCHASE, then the signed CANCEL APDU for ``tap`` (not sent)."""
    purse = PurseClient(ApduClient(card))
    purse.select()
    session = purse.initialize_purchase(sam.certificate)
    order = layout(
        card_id=session.card_id,
        atc=session.atc,
        amount=tap.order.amount if amount is None else amount,
        split=tap.order.split,
        currency=session.currency,
        tx_type=tap.order.tx_type,
        terminal_id=sam.terminal_id,
        terminal_seq=sam.next_sequence(),
        time=time,
        card_challenge=session.challenge,
        terminal_challenge=os.urandom(8),
    )
    data = order.to_bytes() + sam.sign_debit_order(order)
    return Command(CLA_PROPRIETARY, Ins.CANCEL_LAST_DEBIT, 0, 0, data, 0).to_bytes()


def purse_of(card: Card) -> PurseClient:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse


def test_the_same_terminal_cancels_its_debit_within_the_window(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    result = lab.cancel_last(card, sam, tap, time=lab.now + 120)
    assert (result.atc, result.balance_after) == (2, 1_000)
    purse = purse_of(card)
    c = purse.counters()
    assert (c.balance, c.atc) == (1_000, 2)
    proof = purse.transaction_proof(2)
    assert proof.tac == result.tac
    assert proof.verify(cert.parse(purse.certificate()).public_key)
    e = proof.event
    assert (e.kind, e.amount, e.balance_before, e.balance_after, e.terminal_id) == (
        EventKind.CANCEL,
        400,
        600,
        1_000,
        sam.terminal_id,
    )


def test_cancelling_a_split_debit_frees_its_pending_debt_slot(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 300)
    tap = lab.purchase(card, sam, 300, split=700, tx_type=TxType.CANTEEN)
    assert purse_of(card).debts()[0].state == DebtState.PENDING
    result = lab.cancel_last(card, sam, tap)
    assert (result.atc, result.balance_after) == (2, 300)
    purse = purse_of(card)
    assert purse.debts() == [FREE_SLOT] * 4
    assert purse.read_record(1).event.debt_slot == 0


def test_a_cancel_by_another_terminal_is_refused(
    lab: Lab, card: Card, sam: Sam, tmp_path: Path
) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    other = lab.new_sam(tmp_path / "other.json", b"TERM0002")
    try:
        raw = cancel_apdu(card, other, tap, time=lab.now)
        assert_refused(card, raw, SW.CONDITIONS_NOT_SATISFIED)
    finally:
        other.close()


def test_a_cancel_after_the_window_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    window = purse_of(card).card_data().cancel_window
    raw = cancel_apdu(card, sam, tap, time=lab.now + window + 1)
    assert_refused(card, raw, SW.CONDITIONS_NOT_SATISFIED)


def test_a_cancel_dated_before_the_debit_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    assert_refused(card, cancel_apdu(card, sam, tap, time=lab.now - 1), SW.CONDITIONS_NOT_SATISFIED)


def test_a_cancel_when_the_last_event_is_a_load_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    lab.load(card, 10)
    assert_refused(card, cancel_apdu(card, sam, tap, time=lab.now), SW.CONDITIONS_NOT_SATISFIED)


def test_a_cancel_for_another_amount_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    assert_refused(
        card, cancel_apdu(card, sam, tap, time=lab.now, amount=401), SW.CONDITIONS_NOT_SATISFIED
    )


def test_a_cancel_after_the_debt_was_settled_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 300)
    tap = lab.purchase(card, sam, 300, split=700, tx_type=TxType.CANTEEN)
    lab.settle_debt(card, tap.result.atc, 700)
    assert_refused(card, cancel_apdu(card, sam, tap, time=lab.now), SW.CONDITIONS_NOT_SATISFIED)


def test_a_cancel_after_the_debt_failed_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    tap = lab.purchase(card, sam, 0, split=700, tx_type=TxType.CANTEEN)
    lab.fail_debt(card, tap.result.atc, 700)
    assert_refused(card, cancel_apdu(card, sam, tap, time=lab.now), SW.CONDITIONS_NOT_SATISFIED)


def test_a_debit_order_is_no_cancel_order(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    raw = cancel_apdu(card, sam, tap, time=lab.now, layout=DebitOrder)
    assert_refused(card, raw, SW.INVALID_SIGNATURE)


def test_a_cancel_order_is_no_debit_order(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    raw = bytearray(cancel_apdu(card, sam, tap, time=lab.now))
    raw[1] = Ins.DEBIT
    assert_refused(card, bytes(raw), SW.INVALID_SIGNATURE)


def test_a_cancel_sent_twice_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 400)
    raw = cancel_apdu(card, sam, tap, time=lab.now)
    assert Response.parse(card.transmit(raw)).sw == SW.OK
    assert_refused(card, raw, SW.REPLAY)
    assert_refused(card, cancel_apdu(card, sam, tap, time=lab.now), SW.CONDITIONS_NOT_SATISFIED)
