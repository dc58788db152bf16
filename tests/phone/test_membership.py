"""The membership pass: its own domain, gate checks, points under its own key, the
same tap as a payment, and the firewall between it and the purse."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tallypurse.card.card import Card
from tallypurse.card.membership import points_mac_input, receipt_mac_input
from tallypurse.card.storage import PowerLoss, Store
from tallypurse.core import crypto
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.errors import BadInput, CardError
from tallypurse.core.messages import app_subkeys
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    GATE_EXPIRED,
    GATE_GRANTED,
    GATE_NOT_ENTITLED,
    GATE_NOT_YET_VALID,
    INS_MEMBER_CHECK,
    INS_MEMBER_POINTS,
    INS_MEMBER_READ,
    ISD_AID,
    LOYALTY_AID,
    MEMBER_ADD,
    MEMBER_REDEEM,
    MEMBERSHIP_AID,
    MEMBERSHIP_SD_AID,
    OPERATOR_SD_AID,
    PURSE_AID,
    Ins,
)
from tallypurse.core.sw import ISOException
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import (
    card_status,
    delete_applet,
    install_loyalty,
    install_partner_domain,
    open_domain,
)
from tallypurse.host.tsm.membership import (
    MembershipClient,
    PassState,
    PointsAuthority,
    change_points,
    install_membership,
    pass_key,
    points_mac,
    receipt_mac,
    renew_membership,
)
from tallypurse.lab import Lab
from tallypurse.sam import Sam

from .conftest import NOW, YEAR, PhoneFactory, Recorder, a_pass

GATE_MAIN, GATE_POOL, GATE_GYM, GATE_VIP = 0, 1, 2, 4


def member(card: Card) -> MembershipClient:
    client = MembershipClient(ApduClient(card))
    client.select()
    return client


@pytest.fixture
def member_card(lab: Lab, card: Card) -> Card:
    """A personalised payment card that also carries a membership pass (bits 0, 1, 3)."""
    install_membership(card, lab.keystore, card.serial, a_pass(b"alice", points=100))
    return card


def test_a_membership_pass_is_installed_in_its_own_domain_and_reads_back(
    lab: Lab, member_card: Card
) -> None:
    status = {s.aid: s for s in card_status(member_card, lab.keystore, member_card.serial)}
    assert status[MEMBERSHIP_SD_AID].is_sd and status[MEMBERSHIP_SD_AID].sd == ISD_AID
    assert status[MEMBERSHIP_AID].sd == MEMBERSHIP_SD_AID
    assert status[PURSE_AID].sd == OPERATOR_SD_AID
    version, _ = pass_key(lab.keystore, member_card.serial)
    assert member(member_card).read() == PassState(
        b"alice", NOW - 3600, NOW + YEAR, 100, 0b1011, 0, version
    )


@pytest.mark.parametrize(
    ("time", "bit", "decision"),
    [
        (NOW, GATE_MAIN, GATE_GRANTED),
        (NOW, GATE_POOL, GATE_GRANTED),
        (NOW, GATE_GYM, GATE_NOT_ENTITLED),
        (NOW, GATE_VIP, GATE_NOT_ENTITLED),
        (NOW - 3600, GATE_MAIN, GATE_GRANTED),  # the first valid second
        (NOW - 3601, GATE_MAIN, GATE_NOT_YET_VALID),
        (NOW + YEAR, GATE_MAIN, GATE_GRANTED),  # the last valid second
        (NOW + YEAR + 1, GATE_MAIN, GATE_EXPIRED),
        (NOW + YEAR + 1, GATE_GYM, GATE_EXPIRED),
    ],
)
def test_a_gate_grants_or_denies_by_validity_at_the_readers_time_and_the_entitlement_bit(
    member_card: Card, time: int, bit: int, decision: int
) -> None:
    before = member_card.eeprom.snapshot()
    assert member(member_card).check(time, bit) == decision
    assert member_card.eeprom.snapshot() == before  # a check changes nothing


@pytest.mark.parametrize(
    ("data", "sw"),
    [(b"", SW.WRONG_LENGTH), (bytes(6), SW.WRONG_LENGTH), (bytes(4) + b"\x20", SW.WRONG_DATA)],
)
def test_a_malformed_gate_check_is_refused(member_card: Card, data: bytes, sw: int) -> None:
    client = ApduClient(member_card)
    client.select(MEMBERSHIP_AID)
    assert client.send(Command(CLA_PROPRIETARY, INS_MEMBER_CHECK, 0, 0, data, 0)).sw == sw


@pytest.mark.parametrize("form", ["card", "phone"])
def test_a_gate_check_and_a_payment_happen_in_the_same_tap(
    lab: Lab, sam: Sam, member_card: Card, make_phone: PhoneFactory, form: str
) -> None:
    if form == "phone":
        target, _ = make_phone()
        install_membership(target, lab.keystore, target.serial, a_pass(b"carol"))
    else:
        target = member_card
    lab.load(target, 3_000)
    session = target.os
    recorder = Recorder(target)

    # one card session: SELECT pass → CHECK → SELECT purse → INITIALIZE PURCHASE → DEBIT
    gate = MembershipClient(ApduClient(recorder))
    gate.select()
    assert gate.granted(NOW, GATE_POOL)
    tap = lab.purchase(recorder, sam, 450)  # type: ignore[arg-type]
    assert tap.result.balance_after == 2_550
    assert target.os is session  # never powered down in between
    assert [(c[1], c[5 : 5 + c[4]] if c[1] == Ins.SELECT else b"")
            for c in recorder.commands][:5] == [
        (Ins.SELECT, MEMBERSHIP_AID), (INS_MEMBER_CHECK, b""), (Ins.SELECT, PURSE_AID),
        (Ins.INITIALIZE_PURCHASE, b""), (Ins.DEBIT, b""),
    ]


def test_points_are_added_and_redeemed_under_the_pass_key_with_a_verified_receipt(
    lab: Lab, member_card: Card
) -> None:
    ks, serial = lab.keystore, member_card.serial
    added = change_points(member_card, ks, serial, MEMBER_ADD, 25)  # receipt verified
    assert (added.points, added.counter) == (125, 1)
    redeemed = change_points(member_card, ks, serial, MEMBER_REDEEM, 120)
    assert (redeemed.points, redeemed.counter) == (5, 2)
    assert member(member_card).read().points == 5


def test_a_points_command_is_good_for_one_card_once(
    lab: Lab, member_card: Card, make_card: Callable[..., Card]
) -> None:
    another = make_card().serial
    ks, serial = lab.keystore, member_card.serial
    authority = PointsAuthority(ks)
    client = member(member_card)
    seen = client.challenge()
    mac = authority.authorise(serial, MEMBER_ADD, 10, seen)
    client.update_points(MEMBER_ADD, 10, mac)
    before = member_card.eeprom.snapshot()

    def refused(op: int, amount: int, mac: bytes) -> int:
        with pytest.raises(CardError) as err:
            client.update_points(op, amount, mac)
        return err.value.sw

    # replayed: the challenge is spent (and a new one moves the MAC's input)
    assert refused(MEMBER_ADD, 10, mac) == SW.CONDITIONS_NOT_SATISFIED
    client.challenge()
    assert refused(MEMBER_ADD, 10, mac) == SW.SECURITY_NOT_SATISFIED
    # another amount or operation under the same MAC
    seen = client.challenge()
    mac = authority.authorise(serial, MEMBER_ADD, 10, seen)
    assert refused(MEMBER_ADD, 1_000, mac) == SW.SECURITY_NOT_SATISFIED
    # the challenge is spent by the failed attempt too
    assert refused(MEMBER_ADD, 10, mac) == SW.CONDITIONS_NOT_SATISFIED
    # a MAC made for another card (its serial and its pass key)
    seen = client.challenge()
    other = points_mac(pass_key(ks, another)[1], another, MEMBER_ADD, 10,
                       seen.counter, seen.challenge)
    assert refused(MEMBER_ADD, 10, other) == SW.SECURITY_NOT_SATISFIED
    # redeeming more than the pass holds
    seen = client.challenge()
    assert refused(MEMBER_REDEEM, 111,
                   authority.authorise(serial, MEMBER_REDEEM, 111, seen)) == SW.INSUFFICIENT_FUNDS
    # nothing of it changed the pass
    assert member_card.eeprom.snapshot() == before
    assert member(member_card).read().points == 110


def test_a_points_command_tears_either_before_or_after(lab: Lab, member_card: Card) -> None:
    ks, serial = lab.keystore, member_card.serial
    cut = 0
    while True:
        client = member(member_card)
        seen = client.challenge()
        mac = PointsAuthority(ks).authorise(serial, MEMBER_ADD, 7, seen)
        start = client.read().points
        member_card.eeprom.cut_at = member_card.eeprom.writes + cut
        try:
            client.update_points(MEMBER_ADD, 7, mac)
        except PowerLoss:
            member_card.power_up()
            assert member(member_card).read().points in (start, start + 7)
            cut += 1
            continue
        member_card.eeprom.cut_at = None
        break
    assert cut >= 3  # log entries, commit flag, main-area writes


def test_the_card_and_the_host_agree_on_the_points_mac_layouts(lab: Lab) -> None:
    serial, challenge = bytes.fromhex("5048494E00000001"), bytes(range(8))
    _, key = pass_key(lab.keystore, serial)
    k_mac = app_subkeys(key)[1]
    assert points_mac(key, serial, MEMBER_ADD, 5, 9, challenge) == crypto.aes_cmac(
        k_mac, points_mac_input(serial, MEMBER_ADD, 5, 9, challenge))
    assert receipt_mac(key, serial, MEMBER_ADD, 5, 14, 10, challenge) == crypto.aes_cmac(
        k_mac, receipt_mac_input(serial, MEMBER_ADD, 5, 14, 10, challenge))
    assert points_mac_input(serial, MEMBER_ADD, 5, 9, challenge).hex() == (
        "54500130" "5048494e00000001" "01" "00000005" "00000009" "0001020304050607")


def test_the_pass_is_renewed_through_its_domain_but_holder_and_points_stay_fixed(
    lab: Lab, member_card: Card
) -> None:
    ks, serial = lab.keystore, member_card.serial
    renew_membership(member_card, ks, serial, not_after=NOW + 2 * YEAR, entitlements=0b10100)
    state = member(member_card).read()
    assert (state.not_after, state.entitlements, state.holder, state.points) == (
        NOW + 2 * YEAR, 0b10100, b"alice", 100)
    assert member(member_card).granted(NOW + YEAR + 1, GATE_VIP)
    channel = open_domain(ApduClient(member_card), ks, serial, MEMBERSHIP_SD_AID)
    channel.install_for_personalisation(MEMBERSHIP_AID)
    for tag, value in ((0x81, b"mallory"), (0x84, (10**6).to_bytes(4, "big"))):
        with pytest.raises(CardError) as err:
            channel.store_data(bytes([tag, len(value)]) + value, last=True)
        assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    with pytest.raises(BadInput):
        renew_membership(member_card, ks, serial)
    with pytest.raises(CardError) as err:  # validity that ends before it begins
        renew_membership(member_card, ks, serial, not_before=NOW + 3 * YEAR)
    assert err.value.sw == SW.WRONG_DATA


# --- the firewall, both ways ----------------------------------------------------------------
def test_the_membership_pass_asking_for_the_purse_interface_is_refused(
    member_card: Card,
) -> None:
    assert member_card.os is not None
    pass_ctx = member_card.os.instance(MEMBERSHIP_AID).ctx
    for name in ("balance", "counters", "cfg", ""):
        with pytest.raises(ISOException) as err:
            pass_ctx.shareable(PURSE_AID, name)
        assert err.value.sw == SW.SECURITY_NOT_SATISFIED


def test_the_purse_asking_for_any_membership_interface_is_refused(member_card: Card) -> None:
    assert member_card.os is not None
    purse_ctx = member_card.os.instance(PURSE_AID).ctx
    for name in ("pass", "points", "balance", "holder", ""):
        with pytest.raises(ISOException) as err:
            purse_ctx.shareable(MEMBERSHIP_AID, name)
        assert err.value.sw == SW.SECURITY_NOT_SATISFIED


def test_neither_applet_sees_or_answers_for_the_others_state(lab: Lab, member_card: Card) -> None:
    lab.load(member_card, 700)
    assert member_card.os is not None
    pass_store = member_card.os.instance(MEMBERSHIP_AID).ctx.store
    purse_store = member_card.os.instance(PURSE_AID).ctx.store
    assert set(pass_store.names()) == {"holder", "valid", "ent", "pts", "key", "perso"}
    assert pass_store.get("ctr") is None and pass_store.get("cfg") is None
    assert purse_store.get("pts") is None and purse_store.get("holder") is None
    # every object on the card belongs to exactly one namespace
    snapshot = member_card.eeprom.snapshot()
    assert {k for k in snapshot if k.startswith(MEMBERSHIP_AID.hex() + ":")} == {
        f"{MEMBERSHIP_AID.hex()}:{n}" for n in pass_store.names()
    }
    assert Store(member_card.eeprom, MEMBERSHIP_AID).names() == pass_store.names()

    # through APDUs: each applet only knows its own commands
    client = ApduClient(member_card)
    client.select(PURSE_AID)
    for ins in (INS_MEMBER_READ, INS_MEMBER_POINTS):
        assert client.send(Command(CLA_PROPRIETARY, ins, 0, 0, b"", 0)).sw == (
            SW.INS_NOT_SUPPORTED)
    client.select(MEMBERSHIP_AID)
    for ins in (Ins.GET_DATA, Ins.INITIALIZE_LOAD, Ins.WRITE_BACK):
        assert client.send(Command(CLA_PROPRIETARY, ins, 1, 2, b"", 0)).sw == (
            SW.INS_NOT_SUPPORTED)


def test_the_membership_domain_cannot_manage_the_purse_and_deleting_the_pass_leaves_it(
    lab: Lab, member_card: Card
) -> None:
    ks, serial = lab.keystore, member_card.serial
    lab.load(member_card, 900)
    channel = open_domain(ApduClient(member_card), ks, serial, MEMBERSHIP_SD_AID)
    with pytest.raises(CardError) as err:
        channel.delete(PURSE_AID)
    assert err.value.sw == SW.SECURITY_NOT_SATISFIED
    with pytest.raises(CardError) as err:
        channel.install_for_personalisation(PURSE_AID)
    assert err.value.sw == SW.SECURITY_NOT_SATISFIED

    purse_objects = {k: v for k, v in member_card.eeprom.snapshot().items()
                     if k.startswith(PURSE_AID.hex() + ":")}
    delete_applet(member_card, ks, serial, MEMBERSHIP_SD_AID, MEMBERSHIP_AID)
    after = member_card.eeprom.snapshot()
    assert not [k for k in after if k.startswith(MEMBERSHIP_AID.hex() + ":")]
    assert {k: v for k, v in after.items() if k.startswith(PURSE_AID.hex() + ":")} == (
        purse_objects)


def test_the_loyalty_applet_keeps_working_beside_the_membership_pass(
    lab: Lab, member_card: Card
) -> None:
    ks, serial = lab.keystore, member_card.serial
    install_partner_domain(member_card, ks, serial)
    install_loyalty(member_card, ks, serial, points=3)
    lab.load(member_card, 250)
    client = ApduClient(member_card)
    client.select(LOYALTY_AID)
    assert client.call(Command(CLA_PROPRIETARY, 0x24, 0, 0, b"", 0)) == (
        (250).to_bytes(4, "big") + (978).to_bytes(2, "big"))
    assert member(member_card).read().points == 100
