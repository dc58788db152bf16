"""APDU handling of the card OS: cases 1-4, bad lengths, classes, instructions, SELECT."""

from __future__ import annotations

import pytest

from tallypurse.card.card import Card
from tallypurse.core import sw as SW
from tallypurse.core import tlv
from tallypurse.core.apdu import Command, Response
from tallypurse.core.protocol import (
    ISD_AID,
    LOYALTY_AID,
    OPERATOR_SD_AID,
    PURSE_AID,
    PURSE_PACKAGE_AID,
    Ins,
)
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import install_loyalty, install_partner_domain, open_domain
from tallypurse.lab import Lab


def send(card: Card, raw: bytes | str) -> Response:
    return Response.parse(card.transmit(bytes.fromhex(raw) if isinstance(raw, str) else raw))


def select(card: Card, aid: bytes) -> Response:
    return send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, aid, 0).to_bytes())


def fci_aid(data: bytes) -> bytes:
    fci = tlv.decode_one(data, 0x6F)
    return tlv.decode_map(fci)[0x84]


# --- cases 1 to 4, short and extended --------------------------------------------------


@pytest.mark.parametrize(
    "apdu",
    [
        pytest.param("80CA0045", id="case 1"),
        pytest.param("80CA004500", id="case 2 short"),
        pytest.param("80CA0045000000", id="case 2 extended, Le 65536"),
        pytest.param("80CA0045000100", id="case 2 extended, Le 256"),
        pytest.param("80CA004501AA", id="case 3 short"),
        pytest.param("80CA004501AA00", id="case 4 short"),
        pytest.param("80CA0045000001AA", id="case 3 extended"),
        pytest.param("80CA0045000001AA0000", id="case 4 extended"),
    ],
)
def test_every_apdu_case_short_and_extended_is_accepted(card: Card, apdu: str) -> None:
    assert select(card, ISD_AID).sw == SW.OK
    r = send(card, apdu)
    assert r.sw == SW.OK
    assert r.data == tlv.encode(0x45, card.serial)


@pytest.mark.parametrize(
    "template",
    [
        "00A40400{lc:02X}{aid}",
        "00A40400{lc:02X}{aid}00",
        "00A4040000{lc:04X}{aid}",
        "00A4040000{lc:04X}{aid}0000",
    ],
    ids=["case 3 short", "case 4 short", "case 3 extended", "case 4 extended"],
)
def test_select_works_in_short_and_extended_form(card: Card, template: str) -> None:
    r = send(card, template.format(lc=len(PURSE_AID), aid=PURSE_AID.hex()))
    assert r.sw == SW.OK
    assert fci_aid(r.data) == PURSE_AID


def test_extended_command_data_reaches_a_domain_through_the_secure_channel(
    card: Card, lab: Lab
) -> None:
    channel = open_domain(ApduClient(card), lab.keystore, card.serial, ISD_AID)
    # A GET DATA carrying 300 bytes: extended Lc on the wire, still MACed and decrypted.
    wrapped = channel.session.wrap(Command(0x80, Ins.GET_DATA, 0x00, 0x45, bytes(300), 0))
    raw = wrapped.to_bytes()
    assert raw[4] == 0x00 and int.from_bytes(raw[5:7], "big") == len(wrapped.data)
    r = send(card, raw)
    assert r.sw == SW.OK
    assert channel.session.unwrap_response(r.data, r.sw) == tlv.encode(0x45, card.serial)


@pytest.mark.parametrize(
    "apdu",
    [
        pytest.param("", id="empty"),
        pytest.param("00A404", id="shorter than a header"),
        pytest.param("00A4040006F05450", id="Lc larger than the data"),
        pytest.param("00A4040002F05450010001", id="Lc smaller than the data"),
        pytest.param("00A404000000", id="truncated extended length"),
        pytest.param("00A40400000000AA", id="extended Lc of zero"),
        pytest.param("00A40400000006F054", id="extended Lc larger than the data"),
        pytest.param("00A40400000002F05450010001", id="extended Lc smaller than the data"),
    ],
)
def test_a_malformed_length_is_answered_6700(card: Card, apdu: str) -> None:
    assert send(card, apdu).sw == SW.WRONG_LENGTH


