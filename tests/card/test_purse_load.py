"""INITIALIZE LOAD and CREDIT: host-signed loads that repay failed debts first."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import FREE_SLOT, DebtSlot, LoadAuthorisation
from tallypurse.core.money import currency
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    FLAG_FAILED_DEBT,
    DebtState,
    EventKind,
    Ins,
    TxType,
    WriteBackAction,
)
from tallypurse.core.purse_client import LoadSession, PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.personalise import PursePolicy
from tallypurse.keystore.base import HOST_LOAD
from tallypurse.lab import Lab
from tallypurse.sam import Sam


def assert_refused(card: Card, raw: bytes, sw: int) -> None:
    """The card answers ``sw`` with no data and its memory is exactly as before."""
    before = card.eeprom.snapshot()
    resp = Response.parse(card.transmit(raw))
    assert (resp.sw, resp.data) == (sw, b""), f"{resp.sw:04X}"
    assert card.eeprom.snapshot() == before


def begin_load(card: Card) -> tuple[PurseClient, LoadSession]:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse, purse.initialize_load()


def authorisation(
    lab: Lab, session: LoadSession, amount: int, **changes: object
) -> LoadAuthorisation:
    auth = LoadAuthorisation(
        session.card_id,
        session.load_counter,
        amount,
        session.currency,
        session.challenge,
        os.urandom(8),
        lab.now,
    )
    return replace(auth, **changes)  # type: ignore[arg-type]


def credit_apdu(auth: LoadAuthorisation, signature: bytes, load_cert: bytes) -> bytes:
    data = auth.to_bytes() + signature + load_cert
    return Command(CLA_PROPRIETARY, Ins.CREDIT, 0, 0, data, 0).to_bytes()


def host_signed(lab: Lab, auth: LoadAuthorisation) -> bytes:
    ref = lab.keystore.current(HOST_LOAD)
    return credit_apdu(
        auth,
        lab.keystore.sign(ref, auth.signed_data()),
        lab.keystore.certificate(ref).encode(),
    )


def failed_debts(lab: Lab, card: Card, sam: Sam, *amounts: int) -> list[int]:
    """Leave FAILED debts of ``amounts`` on an empty purse; returns their references."""
    refs = []
    for amount in amounts:
        refs.append(lab.purchase(card, sam, 0, split=amount, tx_type=TxType.CANTEEN).result.atc)
    for ref, amount in zip(refs, amounts, strict=True):
        lab.fail_debt(card, ref, amount)
    return refs


def test_a_load_credits_the_purse_and_returns_a_card_signed_event(lab: Lab, card: Card) -> None:
    purse, session = begin_load(card)
    assert (session.balance, session.load_counter, session.cap) == (0, 0, 100_000)
    auth = authorisation(lab, session, 2_500)
    ref = lab.keystore.current(HOST_LOAD)
    event = purse.credit(
        auth,
        lab.keystore.sign(ref, auth.signed_data()),
        lab.keystore.certificate(ref).encode(),
    )
    e = event.event
    assert (e.kind, e.amount, e.split, e.balance_before, e.balance_after) == (
        EventKind.LOAD,
        2_500,
        0,
        0,
        2_500,
    )
    assert (e.load_counter, e.atc, e.terminal_challenge) == (1, 0, auth.auth_id)
    assert event.verify(cert.parse(purse.certificate()).public_key)
    c = purse.counters()
    assert (c.balance, c.load_counter, c.atc) == (2_500, 1, 0)
    assert purse.read_record(1) == event


def test_a_load_up_to_the_cap_is_accepted(lab: Lab, card: Card) -> None:
    lab.load(card, 60_000)
    assert lab.load(card, 40_000).event.balance_after == 100_000


def test_a_load_beyond_the_cap_is_refused(lab: Lab, card: Card) -> None:
    lab.load(card, 60_000)
    _, session = begin_load(card)
    assert_refused(card, host_signed(lab, authorisation(lab, session, 40_001)), SW.CAP_EXCEEDED)


def test_the_same_authorisation_replayed_after_a_new_initialize_load_is_refused(
    lab: Lab, card: Card
) -> None:
    _, session = begin_load(card)
    raw = host_signed(lab, authorisation(lab, session, 1_000))
    assert Response.parse(card.transmit(raw)).sw == SW.OK
    begin_load(card)
    assert_refused(card, raw, SW.REPLAY)


def test_the_same_authorisation_sent_twice_in_one_session_is_refused(lab: Lab, card: Card) -> None:
    _, session = begin_load(card)
    raw = host_signed(lab, authorisation(lab, session, 1_000))
    assert Response.parse(card.transmit(raw)).sw == SW.OK
    # the session ends with the load: no second credit without a new INITIALIZE LOAD
    assert_refused(card, raw, SW.CONDITIONS_NOT_SATISFIED)


def test_an_authorisation_for_an_old_challenge_is_refused(lab: Lab, card: Card) -> None:
    _, session = begin_load(card)
    raw = host_signed(lab, authorisation(lab, session, 1_000))
    begin_load(card)
    assert_refused(card, raw, SW.REPLAY)


@pytest.mark.parametrize(
    "changes",
    [{"card_id": b"\x20" * 8}, {"load_counter": 7}],
)
def test_an_authorisation_bound_to_another_card_or_counter_is_refused(
    lab: Lab, card: Card, changes: dict[str, object]
) -> None:
    _, session = begin_load(card)
    assert_refused(card, host_signed(lab, authorisation(lab, session, 1_000, **changes)), SW.REPLAY)


def test_an_authorisation_with_a_wrong_signature_is_refused(lab: Lab, card: Card) -> None:
    _, session = begin_load(card)
    auth = authorisation(lab, session, 1_000)
    ref = lab.keystore.current(HOST_LOAD)
    signature = bytearray(lab.keystore.sign(ref, auth.signed_data()))
    signature[10] ^= 0x40
    raw = credit_apdu(auth, bytes(signature), lab.keystore.certificate(ref).encode())
    assert_refused(card, raw, SW.INVALID_SIGNATURE)


def test_an_authorisation_altered_after_signing_is_refused(lab: Lab, card: Card) -> None:
    _, session = begin_load(card)
    auth = authorisation(lab, session, 1_000)
    ref = lab.keystore.current(HOST_LOAD)
    signature = lab.keystore.sign(ref, auth.signed_data())
    raw = credit_apdu(
        replace(auth, amount=99_000), signature, lab.keystore.certificate(ref).encode()
    )
    assert_refused(card, raw, SW.INVALID_SIGNATURE)


def test_a_card_certificate_is_no_load_certificate(lab: Lab, card: Card) -> None:
    purse, session = begin_load(card)
    auth = authorisation(lab, session, 1_000)
    ref = lab.keystore.current(HOST_LOAD)
    raw = credit_apdu(auth, lab.keystore.sign(ref, auth.signed_data()), purse.certificate())
    assert_refused(card, raw, SW.INVALID_CERTIFICATE)


def test_a_terminal_certificate_is_no_load_certificate(lab: Lab, card: Card, sam: Sam) -> None:
    _, session = begin_load(card)
    auth = authorisation(lab, session, 1_000)
    ref = lab.keystore.current(HOST_LOAD)
    raw = credit_apdu(auth, lab.keystore.sign(ref, auth.signed_data()), sam.certificate)
    assert_refused(card, raw, SW.INVALID_CERTIFICATE)


def test_a_load_certificate_that_is_not_valid_at_the_load_time_is_refused(
    lab: Lab, card: Card
) -> None:
    _, session = begin_load(card)
    assert_refused(
        card, host_signed(lab, authorisation(lab, session, 1_000, time=1)), SW.INVALID_CERTIFICATE
    )


@pytest.mark.parametrize(("amount", "currency"), [(0, 978), (100, 840)])
def test_a_load_of_zero_or_in_another_currency_is_refused(
    lab: Lab, card: Card, amount: int, currency: int
) -> None:
    _, session = begin_load(card)
    auth = authorisation(lab, session, amount, currency=currency)
    assert_refused(card, host_signed(lab, auth), SW.WRONG_DATA)


def test_a_load_on_a_blocked_card_is_refused(lab: Lab, card: Card) -> None:
    lab.write_back(card, WriteBackAction.BLOCK)
    _, session = begin_load(card)
    assert_refused(card, host_signed(lab, authorisation(lab, session, 100)), SW.CARD_BLOCKED)


def test_a_load_after_the_card_expiry_is_refused(lab: Lab, make_card: Callable[..., Card]) -> None:
    card = make_card(policy=PursePolicy(currency("EUR"), validity_years=1))
    purse, _ = begin_load(card)
    expiry = purse.card_data().expiry
    _, session = begin_load(card)
    auth = authorisation(lab, session, 100, time=expiry + 1)
    assert_refused(card, host_signed(lab, auth), SW.CARD_EXPIRED)


def test_credit_without_initialize_load_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    _, session = begin_load(card)
    raw = host_signed(lab, authorisation(lab, session, 100))
    purse = PurseClient(ApduClient(card))
    purse.select()
    assert_refused(card, raw, SW.CONDITIONS_NOT_SATISFIED)
    purse.initialize_purchase(sam.certificate)
    assert_refused(card, raw, SW.CONDITIONS_NOT_SATISFIED)


@pytest.mark.parametrize("keep", [0, 10, 60, 96])
def test_a_credit_too_short_to_hold_a_certificate_is_refused(
    lab: Lab, card: Card, keep: int
) -> None:
    _, session = begin_load(card)
    raw = host_signed(lab, authorisation(lab, session, 100))
    data = Command.parse(raw).data[:keep]
    short = Command(CLA_PROPRIETARY, Ins.CREDIT, 0, 0, data, 0).to_bytes() if data else raw[:4]
    assert_refused(card, short, SW.WRONG_LENGTH)


def test_a_load_repays_a_failed_debt_before_crediting_the_purse(
    lab: Lab, card: Card, sam: Sam
) -> None:
    [ref] = failed_debts(lab, card, sam, 500)
    purse, session = begin_load(card)
    assert session.flags & FLAG_FAILED_DEBT
    assert session.debts[0] == DebtSlot(DebtState.FAILED, ref, 500)
    event = lab.load(card, 2_000)
    assert (event.event.amount, event.event.split, event.event.balance_after) == (
        2_000,
        500,
        1_500,
    )
    purse.select()
    assert purse.debts() == [FREE_SLOT] * 4
    assert purse.counters().balance == 1_500
    assert not purse.card_data().flags & FLAG_FAILED_DEBT


def test_a_small_load_repays_a_failed_debt_in_part(lab: Lab, card: Card, sam: Sam) -> None:
    [ref] = failed_debts(lab, card, sam, 500)
    event = lab.load(card, 300)
    assert (event.event.split, event.event.balance_before, event.event.balance_after) == (
        300,
        0,
        0,
    )
    purse = PurseClient(ApduClient(card))
    purse.select()
    assert purse.debts()[0] == DebtSlot(DebtState.FAILED, ref, 200)
    event = lab.load(card, 1_000)
    assert (event.event.split, event.event.balance_after) == (200, 800)
    assert purse.debts() == [FREE_SLOT] * 4


def test_a_load_repays_several_failed_debts_oldest_slot_first(
    lab: Lab, card: Card, sam: Sam
) -> None:
    first, second = failed_debts(lab, card, sam, 400, 300)
    event = lab.load(card, 500)
    assert (event.event.split, event.event.balance_after) == (500, 0)
    purse = PurseClient(ApduClient(card))
    purse.select()
    assert purse.debts() == [
        FREE_SLOT,
        DebtSlot(DebtState.FAILED, second, 200),
        FREE_SLOT,
        FREE_SLOT,
    ]
    assert first < second


def test_a_load_leaves_pending_debts_alone(lab: Lab, card: Card, sam: Sam) -> None:
    tap = lab.purchase(card, sam, 0, split=500, tx_type=TxType.CANTEEN)
    event = lab.load(card, 1_000)
    assert (event.event.split, event.event.balance_after) == (0, 1_000)
    purse = PurseClient(ApduClient(card))
    purse.select()
    assert purse.debts()[0] == DebtSlot(DebtState.PENDING, tap.result.atc, 500)


def test_a_load_refused_for_the_cap_repays_nothing(lab: Lab, card: Card, sam: Sam) -> None:
    failed_debts(lab, card, sam, 400, 300)
    _, session = begin_load(card)
    auth = authorisation(lab, session, 700 + 100_001)
    assert_refused(card, host_signed(lab, auth), SW.CAP_EXCEEDED)
    assert lab.load(card, 700 + 100_000).event.balance_after == 100_000


def test_a_refused_credit_leaves_the_load_session_open_for_a_corrected_one(
    lab: Lab, card: Card
) -> None:
    _, session = begin_load(card)
    assert_refused(card, host_signed(lab, authorisation(lab, session, 100_001)), SW.CAP_EXCEEDED)
    raw = host_signed(lab, authorisation(lab, session, 100_000))
    assert Response.parse(card.transmit(raw)).sw == SW.OK
