"""SCP03-style secure channels: mutual authentication, C-MAC chaining, C-DEC, R-MAC."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tallypurse.card.card import Card
from tallypurse.core import scp03, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import CardError, CryptoError
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    INSTALL_FOR_INSTALL_AND_SELECTABLE,
    ISD_AID,
    LOYALTY_AID,
    OPERATOR_SD_AID,
    PARTNER_SD_AID,
    PRIV_SECURITY_DOMAIN,
    PURSE_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    Ins,
)
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import (
    domain_key_versions,
    install_loyalty,
    install_partner_domain,
)
from tallypurse.host.tsm.channel import SecureChannel, lv
from tallypurse.host.tsm.keys import isd_keys, sd_keys
from tallypurse.lab import Lab

HOST_CHALLENGE = b"HOSTCHAL"
GET_STATUS_ISD = Command(CLA_PROPRIETARY, Ins.GET_STATUS, 0x80, 0x02, b"\x4f\x00", 0)


def send(card: Card, cmd: Command | bytes) -> Response:
    raw = cmd.to_bytes() if isinstance(cmd, Command) else cmd
    return Response.parse(card.transmit(raw))


def keys_for(card: Card, lab: Lab, aid: bytes = ISD_AID) -> scp03.StaticKeys:
    version = domain_key_versions(ApduClient(card), aid)[-1]
    if aid == ISD_AID:
        return isd_keys(lab.keystore, card.serial, version=version)
    return sd_keys(lab.keystore, card.serial, aid, version=version)


def wrong(keys: scp03.StaticKeys) -> scp03.StaticKeys:
    """Same version, different key values."""
    flip = bytes([keys.mac[0] ^ 1]) + keys.mac[1:]
    return scp03.StaticKeys(keys.version, keys.enc, flip, keys.dek)


def handshake(card: Card, keys: scp03.StaticKeys, aid: bytes = ISD_AID) -> scp03.Session:
    """SELECT + INITIALIZE UPDATE; the host's (not yet authenticated) session."""
    assert send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, aid, 0)).sw == SW.OK
    r = send(
        card, Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, keys.version, 0, HOST_CHALLENGE, 0)
    )
    assert r.sw == SW.OK
    return scp03.Session.derive(keys, HOST_CHALLENGE, r.data[13:21])


def authenticate(card: Card, session: scp03.Session, cryptogram: bytes, level: int) -> int:
    ea = session.wrap(Command(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, level, 0, cryptogram))
    session.authenticated = True
    session.level = level
    return send(card, ea).sw


def channel(card: Card, lab: Lab, level: int = scp03.FULL, aid: bytes = ISD_AID) -> SecureChannel:
    return SecureChannel.open(ApduClient(card), aid, keys_for(card, lab, aid), level=level)


def wrapped_status(ch: SecureChannel) -> bytes:
    return ch.session.wrap(GET_STATUS_ISD).to_bytes()


# --- mutual authentication -----------------------------------------------------------------


@pytest.mark.parametrize(
    "level",
    [scp03.C_MAC, scp03.C_MAC | scp03.C_DECRYPTION, scp03.C_MAC | scp03.R_MAC, scp03.FULL],
    ids=["C-MAC", "C-MAC+C-DEC", "C-MAC+R-MAC", "full"],
)
def test_mutual_authentication_succeeds_with_the_right_keys(
    card: Card, lab: Lab, level: int
) -> None:
    ch = channel(card, lab, level)
    assert ch.session.authenticated
    [isd] = ch.get_status(0x80)
    assert isd[0x4F] == ISD_AID
    assert channel(card, lab, level, OPERATOR_SD_AID).get_status(0x40)


def test_initialize_update_answers_key_information_challenge_and_card_cryptogram(
    card: Card, lab: Lab
) -> None:
    keys = keys_for(card, lab)
    send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, ISD_AID, 0))
    r = send(card, Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, 0, 0, HOST_CHALLENGE, 0))
    assert r.sw == SW.OK and len(r.data) == 29
    assert r.data[:8] == card.serial
    assert r.data[10:13] == bytes([keys.version, scp03.SCP_ID, scp03.SCP_I_PARAM])
    session = scp03.Session.derive(keys, HOST_CHALLENGE, r.data[13:21])
    assert r.data[21:29] == session.card_cryptogram()


