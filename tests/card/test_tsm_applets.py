"""TSM operations on issued cards: a partner domain, a second applet, key rotation, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tallypurse.card.card import Card
from tallypurse.core import scp03
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.errors import CardError, CryptoError, DecodeError, KeystoreError
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    ISD_AID,
    LOYALTY_AID,
    OPERATOR_SD_AID,
    PARTNER_SD_AID,
    PURSE_AID,
    AppLifeCycle,
    CardLifeCycle,
    Ins,
)
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm import applets
from tallypurse.host.tsm.applets import (
    AppStatus,
    card_status,
    delete_applet,
    domain_key_versions,
    install_loyalty,
    install_partner_domain,
    rotate_domain_keys,
)
from tallypurse.host.tsm.channel import SecureChannel
from tallypurse.host.tsm.keys import isd_keys, sd_keys
from tallypurse.keystore.base import MASTER_SD
from tallypurse.lab import Lab

NOW = 1_767_225_600
INS_ADD_POINTS, INS_GET_POINTS, INS_GET_PURSE_BALANCE = 0x20, 0x22, 0x24


class Recorder:
    def __init__(self, card: Card) -> None:
        self.card = card
        self.commands: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        return self.card.transmit(apdu)


def loyalty(card: Card, ins: int, data: bytes = b"") -> bytes:
    client = ApduClient(card)
    client.select(LOYALTY_AID)
    return client.call(Command(CLA_PROPRIETARY, ins, 0, 0, data, 0))


def balance(card: Card) -> int:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse.counters().balance


def aids(statuses: list[AppStatus]) -> set[bytes]:
    return {s.aid for s in statuses}


def test_a_second_applet_is_installed_used_rotated_and_deleted_and_the_purse_still_works(
    tmp_path: Path,
) -> None:
    # A lab of its own: this test rotates the domain master key in its keystore.
    lab = Lab.create(tmp_path / "lab", now=NOW)
    ks = lab.keystore
    serial = bytes.fromhex("20000000000000A1")
    card, _ = lab.new_card(serial, credit=lab.credit_record(serial))
    sam = lab.new_sam(tmp_path / "sam.json", b"TERM0077")
    try:
        lab.load(card, 2_000)

        # 1. the partner's domain and its applet
        initial = install_partner_domain(card, ks, serial)
        install_loyalty(card, ks, serial, points=10)
        status = {s.aid: s for s in card_status(card, ks, serial)}
        assert status[PARTNER_SD_AID] == AppStatus(
            PARTNER_SD_AID, AppLifeCycle.SELECTABLE, 0x80, ISD_AID
        )
        assert status[LOYALTY_AID].sd == PARTNER_SD_AID

        # 2. used: points, and the purse balance through the exported interface
        assert loyalty(card, INS_ADD_POINTS, (5).to_bytes(2, "big")) == (15).to_bytes(4, "big")
        lab.purchase(card, sam, 300)
        assert loyalty(card, INS_GET_POINTS) == (15).to_bytes(4, "big")
        assert loyalty(card, INS_GET_PURSE_BALANCE) == (1_700).to_bytes(4, "big") + (978).to_bytes(
            2, "big"
        )

        # 3. the partner's master key is rotated; the card's domain keys follow
        ks.rotate(MASTER_SD, now=NOW)
        new = sd_keys(ks, serial, PARTNER_SD_AID)
        assert new.version == initial.version + 1
        answer = rotate_domain_keys(card, ks, serial, PARTNER_SD_AID, new)
        assert answer == bytes([new.version]) + b"".join(new.kcvs())
        assert domain_key_versions(ApduClient(card), PARTNER_SD_AID) == [new.version]
        with pytest.raises(CardError) as err:
            SecureChannel.open(ApduClient(card), PARTNER_SD_AID, initial)
        assert err.value.sw == SW.REF_DATA_NOT_FOUND
        # the operator's domain was not touched and still opens at its old version
        assert domain_key_versions(ApduClient(card), OPERATOR_SD_AID) == [initial.version]
        assert applets.open_domain(ApduClient(card), ks, serial, OPERATOR_SD_AID).get_status(0x40)
        assert loyalty(card, INS_GET_POINTS) == (15).to_bytes(4, "big")

        # 4. deleted through its domain (opened with the rotated keys)
        delete_applet(card, ks, serial, PARTNER_SD_AID, LOYALTY_AID)
        left = card_status(card, ks, serial)
        assert aids(left) == {ISD_AID, OPERATOR_SD_AID, PURSE_AID, PARTNER_SD_AID}
        assert not [k for k in card.eeprom.snapshot() if k.startswith(LOYALTY_AID.hex())]

        # 5. the purse still works
        lab.purchase(card, sam, 200)
        assert balance(card) == 1_500
        lab.load(card, 100)
        assert balance(card) == 1_600
    finally:
        sam.close()


def test_the_tsm_speaks_only_secure_messaging_after_authentication(card: Card, lab: Lab) -> None:
    rec = Recorder(card)
    install_partner_domain(rec, lab.keystore, card.serial)
    install_loyalty(rec, lab.keystore, card.serial, points=1)
    headers = [(a[0], a[1]) for a in rec.commands]
    open_steps = {(0x00, Ins.SELECT), (0x80, Ins.GET_DATA), (0x80, Ins.INITIALIZE_UPDATE)}
    management = [h for h in headers if h not in open_steps]
    assert management and all(cla == 0x84 for cla, _ in management)
    assert (0x84, Ins.EXTERNAL_AUTHENTICATE) in management
    assert {ins for _, ins in management} >= {Ins.INSTALL, Ins.STORE_DATA}


def test_a_partner_domain_can_have_any_aid(card: Card, lab: Lab) -> None:
    aid = bytes.fromhex("F05450534400AA")
    keys = install_partner_domain(card, lab.keystore, card.serial, aid)
    assert keys == sd_keys(lab.keystore, card.serial, aid)
    assert aid in aids(card_status(card, lab.keystore, card.serial))
    install_loyalty(card, lab.keystore, card.serial, points=4, sd_aid=aid)
    by_aid = {s.aid: s for s in card_status(card, lab.keystore, card.serial)}
    assert by_aid[LOYALTY_AID].sd == aid


def test_loyalty_is_personalised_with_its_points(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial, points=0xFFFFFFFE)
    assert loyalty(card, INS_GET_POINTS) == (0xFFFFFFFE).to_bytes(4, "big")


@pytest.mark.parametrize("points", [-1, 1 << 32])
def test_points_that_do_not_fit_four_bytes_are_refused_before_any_apdu(
    card: Card, lab: Lab, points: int
) -> None:
    rec = Recorder(card)
    with pytest.raises(ValueError, match="4 bytes"):
        install_loyalty(rec, lab.keystore, card.serial, points=points)
    assert rec.commands == []


def test_loyalty_needs_its_domain_on_the_card(card: Card, lab: Lab) -> None:
    with pytest.raises(CardError) as err:
        install_loyalty(card, lab.keystore, card.serial)
    assert err.value.sw == SW.FILE_NOT_FOUND


def test_loyalty_cannot_be_installed_twice(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial)
    with pytest.raises(CardError) as err:
        install_loyalty(card, lab.keystore, card.serial)
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED


def test_the_isd_deletes_a_partner_domain_with_its_applets(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial)
    with pytest.raises(CardError) as err:
        delete_applet(card, lab.keystore, card.serial, ISD_AID, PARTNER_SD_AID)
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    delete_applet(card, lab.keystore, card.serial, ISD_AID, PARTNER_SD_AID, related=True)
    assert aids(card_status(card, lab.keystore, card.serial)) == {
        ISD_AID,
        OPERATOR_SD_AID,
        PURSE_AID,
    }


def test_a_partner_domain_cannot_delete_the_purse(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    with pytest.raises(CardError) as err:
        delete_applet(card, lab.keystore, card.serial, PARTNER_SD_AID, PURSE_AID)
    assert err.value.sw == SW.SECURITY_NOT_SATISFIED


def test_isd_keys_rotated_to_a_set_outside_the_keystore_need_explicit_keys(
    card: Card, lab: Lab
) -> None:
    new = scp03.StaticKeys(0x30, bytes(range(16)), bytes(range(1, 17)), bytes(range(2, 18)))
    answer = rotate_domain_keys(card, lab.keystore, card.serial, ISD_AID, new)
    assert answer[0] == 0x30
    statuses = card_status(card, lab.keystore, card.serial, keys=new)
    assert statuses[0] == AppStatus(ISD_AID, CardLifeCycle.SECURED, 0x80, ISD_AID)
    # the keystore has no version 0x30 of the ISD master key
    with pytest.raises(KeystoreError):
        card_status(card, lab.keystore, card.serial)
    # and back to the keystore's keys
    home = isd_keys(lab.keystore, card.serial)
    rotate_domain_keys(card, lab.keystore, card.serial, ISD_AID, home, keys=new)
    assert aids(card_status(card, lab.keystore, card.serial)) >= {ISD_AID, PURSE_AID}


def test_rotation_detects_a_tampered_put_key_answer(card: Card, lab: Lab) -> None:
    class Liar(Recorder):
        def transmit(self, apdu: bytes) -> bytes:
            out = self.card.transmit(apdu)
            if apdu[1] == Ins.PUT_KEY and out[-2:] == b"\x90\x00":
                return bytes([out[0] ^ 1]) + out[1:]
            return out

    new = sd_keys(lab.keystore, card.serial, OPERATOR_SD_AID)
    new = scp03.StaticKeys(0x21, new.enc, new.mac, new.dek)
    with pytest.raises(CryptoError, match="R-MAC"):
        rotate_domain_keys(Liar(card), lab.keystore, card.serial, OPERATOR_SD_AID, new)


def test_a_blank_card_reports_its_transport_key_version(lab: Lab) -> None:
    card = Card.manufacture(b"TSMBLNK1")
    assert domain_key_versions(ApduClient(card), ISD_AID) == [scp03.TRANSPORT_KEYS.version]


def test_a_status_entry_without_its_tags_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="lacks tag CC"):
        applets._parse_status({0x4F: ISD_AID, 0x9F70: b"\x0f", 0xC5: b"\x80\x00\x00"})
    with pytest.raises(DecodeError, match="malformed"):
        applets._parse_status({0x4F: ISD_AID, 0x9F70: b"", 0xC5: b"\x80", 0xCC: ISD_AID})


def test_app_status_tells_domains_from_applets() -> None:
    assert AppStatus(ISD_AID, 0x0F, 0x80, ISD_AID).is_sd
    assert not AppStatus(PURSE_AID, 0x07, 0x00, OPERATOR_SD_AID).is_sd
