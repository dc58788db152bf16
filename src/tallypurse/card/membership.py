"""The membership / access pass: a non-payment applet in a security domain of its own.

State (its own storage only; the firewall gives it no other): holder id, validity
(not before, not after), points, a points counter, an entitlements bitmask (one
bit per gate, area or service) and the pass key.

Commands (CLA 80; bytes in docs/phone.md):

- READ PASS: holder, validity, points, counter, entitlements, pass key version.
- CHECK ENTITLEMENT (time, bit): granted or the reason for a denial, judged at the
  time the reader supplies (the card has no clock). Changes nothing.
- GET POINTS CHALLENGE, then UPDATE POINTS (add or redeem): authenticated with the
  pass's own MAC key, delivered at personalisation under the domain's secure
  channel. The MAC covers the card serial, the operation, the amount, the points
  counter and the card's fresh challenge, so a points command is good for one
  card, once; the answer carries a receipt MACed with the same key.

The pass exports no interface and asks for none: no applet reads its state and it
reads no applet's.
"""

from __future__ import annotations

import struct

from tallypurse.core import crypto, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.messages import app_subkeys, domain
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    GATE_EXPIRED,
    GATE_GRANTED,
    GATE_NOT_ENTITLED,
    GATE_NOT_YET_VALID,
    INS_MEMBER_CHALLENGE,
    INS_MEMBER_CHECK,
    INS_MEMBER_POINTS,
    INS_MEMBER_READ,
    MEMBER_ADD,
    MEMBER_REDEEM,
    MSG_MEMBER_POINTS,
    MSG_MEMBER_RECEIPT,
    T_MEMBER_COUNTER,
    T_MEMBER_ENTITLEMENTS,
    T_MEMBER_HOLDER,
    T_MEMBER_KEY,
    T_MEMBER_NOT_AFTER,
    T_MEMBER_NOT_BEFORE,
    T_MEMBER_POINTS,
)
from tallypurse.core.sw import ISOException

from .applet import Applet

U32 = 0xFFFFFFFF
MAC_LEN = 16
_PTS = struct.Struct(">II")  # points, counter
_VALID = struct.Struct(">II")  # not before, not after

# Tags a personalised pass still takes (renewal through its domain): validity,
# entitlements and the pass key. Holder and points are fixed / moved by UPDATE POINTS.
_RENEWABLE = frozenset({T_MEMBER_NOT_BEFORE, T_MEMBER_NOT_AFTER, T_MEMBER_ENTITLEMENTS,
                        T_MEMBER_KEY})
_KNOWN = _RENEWABLE | {T_MEMBER_HOLDER, T_MEMBER_POINTS}


def points_mac_input(serial: bytes, op: int, amount: int, counter: int,
                     challenge: bytes) -> bytes:
    return (domain(MSG_MEMBER_POINTS) + serial + bytes([op])
            + struct.pack(">II", amount, counter) + challenge)


def receipt_mac_input(serial: bytes, op: int, amount: int, points: int, counter: int,
                      challenge: bytes) -> bytes:
    return (domain(MSG_MEMBER_RECEIPT) + serial + bytes([op])
            + struct.pack(">III", amount, points, counter) + challenge)