def test_wrong_keys_fail_on_the_host_side_with_a_card_cryptogram_mismatch(
    card: Card, lab: Lab
) -> None:
    with pytest.raises(CryptoError, match="card cryptogram"):
        SecureChannel.open(ApduClient(card), ISD_AID, wrong(keys_for(card, lab)))


def test_the_card_refuses_a_host_that_skips_the_check_with_wrong_keys(card: Card, lab: Lab) -> None:
    session = handshake(card, wrong(keys_for(card, lab)))
    assert authenticate(card, session, session.host_cryptogram(), scp03.FULL) == (
        SW.SECURITY_NOT_SATISFIED
    )
    assert send(card, session.wrap(GET_STATUS_ISD)).sw == SW.SECURITY_NOT_SATISFIED


def test_a_forged_host_cryptogram_is_refused_6982_and_closes_the_session(
    card: Card, lab: Lab
) -> None:
    session = handshake(card, keys_for(card, lab))
    forged = bytes(b ^ 0x01 for b in session.host_cryptogram())
    assert authenticate(card, session, forged, scp03.FULL) == SW.SECURITY_NOT_SATISFIED
    assert send(card, session.wrap(GET_STATUS_ISD)).sw == SW.SECURITY_NOT_SATISFIED


def test_the_right_host_cryptogram_opens_the_channel(card: Card, lab: Lab) -> None:
    session = handshake(card, keys_for(card, lab))
    assert authenticate(card, session, session.host_cryptogram(), scp03.C_MAC) == SW.OK
    r = send(card, session.wrap(GET_STATUS_ISD))
    assert r.sw == SW.OK and tlv.decode(r.data)[0].tag == 0xE3


@pytest.mark.parametrize("level", [0x00, scp03.C_DECRYPTION, scp03.R_MAC, 0x20, 0x33])
def test_a_security_level_without_c_mac_or_unknown_is_refused_6a86(
    card: Card, lab: Lab, level: int
) -> None:
    session = handshake(card, keys_for(card, lab))
    assert authenticate(card, session, session.host_cryptogram(), level) == SW.INCORRECT_P1P2


def test_external_authenticate_without_initialize_update_is_refused_6982(card: Card) -> None:
    send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, ISD_AID, 0))
    r = send(card, Command(0x84, Ins.EXTERNAL_AUTHENTICATE, scp03.FULL, 0, bytes(16)))
    assert r.sw == SW.SECURITY_NOT_SATISFIED


def test_a_second_external_authenticate_is_refused_and_closes_the_channel(
    card: Card, lab: Lab
) -> None:
    ch = channel(card, lab)
    again = ch.session.wrap(
        Command(
            CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, scp03.FULL, 0, ch.session.host_cryptogram()
        )
    )
    assert send(card, again).sw == SW.CONDITIONS_NOT_SATISFIED
    assert send(card, wrapped_status(ch)).sw == SW.SECURITY_NOT_SATISFIED


def test_initialize_update_with_an_unknown_key_version_is_answered_6a88(card: Card) -> None:
    send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, ISD_AID, 0))
    r = send(card, Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, 0x42, 0, HOST_CHALLENGE, 0))
    assert r.sw == SW.REF_DATA_NOT_FOUND


@pytest.mark.parametrize(
    ("p1", "p2", "data", "sw"),
    [
        (0, 0, bytes(7), SW.WRONG_LENGTH),
        (0, 0, bytes(9), SW.WRONG_LENGTH),
        (0, 1, bytes(8), SW.INCORRECT_P1P2),
    ],
)
def test_a_malformed_initialize_update_is_refused(
    card: Card, p1: int, p2: int, data: bytes, sw: int
) -> None:
    send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, ISD_AID, 0))
    assert send(card, Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, p1, p2, data, 0)).sw == sw


