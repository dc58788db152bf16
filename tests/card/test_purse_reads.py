"""Purse reads: card data, balance and counters, certificate, credit record, debts, log."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import FREE_SLOT, DebtSlot
from tallypurse.core.money import currency
from tallypurse.core.protocol import (
    CLA_ISO,
    CLA_PROPRIETARY,
    DATA_CREDIT_RECORD,
    FLAG_HAS_CREDIT,
    FLAG_PERSONALISED,
    CertRole,
    DebtState,
    EventKind,
    Ins,
    TxType,
)
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.personalise import PursePolicy
from tallypurse.lab import Lab
from tallypurse.sam import Sam


def apdu(cla: int, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"") -> bytes:
    return Command(cla, ins, p1, p2, data, 0).to_bytes()


def assert_refused(card: Card, raw: bytes, sw: int) -> None:
    """The card answers ``sw`` with no data and its memory is exactly as before."""
    before = card.eeprom.snapshot()
    resp = Response.parse(card.transmit(raw))
    assert (resp.sw, resp.data) == (sw, b""), f"{resp.sw:04X}"
    assert card.eeprom.snapshot() == before


def selected(card: Card) -> PurseClient:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse


def test_card_data_reports_what_personalisation_wrote(card: Card) -> None:
    data = selected(card).card_data()
    policy = PursePolicy.default()
    assert data.card_id == card.serial
    assert data.currency == currency("EUR").numeric
    assert (data.cap, data.offline_limit) == (policy.cap, policy.offline_limit)
    assert (data.cancel_window, data.log_size, data.debt_slots) == (
        policy.cancel_window,
        policy.log_size,
        4,
    )
    assert data.flags == FLAG_PERSONALISED | FLAG_HAS_CREDIT
    assert data.app_key_version >= 1


def test_select_reports_card_id_currency_and_flags(card: Card) -> None:
    sel = PurseClient(ApduClient(card)).select()
    assert (sel.card_id, sel.currency) == (card.serial, 978)
    assert sel.flags == FLAG_PERSONALISED | FLAG_HAS_CREDIT


def test_a_fresh_purse_has_zero_balance_and_counters(card: Card) -> None:
    c = selected(card).counters()
    assert (c.balance, c.atc, c.load_counter, c.online_counter, c.writeback_seq) == (0,) * 5


def test_balance_and_counters_follow_loads_and_debits(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 5_000)
    lab.purchase(card, sam, 1_200)
    c = selected(card).counters()
    assert (c.balance, c.atc, c.load_counter) == (3_800, 1, 1)


def test_the_card_certificate_verifies_against_the_lab_roots(lab: Lab, card: Card) -> None:
    raw = selected(card).certificate()
    c = cert.verify(raw, lab.roots(), role=CertRole.CARD, at=lab.now, holder=card.serial)
    assert c.holder == card.serial


def test_the_certified_key_verifies_the_card_signed_log(lab: Lab, card: Card) -> None:
    event = lab.load(card, 700)
    purse = selected(card)
    key = cert.parse(purse.certificate()).public_key
    assert event.verify(key)
    assert purse.read_record(1) == event


def test_the_credit_record_verifies_with_the_host_list_key(lab: Lab, card: Card) -> None:
    signed = selected(card).credit_record()
    assert signed.verify(lab.host_list_key())
    assert signed.record == lab.credit_record(card.serial)


def test_a_purse_without_credit_record_answers_6a88(make_card: Callable[..., Card]) -> None:
    card = make_card(credit=False)
    selected(card)
    assert_refused(
        card,
        apdu(CLA_PROPRIETARY, Ins.GET_DATA, DATA_CREDIT_RECORD >> 8, DATA_CREDIT_RECORD & 0xFF),
        SW.REF_DATA_NOT_FOUND,
    )


def test_a_fresh_purse_has_four_free_debt_slots(card: Card) -> None:
    assert selected(card).debts() == [FREE_SLOT] * 4


def test_debts_show_a_pending_split_debt(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 300)
    tap = lab.purchase(card, sam, 300, split=450, tx_type=TxType.CANTEEN)
    debts = selected(card).debts()
    assert debts[0] == DebtSlot(DebtState.PENDING, tap.result.atc, 450)
    assert debts[1:] == [FREE_SLOT] * 3


def test_read_record_returns_the_log_most_recent_first(lab: Lab, card: Card, sam: Sam) -> None:
    first = lab.load(card, 5_000)
    tap = lab.purchase(card, sam, 250)
    purse = selected(card)
    log = purse.log()
    assert [r.event.kind for r in log] == [EventKind.DEBIT, EventKind.LOAD]
    assert log[0].event.atc == tap.result.atc and log[0].tac == tap.result.tac
    assert log[1] == first
    assert purse.read_record(1) == log[0]


def test_the_log_wraps_after_log_size_records(lab: Lab, make_card: Callable[..., Card]) -> None:
    card = make_card(policy=PursePolicy(currency("EUR"), log_size=10))
    events = [lab.load(card, 10 + n) for n in range(13)]
    purse = selected(card)
    log = purse.log()
    assert len(log) == 10
    assert log == events[::-1][:10]
    assert [r.event.load_counter for r in log] == list(range(13, 3, -1))
    assert_refused(card, apdu(CLA_ISO, Ins.READ_RECORD, 11, 0x04), SW.RECORD_NOT_FOUND)


def test_read_record_of_an_empty_log_answers_6a83(card: Card) -> None:
    selected(card)
    assert_refused(card, apdu(CLA_ISO, Ins.READ_RECORD, 1, 0x04), SW.RECORD_NOT_FOUND)


def test_the_transaction_proof_of_a_debit_is_its_log_record(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 100)
    lab.purchase(card, sam, 200)
    proof = selected(card).transaction_proof(tap.result.atc)
    assert proof == tap.event


@pytest.mark.parametrize(
    ("what", "raw", "sw"),
    [
        ("unknown data tag", apdu(CLA_PROPRIETARY, Ins.GET_DATA, 0x01, 0x77), 0x6A88),
        ("get data with data", apdu(CLA_PROPRIETARY, Ins.GET_DATA, 1, 2, b"\x00"), 0x6700),
        ("read record p2 not 04", apdu(CLA_ISO, Ins.READ_RECORD, 1, 0x0C), 0x6A86),
        ("read record zero", apdu(CLA_ISO, Ins.READ_RECORD, 0, 0x04), 0x6A86),
        ("read record with data", apdu(CLA_ISO, Ins.READ_RECORD, 1, 4, b"\x01"), 0x6A86),
        ("read record proprietary", apdu(CLA_PROPRIETARY, Ins.READ_RECORD, 1, 4), 0x6D00),
        ("proof short", apdu(CLA_PROPRIETARY, Ins.GET_TRANSACTION_PROOF, 0, 0, b"\x01"), 0x6700),
        ("proof p1", apdu(CLA_PROPRIETARY, Ins.GET_TRANSACTION_PROOF, 1, 0, bytes(4)), 0x6A86),
        (
            "proof unknown atc",
            apdu(CLA_PROPRIETARY, Ins.GET_TRANSACTION_PROOF, 0, 0, b"\0\0\0\7"),
            0x6A83,
        ),
        ("unknown instruction", apdu(CLA_PROPRIETARY, 0x10), 0x6D00),
        ("unknown class", apdu(0x90, Ins.GET_DATA, 1, 2), 0x6E00),
    ],
)
def test_malformed_reads_are_refused_and_change_nothing(
    lab: Lab, card: Card, what: str, raw: bytes, sw: int
) -> None:
    lab.load(card, 100)
    selected(card)
    assert_refused(card, raw, sw)


def test_the_proof_of_a_load_is_not_a_transaction_proof(lab: Lab, card: Card) -> None:
    lab.load(card, 100)
    selected(card)
    assert_refused(
        card,
        apdu(CLA_PROPRIETARY, Ins.GET_TRANSACTION_PROOF, 0, 0, (0).to_bytes(4, "big")),
        SW.RECORD_NOT_FOUND,
    )
