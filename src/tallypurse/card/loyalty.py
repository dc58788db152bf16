"""A second applet for another security domain: a loyalty-points counter.

It shows multi-application cards: installed, personalised and deleted by its
own domain's secure channel, isolated by the firewall, and allowed to read
the purse balance only through the interface the purse exports on purpose.
"""

from __future__ import annotations

from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.protocol import CLA_PROPRIETARY, PURSE_AID
from tallypurse.core.sw import ISOException

from .applet import Applet

INS_ADD_POINTS = 0x20
INS_GET_POINTS = 0x22
INS_GET_PURSE_BALANCE = 0x24


class LoyaltyApplet(Applet):
    def process(self, cmd: Command) -> bytes:
        if cmd.cla != CLA_PROPRIETARY:
            raise ISOException(SW.CLA_NOT_SUPPORTED)
        points = int.from_bytes(self.ctx.store.get("points") or b"\x00" * 4, "big")
        if cmd.ins == INS_GET_POINTS:
            return points.to_bytes(4, "big")
        if cmd.ins == INS_ADD_POINTS:
            if len(cmd.data) != 2:
                raise ISOException(SW.WRONG_LENGTH)
            total = points + int.from_bytes(cmd.data, "big")
            if total > 0xFFFFFFFF:
                raise ISOException(SW.WRONG_DATA)
            self.ctx.store.put("points", total.to_bytes(4, "big"))
            return total.to_bytes(4, "big")
        if cmd.ins == INS_GET_PURSE_BALANCE:
            reader = self.ctx.shareable(PURSE_AID, "balance")
            balance, currency = reader.balance()  # type: ignore[attr-defined]
            return int(balance).to_bytes(4, "big") + int(currency).to_bytes(2, "big")
        raise ISOException(SW.INS_NOT_SUPPORTED)

    def personalize(self, data: bytes, last: bool) -> bytes:
        if len(data) != 4:
            raise ISOException(SW.WRONG_LENGTH)
        self.ctx.store.put("points", data)
        return b""