# --- C-MAC ---------------------------------------------------------------------------------------


def flip(raw: bytes, index: int) -> bytes:
    out = bytearray(raw)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    "where",
    [-2, -9, -10, 2, 3],
    ids=["last MAC byte", "first MAC byte", "last data byte", "P1", "P2"],
)
def test_a_flipped_byte_is_refused_6982_and_the_session_is_closed(
    card: Card, lab: Lab, where: int
) -> None:
    ch = channel(card, lab)
    raw = wrapped_status(ch)
    assert raw[-1] == 0x00  # Le, the one byte outside the C-MAC
    assert send(card, flip(raw, where)).sw == SW.SECURITY_NOT_SATISFIED
    # the session is gone: the genuine command, and any later one, is refused too
    assert send(card, raw).sw == SW.SECURITY_NOT_SATISFIED
    assert send(card, wrapped_status(ch)).sw == SW.SECURITY_NOT_SATISFIED


def test_a_command_whose_mac_is_cut_off_is_refused_6982(card: Card, lab: Lab) -> None:
    ch = channel(card, lab)
    wrapped = ch.session.wrap(GET_STATUS_ISD)
    cut = Command(wrapped.cla, wrapped.ins, wrapped.p1, wrapped.p2, wrapped.data[:-8], 0)
    assert send(card, cut).sw == SW.SECURITY_NOT_SATISFIED


def test_replaying_a_previously_valid_command_is_refused_by_mac_chaining(
    card: Card, lab: Lab
) -> None:
    ch = channel(card, lab)
    raw = wrapped_status(ch)
    first = send(card, raw)
    assert first.sw == SW.OK
    ch.session.unwrap_response(first.data, first.sw)
    assert send(card, raw).sw == SW.SECURITY_NOT_SATISFIED
    assert send(card, wrapped_status(ch)).sw == SW.SECURITY_NOT_SATISFIED


def test_a_command_from_an_earlier_session_is_refused(card: Card, lab: Lab) -> None:
    old = channel(card, lab)
    raw = wrapped_status(old)
    assert send(card, raw).sw == SW.OK
    channel(card, lab)
    assert send(card, raw).sw == SW.SECURITY_NOT_SATISFIED


def test_commands_out_of_order_are_refused(card: Card, lab: Lab) -> None:
    ch = channel(card, lab)
    first = wrapped_status(ch)
    second = wrapped_status(ch)
    assert send(card, second).sw == SW.SECURITY_NOT_SATISFIED
    assert send(card, first).sw == SW.SECURITY_NOT_SATISFIED


def test_an_error_answered_in_clear_keeps_the_channel_and_its_chaining(
    card: Card, lab: Lab
) -> None:
    ch = channel(card, lab)
    with pytest.raises(CardError) as err:
        ch.delete(PURSE_AID)  # not the ISD's applet
    assert err.value.sw == SW.SECURITY_NOT_SATISFIED
    assert ch.get_status(0x80)


def test_selecting_another_applet_closes_the_channel(card: Card, lab: Lab) -> None:
    ch = channel(card, lab)
    send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, PURSE_AID, 0))
    send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, ISD_AID, 0))
    assert send(card, wrapped_status(ch)).sw == SW.SECURITY_NOT_SATISFIED


def test_a_channel_to_one_domain_is_worth_nothing_in_another(card: Card, lab: Lab) -> None:
    ch = channel(card, lab)
    send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, OPERATOR_SD_AID, 0))
    assert send(card, wrapped_status(ch)).sw == SW.SECURITY_NOT_SATISFIED


# --- secure messaging required ---------------------------------------------------------------

