"""Per-card keys, diversified inside the keystore from the operator's master keys."""

from __future__ import annotations

from tallypurse.core import scp03
from tallypurse.core.protocol import OPERATOR_SD_AID, PURSE_AID
from tallypurse.keystore.base import MASTER_APP, MASTER_ISD, MASTER_SD, KeyStore


def _key_set(
    ks: KeyStore, master: str, label: bytes, context: bytes, version: int | None = None
) -> scp03.StaticKeys:
    ref = ks.current(master)
    if version is not None and version != ref.version:
        ref = type(ref)(ref.name, version)
    return scp03.StaticKeys(
        ref.version,
        ks.diversify(ref, label + b"-ENC", context),
        ks.diversify(ref, label + b"-MAC", context),
        ks.diversify(ref, label + b"-DEK", context),
    )


def isd_keys(ks: KeyStore, serial: bytes, version: int | None = None) -> scp03.StaticKeys:
    """The card's ISD key set (card manager), from the ISD master key."""
    return _key_set(ks, MASTER_ISD, b"ISD", serial, version)


def sd_keys(
    ks: KeyStore, serial: bytes, sd_aid: bytes = OPERATOR_SD_AID, version: int | None = None
) -> scp03.StaticKeys:
    """A supplementary security domain's key set, from that domain owner's master key."""
    return _key_set(ks, MASTER_SD, b"SD", serial + sd_aid, version)


def app_key(
    ks: KeyStore, serial: bytes, aid: bytes = PURSE_AID, version: int | None = None
) -> tuple[int, bytes]:
    """The applet's APP key and its version."""
    ref = ks.current(MASTER_APP)
    if version is not None and version != ref.version:
        ref = type(ref)(ref.name, version)
    return ref.version, ks.diversify(ref, b"APP", serial + aid)
