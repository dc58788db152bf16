"""Tearing: PUT KEY, INSTALL and DELETE cut at every persistent write.

For each command: run it once on a copy of the card memory to learn its
persistent writes and the after-state; then, for every write index, run the
very same wrapped APDU on a fresh copy with the power cut at that write,
power up again and require exactly the before-state or exactly the
after-state. The secure channel lives in the card's RAM, so it is opened on
every copy with the same host challenge and a seeded card random: the
session keys, and so the wrapped APDU, are the same each time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random

import pytest

from tallypurse.card.card import Card, CardRemoved
from tallypurse.card.storage import Eeprom, PowerLoss
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
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    Ins,
)
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import domain_key_versions, install_loyalty, install_partner_domain
from tallypurse.host.tsm.channel import SecureChannel, lv
from tallypurse.host.tsm.keys import isd_keys, sd_keys
from tallypurse.lab import Lab

HOST_CHALLENGE = b"TEAR-HC1"
NEW = scp03.StaticKeys(0x50, bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))


def seeded() -> Callable[[int], bytes]:
    return Random(20260101).randbytes


def keys_of(card: Card, lab: Lab, aid: bytes) -> scp03.StaticKeys:
    version = domain_key_versions(ApduClient(card), aid)[-1]
    if aid == ISD_AID:
        return isd_keys(lab.keystore, card.serial, version=version)
    return sd_keys(lab.keystore, card.serial, aid, version=version)


def selectable(card: Card, aid: bytes) -> bool:
    r = ApduClient(card).send(Command(0x00, Ins.SELECT, 0x04, 0x00, aid, 0))
    return r.sw == SW.OK


def opens(card: Card, aid: bytes, keys: scp03.StaticKeys) -> bool:
    try:
        SecureChannel.open(ApduClient(card), aid, keys).get_status(0x40)
    except CardError:
        return False
    return True


Check = Callable[[Card, Lab, bytes, scp03.StaticKeys, bool], None]
# (card after power-up, lab, domain, the domain's keys before the command, command done?)


@dataclass(frozen=True)
class Case:
    domain: bytes
    setup: Callable[[Card, Lab], None]
    command: Callable[[Card, Lab, scp03.StaticKeys], Command]
    check: Check


def no_setup(card: Card, lab: Lab) -> None:
    pass


def partner(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)


def partner_and_loyalty(card: Card, lab: Lab) -> None:
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial, points=12)


def put_key(replace: bool) -> Callable[[Card, Lab, scp03.StaticKeys], Command]:
    def make(card: Card, lab: Lab, keys: scp03.StaticKeys) -> Command:
        data = scp03.encode_key_set(keys.dek, NEW)
        return Command(CLA_PROPRIETARY, Ins.PUT_KEY, keys.version if replace else 0, 0x81, data, 0)

    return make


def check_put_key(replace: bool) -> Check:
    def check(card: Card, lab: Lab, domain: bytes, keys: scp03.StaticKeys, done: bool) -> None:
        expected = {keys.version}
        if done:
            expected = {NEW.version} if replace else {keys.version, NEW.version}
        assert domain_key_versions(ApduClient(card), domain) == sorted(expected)
        assert opens(card, domain, NEW) == done
        assert opens(card, domain, keys) == (not (done and replace))

    return check


def install_sd(card: Card, lab: Lab, keys: scp03.StaticKeys) -> Command:
    initial = sd_keys(lab.keystore, card.serial, PARTNER_SD_AID)
    params = tlv.encode(0xC9, tlv.encode(0xDA, scp03.encode_key_set(keys.dek, initial)))
    data = lv(
        SD_PACKAGE_AID, SD_MODULE_AID, PARTNER_SD_AID, bytes([PRIV_SECURITY_DOMAIN]), params, b""
    )
    return Command(CLA_PROPRIETARY, Ins.INSTALL, INSTALL_FOR_INSTALL_AND_SELECTABLE, 0, data, 0)


def check_install_sd(
    card: Card, lab: Lab, domain: bytes, keys: scp03.StaticKeys, done: bool
) -> None:
    assert selectable(card, PARTNER_SD_AID) == done
    assert opens(card, PARTNER_SD_AID, sd_keys(lab.keystore, card.serial, PARTNER_SD_AID)) == done


def install_applet(card: Card, lab: Lab, keys: scp03.StaticKeys) -> Command:
    data = lv(LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID, b"\x00", b"", b"")
    return Command(CLA_PROPRIETARY, Ins.INSTALL, INSTALL_FOR_INSTALL_AND_SELECTABLE, 0, data, 0)


def check_install_applet(
    card: Card, lab: Lab, domain: bytes, keys: scp03.StaticKeys, done: bool
) -> None:
    assert selectable(card, LOYALTY_AID) == done


def delete(aid: bytes, related: bool) -> Callable[[Card, Lab, scp03.StaticKeys], Command]:
    def make(card: Card, lab: Lab, keys: scp03.StaticKeys) -> Command:
        return Command(
            CLA_PROPRIETARY, Ins.DELETE, 0, 0x80 if related else 0x00, tlv.encode(0x4F, aid), 0
        )

    return make


def check_deleted(*aids: bytes) -> Check:
    def check(card: Card, lab: Lab, domain: bytes, keys: scp03.StaticKeys, done: bool) -> None:
        for aid in aids:
            assert selectable(card, aid) != done, aid.hex()
        if not done and LOYALTY_AID in aids:
            client = ApduClient(card)
            client.select(LOYALTY_AID)
            assert client.call(Command(CLA_PROPRIETARY, 0x22, 0, 0, b"", 0)) == (12).to_bytes(
                4, "big"
            )

    return check


CASES = {
    "PUT KEY replacing the ISD key set": Case(
        ISD_AID, no_setup, put_key(replace=True), check_put_key(replace=True)
    ),
    "PUT KEY adding an ISD key set": Case(
        ISD_AID, no_setup, put_key(replace=False), check_put_key(replace=False)
    ),
    "PUT KEY replacing a domain key set": Case(
        OPERATOR_SD_AID, no_setup, put_key(replace=True), check_put_key(replace=True)
    ),
    "INSTALL of a security domain": Case(ISD_AID, no_setup, install_sd, check_install_sd),
    "INSTALL of an applet": Case(PARTNER_SD_AID, partner, install_applet, check_install_applet),
    "DELETE of an applet": Case(
        PARTNER_SD_AID, partner_and_loyalty, delete(LOYALTY_AID, False), check_deleted(LOYALTY_AID)
    ),
    "DELETE of a domain and its applets": Case(
        ISD_AID,
        partner_and_loyalty,
        delete(PARTNER_SD_AID, True),
        check_deleted(PARTNER_SD_AID, LOYALTY_AID),
    ),
}


def powered_copy(image: bytes, domain: bytes, keys: scp03.StaticKeys) -> tuple[Card, SecureChannel]:
    """A fresh card on a copy of the memory, with the (deterministic) channel open."""
    card = Card(Eeprom.from_image(image), random=seeded())
    channel = SecureChannel.open(ApduClient(card), domain, keys, host_challenge=HOST_CHALLENGE)
    return card, channel


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_command_cut_at_every_persistent_write_ends_exactly_before_or_after(
    card: Card, lab: Lab, case: Case
) -> None:
    case.setup(card, lab)
    keys = keys_of(card, lab, case.domain)
    image = card.eeprom.to_image()

    # The uncut run: the wrapped APDU, the write count, the after-state.
    reference, channel = powered_copy(image, case.domain, keys)
    wrapped = channel.session.wrap(case.command(card, lab, keys)).to_bytes()
    before = reference.eeprom.snapshot()
    start = reference.eeprom.writes
    assert Response.parse(reference.transmit(wrapped)).sw == SW.OK
    count = reference.eeprom.writes - start
    after = reference.eeprom.snapshot()
    assert after != before
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert count == 2 * len(changed) + 2  # log entries, flag, main writes, log clear

    outcomes: list[bool] = []
    for i in range(count):
        torn, channel = powered_copy(image, case.domain, keys)
        assert channel.session.wrap(case.command(card, lab, keys)).to_bytes() == wrapped
        torn.eeprom.cut_at = torn.eeprom.writes + i
        with pytest.raises(PowerLoss):
            torn.transmit(wrapped)
        with pytest.raises(CardRemoved):
            torn.transmit(wrapped)
        restarted = Card(torn.eeprom, random=seeded())
        state = restarted.eeprom.snapshot()
        assert state in (before, after), f"cut at write {i} of {count}: a mixed state"
        done = state == after
        outcomes.append(done)
        case.check(restarted, lab, case.domain, keys, done)
        # the card image carries no leftovers of the torn transaction
        assert Eeprom.from_image(restarted.eeprom.to_image()).snapshot() == state
    assert not outcomes[0] and outcomes[-1]
    assert set(outcomes) == {False, True}
    # once done, always done: the commit flag is the single point of no return
    assert outcomes == sorted(outcomes)


def test_the_cut_counter_names_a_write_not_a_command(card: Card, lab: Lab) -> None:
    keys = keys_of(card, lab, ISD_AID)
    image = card.eeprom.to_image()
    torn, channel = powered_copy(image, ISD_AID, keys)
    wrapped = channel.session.wrap(put_key(True)(torn, lab, keys)).to_bytes()
    torn.eeprom.cut_at = torn.eeprom.writes + 1_000
    assert Response.parse(torn.transmit(wrapped)).sw == SW.OK
    assert torn.eeprom.cut_at is not None  # not reached: still armed
