"""PUT KEY: adding and replacing key sets, check values, what the old keys can do afterwards."""

from __future__ import annotations

import pytest

from tallypurse.card.card import Card
from tallypurse.core import crypto, scp03, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import CardError, CryptoError
from tallypurse.core.protocol import CLA_PROPRIETARY, ISD_AID, OPERATOR_SD_AID, Ins
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import domain_key_versions, open_domain
from tallypurse.host.tsm.channel import SecureChannel
from tallypurse.host.tsm.keys import isd_keys, sd_keys
from tallypurse.lab import Lab
from tallypurse.sam import Sam


def new_keys(version: int, seed: int = 0) -> scp03.StaticKeys:
    def key(n: int) -> bytes:
        return crypto.sha256(bytes([version, seed, n]))[:16]

    return scp03.StaticKeys(version, key(1), key(2), key(3))


def current(card: Card, lab: Lab, aid: bytes) -> scp03.StaticKeys:
    version = domain_key_versions(ApduClient(card), aid)[-1]
    if aid == ISD_AID:
        return isd_keys(lab.keystore, card.serial, version=version)
    return sd_keys(lab.keystore, card.serial, aid, version=version)


def open_with(card: Card, aid: bytes, keys: scp03.StaticKeys) -> SecureChannel:
    return SecureChannel.open(ApduClient(card), aid, keys)


def initialize_update_sw(card: Card, aid: bytes, version: int) -> int:
    client = ApduClient(card)
    client.select(aid)
    cmd = Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, version, 0, bytes(8), 0)
    return client.send(cmd).sw


def put_key_sw(ch: SecureChannel, p1: int, data: bytes, p2: int = 0x81) -> int:
    try:
        ch.call(Command(CLA_PROPRIETARY, Ins.PUT_KEY, p1, p2, data, 0))
    except CardError as exc:
        return exc.sw
    return SW.OK


DOMAINS = pytest.mark.parametrize("aid", [ISD_AID, OPERATOR_SD_AID], ids=["isd", "sd"])


@DOMAINS
def test_put_key_replaces_the_current_version_and_the_old_one_is_refused(
    card: Card, lab: Lab, aid: bytes
) -> None:
    old = current(card, lab, aid)
    new = new_keys(0x30)
    answer = open_with(card, aid, old).put_key(new, replace=old.version)
    assert answer == bytes([0x30]) + b"".join(new.kcvs())
    assert answer[1:4] == crypto.key_check_value(new.enc)
    assert answer[4:7] == crypto.key_check_value(new.mac)
    assert answer[7:10] == crypto.key_check_value(new.dek)
    assert domain_key_versions(ApduClient(card), aid) == [0x30]
    # the new version works ...
    assert open_with(card, aid, new).get_status(0x40)
    # ... the old one is gone
    assert initialize_update_sw(card, aid, old.version) == SW.REF_DATA_NOT_FOUND
    with pytest.raises(CardError) as err:
        open_with(card, aid, old)
    assert err.value.sw == SW.REF_DATA_NOT_FOUND


@DOMAINS
def test_replacing_with_the_same_version_number_retires_the_old_values(
    card: Card, lab: Lab, aid: bytes
) -> None:
    old = current(card, lab, aid)
    new = new_keys(old.version, seed=7)
    open_with(card, aid, old).put_key(new, replace=old.version)
    with pytest.raises(CryptoError, match="card cryptogram"):
        open_with(card, aid, old)
    assert open_with(card, aid, new).get_status(0x40)


def test_new_keys_survive_a_power_cycle(card: Card, lab: Lab) -> None:
    old = current(card, lab, ISD_AID)
    new = new_keys(0x31)
    open_with(card, ISD_AID, old).put_key(new, replace=old.version)
    card.power_off()
    card.power_up()
    assert open_with(card, ISD_AID, new).get_status(0x80)


def test_rotating_the_isd_keys_leaves_the_domain_keys_alone(card: Card, lab: Lab, sam: Sam) -> None:
    sd_before = current(card, lab, OPERATOR_SD_AID)
    old = current(card, lab, ISD_AID)
    open_with(card, ISD_AID, old).put_key(new_keys(0x32), replace=old.version)
    assert open_with(card, OPERATOR_SD_AID, sd_before).get_status(0x40)
    lab.load(card, 300)
    lab.purchase(card, sam, 100)


def test_put_key_with_p1_zero_adds_a_version_and_both_work(card: Card, lab: Lab) -> None:
    old = current(card, lab, ISD_AID)
    added = new_keys(0x40)
    open_with(card, ISD_AID, old).put_key(added)
    assert domain_key_versions(ApduClient(card), ISD_AID) == sorted([old.version, 0x40])
    assert open_with(card, ISD_AID, old).get_status(0x80)
    assert open_with(card, ISD_AID, added).get_status(0x80)
    info = tlv.decode(tlv.decode_one(_get_data(card, 0x00E0), 0xE0))
    assert [(i.value[1], i.value[2], i.value[3]) for i in info] == [
        (v, scp03.KEY_TYPE_AES, 16) for v in sorted([old.version, 0x40])
    ]


