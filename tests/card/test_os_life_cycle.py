"""The card life cycle: GlobalPlatform states, legal transitions, what each state allows."""

from __future__ import annotations

import pytest

from tallypurse.card.card import Card
from tallypurse.core import sw as SW
from tallypurse.core import tlv
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import CardError
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    ISD_AID,
    OPERATOR_SD_AID,
    PURSE_AID,
    PURSE_PACKAGE_AID,
    CardLifeCycle,
    Ins,
)
from tallypurse.core.scp03 import TRANSPORT_KEYS
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import card_status, open_domain
from tallypurse.host.tsm.channel import SecureChannel
from tallypurse.lab import Lab
from tallypurse.sam import Sam

L = CardLifeCycle


def send(card: Card, cmd: Command) -> Response:
    return Response.parse(card.transmit(cmd.to_bytes()))


def select(card: Card, aid: bytes) -> int:
    return send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, aid, 0)).sw


def card_life(card: Card) -> CardLifeCycle:
    assert select(card, ISD_AID) == SW.OK
    r = send(card, Command(CLA_PROPRIETARY, Ins.GET_DATA, 0x9F, 0x7F, b"", 0))
    assert r.sw == SW.OK
    value = tlv.decode_one(r.data, 0x9F7F)
    assert value[:8] == card.serial
    return CardLifeCycle(value[8])


def set_life(channel: SecureChannel, state: int) -> int:
    """SET STATUS (card life cycle) on an open channel; the status word."""
    try:
        channel.call(Command(CLA_PROPRIETARY, Ins.SET_STATUS, 0x80, state))
    except CardError as exc:
        return exc.sw
    return SW.OK


def blank(serial: bytes = b"LIFECYC1") -> tuple[Card, SecureChannel]:
    card = Card.manufacture(serial)
    return card, SecureChannel.open(ApduClient(card), ISD_AID, TRANSPORT_KEYS)


def test_a_new_card_is_op_ready() -> None:
    card, _ = blank()
    assert card_life(card) == L.OP_READY


def test_the_card_goes_op_ready_initialized_secured_locked_secured_terminated() -> None:
    card, isd = blank()
    for state in (L.INITIALIZED, L.SECURED, L.CARD_LOCKED, L.SECURED, L.TERMINATED):
        assert set_life(isd, state) == SW.OK, state.name
        assert card_life(card) == state
        if state != L.TERMINATED:
            isd = SecureChannel.open(ApduClient(card), ISD_AID, TRANSPORT_KEYS)


def test_a_blank_card_may_go_straight_to_secured() -> None:
    card, isd = blank()
    assert set_life(isd, L.SECURED) == SW.OK
    assert card_life(card) == L.SECURED


def _reach(path: tuple[CardLifeCycle, ...]) -> tuple[Card, SecureChannel]:
    card, isd = blank()
    for state in path:
        assert set_life(isd, state) == SW.OK
    return card, isd


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ((), L.OP_READY),
        ((), L.CARD_LOCKED),
        ((L.INITIALIZED,), L.OP_READY),
        ((L.INITIALIZED,), L.INITIALIZED),
        ((L.INITIALIZED,), L.CARD_LOCKED),
        ((L.SECURED,), L.OP_READY),
        ((L.SECURED,), L.INITIALIZED),
        ((L.SECURED,), L.SECURED),
        ((L.SECURED, L.CARD_LOCKED), L.CARD_LOCKED),
        ((L.SECURED, L.CARD_LOCKED), L.INITIALIZED),
        ((L.SECURED, L.CARD_LOCKED), L.OP_READY),
    ],
    ids=lambda v: "-".join(s.name for s in v) if isinstance(v, tuple) else v.name,
)
def test_an_illegal_card_life_cycle_transition_is_answered_6985(
    path: tuple[CardLifeCycle, ...], target: CardLifeCycle
) -> None:
    card, isd = _reach(path)
    before = card.eeprom.snapshot()
    assert set_life(isd, target) == SW.CONDITIONS_NOT_SATISFIED
    assert card.eeprom.snapshot() == before
    assert card_life(card) == (path[-1] if path else L.OP_READY)


@pytest.mark.parametrize("p2", [0x00, 0x03, 0x0E, 0x80, 0xFE])
def test_a_card_life_cycle_value_that_is_no_state_is_answered_6a86(p2: int) -> None:
    card, isd = blank()
    assert set_life(isd, p2) == SW.INCORRECT_P1P2
    assert card_life(card) == L.OP_READY


