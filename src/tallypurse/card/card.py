"""A whole card: persistent memory, the card OS, the ROM applets, power and file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tallypurse.core.errors import BadInput
from tallypurse.core.protocol import (
    ISD_AID,
    LOYALTY_AID,
    LOYALTY_MODULE_AID,
    LOYALTY_PACKAGE_AID,
    MEMBERSHIP_MODULE_AID,
    MEMBERSHIP_PACKAGE_AID,
    PRIV_SECURITY_DOMAIN,
    PURSE_MODULE_AID,
    PURSE_PACKAGE_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    AppLifeCycle,
    CardLifeCycle,
)
from tallypurse.core.scp03 import TRANSPORT_KEYS

from .gp import SecurityDomain
from .loyalty import LoyaltyApplet
from .membership import MembershipApplet
from .os import AppRecord, CardOS, Rom
from .purse import PurseApplet
from .storage import Eeprom


class Purse(PurseApplet):
    BALANCE_CLIENTS = frozenset({LOYALTY_AID})


ROM: Rom = {
    SD_PACKAGE_AID: {SD_MODULE_AID: SecurityDomain},
    PURSE_PACKAGE_AID: {PURSE_MODULE_AID: Purse},
    LOYALTY_PACKAGE_AID: {LOYALTY_MODULE_AID: LoyaltyApplet},
    MEMBERSHIP_PACKAGE_AID: {MEMBERSHIP_MODULE_AID: MembershipApplet},
}

def _atr() -> bytes:
    """Answer to reset: T=1, ten historical bytes "tallypurse", check byte TCK."""
    body = bytes.fromhex("8A8001") + b"tallypurse"
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


ATR = _atr()


class CardRemoved(Exception):
    """The card lost power (pulled from the field) and has not been powered up again."""


class Card:
    """A card: call :meth:`transmit` with command APDU bytes, get response bytes.

    ``random`` supplies the card's random numbers (challenges, key generation);
    tests and test vectors pass a deterministic one.
    """

    def __init__(self, eeprom: Eeprom, *, random: Callable[[int], bytes] | None = None,
                 path: Path | None = None) -> None:
        self.eeprom = eeprom
        self.random = random or os.urandom
        self.path = path
        self.os: CardOS | None = None
        self.power_up()

    @classmethod
    def manufacture(cls, serial: bytes, *, random: Callable[[int], bytes] | None = None,
                    path: Path | None = None) -> Card:
        """A blank card as it leaves the factory: an ISD with the transport keys,
        life cycle OP_READY, no applets."""
        if len(serial) != 8:
            raise BadInput("card serial must be 8 bytes")
        eeprom = Eeprom()
        eeprom.begin()
        eeprom.put("os:serial", serial)
        eeprom.put("os:life", bytes([CardLifeCycle.OP_READY]))
        os_ = CardOS(eeprom, ROM, random or os.urandom)
        os_.put_record(AppRecord(ISD_AID.hex(), SD_PACKAGE_AID.hex(), SD_MODULE_AID.hex(),
                                 ISD_AID.hex(), int(AppLifeCycle.PERSONALIZED),
                                 PRIV_SECURITY_DOMAIN))
        isd = os_.instance(ISD_AID)
        assert isinstance(isd, SecurityDomain)
        isd.manufacture(TRANSPORT_KEYS)
        eeprom.commit()
        card = cls(eeprom, random=random, path=path)
        card.save()
        return card

    @classmethod
    def open(cls, path: Path, *, random: Callable[[int], bytes] | None = None) -> Card:
        return cls(Eeprom.load(path), random=random, path=Path(path))

    def power_up(self) -> None:
        """Power the card (again): recover persistent memory, clear RAM."""
        self.eeprom.cut_at = None
        self.eeprom.recover()
        self.os = CardOS(self.eeprom, ROM, self.random)

    def power_off(self) -> None:
        self.os = None

    @property
    def serial(self) -> bytes:
        return self.eeprom.get("os:serial") or b""

    def transmit(self, apdu: bytes) -> bytes:
        """Send one command APDU. A power cut during it raises PowerLoss and leaves
        the card unpowered until :meth:`power_up`."""
        if self.os is None:
            raise CardRemoved("card is not powered")
        before = self.eeprom.writes
        try:
            response = self.os.transmit(apdu)
        except BaseException:
            self.os = None
            # The file is the EEPROM: keep what a cut left (log, commit flag) so that
            # reopening recovers exactly as powering up again would.
            if self.path is not None and self.eeprom.writes != before:
                self.save()
            raise
        if self.path is not None and self.eeprom.writes != before:
            self.save()
        return response

    def save(self) -> None:
        if self.path is not None:
            self.eeprom.save(self.path)
