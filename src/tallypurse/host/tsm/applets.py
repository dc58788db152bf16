"""TSM operations on issued cards: partner domains, a second applet, key rotation.

Every operation is a sequence of APDUs on a secure channel opened with the
target domain's keys (:class:`SecureChannel`); nothing reaches into the card.
Domain keys are diversified by the keystore for the key version the card
reports (GET DATA key information), so a card whose domain keys were rotated
to a newer keystore version is still reached; ``keys=`` overrides that for
key sets that do not come from the keystore.
"""

from __future__ import annotations

from dataclasses import dataclass

from tallypurse.core import scp03, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.errors import CardError, DecodeError
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    ISD_AID,
    LOYALTY_AID,
    LOYALTY_MODULE_AID,
    LOYALTY_PACKAGE_AID,
    PARTNER_SD_AID,
    PRIV_SECURITY_DOMAIN,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    STATUS_APPS_AND_SDS,
    STATUS_ISD,
    Ins,
)
from tallypurse.core.transport import ApduClient, CardTransport
from tallypurse.keystore.base import KeyStore

from .channel import SecureChannel
from .keys import isd_keys, sd_keys

__all__ = [
    "AppStatus",
    "card_status",
    "delete_applet",
    "domain_key_versions",
    "install_loyalty",
    "install_partner_domain",
    "open_domain",
    "rotate_domain_keys",
]


@dataclass(frozen=True, slots=True)
class AppStatus:
    """One GET STATUS entry: an application or security domain on the card."""

    aid: bytes
    life: int  # card life cycle for the ISD, application life cycle otherwise
    privileges: int
    sd: bytes  # associated security domain (the ISD's is itself)

    @property
    def is_sd(self) -> bool:
        return bool(self.privileges & PRIV_SECURITY_DOMAIN)


def domain_key_versions(client: ApduClient, sd_aid: bytes) -> list[int]:
    """Select a domain and read its key versions (GET DATA 00E0, no secure channel)."""
    client.select(sd_aid)
    raw = client.call(Command(CLA_PROPRIETARY, Ins.GET_DATA, 0x00, 0xE0, b"", 0))
    try:
        items = tlv.decode(tlv.decode_one(raw, 0xE0))
    except DecodeError as exc:
        raise DecodeError(f"key information template: {exc.message}") from None
    return sorted({item.value[1] for item in items if item.tag == 0xC0 and len(item.value) >= 2})


def open_domain(
    client: ApduClient,
    ks: KeyStore,
    serial: bytes,
    sd_aid: bytes,
    *,
    keys: scp03.StaticKeys | None = None,
    level: int = scp03.FULL,
) -> SecureChannel:
    """Open a secure channel to a domain with its keys (derived for the card's newest
    key version unless ``keys`` is given)."""
    if keys is None:
        versions = domain_key_versions(client, sd_aid)
        if not versions:
            raise CardError(SW.REF_DATA_NOT_FOUND, "the domain reports no keys")
        if sd_aid == ISD_AID:
            keys = isd_keys(ks, serial, version=versions[-1])
        else:
            keys = sd_keys(ks, serial, sd_aid, version=versions[-1])
    return SecureChannel.open(client, sd_aid, keys, level=level)


def install_partner_domain(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    sd_aid: bytes = PARTNER_SD_AID,
    *,
    isd: scp03.StaticKeys | None = None,
) -> scp03.StaticKeys:
    """Create a supplementary security domain with its diversified keys (ISD channel);
    returns the domain's initial key set."""
    client = ApduClient(transport)
    initial = sd_keys(ks, serial, sd_aid)
    channel = open_domain(client, ks, serial, ISD_AID, keys=isd)
    channel.install(
        package=SD_PACKAGE_AID,
        module=SD_MODULE_AID,
        aid=sd_aid,
        privileges=PRIV_SECURITY_DOMAIN,
        initial_keys=initial,
    )
    return initial


def install_loyalty(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    points: int = 0,
    *,
    sd_aid: bytes = PARTNER_SD_AID,
    keys: scp03.StaticKeys | None = None,
) -> None:
    """Install the loyalty applet into the partner domain and personalise its points."""
    if not 0 <= points <= 0xFFFFFFFF:
        raise ValueError("points must fit in 4 bytes")
    channel = open_domain(ApduClient(transport), ks, serial, sd_aid, keys=keys)
    channel.install(package=LOYALTY_PACKAGE_AID, module=LOYALTY_MODULE_AID, aid=LOYALTY_AID)
    channel.install_for_personalisation(LOYALTY_AID)
    channel.store_data(points.to_bytes(4, "big"), block=0, last=True)


def delete_applet(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    sd_aid: bytes,
    aid: bytes,
    *,
    related: bool = False,
    keys: scp03.StaticKeys | None = None,
) -> None:
    """Delete an applet (or, from the ISD, a domain) through the owning domain."""
    channel = open_domain(ApduClient(transport), ks, serial, sd_aid, keys=keys)
    channel.delete(aid, related=related)


def rotate_domain_keys(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    sd_aid: bytes,
    new_keys: scp03.StaticKeys,
    *,
    keys: scp03.StaticKeys | None = None,
) -> bytes:
    """PUT KEY: replace the key set the channel is opened with by ``new_keys``.

    Returns the card's answer (new version and key check values), already
    checked against ``new_keys``.
    """
    channel = open_domain(ApduClient(transport), ks, serial, sd_aid, keys=keys)
    return channel.put_key(new_keys, replace=channel.keys.version)


def card_status(
    transport: CardTransport,
    ks: KeyStore,
    serial: bytes,
    *,
    keys: scp03.StaticKeys | None = None,
) -> list[AppStatus]:
    """GET STATUS through the ISD: the ISD, then every domain and applet."""
    channel = open_domain(ApduClient(transport), ks, serial, ISD_AID, keys=keys)
    out: list[AppStatus] = []
    for p1 in (STATUS_ISD, STATUS_APPS_AND_SDS):
        try:
            entries = channel.get_status(p1)
        except CardError as exc:
            if exc.sw != SW.REF_DATA_NOT_FOUND:
                raise
            entries = []
        out.extend(_parse_status(e) for e in entries)
    return out


def _parse_status(entry: dict[int, bytes]) -> AppStatus:
    try:
        aid, life, priv, sd = entry[0x4F], entry[0x9F70], entry[0xC5], entry[0xCC]
    except KeyError as exc:
        raise DecodeError(f"GET STATUS entry lacks tag {exc.args[0]:X}") from None
    if len(life) != 1 or not priv:
        raise DecodeError("GET STATUS entry has a malformed life cycle or privileges")
    return AppStatus(aid=aid, life=life[0], privileges=priv[0], sd=sd)
