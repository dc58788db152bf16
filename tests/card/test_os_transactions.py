"""Every command is one transaction: an error status word leaves the memory untouched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom
from tallypurse.core import scp03, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    INSTALL_FOR_INSTALL_AND_SELECTABLE,
    ISD_AID,
    OPERATOR_SD_AID,
    PARTNER_SD_AID,
    PRIV_SECURITY_DOMAIN,
    PURSE_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    T_CAP,
    T_CARD_ID,
    T_ISSUER_ROOT,
    AppLifeCycle,
    CardLifeCycle,
    Ins,
)
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import open_domain
from tallypurse.host.tsm.channel import SecureChannel, lv
from tallypurse.host.tsm.keys import sd_keys
from tallypurse.lab import Lab

P = CLA_PROPRIETARY
OTHER = bytes.fromhex("F0545053440009")
FRESH = scp03.StaticKeys(0x70, bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))


def bad_kcv(data: bytes) -> bytes:
    out = bytearray(data)
    out[-1] ^= 0xFF
    return bytes(out)


def install(pkg: bytes, mod: bytes, aid: bytes, priv: int, params: bytes = b"") -> Command:
    data = lv(pkg, mod, aid, bytes([priv]), params, b"")
    return Command(P, Ins.INSTALL, INSTALL_FOR_INSTALL_AND_SELECTABLE, 0, data, 0)


def sd_params(dek: bytes, keys: scp03.StaticKeys, *, tamper: bool = False) -> bytes:
    wrapped = scp03.encode_key_set(dek, keys)
    return tlv.encode(0xC9, tlv.encode(0xDA, bad_kcv(wrapped) if tamper else wrapped))


def same_version(ch: SecureChannel) -> bytes:
    """PUT KEY data for a new key set that reuses the channel's key version."""
    return scp03.encode_key_set(ch.keys.dek, scp03.StaticKeys(ch.keys.version, *[bytes(16)] * 3))


def delete(aid: bytes, p2: int = 0) -> Command:
    return Command(P, Ins.DELETE, 0, p2, tlv.encode(0x4F, aid), 0)


def store(data: bytes) -> Command:
    return Command(P, Ins.STORE_DATA, 0x80, 0, data, 0)


Make = Callable[[SecureChannel, Card, Lab], Command]


@dataclass(frozen=True)
class Failing:
    domain: bytes
    make: Make  # may send successful preliminary commands; returns the failing one
    sw: int


def perso_purse_then(data: bytes) -> Make:
    def make(ch: SecureChannel, card: Card, lab: Lab) -> Command:
        ch.install_for_personalisation(PURSE_AID)
        return store(data)

    return make


