"""The applet firewall: shared interfaces on purpose only, storage namespaced by AID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tallypurse.card import card as card_module
from tallypurse.card.applet import Applet
from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom, Store
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    ISD_AID,
    LOYALTY_AID,
    LOYALTY_MODULE_AID,
    LOYALTY_PACKAGE_AID,
    OPERATOR_SD_AID,
    PARTNER_SD_AID,
    PURSE_AID,
    AppLifeCycle,
    Ins,
)
from tallypurse.core.sw import ISOException
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import (
    delete_applet,
    install_loyalty,
    install_partner_domain,
    open_domain,
)
from tallypurse.lab import Lab

SNOOP_PACKAGE = bytes.fromhex("F0545099")
SNOOP_MODULE = bytes.fromhex("F054509900")
SNOOP_AID = bytes.fromhex("F05450990001")

INS_ASK_PURSE = 0x01  # data: interface name
INS_ASK_APPLET = 0x02  # data: server AID; asks for "balance"
INS_NAMES = 0x03
INS_GET = 0x04  # data: object name
INS_PUT = 0x05  # data: value of "note"
INS_HAS_MANAGER = 0x06


class Snoop(Applet):
    """A test-only applet that tries to reach what is not its own."""

    def process(self, cmd: Command) -> bytes:
        if cmd.ins == INS_ASK_PURSE:
            self.ctx.shareable(PURSE_AID, cmd.data.decode())
            return b"granted"
        if cmd.ins == INS_ASK_APPLET:
            self.ctx.shareable(cmd.data, "balance")
            return b"granted"
        if cmd.ins == INS_NAMES:
            return ",".join(sorted(self.ctx.store.names())).encode()
        if cmd.ins == INS_GET:
            return self.ctx.store.get(cmd.data.decode()) or b""
        if cmd.ins == INS_PUT:
            self.ctx.store.put("note", cmd.data)
            return b""
        if cmd.ins == INS_HAS_MANAGER:
            return bytes([self.ctx.manager is not None])
        raise ISOException(SW.INS_NOT_SUPPORTED)


@pytest.fixture
def test_rom(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The card ROM with the Snoop load file added (for this test only)."""
    monkeypatch.setitem(card_module.ROM, SNOOP_PACKAGE, {SNOOP_MODULE: Snoop})
    yield


@pytest.fixture
def multi(card: Card, lab: Lab, test_rom: None) -> Card:
    """A personalised card with the partner domain, loyalty (7 points) and Snoop."""
    ks = lab.keystore
    install_partner_domain(card, ks, card.serial)
    install_loyalty(card, ks, card.serial, points=7)
    channel = open_domain(ApduClient(card), ks, card.serial, PARTNER_SD_AID)
    channel.install(package=SNOOP_PACKAGE, module=SNOOP_MODULE, aid=SNOOP_AID)
    return card


def call(card: Card, aid: bytes, ins: int, data: bytes = b"") -> Response:
    client = ApduClient(card)
    client.select(aid)
    return client.send(Command(CLA_PROPRIETARY, ins, 0, 0, data, 0))


def balance(card: Card) -> tuple[int, int]:
    r = call(card, LOYALTY_AID, 0x24)
    assert r.sw == SW.OK, hex(r.sw)
    return int.from_bytes(r.data[:4], "big"), int.from_bytes(r.data[4:], "big")


# --- shared interfaces ----------------------------------------------------------------------


def test_loyalty_reads_the_purse_balance_through_the_exported_interface(
    card: Card, lab: Lab
) -> None:
    lab.load(card, 1234)
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial)
    assert balance(card) == (1234, 978)
    lab.load(card, 66)
    assert balance(card) == (1300, 978)


def test_loyalty_cannot_change_the_balance_it_reads(multi: Card, lab: Lab) -> None:
    lab.load(multi, 500)
    before = multi.eeprom.snapshot()
    assert balance(multi) == (500, 978)
    assert multi.eeprom.snapshot() == before


def test_an_applet_the_purse_does_not_trust_is_refused_the_balance_interface(
    multi: Card,
) -> None:
    assert call(multi, SNOOP_AID, INS_ASK_PURSE, b"balance").sw == SW.SECURITY_NOT_SATISFIED


@pytest.mark.parametrize("name", ["counters", "signing-key", "cfg", "app", "", "BALANCE"])
def test_an_interface_the_purse_does_not_export_is_refused_6982(multi: Card, name: str) -> None:
    assert call(multi, SNOOP_AID, INS_ASK_PURSE, name.encode()).sw == SW.SECURITY_NOT_SATISFIED


@pytest.mark.parametrize(
    "server",
    [ISD_AID, OPERATOR_SD_AID, PARTNER_SD_AID, LOYALTY_AID, bytes.fromhex("F05450FFFF01")],
    ids=["isd", "operator domain", "partner domain", "loyalty", "not on the card"],
)
def test_applets_that_export_nothing_or_do_not_exist_refuse_6982(
    multi: Card, server: bytes
) -> None:
    assert call(multi, SNOOP_AID, INS_ASK_APPLET, server).sw == SW.SECURITY_NOT_SATISFIED


