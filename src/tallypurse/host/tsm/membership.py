"""The membership / access pass: TSM installation, renewal, points authority, reader client.

The pass lives in its own security domain (``MEMBERSHIP_SD_AID``, created by the
ISD with keys diversified by serial ‖ that AID) on cards and phones alike.

Authentication of points: the pass has its own MAC key (the "pass key"),
diversified from the APP master by serial ‖ ``MEMBERSHIP_AID`` and delivered in
STORE DATA under the domain's secure channel (encrypted, C-DECRYPTION). Adding
or redeeming points then needs no secure channel and no domain keys: the pass
owner's back end (here :class:`PointsAuthority`, holding the keystore) MACs one
command over the card's fresh challenge and the pass's points counter; any gate
or terminal relays it. The domain keys stay with the TSM for content
management only. The byte layouts are in docs/phone.md; the card side is
``tallypurse.card.membership``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tallypurse.core import crypto, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.errors import BadInput, CardError, CryptoError, DecodeError
from tallypurse.core.messages import app_subkeys, domain
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    GATE_GRANTED,
    INS_MEMBER_CHALLENGE,
    INS_MEMBER_CHECK,
    INS_MEMBER_POINTS,
    INS_MEMBER_READ,
    MEMBER_ADD,
    MEMBER_REDEEM,
    MEMBERSHIP_AID,
    MEMBERSHIP_MODULE_AID,
    MEMBERSHIP_PACKAGE_AID,
    MEMBERSHIP_SD_AID,
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
from tallypurse.core.scp03 import StaticKeys
from tallypurse.core.transport import ApduClient, CardTransport
from tallypurse.keystore.base import KeyStore

from .applets import install_partner_domain, open_domain
from .keys import app_key

__all__ = [
    "MembershipClient",
    "MembershipPass",
    "PassState",
    "PointsAuthority",
    "PointsChallenge",
    "PointsReceipt",
    "change_points",
    "install_membership",
    "install_membership_domain",
    "pass_key",
    "points_mac",
    "receipt_mac",
    "renew_membership",
]

U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class MembershipPass:
    """What the pass owner issues: holder id, validity, entitlements, opening points."""

    holder: bytes
    not_before: int
    not_after: int
    entitlements: int  # bit n: entitled to gate / area / service n (0..31)
    points: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.holder) <= 16:
            raise BadInput("a holder id is 1..16 bytes")
        if not 0 <= self.not_before <= self.not_after <= U32:
            raise BadInput("need 0 <= not before <= not after < 2**32")
        if not 0 <= self.entitlements <= U32 or not 0 <= self.points <= U32:
            raise BadInput("entitlements and points must fit in 4 bytes")


@dataclass(frozen=True, slots=True)
class PassState:
    """READ PASS."""

    holder: bytes
    not_before: int
    not_after: int
    points: int
    entitlements: int
    counter: int
    key_version: int

    def entitled(self, bit: int) -> bool:
        return bool((self.entitlements >> bit) & 1)


@dataclass(frozen=True, slots=True)
class PointsChallenge:
    """GET POINTS CHALLENGE: what a points command must be bound to."""

    challenge: bytes
    counter: int
    points: int


@dataclass(frozen=True, slots=True)
class PointsReceipt:
    points: int
    counter: int
    mac: bytes


# --- the pass key and its MACs (docs/phone.md) ------------------------------------------
def pass_key(ks: KeyStore, serial: bytes, version: int | None = None) -> tuple[int, bytes]:
    """The pass's MAC key (version, key): APP master diversified by serial ‖ pass AID."""
    return app_key(ks, serial, MEMBERSHIP_AID, version)


def points_mac(key: bytes, serial: bytes, op: int, amount: int, counter: int,
               challenge: bytes) -> bytes:
    """MAC of an UPDATE POINTS command: CMAC(K_mac, "TP" 01 30 ‖ serial ‖ op ‖ amount ‖
    counter ‖ card challenge)."""
    data = (domain(MSG_MEMBER_POINTS) + serial + bytes([op])
            + struct.pack(">II", amount, counter) + challenge)
    return crypto.aes_cmac(app_subkeys(key)[1], data)


