"""The phone as a card: its own domain, card id and keys; the same purse, the same taps."""

from __future__ import annotations

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.errors import BadInput, CardError, CryptoError
from tallypurse.core.messages import DebtSlot
from tallypurse.core.protocol import (
    ISD_AID,
    MEMBERSHIP_AID,
    MEMBERSHIP_SD_AID,
    OPERATOR_SD_AID,
    PHONE_SD_AID,
    PURSE_AID,
    AppLifeCycle,
    CardLifeCycle,
    DebtState,
    Ins,
    TxType,
    WriteBackAction,
)
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import card_status
from tallypurse.host.tsm.channel import SecureChannel
from tallypurse.host.tsm.keys import app_key, sd_keys
from tallypurse.host.tsm.membership import MembershipClient, change_points, install_membership
from tallypurse.host.tsm.phone import install_phone_purse, phone_domain_keys
from tallypurse.lab import Lab
from tallypurse.sam import Sam

from .conftest import NOW, PhoneFactory, Recorder, a_pass, phone_serial


def purse_of(card: Card) -> PurseClient:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse


def test_a_phone_is_personalised_into_its_own_domain_with_its_own_card_id_and_keys(
    lab: Lab, make_phone: PhoneFactory, card: Card
) -> None:
    phone, issued = make_phone()
    ks = lab.keystore
    serial = phone.serial

    # GET STATUS through the phone's ISD: the phone's own domain, the purse inside it
    status = {s.aid: s for s in card_status(phone, ks, serial)}
    assert set(status) == {ISD_AID, PHONE_SD_AID, PURSE_AID}
    assert status[ISD_AID].life == CardLifeCycle.SECURED
    assert status[PHONE_SD_AID].is_sd and status[PHONE_SD_AID].sd == ISD_AID
    assert status[PURSE_AID].sd == PHONE_SD_AID
    assert status[PURSE_AID].life == AppLifeCycle.SELECTABLE

    # its own card id, certified by the issuer for the key generated on the phone
    assert issued.purse is not None
    assert purse_of(phone).card_data().card_id == serial == issued.phone_id
    certificate = cert.parse(purse_of(phone).certificate())
    assert certificate.holder == serial and certificate.public_key == issued.purse.public_key
    assert serial != card.serial  # a second form factor, not a copy of the card

    # its domain keys are diversified with the phone domain's AID, not the operator's
    assert phone_domain_keys(ks, serial) == sd_keys(ks, serial, PHONE_SD_AID)
    assert phone_domain_keys(ks, serial).enc != sd_keys(ks, serial, OPERATOR_SD_AID).enc
    SecureChannel.open(ApduClient(phone), PHONE_SD_AID, phone_domain_keys(ks, serial))
    with pytest.raises(CryptoError):
        SecureChannel.open(ApduClient(phone), PHONE_SD_AID, sd_keys(ks, serial))
    # ... and a card's operator-domain keys do not open the phone's domain
    with pytest.raises(CryptoError):
        SecureChannel.open(ApduClient(phone), PHONE_SD_AID, sd_keys(ks, card.serial))


def test_a_terminal_takes_a_purchase_from_a_phone_exactly_as_from_a_card(
    lab: Lab, sam: Sam, phone: Card, card: Card
) -> None:
    apdus: dict[str, list[bytes]] = {}
    for name, target in (("phone", phone), ("card", card)):
        lab.load(target, 5_000)
        recorder = Recorder(target)
        tap = lab.purchase(recorder, sam, 1_250)  # type: ignore[arg-type]  # TAC verified
        assert (tap.result.atc, tap.result.balance_after) == (1, 3_750)
        assert tap.session.card_id == target.serial
        apdus[name] = [c[:4] for c in recorder.commands]  # CLA INS P1 P2
    assert apdus["phone"] == apdus["card"]
    # SELECT, INITIALIZE PURCHASE, DEBIT; then (first tap only) GET DATA certificate
    assert [c[1] for c in apdus["phone"]][:3] == [Ins.SELECT, Ins.INITIALIZE_PURCHASE, Ins.DEBIT]


def test_a_split_purchase_from_a_phone_records_the_debt_on_the_phone(
    lab: Lab, sam: Sam, phone: Card
) -> None:
    lab.load(phone, 800)
    tap = lab.purchase(phone, sam, 800, split=1_200, tx_type=TxType.CANTEEN)
    assert (tap.result.balance_after, tap.result.debt_slot) == (0, 0)
    assert purse_of(phone).debts()[0] == DebtSlot(DebtState.PENDING, tap.result.atc, 1_200)