CLEAR_MANAGEMENT = [
    Command(
        CLA_PROPRIETARY,
        Ins.INSTALL,
        INSTALL_FOR_INSTALL_AND_SELECTABLE,
        0,
        lv(SD_PACKAGE_AID, SD_MODULE_AID, PARTNER_SD_AID, b"\x80", b"", b""),
        0,
    ),
    Command(CLA_PROPRIETARY, Ins.DELETE, 0, 0, tlv.encode(0x4F, OPERATOR_SD_AID), 0),
    Command(CLA_PROPRIETARY, Ins.PUT_KEY, 0, 0x81, bytes(70), 0),
    Command(CLA_PROPRIETARY, Ins.SET_STATUS, 0x80, 0x7F),
    GET_STATUS_ISD,
    Command(CLA_PROPRIETARY, Ins.STORE_DATA, 0x80, 0, b"\x01\x02", 0),
]


@pytest.mark.parametrize("cmd", CLEAR_MANAGEMENT, ids=lambda c: f"INS {c.ins:02X}")
@pytest.mark.parametrize("opened", [False, True], ids=["no channel", "channel open"])
def test_a_management_command_without_secure_messaging_is_refused_6982(
    card: Card, lab: Lab, cmd: Command, opened: bool
) -> None:
    if opened:
        channel(card, lab)
    else:
        send(card, Command(0x00, Ins.SELECT, 0x04, 0x00, ISD_AID, 0))
    before = card.eeprom.snapshot()
    assert send(card, cmd).sw == SW.SECURITY_NOT_SATISFIED
    assert card.eeprom.snapshot() == before


def test_a_wrapped_command_before_external_authenticate_is_refused(card: Card, lab: Lab) -> None:
    session = handshake(card, keys_for(card, lab))
    assert send(card, session.wrap(GET_STATUS_ISD)).sw == SW.SECURITY_NOT_SATISFIED


# --- C-DECRYPTION ------------------------------------------------------------------------------

NO_CDEC = [scp03.C_MAC, scp03.C_MAC | scp03.R_MAC]


@pytest.mark.parametrize("level", NO_CDEC, ids=["C-MAC", "C-MAC+R-MAC"])
def test_put_key_without_c_decryption_is_refused_6982(card: Card, lab: Lab, level: int) -> None:
    ch = channel(card, lab, level)
    before = card.eeprom.snapshot()
    new = scp03.StaticKeys(0x20, bytes(range(16)), bytes(range(1, 17)), bytes(range(2, 18)))
    with pytest.raises(CardError) as err:
        ch.put_key(new)
    assert err.value.sw == SW.SECURITY_NOT_SATISFIED
    assert card.eeprom.snapshot() == before


@pytest.mark.parametrize("level", NO_CDEC, ids=["C-MAC", "C-MAC+R-MAC"])
def test_install_of_a_security_domain_without_c_decryption_is_refused_6982(
    card: Card, lab: Lab, level: int
) -> None:
    ch = channel(card, lab, level)
    before = card.eeprom.snapshot()
    with pytest.raises(CardError) as err:
        ch.install(
            package=SD_PACKAGE_AID,
            module=SD_MODULE_AID,
            aid=PARTNER_SD_AID,
            privileges=PRIV_SECURITY_DOMAIN,
            initial_keys=sd_keys(lab.keystore, card.serial, PARTNER_SD_AID),
        )
    assert err.value.sw == SW.SECURITY_NOT_SATISFIED
    assert card.eeprom.snapshot() == before


@pytest.mark.parametrize("level", NO_CDEC, ids=["C-MAC", "C-MAC+R-MAC"])
def test_store_data_without_c_decryption_is_refused_6982(card: Card, lab: Lab, level: int) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial, points=5)
    ch = channel(card, lab, level, PARTNER_SD_AID)
    ch.install_for_personalisation(LOYALTY_AID)
    before = card.eeprom.snapshot()
    with pytest.raises(CardError) as err:
        ch.store_data((99).to_bytes(4, "big"), last=True)
    assert err.value.sw == SW.SECURITY_NOT_SATISFIED
    assert card.eeprom.snapshot() == before


class Recorder:
    """A transport that keeps every command APDU and lets a test rewrite responses."""

    def __init__(self, card: Card, rewrite: Callable[[bytes, bytes], bytes] | None = None) -> None:
        self.card = card
        self.rewrite = rewrite
        self.commands: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        out = self.card.transmit(apdu)
        return self.rewrite(apdu, out) if self.rewrite else out