def receipt_mac(key: bytes, serial: bytes, op: int, amount: int, points: int, counter: int,
                challenge: bytes) -> bytes:
    """MAC of the pass's answer: CMAC(K_mac, "TP" 01 31 ‖ serial ‖ op ‖ amount ‖ points ‖
    counter ‖ card challenge)."""
    data = (domain(MSG_MEMBER_RECEIPT) + serial + bytes([op])
            + struct.pack(">III", amount, points, counter) + challenge)
    return crypto.aes_cmac(app_subkeys(key)[1], data)


# --- reader side (gates, terminals, the pass owner's back end through either) -------------
class MembershipClient:
    """The pass's commands over any card transport."""

    def __init__(self, client: ApduClient) -> None:
        self.client = client

    def select(self) -> None:
        self.client.select(MEMBERSHIP_AID)

    def read(self) -> PassState:
        m = tlv.decode_map(
            self.client.call(Command(CLA_PROPRIETARY, INS_MEMBER_READ, 0, 0, b"", 0)),
            required=(T_MEMBER_HOLDER, T_MEMBER_NOT_BEFORE, T_MEMBER_NOT_AFTER,
                      T_MEMBER_POINTS, T_MEMBER_ENTITLEMENTS, T_MEMBER_COUNTER, T_MEMBER_KEY),
        )

        def u(tag: int, size: int) -> int:
            return tlv.uint(m[tag], size, f"tag {tag:X}")

        return PassState(m[T_MEMBER_HOLDER], u(T_MEMBER_NOT_BEFORE, 4),
                         u(T_MEMBER_NOT_AFTER, 4), u(T_MEMBER_POINTS, 4),
                         u(T_MEMBER_ENTITLEMENTS, 4), u(T_MEMBER_COUNTER, 4), u(T_MEMBER_KEY, 1))

    def check(self, time: int, bit: int) -> int:
        """CHECK ENTITLEMENT at ``time`` for entitlement ``bit``: GATE_GRANTED or a reason."""
        if not 0 <= bit <= 31:
            raise BadInput("entitlement bit is 0..31")
        out = self.client.call(Command(CLA_PROPRIETARY, INS_MEMBER_CHECK, 0, 0,
                                       struct.pack(">IB", time, bit), 0))
        if len(out) != 1:
            raise DecodeError("CHECK ENTITLEMENT answer must be one byte", len(out))
        return out[0]

    def granted(self, time: int, bit: int) -> bool:
        return self.check(time, bit) == GATE_GRANTED

    def challenge(self) -> PointsChallenge:
        out = self.client.call(Command(CLA_PROPRIETARY, INS_MEMBER_CHALLENGE, 0, 0, b"", 0))
        if len(out) != 16:
            raise DecodeError("GET POINTS CHALLENGE answer must be 16 bytes", len(out))
        counter, points = struct.unpack(">II", out[8:])
        return PointsChallenge(out[:8], counter, points)

    def update_points(self, op: int, amount: int, mac: bytes) -> PointsReceipt:
        out = self.client.call(Command(CLA_PROPRIETARY, INS_MEMBER_POINTS, op, 0,
                                       amount.to_bytes(4, "big") + mac, 0))
        if len(out) != 24:
            raise DecodeError("UPDATE POINTS answer must be 24 bytes", len(out))
        points, counter = struct.unpack(">II", out[:8])
        return PointsReceipt(points, counter, out[8:])


class PointsAuthority:
    """The pass owner's back end: authorises points commands and checks the receipts."""

    def __init__(self, ks: KeyStore) -> None:
        self.ks = ks

    def authorise(self, serial: bytes, op: int, amount: int, seen: PointsChallenge,
                  *, key_version: int | None = None) -> bytes:
        if op not in (MEMBER_ADD, MEMBER_REDEEM):
            raise BadInput("points operation is add (1) or redeem (2)")
        if not 0 < amount <= U32:
            raise BadInput("points amount must be 1..2**32-1")
        _, key = pass_key(self.ks, serial, key_version)
        return points_mac(key, serial, op, amount, seen.counter, seen.challenge)

    def verify(self, serial: bytes, op: int, amount: int, seen: PointsChallenge,
               receipt: PointsReceipt, *, key_version: int | None = None) -> None:
        _, key = pass_key(self.ks, serial, key_version)
        expected = receipt_mac(key, serial, op, amount, receipt.points, receipt.counter,
                               seen.challenge)
        if not crypto.constant_time_equal(receipt.mac, expected):
            raise CryptoError("points receipt MAC does not verify")
        if receipt.counter != seen.counter + 1:
            raise CryptoError("points receipt does not follow the challenge's counter")