class MembershipApplet(Applet):
    def __init__(self, ctx):  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self._challenge: bytes | None = None

    # --- state ---------------------------------------------------------------------------
    def _personalised(self) -> bool:
        return self.ctx.store.get("perso") == b"\x01"

    def _require_personalised(self) -> None:
        if not self._personalised():
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "pass not personalised")

    def _u32(self, name: str) -> int:
        return int.from_bytes(self.ctx.store.get(name) or b"\x00" * 4, "big")

    def _points(self) -> tuple[int, int]:
        raw = self.ctx.store.get("pts")
        return _PTS.unpack(raw) if raw else (0, 0)

    def _validity(self) -> tuple[int, int]:
        raw = self.ctx.store.get("valid")
        return _VALID.unpack(raw) if raw else (0, 0)

    def _mac_key(self) -> bytes:
        raw = self.ctx.store.get("key")
        if raw is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no pass key")
        return app_subkeys(raw[1:])[1]

    # --- applet life -----------------------------------------------------------------------
    def select(self) -> bytes:
        self._challenge = None
        return tlv.encode(0x6F, tlv.encode(0x84, self.ctx.aid) + tlv.encode(0xA5, b""))

    def deselect(self) -> None:
        self._challenge = None

    def process(self, cmd: Command) -> bytes:
        if cmd.cla != CLA_PROPRIETARY:
            raise ISOException(SW.CLA_NOT_SUPPORTED)
        if cmd.ins == INS_MEMBER_READ:
            return self._read(cmd)
        if cmd.ins == INS_MEMBER_CHECK:
            return self._check(cmd)
        if cmd.ins == INS_MEMBER_CHALLENGE:
            return self._get_challenge(cmd)
        if cmd.ins == INS_MEMBER_POINTS:
            return self._update_points(cmd)
        raise ISOException(SW.INS_NOT_SUPPORTED)

    # --- commands ----------------------------------------------------------------------------
    def _read(self, cmd: Command) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if cmd.data:
            raise ISOException(SW.WRONG_LENGTH)
        self._require_personalised()
        not_before, not_after = self._validity()
        points, counter = self._points()
        return tlv.encode_many(
            [
                (T_MEMBER_HOLDER, self.ctx.store.get("holder") or b""),
                (T_MEMBER_NOT_BEFORE, not_before.to_bytes(4, "big")),
                (T_MEMBER_NOT_AFTER, not_after.to_bytes(4, "big")),
                (T_MEMBER_POINTS, points.to_bytes(4, "big")),
                (T_MEMBER_ENTITLEMENTS, self._u32("ent").to_bytes(4, "big")),
                (T_MEMBER_COUNTER, counter.to_bytes(4, "big")),
                (T_MEMBER_KEY, (self.ctx.store.get("key") or b"\x00")[:1]),
            ]
        )

    def _check(self, cmd: Command) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if len(cmd.data) != 5:
            raise ISOException(SW.WRONG_LENGTH)
        time, bit = struct.unpack(">IB", cmd.data)
        if bit > 31:
            raise ISOException(SW.WRONG_DATA, "entitlement bit is 0..31")
        self._require_personalised()
        not_before, not_after = self._validity()
        if time < not_before:
            decision = GATE_NOT_YET_VALID
        elif time > not_after:
            decision = GATE_EXPIRED
        elif not (self._u32("ent") >> bit) & 1:
            decision = GATE_NOT_ENTITLED
        else:
            decision = GATE_GRANTED
        return bytes([decision])

    def _get_challenge(self, cmd: Command) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if cmd.data:
            raise ISOException(SW.WRONG_LENGTH)
        self._require_personalised()
        points, counter = self._points()
        self._challenge = self.ctx.random(8)
        return self._challenge + struct.pack(">II", counter, points)

    def _update_points(self, cmd: Command) -> bytes:
        challenge, self._challenge = self._challenge, None  # spent by any attempt
        if cmd.p1 not in (MEMBER_ADD, MEMBER_REDEEM) or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if len(cmd.data) != 4 + MAC_LEN:
            raise ISOException(SW.WRONG_LENGTH)
        self._require_personalised()
        if challenge is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no GET POINTS CHALLENGE")
        amount = int.from_bytes(cmd.data[:4], "big")
        points, counter = self._points()
        key = self._mac_key()
        expected = crypto.aes_cmac(
            key, points_mac_input(self.ctx.serial, cmd.p1, amount, counter, challenge)
        )
        if not crypto.constant_time_equal(cmd.data[4:], expected):
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "points MAC")
        if amount == 0:
            raise ISOException(SW.WRONG_DATA, "zero points")
        if counter >= U32:
            raise ISOException(SW.COUNTER_EXHAUSTED)
        if cmd.p1 == MEMBER_ADD:
            if points + amount > U32:
                raise ISOException(SW.WRONG_DATA, "points overflow")
            points += amount
        else:
            if amount > points:
                raise ISOException(SW.INSUFFICIENT_FUNDS, "not enough points")
            points -= amount
        counter += 1
        self.ctx.store.put("pts", _PTS.pack(points, counter))
        mac = crypto.aes_cmac(
            key, receipt_mac_input(self.ctx.serial, cmd.p1, amount, points, counter, challenge)
        )
        return _PTS.pack(points, counter) + mac

    # --- personalisation (STORE DATA through the pass's security domain) --------------------
    def personalize(self, data: bytes, last: bool) -> bytes:
        staged: dict[int, bytes] = {}
        for item in tlv.decode(data):
            if item.tag in staged:
                raise ISOException(SW.WRONG_DATA, "duplicate tag")
            if item.tag not in _KNOWN:
                raise ISOException(SW.WRONG_DATA, f"unknown tag {item.tag:X}")
            staged[item.tag] = item.value
        done = self._personalised()
        if done and staged.keys() - _RENEWABLE:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "fixed at personalisation")
        sizes = {T_MEMBER_NOT_BEFORE: 4, T_MEMBER_NOT_AFTER: 4, T_MEMBER_ENTITLEMENTS: 4,
                 T_MEMBER_POINTS: 4, T_MEMBER_KEY: 17}
        for tag, size in sizes.items():
            if tag in staged and len(staged[tag]) != size:
                raise ISOException(SW.WRONG_LENGTH, f"tag {tag:X}")
        if T_MEMBER_HOLDER in staged:
            if not 1 <= len(staged[T_MEMBER_HOLDER]) <= 16:
                raise ISOException(SW.WRONG_LENGTH, "holder id is 1..16 bytes")
            self.ctx.store.put("holder", staged[T_MEMBER_HOLDER])
        if T_MEMBER_NOT_BEFORE in staged or T_MEMBER_NOT_AFTER in staged:
            not_before, not_after = self._validity()
            if T_MEMBER_NOT_BEFORE in staged:
                not_before = int.from_bytes(staged[T_MEMBER_NOT_BEFORE], "big")
            if T_MEMBER_NOT_AFTER in staged:
                not_after = int.from_bytes(staged[T_MEMBER_NOT_AFTER], "big")
            self.ctx.store.put("valid", _VALID.pack(not_before, not_after))
        if T_MEMBER_ENTITLEMENTS in staged:
            self.ctx.store.put("ent", staged[T_MEMBER_ENTITLEMENTS])
        if T_MEMBER_POINTS in staged:
            self.ctx.store.put("pts", _PTS.pack(int.from_bytes(staged[T_MEMBER_POINTS], "big"),
                                                0))
        if T_MEMBER_KEY in staged:
            self.ctx.store.put("key", staged[T_MEMBER_KEY])
        if last or done:
            for name in ("holder", "valid", "ent", "key"):
                if self.ctx.store.get(name) is None:
                    raise ISOException(SW.CONDITIONS_NOT_SATISFIED, f"missing {name}")
            not_before, not_after = self._validity()
            if not_before > not_after:
                raise ISOException(SW.WRONG_DATA, "not before is after not after")
        if last and not done:
            if self.ctx.store.get("pts") is None:
                self.ctx.store.put("pts", _PTS.pack(0, 0))
            self.ctx.store.put("perso", b"\x01")
        return b""