def test_nothing_leaves_terminated() -> None:
    card, _ = _reach((L.TERMINATED,))
    assert select(card, ISD_AID) == SW.OK
    r = send(card, Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, 0, 0, bytes(8), 0))
    assert r.sw == SW.CONDITIONS_NOT_SATISFIED
    assert card_life(card) == L.TERMINATED


# --- on a personalised card ------------------------------------------------------------------


def isd_channel(card: Card, lab: Lab) -> SecureChannel:
    return open_domain(ApduClient(card), lab.keystore, card.serial, ISD_AID)


def test_a_personalised_card_is_secured(card: Card, lab: Lab) -> None:
    assert card_life(card) == L.SECURED
    isd = [s for s in card_status(card, lab.keystore, card.serial) if s.aid == ISD_AID]
    assert isd[0].life == L.SECURED


def test_in_card_locked_only_the_isd_is_selectable(card: Card, lab: Lab, sam: Sam) -> None:
    lab.load(card, 1_000)
    assert set_life(isd_channel(card, lab), L.CARD_LOCKED) == SW.OK
    for aid in (PURSE_AID, OPERATOR_SD_AID, PURSE_PACKAGE_AID, OPERATOR_SD_AID[:5]):
        assert select(card, aid) == SW.FILE_NOT_FOUND, aid.hex()
    assert select(card, ISD_AID) == SW.OK
    assert select(card, ISD_AID[:5]) == SW.OK
    assert card_life(card) == L.CARD_LOCKED
    # the ISD still works in a channel, and can unlock the card
    assert card_status(card, lab.keystore, card.serial)[0].life == L.CARD_LOCKED
    assert set_life(isd_channel(card, lab), L.SECURED) == SW.OK
    assert select(card, PURSE_AID) == SW.OK
    lab.purchase(card, sam, 250)


def test_in_terminated_only_select_isd_and_get_data_work(card: Card, lab: Lab) -> None:
    assert set_life(isd_channel(card, lab), L.TERMINATED) == SW.OK
    assert select(card, PURSE_AID) == SW.FILE_NOT_FOUND
    assert select(card, OPERATOR_SD_AID) == SW.FILE_NOT_FOUND
    assert select(card, ISD_AID) == SW.OK
    for p1p2 in (0x0045, 0x00E0, 0x9F7F):
        r = send(card, Command(CLA_PROPRIETARY, Ins.GET_DATA, p1p2 >> 8, p1p2 & 0xFF, b"", 0))
        assert r.sw == SW.OK
        r = send(card, Command(0x00, Ins.GET_DATA, p1p2 >> 8, p1p2 & 0xFF, b"", 0))
        assert r.sw == SW.OK
    assert card_life(card) == L.TERMINATED
    refused = [
        Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, 0, 0, bytes(8), 0),
        Command(0x84, Ins.EXTERNAL_AUTHENTICATE, 0x33, 0, bytes(16)),
        Command(0x84, Ins.GET_STATUS, 0x80, 0x02, bytes(10), 0),
        Command(0x84, Ins.SET_STATUS, 0x80, L.SECURED, bytes(8)),
        Command(0x84, Ins.DELETE, 0, 0, bytes(10), 0),
        Command(0x84, Ins.PUT_KEY, 1, 0x81, bytes(78), 0),
        Command(CLA_PROPRIETARY, Ins.GET_STATUS, 0x80, 0x02, b"\x4f\x00", 0),
    ]
    before = card.eeprom.snapshot()
    for cmd in refused:
        assert send(card, cmd).sw == SW.CONDITIONS_NOT_SATISFIED, cmd
    assert card.eeprom.snapshot() == before
    with pytest.raises(CardError) as err:
        isd_channel(card, lab)
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED


@pytest.mark.parametrize("target", list(CardLifeCycle))
def test_only_the_isd_can_change_the_card_life_cycle(
    card: Card, lab: Lab, target: CardLifeCycle
) -> None:
    sd = open_domain(ApduClient(card), lab.keystore, card.serial, OPERATOR_SD_AID)
    before = card.eeprom.snapshot()
    assert set_life(sd, target) == SW.SECURITY_NOT_SATISFIED
    assert card.eeprom.snapshot() == before
    assert card_life(card) == L.SECURED


def test_a_locked_card_survives_a_power_cycle(card: Card, lab: Lab) -> None:
    assert set_life(isd_channel(card, lab), L.CARD_LOCKED) == SW.OK
    card.power_off()
    card.power_up()
    assert select(card, PURSE_AID) == SW.FILE_NOT_FOUND
    assert card_life(card) == L.CARD_LOCKED