def test_a_load_and_a_write_back_on_a_phone_use_the_phones_own_app_key(
    lab: Lab, sam: Sam, phone: Card, card: Card
) -> None:
    event = lab.load(phone, 1_000)
    assert (event.event.card_id, event.event.balance_after) == (phone.serial, 1_000)
    tap = lab.purchase(phone, sam, 1_000, split=500, tx_type=TxType.TRANSIT)
    receipt = lab.settle_debt(phone, tap.result.atc, 500)  # sealed under the phone's APP key
    assert receipt.result == 0 and purse_of(phone).debts()[0].state == DebtState.FREE
    assert app_key(lab.keystore, phone.serial) != app_key(lab.keystore, card.serial)
    # a write-back sealed for the card (its APP key, its id) does nothing on the phone
    sealed = lab.seal_writeback(card.serial, WriteBackAction.BLOCK, b"")
    resp = ApduClient(phone).send(Command(0x80, Ins.WRITE_BACK, 0, 0, sealed, 0))
    assert resp.sw == SW.SECURITY_NOT_SATISFIED
    assert not purse_of(phone).card_data().flags & 0x01


def test_the_purse_is_installed_over_the_air_on_a_phone_that_began_with_only_a_membership_pass(
    lab: Lab, sam: Sam, make_phone: PhoneFactory
) -> None:
    phone, issued = make_phone(with_purse=False)
    ks, serial = lab.keystore, phone.serial
    assert issued.purse is None
    install_membership(phone, ks, serial, a_pass(b"bob", points=40))
    assert {s.aid for s in card_status(phone, ks, serial)} == {
        ISD_AID, PHONE_SD_AID, MEMBERSHIP_SD_AID, MEMBERSHIP_AID
    }
    refused = ApduClient(phone).send(Command(0x00, Ins.SELECT, 0x04, 0x00, PURSE_AID, 0))
    assert refused.sw == SW.FILE_NOT_FOUND

    # over the air, in the field: the phone stays SECURED; a secure channel is opened
    # with the phone's own domain only, never with the card manager
    recorder = Recorder(phone)
    installed = install_phone_purse(recorder, ks, serial=serial, now=NOW)
    selected = None
    channels = []
    for c in recorder.commands:
        if c[1] == Ins.SELECT:
            selected = c[5 : 5 + c[4]]
        elif c[1] == Ins.INITIALIZE_UPDATE:
            channels.append(selected)
    assert channels == [PHONE_SD_AID]
    status = {s.aid: s for s in card_status(phone, ks, serial)}
    assert status[ISD_AID].life == CardLifeCycle.SECURED
    assert status[PURSE_AID].sd == PHONE_SD_AID
    assert installed.card_id == serial and installed.sd_key_version == issued.sd_key_version

    lab.load(phone, 2_000)
    assert lab.purchase(phone, sam, 300).result.balance_after == 1_700
    change_points(phone, ks, serial, 0x01, 3)  # the pass kept its own state
    member = MembershipClient(ApduClient(phone))
    member.select()
    assert member.read().points == 43


def test_the_purse_cannot_be_installed_twice_or_on_a_card_without_a_phone_domain(
    lab: Lab, phone: Card, card: Card
) -> None:
    with pytest.raises(CardError) as err:
        install_phone_purse(phone, lab.keystore, serial=phone.serial, now=NOW)
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED  # AID already installed
    with pytest.raises(BadInput, match="no phone security domain"):
        install_phone_purse(card, lab.keystore, serial=card.serial, now=NOW)


def test_installing_the_purse_over_the_air_needs_the_phone_domains_keys(
    lab: Lab, make_phone: PhoneFactory
) -> None:
    phone, _ = make_phone(with_purse=False)
    before = phone.eeprom.snapshot()
    wrong = sd_keys(lab.keystore, phone.serial, OPERATOR_SD_AID)
    with pytest.raises(CryptoError):
        install_phone_purse(phone, lab.keystore, serial=phone.serial, now=NOW, keys=wrong)
    assert phone.eeprom.snapshot() == before


def test_a_phone_serial_must_be_eight_bytes(lab: Lab) -> None:
    from tallypurse.host.tsm.phone import issue_phone

    blank = Card.manufacture(phone_serial())
    with pytest.raises(BadInput):
        issue_phone(blank, lab.keystore, serial=b"short", now=NOW)