def test_with_c_decryption_personalisation_data_never_travels_in_clear(
    card: Card, lab: Lab
) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    rec = Recorder(card)
    points = 0x5A17C0DE
    install_loyalty(rec, lab.keystore, card.serial, points=points)
    store = [a for a in rec.commands if a[1] == Ins.STORE_DATA]
    assert len(store) == 1 and store[0][0] == 0x84
    assert points.to_bytes(4, "big") not in store[0]
    assert store[0][4] == 16 + 8  # one AES block of ciphertext and the C-MAC


# --- R-MAC ---------------------------------------------------------------------------------------


def test_r_mac_verifies_on_the_host_side(card: Card, lab: Lab) -> None:
    ch = channel(card, lab, scp03.C_MAC | scp03.R_MAC)
    wrapped = ch.session.wrap(GET_STATUS_ISD)
    r = send(card, wrapped)
    body = ch.session.unwrap_response(r.data, r.sw)
    assert len(r.data) == len(body) + 8
    assert tlv.decode_map(tlv.decode_one(body, 0xE3))[0x4F] == ISD_AID


def test_without_r_mac_a_response_carries_no_mac(card: Card, lab: Lab) -> None:
    plain = channel(card, lab, scp03.C_MAC)
    r_plain = send(card, plain.session.wrap(GET_STATUS_ISD))
    maced = channel(card, lab, scp03.FULL)
    r_maced = send(card, maced.session.wrap(GET_STATUS_ISD))
    assert len(r_maced.data) == len(r_plain.data) + 8
    assert r_maced.data[:-8] == r_plain.data


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: flip(d, 0),
        lambda d: flip(d, len(d) - 9),
        lambda d: flip(d, len(d) - 1),
        lambda d: d[:-8],
        lambda d: d[:4],
        lambda d: b"",
        lambda d: d + b"\x00",
    ],
    ids=[
        "first data byte",
        "last data byte",
        "MAC byte",
        "MAC cut off",
        "truncated",
        "empty",
        "extra byte",
    ],
)
def test_a_tampered_response_is_detected_by_its_r_mac(
    card: Card, lab: Lab, tamper: Callable[[bytes], bytes]
) -> None:
    ch = channel(card, lab, scp03.FULL)

    def rewrite(apdu: bytes, out: bytes) -> bytes:
        if apdu[0] == 0x84 and apdu[1] == Ins.GET_STATUS:
            return tamper(out[:-2]) + out[-2:]
        return out

    ch.client = ApduClient(Recorder(card, rewrite))
    with pytest.raises(CryptoError, match="R-MAC"):
        ch.get_status(0x80)


def test_a_response_replayed_from_an_earlier_command_fails_its_r_mac(card: Card, lab: Lab) -> None:
    ch = channel(card, lab, scp03.FULL)
    r1 = send(card, ch.session.wrap(GET_STATUS_ISD))
    ch.session.unwrap_response(r1.data, r1.sw)
    send(card, ch.session.wrap(GET_STATUS_ISD))
    with pytest.raises(CryptoError):
        ch.session.unwrap_response(r1.data, r1.sw)


def test_a_put_key_answer_with_wrong_check_values_is_caught_by_the_host(
    card: Card, lab: Lab
) -> None:
    ch = channel(card, lab, scp03.C_MAC | scp03.C_DECRYPTION)

    def rewrite(apdu: bytes, out: bytes) -> bytes:
        if apdu[1] == Ins.PUT_KEY and out[-2:] == b"\x90\x00":
            return flip(out[:-2], 1) + out[-2:]
        return out

    ch.client = ApduClient(Recorder(card, rewrite))
    new = scp03.StaticKeys(0x21, bytes(range(16)), bytes(range(1, 17)), bytes(range(2, 18)))
    with pytest.raises(CryptoError, match="key check values"):
        ch.put_key(new)
