"""ISO 7816-4 command and response APDUs, cases 1 to 4, short and extended length."""

from __future__ import annotations

from dataclasses import dataclass

from tallypurse.core import sw as SW
from tallypurse.core.errors import DecodeError


@dataclass(frozen=True, slots=True)
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # None: no Le field; 0 with short: 256 bytes expected

    @property
    def secure_messaging(self) -> bool:
        """True when CLA announces secure messaging (GlobalPlatform: bit 3 set)."""
        return self.cla & 0x04 != 0

    def header(self) -> bytes:
        return bytes([self.cla, self.ins, self.p1, self.p2])

    def to_bytes(self) -> bytes:
        for name, v in (("CLA", self.cla), ("INS", self.ins), ("P1", self.p1), ("P2", self.p2)):
            if not 0 <= v <= 0xFF:
                raise ValueError(f"{name} out of range")
        if self.le is not None and not 0 <= self.le <= 65536:
            raise ValueError("Le out of range")
        nc = len(self.data)
        extended = nc > 255 or (self.le is not None and self.le > 256)
        out = bytearray(self.header())
        if not extended:
            if nc:
                out.append(nc)
                out += self.data
            if self.le is not None:
                out.append(self.le & 0xFF)
            return bytes(out)
        if nc > 65535:
            raise ValueError("command data too long")
        if nc:
            out += b"\x00" + nc.to_bytes(2, "big") + self.data
            if self.le is not None:
                out += (self.le & 0xFFFF).to_bytes(2, "big")
        elif self.le is not None:
            out += b"\x00" + (self.le & 0xFFFF).to_bytes(2, "big")
        return bytes(out)

    @classmethod
    def parse(cls, raw: bytes) -> Command:
        """Parse raw command bytes; malformed lengths raise DecodeError (status 6700)."""
        n = len(raw)
        if n < 4:
            raise DecodeError("command shorter than a header", n)
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        if n == 4:  # case 1
            return cls(cla, ins, p1, p2)
        if n == 5:  # case 2 short
            return cls(cla, ins, p1, p2, b"", raw[4] or 256)
        if raw[4] != 0:  # short cases 3 and 4
            lc = raw[4]
            if n == 5 + lc:
                return cls(cla, ins, p1, p2, bytes(raw[5:]))
            if n == 6 + lc:
                return cls(cla, ins, p1, p2, bytes(raw[5 : 5 + lc]), raw[-1] or 256)
            raise DecodeError("Lc does not match the command length", 4)
        # extended length: raw[4] == 0
        if n == 7:  # case 2 extended
            le = int.from_bytes(raw[5:7], "big")
            return cls(cla, ins, p1, p2, b"", le or 65536)
        if n < 8:
            raise DecodeError("truncated extended length", 5)
        lc = int.from_bytes(raw[5:7], "big")
        if lc == 0:
            raise DecodeError("extended Lc of zero", 5)
        if n == 7 + lc:
            return cls(cla, ins, p1, p2, bytes(raw[7:]))
        if n == 9 + lc:
            le = int.from_bytes(raw[-2:], "big")
            return cls(cla, ins, p1, p2, bytes(raw[7 : 7 + lc]), le or 65536)
        raise DecodeError("extended Lc does not match the command length", 5)


@dataclass(frozen=True, slots=True)
class Response:
    data: bytes
    sw: int

    @property
    def ok(self) -> bool:
        return self.sw == SW.OK

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    @classmethod
    def parse(cls, raw: bytes) -> Response:
        if len(raw) < 2:
            raise DecodeError("response shorter than a status word", len(raw))
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))

    @classmethod
    def status(cls, sw: int) -> Response:
        return cls(b"", sw)