CASES: dict[str, Failing] = {
    # --- to the ISD
    "ISD PUT KEY with a wrong KCV": Failing(
        ISD_AID,
        lambda ch, c, lab: Command(
            P, Ins.PUT_KEY, 0, 0x81, bad_kcv(scp03.encode_key_set(ch.keys.dek, FRESH)), 0
        ),
        SW.SECURITY_NOT_SATISFIED,
    ),
    "ISD PUT KEY adding an existing version": Failing(
        ISD_AID,
        lambda ch, c, lab: Command(P, Ins.PUT_KEY, 0, 0x81, same_version(ch), 0),
        SW.CONDITIONS_NOT_SATISFIED,
    ),
    "ISD PUT KEY replacing a missing version": Failing(
        ISD_AID,
        lambda ch, c, lab: Command(
            P, Ins.PUT_KEY, 0x6F, 0x81, scp03.encode_key_set(ch.keys.dek, FRESH), 0
        ),
        SW.REF_DATA_NOT_FOUND,
    ),
    "ISD INSTALL of an unknown load file": Failing(
        ISD_AID,
        lambda ch, c, lab: install(b"\xf0\x00\x00\x00\x01", SD_MODULE_AID, OTHER, 0),
        SW.REF_DATA_NOT_FOUND,
    ),
    "ISD INSTALL over an existing AID": Failing(
        ISD_AID,
        lambda ch, c, lab: install(
            SD_PACKAGE_AID,
            SD_MODULE_AID,
            OPERATOR_SD_AID,
            PRIV_SECURITY_DOMAIN,
            sd_params(ch.keys.dek, FRESH),
        ),
        SW.CONDITIONS_NOT_SATISFIED,
    ),
    "ISD INSTALL of a domain whose keys fail their KCV": Failing(
        ISD_AID,
        lambda ch, c, lab: install(
            SD_PACKAGE_AID,
            SD_MODULE_AID,
            OTHER,
            PRIV_SECURITY_DOMAIN,
            sd_params(ch.keys.dek, FRESH, tamper=True),
        ),
        SW.SECURITY_NOT_SATISFIED,
    ),
    "ISD INSTALL of a domain without keys": Failing(
        ISD_AID,
        lambda ch, c, lab: install(SD_PACKAGE_AID, SD_MODULE_AID, OTHER, PRIV_SECURITY_DOMAIN),
        SW.WRONG_DATA,
    ),
    "ISD DELETE of itself": Failing(
        ISD_AID, lambda ch, c, lab: delete(ISD_AID), SW.CONDITIONS_NOT_SATISFIED
    ),
    "ISD DELETE of a domain with applets, P2=00": Failing(
        ISD_AID, lambda ch, c, lab: delete(OPERATOR_SD_AID), SW.CONDITIONS_NOT_SATISFIED
    ),
    "ISD DELETE of another domain's applet": Failing(
        ISD_AID, lambda ch, c, lab: delete(PURSE_AID, 0x80), SW.SECURITY_NOT_SATISFIED
    ),
    "ISD DELETE of an unknown AID": Failing(
        ISD_AID, lambda ch, c, lab: delete(OTHER), SW.REF_DATA_NOT_FOUND
    ),
    "ISD SET STATUS back to INITIALIZED": Failing(
        ISD_AID,
        lambda ch, c, lab: Command(P, Ins.SET_STATUS, 0x80, CardLifeCycle.INITIALIZED),
        SW.CONDITIONS_NOT_SATISFIED,
    ),
    "ISD SET STATUS locking the ISD as an application": Failing(
        ISD_AID,
        lambda ch, c, lab: Command(P, Ins.SET_STATUS, 0x40, AppLifeCycle.LOCKED, ISD_AID, 0),
        SW.WRONG_DATA,
    ),
    "ISD STORE DATA with no target": Failing(
        ISD_AID, lambda ch, c, lab: store(b"\x01\x02\x03\x04"), SW.CONDITIONS_NOT_SATISFIED
    ),
    "ISD INSTALL for personalization of the purse": Failing(
        ISD_AID,
        lambda ch, c, lab: Command(P, Ins.INSTALL, 0x20, 0, lv(b"", b"", PURSE_AID, b"", b""), 0),
        SW.SECURITY_NOT_SATISFIED,
    ),
    # --- to a supplementary domain
    "SSD INSTALL of a security domain": Failing(
        OPERATOR_SD_AID,
        lambda ch, c, lab: install(
            SD_PACKAGE_AID,
            SD_MODULE_AID,
            PARTNER_SD_AID,
            PRIV_SECURITY_DOMAIN,
            sd_params(ch.keys.dek, sd_keys(lab.keystore, c.serial, PARTNER_SD_AID)),
        ),
        SW.SECURITY_NOT_SATISFIED,
    ),
    "SSD INSTALL of a domain module without the privilege (fails after a write)": Failing(
        OPERATOR_SD_AID,
        lambda ch, c, lab: install(SD_PACKAGE_AID, SD_MODULE_AID, OTHER, 0),
        SW.WRONG_DATA,
    ),
    "SSD DELETE of itself": Failing(
        OPERATOR_SD_AID,
        lambda ch, c, lab: delete(OPERATOR_SD_AID, 0x80),
        SW.SECURITY_NOT_SATISFIED,
    ),
    "SSD DELETE of the ISD": Failing(
        OPERATOR_SD_AID, lambda ch, c, lab: delete(ISD_AID), SW.CONDITIONS_NOT_SATISFIED
    ),
    "SSD SET STATUS of the card": Failing(
        OPERATOR_SD_AID,
        lambda ch, c, lab: Command(P, Ins.SET_STATUS, 0x80, CardLifeCycle.CARD_LOCKED),
        SW.SECURITY_NOT_SATISFIED,
    ),
    "SSD SET STATUS locking the ISD": Failing(
        OPERATOR_SD_AID,
        lambda ch, c, lab: Command(P, Ins.SET_STATUS, 0x40, AppLifeCycle.LOCKED, ISD_AID, 0),
        SW.SECURITY_NOT_SATISFIED,
    ),
    "SSD PUT KEY with a wrong KCV": Failing(
        OPERATOR_SD_AID,
        lambda ch, c, lab: Command(
            P,
            Ins.PUT_KEY,
            ch.keys.version,
            0x81,
            bad_kcv(scp03.encode_key_set(ch.keys.dek, FRESH)),
            0,
        ),
        SW.SECURITY_NOT_SATISFIED,
    ),
    "SSD STORE DATA re-setting the purse's card id": Failing(
        OPERATOR_SD_AID,
        perso_purse_then(tlv.encode(T_CARD_ID, bytes(8))),
        SW.CONDITIONS_NOT_SATISFIED,
    ),
    "SSD STORE DATA changing the cap, then a bad issuer root (fails after a write)": Failing(
        OPERATOR_SD_AID,
        perso_purse_then(
            tlv.encode(T_CAP, (5).to_bytes(4, "big"))
            + tlv.encode(T_ISSUER_ROOT, tlv.encode(0x42, b"xx") + tlv.encode(0x86, b"yy"))
        ),
        SW.WRONG_DATA,
    ),
    "SSD STORE DATA with a duplicate tag": Failing(
        OPERATOR_SD_AID,
        perso_purse_then(tlv.encode(T_CAP, bytes(4)) * 2),
        SW.WRONG_DATA,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_an_error_status_word_changes_nothing(card: Card, lab: Lab, case: Failing) -> None:
    ch = open_domain(ApduClient(card), lab.keystore, card.serial, case.domain)
    cmd = case.make(ch, card, lab)
    before = card.eeprom.snapshot()
    image = card.eeprom.to_image()
    writes = card.eeprom.writes
    r = Response.parse(card.transmit(ch.session.wrap(cmd).to_bytes()))
    assert r.sw == case.sw
    assert card.eeprom.snapshot() == before
    assert card.eeprom.writes == writes  # not a single persistent write
    assert card.eeprom.to_image() == image
    assert not card.eeprom.in_transaction
    # the error was answered in clear, the channel goes on
    assert ch.get_status(0x40)


def test_an_error_after_staged_writes_leaves_them_unseen(card: Card, lab: Lab) -> None:
    """The failing INSTALL stages a registry entry; nothing of it is visible afterwards,
    not even to the card OS's own registry reads."""
    ch = open_domain(ApduClient(card), lab.keystore, card.serial, OPERATOR_SD_AID)
    r = Response.parse(
        card.transmit(ch.session.wrap(install(SD_PACKAGE_AID, SD_MODULE_AID, OTHER, 0)).to_bytes())
    )
    assert r.sw == SW.WRONG_DATA
    assert not [k for k in card.eeprom.keys() if OTHER.hex() in k]
    assert {e[0x4F] for e in ch.get_status(0x40)} == {OPERATOR_SD_AID, PURSE_AID}
    client = ApduClient(card)
    assert client.send(Command(0x00, Ins.SELECT, 0x04, 0, OTHER, 0)).sw == SW.FILE_NOT_FOUND


def test_a_staged_write_outside_a_transaction_is_a_programming_error() -> None:
    e = Eeprom()
    with pytest.raises(RuntimeError):
        e.put("x", b"1")
    e.begin()
    with pytest.raises(RuntimeError):
        e.begin()