def test_a_malformed_length_changes_no_selection(card: Card) -> None:
    assert select(card, PURSE_AID).sw == SW.OK
    assert send(card, "80CA010206AA").sw == SW.WRONG_LENGTH
    assert send(card, "80CA010200").sw == SW.OK


# --- classes and instructions ---------------------------------------------------------------


@pytest.mark.parametrize("cla", [0xFF, 0x01, 0x02, 0x03, 0x83])
def test_cla_ff_and_logical_channels_are_refused_6e00_whatever_is_selected(
    card: Card, cla: int
) -> None:
    assert send(card, bytes([cla, 0xCA, 0x00, 0x45, 0x00])).sw == SW.CLA_NOT_SUPPORTED
    assert select(card, PURSE_AID).sw == SW.OK
    assert send(card, bytes([cla, 0xCA, 0x01, 0x02, 0x00])).sw == SW.CLA_NOT_SUPPORTED


@pytest.mark.parametrize("cla", [0x10, 0x20, 0x40, 0x60, 0xA0, 0xC0])
@pytest.mark.parametrize("aid", [ISD_AID, OPERATOR_SD_AID, PURSE_AID], ids=["isd", "sd", "purse"])
def test_an_unknown_cla_is_answered_6e00_by_every_applet(card: Card, aid: bytes, cla: int) -> None:
    assert select(card, aid).sw == SW.OK
    # GET DATA and INITIALIZE UPDATE exist on every applet with a proper class
    assert send(card, bytes([cla, Ins.GET_DATA, 0x00, 0x45, 0x00])).sw == SW.CLA_NOT_SUPPORTED
    assert send(card, bytes([cla, 0x50, 0x00, 0x00, 0x08]) + bytes(8)).sw == (SW.CLA_NOT_SUPPORTED)


def test_the_loyalty_applet_answers_6e00_to_a_foreign_class(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial)
    assert select(card, LOYALTY_AID).sw == SW.OK
    assert send(card, "00220000" + "00").sw == SW.CLA_NOT_SUPPORTED
    assert send(card, "80220000" + "00").sw == SW.OK


@pytest.mark.parametrize("ins", [0x00, 0x10, 0x7E, 0xEE, 0xFE])
@pytest.mark.parametrize("aid", [ISD_AID, OPERATOR_SD_AID, PURSE_AID], ids=["isd", "sd", "purse"])
def test_an_unknown_instruction_is_answered_6d00(card: Card, aid: bytes, ins: int) -> None:
    assert select(card, aid).sw == SW.OK
    assert send(card, bytes([0x80, ins, 0x00, 0x00])).sw == SW.INS_NOT_SUPPORTED


def test_an_unknown_instruction_inside_a_secure_channel_is_answered_6d00(
    card: Card, lab: Lab
) -> None:
    channel = open_domain(ApduClient(card), lab.keystore, card.serial, ISD_AID)
    r = send(card, channel.session.wrap(Command(0x80, 0xEE, 0, 0, b"", 0)).to_bytes())
    assert r.sw == SW.INS_NOT_SUPPORTED
    # the channel survives an error answered in clear: MAC chaining goes on
    assert channel.get_status(0x80)


def test_an_unknown_loyalty_instruction_is_answered_6d00(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial)
    assert select(card, LOYALTY_AID).sw == SW.OK
    assert send(card, "80EE0000").sw == SW.INS_NOT_SUPPORTED


# --- SELECT ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aid",
    [
        bytes.fromhex("F05450FFFF01"),
        bytes.fromhex("A0000000031010"),
        PURSE_AID + b"\x00",
        bytes(16),
    ],
    ids=["unknown", "foreign RID", "longer than an AID", "16 zero bytes"],
)
def test_select_of_an_unknown_aid_is_answered_6a82(card: Card, aid: bytes) -> None:
    assert select(card, aid).sw == SW.FILE_NOT_FOUND


