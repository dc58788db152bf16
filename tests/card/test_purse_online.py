"""ONLINE AUTHORISE: the card signs a request to debit its online account."""

from __future__ import annotations

import os
import struct

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert, crypto
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import OnlineRequest
from tallypurse.core.protocol import CLA_PROPRIETARY, CertRole, Ins, TxType, WriteBackAction
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab
from tallypurse.sam import Sam


def assert_refused(card: Card, raw: bytes, sw: int) -> None:
    """The card answers ``sw`` with no data and its memory is exactly as before."""
    before = card.eeprom.snapshot()
    resp = Response.parse(card.transmit(raw))
    assert (resp.sw, resp.data) == (sw, b""), f"{resp.sw:04X}"
    assert card.eeprom.snapshot() == before


def authorise_apdu(
    amount: int, *, currency: int = 978, tx_type: int = 3, time: int, challenge: bytes
) -> bytes:
    data = struct.pack(">IHBI", amount, currency, tx_type, time) + challenge
    return Command(CLA_PROPRIETARY, Ins.ONLINE_AUTHORISE, 0, 0, data, 0).to_bytes()


def begin(card: Card, sam: Sam) -> PurseClient:
    purse = PurseClient(ApduClient(card))
    purse.select()
    purse.initialize_purchase(sam.certificate)
    return purse


def test_online_authorise_signs_the_request_with_the_card_key(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 500)
    purse = begin(card, sam)
    before = purse.counters()
    challenge = os.urandom(16)
    counter, signature = purse.online_authorise(
        amount=25_000, currency=978, tx_type=TxType.RETAIL, time=lab.now, host_challenge=challenge
    )
    assert counter == before.online_counter + 1 == 1
    request = OnlineRequest(
        card_id=card.serial,
        online_counter=counter,
        amount=25_000,
        currency=978,
        tx_type=TxType.RETAIL,
        terminal_id=sam.terminal_id,
        time=lab.now,
        host_challenge=challenge,
    )
    key = cert.verify(
        purse.certificate(), lab.roots(), role=CertRole.CARD, at=lab.now, holder=card.serial
    ).public_key
    assert crypto.verify(key, signature, request.signed_data())
    after = purse.counters()
    assert (after.balance, after.atc, after.load_counter) == (500, 0, 1)
    assert after.online_counter == 1


def test_online_authorise_leaves_the_purse_and_its_log_untouched(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 500)
    purse = begin(card, sam)
    log = purse.log()
    before = card.eeprom.snapshot()
    purse.online_authorise(
        amount=1, currency=978, tx_type=0, time=lab.now, host_challenge=bytes(16)
    )
    after = card.eeprom.snapshot()
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert [k.split(":")[-1] for k in changed] == ["ctr"]
    assert purse.log() == log
    assert purse.counters().balance == 500


def test_online_authorisations_count_up_within_one_session(lab: Lab, card: Card, sam: Sam) -> None:
    purse = begin(card, sam)
    counters = [
        purse.online_authorise(
            amount=100, currency=978, tx_type=0, time=lab.now, host_challenge=os.urandom(16)
        )[0]
        for _ in range(3)
    ]
    assert counters == [1, 2, 3]


def test_online_authorise_without_initialize_purchase_is_refused(lab: Lab, card: Card) -> None:
    PurseClient(ApduClient(card)).select()
    raw = authorise_apdu(100, time=lab.now, challenge=bytes(16))
    assert_refused(card, raw, SW.CONDITIONS_NOT_SATISFIED)


def test_online_authorise_after_initialize_load_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    begin(card, sam).initialize_load()
    raw = authorise_apdu(100, time=lab.now, challenge=bytes(16))
    assert_refused(card, raw, SW.CONDITIONS_NOT_SATISFIED)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(0, 978), (100, 840)],
)
def test_online_authorise_of_zero_or_in_another_currency_is_refused(
    lab: Lab, card: Card, sam: Sam, amount: int, currency: int
) -> None:
    begin(card, sam)
    raw = authorise_apdu(amount, currency=currency, time=lab.now, challenge=bytes(16))
    assert_refused(card, raw, SW.WRONG_DATA)


@pytest.mark.parametrize("length", [15, 17])
def test_online_authorise_with_a_wrong_length_is_refused(
    lab: Lab, card: Card, sam: Sam, length: int
) -> None:
    begin(card, sam)
    raw = authorise_apdu(100, time=lab.now, challenge=bytes(length))
    assert_refused(card, raw, SW.WRONG_LENGTH)


def test_online_authorise_on_a_blocked_card_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.write_back(card, WriteBackAction.BLOCK)
    begin(card, sam)
    raw = authorise_apdu(100, time=lab.now, challenge=bytes(16))
    assert_refused(card, raw, SW.CARD_BLOCKED)


def test_online_authorise_after_the_card_expiry_is_refused(card: Card, sam: Sam) -> None:
    purse = PurseClient(ApduClient(card))
    purse.select()
    session = purse.initialize_purchase(sam.certificate)
    raw = authorise_apdu(100, time=session.expiry + 1, challenge=bytes(16))
    assert_refused(card, raw, SW.CARD_EXPIRED)