def _get_data(card: Card, tag: int) -> bytes:
    client = ApduClient(card)
    client.select(ISD_AID)
    return client.call(Command(CLA_PROPRIETARY, Ins.GET_DATA, tag >> 8, tag & 0xFF, b"", 0))


def test_initialize_update_without_a_version_picks_the_newest(card: Card, lab: Lab) -> None:
    old = current(card, lab, ISD_AID)
    open_with(card, ISD_AID, old).put_key(new_keys(0x41))
    client = ApduClient(card)
    client.select(ISD_AID)
    r = client.call(Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, 0, 0, bytes(8), 0))
    assert r[10] == max(old.version, 0x41)


def test_a_domain_holds_at_most_four_key_sets(card: Card, lab: Lab) -> None:
    old = current(card, lab, ISD_AID)
    ch = open_with(card, ISD_AID, old)
    for v in (0x51, 0x52, 0x53):
        ch.put_key(new_keys(v))
    data = scp03.encode_key_set(old.dek, new_keys(0x54))
    assert put_key_sw(ch, 0, data) == SW.NOT_ENOUGH_MEMORY
    # replacing is still possible when full
    assert put_key_sw(ch, 0x51, data) == SW.OK


def with_bad_kcv(data: bytes, which: int) -> bytes:
    out = bytearray(data)
    out[1 + 23 * which + 20] ^= 0xFF
    return bytes(out)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["ENC", "MAC", "DEK"])
@DOMAINS
def test_a_wrong_key_check_value_is_refused_6982_and_changes_nothing(
    card: Card, lab: Lab, aid: bytes, which: int
) -> None:
    old = current(card, lab, aid)
    ch = open_with(card, aid, old)
    before = card.eeprom.snapshot()
    data = with_bad_kcv(scp03.encode_key_set(old.dek, new_keys(0x33)), which)
    assert put_key_sw(ch, old.version, data) == SW.SECURITY_NOT_SATISFIED
    assert put_key_sw(ch, 0, data) == SW.SECURITY_NOT_SATISFIED
    assert card.eeprom.snapshot() == before
    assert open_with(card, aid, old).get_status(0x40)


def test_keys_wrapped_under_another_dek_fail_their_check_values(card: Card, lab: Lab) -> None:
    old = current(card, lab, ISD_AID)
    ch = open_with(card, ISD_AID, old)
    data = scp03.encode_key_set(bytes(16), new_keys(0x34))
    assert put_key_sw(ch, old.version, data) == SW.SECURITY_NOT_SATISFIED


def test_put_key_refusals(card: Card, lab: Lab) -> None:
    old = current(card, lab, ISD_AID)
    ch = open_with(card, ISD_AID, old)
    ch.put_key(new_keys(0x60))
    before = card.eeprom.snapshot()

    def data(v: int) -> bytes:
        return scp03.encode_key_set(old.dek, new_keys(v))

    good = data(0x61)
    cases = [
        (0, data(0x60), 0x81, SW.CONDITIONS_NOT_SATISFIED),  # add an existing version
        (old.version, data(0x60), 0x81, SW.CONDITIONS_NOT_SATISFIED),  # replace onto another
        (0x77, good, 0x81, SW.REF_DATA_NOT_FOUND),  # replace a version that is not there
        (0, good, 0x01, SW.INCORRECT_P1P2),  # a single key, not a whole set
        (0, good[:-1], 0x81, SW.WRONG_DATA),  # truncated
        (0, b"\xff" + good[1:], 0x81, SW.WRONG_DATA),  # reserved version FF
        (0, b"\x00" + good[1:], 0x81, SW.WRONG_DATA),  # reserved version 00
        (0, good[:1] + b"\x80" + good[2:], 0x81, SW.WRONG_DATA),  # not an AES key
    ]
    for p1, body, p2, sw in cases:
        assert put_key_sw(ch, p1, body, p2) == sw, (p1, p2, hex(sw))
    assert card.eeprom.snapshot() == before


def test_after_replacing_its_own_key_set_a_channel_can_no_longer_wrap_keys(
    card: Card, lab: Lab
) -> None:
    old = current(card, lab, ISD_AID)
    ch = open_with(card, ISD_AID, old)
    ch.put_key(new_keys(0x36), replace=old.version)
    assert put_key_sw(ch, 0, scp03.encode_key_set(old.dek, new_keys(0x37))) == (
        SW.REF_DATA_NOT_FOUND
    )
    assert ch.get_status(0x80)  # the channel itself stays open


def test_the_tsm_opens_a_domain_at_the_version_the_card_reports(card: Card, lab: Lab) -> None:
    ch = open_domain(ApduClient(card), lab.keystore, card.serial, OPERATOR_SD_AID)
    assert ch.keys == current(card, lab, OPERATOR_SD_AID)
    assert Response.parse(card.transmit(bytes.fromhex("80CA00E000"))).sw == SW.OK