def test_select_with_an_aid_shorter_than_five_or_longer_than_sixteen_bytes_is_refused(
    card: Card,
) -> None:
    assert select(card, PURSE_AID[:4]).sw == SW.FILE_NOT_FOUND
    assert select(card, PURSE_AID + bytes(11)).sw == SW.FILE_NOT_FOUND
    assert send(card, "00A40400").sw == SW.WRONG_LENGTH


def test_select_with_unknown_p2_is_answered_6a86(card: Card) -> None:
    raw = Command(0x00, Ins.SELECT, 0x04, 0x04, PURSE_AID, 0).to_bytes()
    assert send(card, raw).sw == SW.INCORRECT_P1P2


def test_select_with_p2_0c_answers_no_fci(card: Card) -> None:
    r = send(card, Command(0x00, Ins.SELECT, 0x04, 0x0C, PURSE_AID).to_bytes())
    assert r == Response(b"", SW.OK)


def test_a_failed_select_keeps_the_current_applet_selected(card: Card) -> None:
    assert select(card, PURSE_AID).sw == SW.OK
    assert select(card, bytes.fromhex("F05450FFFF01")).sw == SW.FILE_NOT_FOUND
    r = send(card, "80CA010200")
    assert r.sw == SW.OK and 0xC4 in tlv.decode_map(r.data)


@pytest.mark.parametrize(
    ("partial", "full"),
    [
        (PURSE_PACKAGE_AID, PURSE_AID),
        (ISD_AID[:5], ISD_AID),
        (OPERATOR_SD_AID[:5], OPERATOR_SD_AID),
        (PURSE_AID, PURSE_AID),
    ],
    ids=["purse by its first 5 bytes", "isd by its RID", "operator domain", "whole AID"],
)
def test_select_by_partial_aid_selects_the_first_matching_applet(
    card: Card, partial: bytes, full: bytes
) -> None:
    r = select(card, partial)
    assert r.sw == SW.OK
    assert fci_aid(r.data) == full


def test_partial_select_picks_the_first_match_in_aid_order(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    common = OPERATOR_SD_AID[:6]
    r = select(card, common)
    assert r.sw == SW.OK
    assert fci_aid(r.data) == OPERATOR_SD_AID


# --- no applet selected --------------------------------------------------------------------


@pytest.mark.parametrize(
    "apdu",
    [
        "00CA010200",
        "80CA004500",
        "8040000000",
        "80500000080000000000000000",
        "8022000000",
    ],
)
def test_commands_with_no_applet_selected_are_answered_6985(card: Card, apdu: str) -> None:
    card.power_up()  # a fresh power-up: nothing selected
    assert send(card, apdu).sw == SW.CONDITIONS_NOT_SATISFIED


def test_a_failed_select_on_a_fresh_card_selects_nothing(card: Card) -> None:
    card.power_up()
    assert select(card, bytes.fromhex("F05450FFFF01")).sw == SW.FILE_NOT_FOUND
    assert send(card, "00CA010200").sw == SW.CONDITIONS_NOT_SATISFIED


def test_a_power_cycle_deselects_the_applet(card: Card) -> None:
    assert select(card, PURSE_AID).sw == SW.OK
    card.power_off()
    card.power_up()
    assert send(card, "00CA010200").sw == SW.CONDITIONS_NOT_SATISFIED


def test_a_secure_channel_does_not_survive_a_power_cycle(card: Card, lab: Lab) -> None:
    channel = open_domain(ApduClient(card), lab.keystore, card.serial, ISD_AID)
    card.power_up()
    assert select(card, ISD_AID).sw == SW.OK
    wrapped = channel.session.wrap(Command(0x80, Ins.GET_STATUS, 0x80, 0x02, b"\x4f\x00", 0))
    assert send(card, wrapped.to_bytes()).sw == SW.SECURITY_NOT_SATISFIED
