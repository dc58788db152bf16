"""How card-side code is reached: anything with ``transmit(apdu) -> response``.

The in-process card emulator, a PC/SC reader and a phone all fit this
protocol; :class:`ApduClient` adds status-word handling on top.
"""

from __future__ import annotations

from typing import Protocol

from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import CardError


class CardTransport(Protocol):
    def transmit(self, apdu: bytes) -> bytes: ...


class ApduClient:
    """Send commands, count APDUs and bytes, raise CardError on an error status."""

    def __init__(self, transport: CardTransport) -> None:
        self.transport = transport
        self.apdus = 0
        self.bytes_out = 0
        self.bytes_in = 0

    def send(self, cmd: Command) -> Response:
        raw = cmd.to_bytes()
        out = self.transport.transmit(raw)
        self.apdus += 1
        self.bytes_out += len(raw)
        self.bytes_in += len(out)
        return Response.parse(out)

    def call(self, cmd: Command) -> bytes:
        resp = self.send(cmd)
        if resp.sw != SW.OK:
            raise CardError(resp.sw)
        return resp.data

    def select(self, aid: bytes) -> bytes:
        from tallypurse.core.protocol import CLA_ISO, Ins

        return self.call(Command(CLA_ISO, Ins.SELECT, 0x04, 0x00, aid, 0))
