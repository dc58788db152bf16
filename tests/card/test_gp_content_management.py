"""Card content management: who may install, personalise and delete what; GET STATUS."""

from __future__ import annotations

import pytest

from tallypurse.card.card import Card
from tallypurse.card.storage import Store
from tallypurse.core import scp03, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import CardError
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    INSTALL_FOR_INSTALL_AND_SELECTABLE,
    ISD_AID,
    LOYALTY_AID,
    LOYALTY_MODULE_AID,
    LOYALTY_PACKAGE_AID,
    OPERATOR_SD_AID,
    PARTNER_SD_AID,
    PRIV_SECURITY_DOMAIN,
    PURSE_AID,
    PURSE_MODULE_AID,
    PURSE_PACKAGE_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    AppLifeCycle,
    CardLifeCycle,
    Ins,
)
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import (
    AppStatus,
    card_status,
    install_loyalty,
    install_partner_domain,
    open_domain,
)
from tallypurse.host.tsm.channel import SecureChannel, lv
from tallypurse.host.tsm.keys import sd_keys
from tallypurse.lab import Lab
from tallypurse.sam import Sam

OTHER_SD_AID = bytes.fromhex("F0545053440003")


@pytest.fixture
def multi(card: Card, lab: Lab) -> Card:
    """A personalised card with the partner domain and loyalty (3 points) in it."""
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial, points=3)
    return card


def domain(card: Card, lab: Lab, aid: bytes) -> SecureChannel:
    return open_domain(ApduClient(card), lab.keystore, card.serial, aid)


def refused(call: object, *args: object, **kwargs: object) -> int:
    """Run a channel call expected to fail; its status word."""
    assert callable(call)
    with pytest.raises(CardError) as err:
        call(*args, **kwargs)
    return err.value.sw


def select_sw(card: Card, aid: bytes) -> int:
    return Response.parse(card.transmit(Command(0x00, Ins.SELECT, 0x04, 0, aid, 0).to_bytes())).sw


def loyalty_points(card: Card) -> int:
    client = ApduClient(card)
    client.select(LOYALTY_AID)
    return int.from_bytes(client.call(Command(CLA_PROPRIETARY, 0x22, 0, 0, b"", 0)), "big")


# --- security domains ------------------------------------------------------------------------


def test_the_isd_creates_a_security_domain_associated_with_itself(card: Card, lab: Lab) -> None:
    initial = install_partner_domain(card, lab.keystore, card.serial)
    assert initial == sd_keys(lab.keystore, card.serial, PARTNER_SD_AID)
    [partner] = [s for s in card_status(card, lab.keystore, card.serial) if s.aid == PARTNER_SD_AID]
    assert partner.is_sd and partner.sd == ISD_AID
    assert partner.life == AppLifeCycle.SELECTABLE
    # the new domain opens with its own keys, and only with them
    assert domain(card, lab, PARTNER_SD_AID).get_status(0x40)


def test_a_supplementary_domain_cannot_create_a_security_domain(card: Card, lab: Lab) -> None:
    sd = domain(card, lab, OPERATOR_SD_AID)
    before = card.eeprom.snapshot()
    sw = refused(
        sd.install,
        package=SD_PACKAGE_AID,
        module=SD_MODULE_AID,
        aid=OTHER_SD_AID,
        privileges=PRIV_SECURITY_DOMAIN,
        initial_keys=sd_keys(lab.keystore, card.serial, OTHER_SD_AID),
    )
    assert sw == SW.SECURITY_NOT_SATISFIED
    assert card.eeprom.snapshot() == before
    assert select_sw(card, OTHER_SD_AID) == SW.FILE_NOT_FOUND


@pytest.mark.parametrize(
    ("target", "sw"),
    [
        (PARTNER_SD_AID, SW.SECURITY_NOT_SATISFIED),
        (OPERATOR_SD_AID, SW.SECURITY_NOT_SATISFIED),
        (ISD_AID, SW.CONDITIONS_NOT_SATISFIED),
    ],
    ids=["another domain", "itself", "the isd"],
)
def test_a_supplementary_domain_cannot_delete_a_security_domain(
    multi: Card, lab: Lab, target: bytes, sw: int
) -> None:
    sd = domain(multi, lab, OPERATOR_SD_AID)
    before = multi.eeprom.snapshot()
    assert refused(sd.delete, target, related=True) == sw
    assert multi.eeprom.snapshot() == before