def change_points(transport: CardTransport, ks: KeyStore, serial: bytes, op: int,
                  amount: int) -> PointsReceipt:
    """Add or redeem points in one exchange: challenge, authorise, update, verify."""
    client = MembershipClient(ApduClient(transport))
    client.select()
    state = client.read()
    seen = client.challenge()
    authority = PointsAuthority(ks)
    mac = authority.authorise(serial, op, amount, seen, key_version=state.key_version)
    receipt = client.update_points(op, amount, mac)
    authority.verify(serial, op, amount, seen, receipt, key_version=state.key_version)
    return receipt


# --- TSM: install, personalise, renew ----------------------------------------------------------
def install_membership_domain(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    sd_aid: bytes = MEMBERSHIP_SD_AID,
    *,
    isd: StaticKeys | None = None,
) -> StaticKeys:
    """Create the pass's own security domain (ISD channel); returns its initial keys."""
    return install_partner_domain(transport, ks, serial, sd_aid, isd=isd)


def _has_domain(client: ApduClient, sd_aid: bytes) -> bool:
    try:
        client.select(sd_aid)
    except CardError as exc:
        if exc.sw == SW.FILE_NOT_FOUND:
            return False
        raise
    return True


def install_membership(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    issued: MembershipPass,
    *,
    sd_aid: bytes = MEMBERSHIP_SD_AID,
    keys: StaticKeys | None = None,
    isd: StaticKeys | None = None,
) -> None:
    """Install the pass on a card or phone in the field: its domain first when the card
    has none, then the applet, personalised with the pass and its pass key."""
    client = ApduClient(transport)
    if not _has_domain(client, sd_aid):
        created = install_membership_domain(transport, ks, serial, sd_aid, isd=isd)
        keys = keys or created
    channel = open_domain(client, ks, serial, sd_aid, keys=keys)
    channel.install(package=MEMBERSHIP_PACKAGE_AID, module=MEMBERSHIP_MODULE_AID,
                    aid=MEMBERSHIP_AID)
    channel.install_for_personalisation(MEMBERSHIP_AID)
    version, key = pass_key(ks, serial)
    channel.store_data(
        tlv.encode_many(
            [
                (T_MEMBER_HOLDER, issued.holder),
                (T_MEMBER_NOT_BEFORE, issued.not_before.to_bytes(4, "big")),
                (T_MEMBER_NOT_AFTER, issued.not_after.to_bytes(4, "big")),
                (T_MEMBER_ENTITLEMENTS, issued.entitlements.to_bytes(4, "big")),
                (T_MEMBER_POINTS, issued.points.to_bytes(4, "big")),
                (T_MEMBER_KEY, bytes([version]) + key),
            ]
        ),
        block=0,
        last=True,
    )


def renew_membership(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    *,
    not_before: int | None = None,
    not_after: int | None = None,
    entitlements: int | None = None,
    sd_aid: bytes = MEMBERSHIP_SD_AID,
    keys: StaticKeys | None = None,
) -> None:
    """Change a personalised pass's validity or entitlements through its domain."""
    items: list[tuple[int, bytes]] = []
    for tag, value in ((T_MEMBER_NOT_BEFORE, not_before), (T_MEMBER_NOT_AFTER, not_after),
                       (T_MEMBER_ENTITLEMENTS, entitlements)):
        if value is not None:
            if not 0 <= value <= U32:
                raise BadInput("validity and entitlements must fit in 4 bytes")
            items.append((tag, value.to_bytes(4, "big")))
    if not items:
        raise BadInput("nothing to renew")
    channel = open_domain(ApduClient(transport), ks, serial, sd_aid, keys=keys)
    channel.install_for_personalisation(MEMBERSHIP_AID)
    channel.store_data(tlv.encode_many(items), block=0, last=True)