def test_a_locked_purse_exports_nothing_even_to_a_trusted_client(multi: Card, lab: Lab) -> None:
    ks = lab.keystore
    sd = open_domain(ApduClient(multi), ks, multi.serial, OPERATOR_SD_AID)
    sd.call(Command(CLA_PROPRIETARY, Ins.SET_STATUS, 0x40, AppLifeCycle.LOCKED, PURSE_AID, 0))
    r = call(multi, LOYALTY_AID, 0x24)
    assert r.sw == SW.SECURITY_NOT_SATISFIED
    sd = open_domain(ApduClient(multi), ks, multi.serial, OPERATOR_SD_AID)
    sd.call(Command(CLA_PROPRIETARY, Ins.SET_STATUS, 0x40, AppLifeCycle.SELECTABLE, PURSE_AID, 0))
    assert balance(multi) == (0, 978)


def test_a_refused_interface_request_changes_nothing(multi: Card) -> None:
    before = multi.eeprom.snapshot()
    assert call(multi, SNOOP_AID, INS_ASK_PURSE, b"balance").sw == SW.SECURITY_NOT_SATISFIED
    assert multi.eeprom.snapshot() == before


def test_only_security_domains_are_handed_the_card_manager(multi: Card) -> None:
    assert call(multi, SNOOP_AID, INS_HAS_MANAGER).data == b"\x00"


# --- storage namespaces --------------------------------------------------------------------


def test_a_store_bound_to_one_aid_sees_only_its_own_objects(multi: Card) -> None:
    assert call(multi, SNOOP_AID, INS_PUT, b"hello").sw == SW.OK
    eeprom = multi.eeprom
    loyalty = Store(eeprom, LOYALTY_AID)
    purse = Store(eeprom, PURSE_AID)
    snoop = Store(eeprom, SNOOP_AID)
    assert loyalty.names() == ["points"]
    assert snoop.names() == ["note"]
    assert "cfg" in purse.names()
    assert not {"points", "note"} & set(purse.names())
    assert loyalty.get("points") == (7).to_bytes(4, "big")
    assert loyalty.get("cfg") is None
    assert snoop.get("points") is None
    assert purse.get("note") is None
    assert not any(n.startswith("keys:") for n in purse.names() + loyalty.names())


def test_an_applet_sees_only_its_own_names_through_its_context(multi: Card) -> None:
    assert call(multi, SNOOP_AID, INS_PUT, b"hello").sw == SW.OK
    assert call(multi, SNOOP_AID, INS_NAMES).data == b"note"


@pytest.mark.parametrize(
    "name",
    [
        "cfg",
        "skey",
        "points",
        "keys:01",
        f"{PURSE_AID.hex()}:cfg",
        f"../{PURSE_AID.hex()}:skey",
        "os:life",
        "",
    ],
)
def test_an_applet_cannot_read_another_applets_object_by_name(multi: Card, name: str) -> None:
    r = call(multi, SNOOP_AID, INS_GET, name.encode())
    assert r == Response(b"", SW.OK)


def test_stores_of_aids_that_prefix_each_other_do_not_mix() -> None:
    eeprom = Eeprom()
    short, long = bytes.fromhex("F054500200"), bytes.fromhex("F05450020001")
    eeprom.begin()
    Store(eeprom, short).put("a", b"1")
    Store(eeprom, long).put("b", b"2")
    assert Store(eeprom, short).names() == ["a"]
    eeprom.commit()
    assert Store(eeprom, short).names() == ["a"]
    assert Store(eeprom, long).names() == ["b"]
    assert Store(eeprom, short).get("b") is None


def test_an_applets_delete_erases_only_its_own_objects(multi: Card, lab: Lab) -> None:
    assert call(multi, SNOOP_AID, INS_PUT, b"hello").sw == SW.OK
    before = multi.eeprom.snapshot()
    delete_applet(multi, lab.keystore, multi.serial, PARTNER_SD_AID, LOYALTY_AID)
    after = multi.eeprom.snapshot()
    mine = {k for k in before if k.startswith(LOYALTY_AID.hex() + ":")}
    assert mine == {f"{LOYALTY_AID.hex()}:points"}
    assert set(before) - set(after) == mine | {f"os:app:{LOYALTY_AID.hex()}"}
    assert after == {k: v for k, v in before.items() if k in after}
    assert Store(multi.eeprom, SNOOP_AID).get("note") == b"hello"
    assert call(multi, SNOOP_AID, INS_NAMES).data == b"note"
    assert (
        ApduClient(multi).send(Command(0x00, Ins.SELECT, 0x04, 0x00, LOYALTY_AID, 0)).sw
        == SW.FILE_NOT_FOUND
    )


def test_a_reinstalled_applet_starts_from_empty_storage(multi: Card, lab: Lab) -> None:
    ks = lab.keystore
    delete_applet(multi, ks, multi.serial, PARTNER_SD_AID, LOYALTY_AID)
    channel = open_domain(ApduClient(multi), ks, multi.serial, PARTNER_SD_AID)
    channel.install(package=LOYALTY_PACKAGE_AID, module=LOYALTY_MODULE_AID, aid=LOYALTY_AID)
    assert Store(multi.eeprom, LOYALTY_AID).names() == []
    assert call(multi, LOYALTY_AID, 0x22).data == bytes(4)


def test_a_deleted_purse_exports_nothing(multi: Card, lab: Lab) -> None:
    delete_applet(multi, lab.keystore, multi.serial, ISD_AID, OPERATOR_SD_AID, related=True)
    assert call(multi, LOYALTY_AID, 0x24).sw == SW.SECURITY_NOT_SATISFIED
    assert call(multi, LOYALTY_AID, 0x22).data == (7).to_bytes(4, "big")