def test_the_isd_cannot_be_deleted(card: Card, lab: Lab) -> None:
    assert refused(domain(card, lab, ISD_AID).delete, ISD_AID) == SW.CONDITIONS_NOT_SATISFIED


def test_the_isd_deletes_an_empty_domain_without_p2_80(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    domain(card, lab, ISD_AID).delete(PARTNER_SD_AID)
    assert select_sw(card, PARTNER_SD_AID) == SW.FILE_NOT_FOUND
    assert Store(card.eeprom, PARTNER_SD_AID).names() == []


def test_deleting_a_domain_with_applets_needs_p2_80(multi: Card, lab: Lab, sam: Sam) -> None:
    isd = domain(multi, lab, ISD_AID)
    before = multi.eeprom.snapshot()
    assert refused(isd.delete, PARTNER_SD_AID) == SW.CONDITIONS_NOT_SATISFIED
    assert multi.eeprom.snapshot() == before
    isd.delete(PARTNER_SD_AID, related=True)
    for aid in (PARTNER_SD_AID, LOYALTY_AID):
        assert select_sw(multi, aid) == SW.FILE_NOT_FOUND
        assert Store(multi.eeprom, aid).names() == []
    remaining = {s.aid for s in card_status(multi, lab.keystore, multi.serial)}
    assert remaining == {ISD_AID, OPERATOR_SD_AID, PURSE_AID}
    lab.load(multi, 500)
    lab.purchase(multi, sam, 120)


def test_the_isd_deletes_the_operator_domain_and_the_purse_with_it(card: Card, lab: Lab) -> None:
    domain(card, lab, ISD_AID).delete(OPERATOR_SD_AID, related=True)
    assert select_sw(card, PURSE_AID) == SW.FILE_NOT_FOUND
    assert not [k for k in card.eeprom.snapshot() if k.startswith(PURSE_AID.hex())]


# --- applets belong to their domain ------------------------------------------------------------


def test_an_applet_is_associated_with_the_domain_that_installed_it(multi: Card, lab: Lab) -> None:
    by_aid = {s.aid: s for s in card_status(multi, lab.keystore, multi.serial)}
    assert by_aid[LOYALTY_AID].sd == PARTNER_SD_AID
    assert by_aid[PURSE_AID].sd == OPERATOR_SD_AID
    assert not by_aid[LOYALTY_AID].is_sd and not by_aid[PURSE_AID].is_sd


@pytest.mark.parametrize("installer", [ISD_AID, OPERATOR_SD_AID, PARTNER_SD_AID])
def test_an_installed_aid_cannot_be_installed_again_by_any_domain(
    multi: Card, lab: Lab, installer: bytes
) -> None:
    ch = domain(multi, lab, installer)
    before = multi.eeprom.snapshot()
    sw = refused(
        ch.install, package=LOYALTY_PACKAGE_AID, module=LOYALTY_MODULE_AID, aid=LOYALTY_AID
    )
    assert sw == SW.CONDITIONS_NOT_SATISFIED
    assert multi.eeprom.snapshot() == before
    assert loyalty_points(multi) == 3


@pytest.mark.parametrize(
    ("fields", "p1", "sw"),
    [
        (
            (bytes.fromhex("F0545077"), LOYALTY_MODULE_AID, LOYALTY_AID, b"\x00", b"", b""),
            INSTALL_FOR_INSTALL_AND_SELECTABLE,
            SW.REF_DATA_NOT_FOUND,
        ),
        (
            (LOYALTY_PACKAGE_AID, PURSE_MODULE_AID, LOYALTY_AID, b"\x00", b"", b""),
            INSTALL_FOR_INSTALL_AND_SELECTABLE,
            SW.REF_DATA_NOT_FOUND,
        ),
        (
            (LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID[:4], b"\x00", b"", b""),
            INSTALL_FOR_INSTALL_AND_SELECTABLE,
            SW.WRONG_DATA,
        ),
        (
            (LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID, b"\x10", b"", b""),
            INSTALL_FOR_INSTALL_AND_SELECTABLE,
            SW.WRONG_DATA,
        ),
        (
            (LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID, b"\x00\x00", b"", b""),
            INSTALL_FOR_INSTALL_AND_SELECTABLE,
            SW.WRONG_DATA,
        ),
        (
            (LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID, b"\x00", b"", b"\x01"),
            INSTALL_FOR_INSTALL_AND_SELECTABLE,
            SW.WRONG_DATA,
        ),
        (
            (LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID, b"\x00", b""),
            INSTALL_FOR_INSTALL_AND_SELECTABLE,
            SW.WRONG_DATA,
        ),
        (
            (LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID, b"\x00", b"", b""),
            0x02,
            SW.INCORRECT_P1P2,
        ),
    ],
    ids=[
        "unknown load file",
        "unknown module",
        "short AID",
        "unsupported privilege",
        "two privilege bytes",
        "install token",
        "missing field",
        "INSTALL for load",
    ],
)
def test_a_malformed_install_is_refused_and_changes_nothing(
    card: Card, lab: Lab, fields: tuple[bytes, ...], p1: int, sw: int
) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    ch = domain(card, lab, PARTNER_SD_AID)
    before = card.eeprom.snapshot()
    cmd = Command(CLA_PROPRIETARY, Ins.INSTALL, p1, 0, lv(*fields), 0)
    assert refused(ch.call, cmd) == sw
    assert card.eeprom.snapshot() == before


def test_installing_a_domain_module_without_the_domain_privilege_leaves_nothing(
    card: Card, lab: Lab
) -> None:
    # the registry entry is written before the module's install() fails: all rolled back
    sd = domain(card, lab, OPERATOR_SD_AID)
    before = card.eeprom.snapshot()
    sw = refused(sd.install, package=SD_PACKAGE_AID, module=SD_MODULE_AID, aid=OTHER_SD_AID)
    assert sw == SW.WRONG_DATA
    assert card.eeprom.snapshot() == before
    assert select_sw(card, OTHER_SD_AID) == SW.FILE_NOT_FOUND


@pytest.mark.parametrize(
    ("sd", "target"),
    [
        (OPERATOR_SD_AID, LOYALTY_AID),
        (PARTNER_SD_AID, PURSE_AID),
        (ISD_AID, PURSE_AID),
        (ISD_AID, LOYALTY_AID),
        (PARTNER_SD_AID, OPERATOR_SD_AID),
        (PARTNER_SD_AID, PARTNER_SD_AID),
    ],
    ids=[
        "operator->loyalty",
        "partner->purse",
        "isd->purse",
        "isd->loyalty",
        "partner->operator domain",
        "partner->itself",
    ],
)
def test_only_an_applets_own_domain_may_personalise_it(
    multi: Card, lab: Lab, sd: bytes, target: bytes
) -> None:
    ch = domain(multi, lab, sd)
    assert refused(ch.install_for_personalisation, target) == SW.SECURITY_NOT_SATISFIED
    # and STORE DATA then has no target
    assert refused(ch.store_data, bytes(4), last=True) == SW.CONDITIONS_NOT_SATISFIED
    assert loyalty_points(multi) == 3


def test_the_own_domain_personalises_its_applet(multi: Card, lab: Lab) -> None:
    ch = domain(multi, lab, PARTNER_SD_AID)
    ch.install_for_personalisation(LOYALTY_AID)
    ch.store_data((41).to_bytes(4, "big"), last=True)
    assert loyalty_points(multi) == 41


def test_store_data_without_install_for_personalisation_is_refused_6985(
    multi: Card, lab: Lab
) -> None:
    ch = domain(multi, lab, PARTNER_SD_AID)
    assert refused(ch.store_data, bytes(4), last=True) == SW.CONDITIONS_NOT_SATISFIED


def test_store_data_of_a_wrong_length_is_refused_by_the_applet(multi: Card, lab: Lab) -> None:
    ch = domain(multi, lab, PARTNER_SD_AID)
    ch.install_for_personalisation(LOYALTY_AID)
    assert refused(ch.store_data, bytes(5), last=True) == SW.WRONG_LENGTH
    assert loyalty_points(multi) == 3


def test_a_deleted_personalisation_target_takes_no_more_store_data(multi: Card, lab: Lab) -> None:
    ch = domain(multi, lab, PARTNER_SD_AID)
    ch.install_for_personalisation(LOYALTY_AID)
    ch.delete(LOYALTY_AID)
    assert refused(ch.store_data, bytes(4), last=True) == SW.CONDITIONS_NOT_SATISFIED


@pytest.mark.parametrize(
    ("sd", "target"),
    [
        (OPERATOR_SD_AID, LOYALTY_AID),
        (ISD_AID, LOYALTY_AID),
        (ISD_AID, PURSE_AID),
        (PARTNER_SD_AID, PURSE_AID),
    ],
    ids=["operator->loyalty", "isd->loyalty", "isd->purse", "partner->purse"],
)
def test_only_an_applets_own_domain_may_delete_it(
    multi: Card, lab: Lab, sd: bytes, target: bytes
) -> None:
    ch = domain(multi, lab, sd)
    before = multi.eeprom.snapshot()
    assert refused(ch.delete, target) == SW.SECURITY_NOT_SATISFIED
    assert refused(ch.delete, target, related=True) == SW.SECURITY_NOT_SATISFIED
    assert multi.eeprom.snapshot() == before


def test_the_own_domain_deletes_its_applet(multi: Card, lab: Lab) -> None:
    domain(multi, lab, PARTNER_SD_AID).delete(LOYALTY_AID)
    assert select_sw(multi, LOYALTY_AID) == SW.FILE_NOT_FOUND
    statuses = card_status(multi, lab.keystore, multi.serial)
    assert LOYALTY_AID not in {s.aid for s in statuses}
    assert PARTNER_SD_AID in {s.aid for s in statuses}


@pytest.mark.parametrize(
    ("p1", "p2", "data", "sw"),
    [
        (0, 0, tlv.encode(0x4F, bytes.fromhex("F05450FFFF01")), SW.REF_DATA_NOT_FOUND),
        (1, 0, tlv.encode(0x4F, LOYALTY_AID), SW.INCORRECT_P1P2),
        (0, 0x40, tlv.encode(0x4F, LOYALTY_AID), SW.INCORRECT_P1P2),
        (0, 0, tlv.encode(0x4E, LOYALTY_AID), SW.WRONG_DATA),
        (0, 0, b"\x4f\x10\x01", SW.WRONG_DATA),
    ],
    ids=["unknown AID", "P1", "P2", "wrong tag", "truncated TLV"],
)
def test_a_malformed_delete_is_refused(
    multi: Card, lab: Lab, p1: int, p2: int, data: bytes, sw: int
) -> None:
    ch = domain(multi, lab, PARTNER_SD_AID)
    assert refused(ch.call, Command(CLA_PROPRIETARY, Ins.DELETE, p1, p2, data, 0)) == sw
    assert loyalty_points(multi) == 3


# --- applet life cycle ---------------------------------------------------------------------------


def set_app_life(ch: SecureChannel, aid: bytes, state: int) -> None:
    ch.call(Command(CLA_PROPRIETARY, Ins.SET_STATUS, 0x40, state, aid, 0))


def test_a_domain_locks_and_unlocks_its_applet(multi: Card, lab: Lab) -> None:
    set_app_life(domain(multi, lab, PARTNER_SD_AID), LOYALTY_AID, AppLifeCycle.LOCKED)
    assert select_sw(multi, LOYALTY_AID) == SW.FILE_NOT_FOUND
    by_aid = {s.aid: s for s in card_status(multi, lab.keystore, multi.serial)}
    assert by_aid[LOYALTY_AID].life == AppLifeCycle.LOCKED
    set_app_life(domain(multi, lab, PARTNER_SD_AID), LOYALTY_AID, AppLifeCycle.SELECTABLE)
    assert loyalty_points(multi) == 3


def test_another_domain_cannot_lock_an_applet(multi: Card, lab: Lab) -> None:
    ch = domain(multi, lab, OPERATOR_SD_AID)
    sw = refused(set_app_life, ch, LOYALTY_AID, AppLifeCycle.LOCKED)
    assert sw == SW.SECURITY_NOT_SATISFIED
    assert loyalty_points(multi) == 3


# --- GET STATUS ---------------------------------------------------------------------------


def entries(ch: SecureChannel, p1: int) -> set[tuple[bytes, bytes, int]]:
    return {(e[0x4F], e[0xCC], e[0xC5][0]) for e in ch.get_status(p1)}


def test_get_status_via_the_isd_lists_isd_domains_and_applets_with_their_domains(
    multi: Card, lab: Lab
) -> None:
    isd = domain(multi, lab, ISD_AID)
    [isd_entry] = isd.get_status(0x80)
    assert isd_entry[0x4F] == ISD_AID
    assert isd_entry[0x9F70] == bytes([CardLifeCycle.SECURED])
    assert isd_entry[0xC5][0] == PRIV_SECURITY_DOMAIN
    assert entries(isd, 0x40) == {
        (OPERATOR_SD_AID, ISD_AID, PRIV_SECURITY_DOMAIN),
        (PARTNER_SD_AID, ISD_AID, PRIV_SECURITY_DOMAIN),
        (PURSE_AID, OPERATOR_SD_AID, 0),
        (LOYALTY_AID, PARTNER_SD_AID, 0),
    }
    packages = {e[0x4F]: e[0xC4] for e in isd.get_status(0x40)}
    assert packages[PURSE_AID] == PURSE_PACKAGE_AID
    assert packages[LOYALTY_AID] == LOYALTY_PACKAGE_AID
    assert packages[PARTNER_SD_AID] == SD_PACKAGE_AID


@pytest.mark.parametrize(
    ("sd", "own"),
    [(OPERATOR_SD_AID, PURSE_AID), (PARTNER_SD_AID, LOYALTY_AID)],
    ids=["operator domain", "partner domain"],
)
def test_get_status_via_a_supplementary_domain_lists_only_its_own(
    multi: Card, lab: Lab, sd: bytes, own: bytes
) -> None:
    ch = domain(multi, lab, sd)
    assert entries(ch, 0x40) == {(sd, ISD_AID, PRIV_SECURITY_DOMAIN), (own, sd, 0)}
    assert refused(ch.get_status, 0x80) == SW.REF_DATA_NOT_FOUND


@pytest.mark.parametrize(
    ("p1", "sw"),
    [(0x20, SW.REF_DATA_NOT_FOUND), (0x10, SW.INCORRECT_P1P2), (0x00, SW.INCORRECT_P1P2)],
)
def test_get_status_of_load_files_or_unknown_subsets_is_refused(
    card: Card, lab: Lab, p1: int, sw: int
) -> None:
    assert refused(domain(card, lab, ISD_AID).get_status, p1) == sw


def test_the_tsm_card_status_matches_the_card(multi: Card, lab: Lab) -> None:
    statuses = card_status(multi, lab.keystore, multi.serial)
    assert statuses[0] == AppStatus(ISD_AID, CardLifeCycle.SECURED, PRIV_SECURITY_DOMAIN, ISD_AID)
    assert set(statuses[1:]) == {
        AppStatus(OPERATOR_SD_AID, AppLifeCycle.SELECTABLE, PRIV_SECURITY_DOMAIN, ISD_AID),
        AppStatus(PARTNER_SD_AID, AppLifeCycle.SELECTABLE, PRIV_SECURITY_DOMAIN, ISD_AID),
        AppStatus(PURSE_AID, AppLifeCycle.SELECTABLE, 0, OPERATOR_SD_AID),
        AppStatus(LOYALTY_AID, AppLifeCycle.SELECTABLE, 0, PARTNER_SD_AID),
    }


def test_a_blank_card_status_lists_only_the_isd(lab: Lab) -> None:
    card = Card.manufacture(b"BLANKST1")
    ch = SecureChannel.open(ApduClient(card), ISD_AID, scp03.TRANSPORT_KEYS)
    [isd] = ch.get_status(0x80)
    assert isd[0x9F70] == bytes([CardLifeCycle.OP_READY])
    assert refused(ch.get_status, 0x40) == SW.REF_DATA_NOT_FOUND
    statuses = card_status(card, lab.keystore, card.serial, keys=scp03.TRANSPORT_KEYS)
    assert statuses == [AppStatus(ISD_AID, CardLifeCycle.OP_READY, PRIV_SECURITY_DOMAIN, ISD_AID)]
