"""Phone wallets: the purse hosted by a phone, personalised into the phone's own domain.

A phone (its secure element, or the app behind host card emulation) is reached
exactly like a card: APDUs through a :class:`~tallypurse.core.transport.CardTransport`.
It is a second form factor for a cardholder, with a card id of its own (its
serial) and keys of its own:

- the phone's ISD key set, diversified from the ISD master by the phone serial;
- the phone's security domain ``PHONE_SD_AID``, whose key set is diversified by
  phone serial ‖ ``PHONE_SD_AID`` (never the card's operator-domain keys);
- the purse's APP key, diversified by phone serial ‖ purse AID;
- the card signing key, generated on the phone, certified by the issuer for the
  phone's card id.

The purse applet and its AID are the card's, so a terminal takes a payment from
the phone with the same three APDUs. The purse can be there from the start
(:func:`issue_phone`) or be installed later over the air into a phone already in
the field (:func:`install_phone_purse`), e.g. one that began with only a
membership pass (:mod:`.membership`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tallypurse.core import sw as SW
from tallypurse.core.errors import BadInput, CardError
from tallypurse.core.messages import CreditRecord
from tallypurse.core.protocol import (
    ISD_AID,
    PHONE_SD_AID,
    PRIV_SECURITY_DOMAIN,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    CardLifeCycle,
)
from tallypurse.core.scp03 import TRANSPORT_KEYS, StaticKeys
from tallypurse.core.transport import ApduClient, CardTransport
from tallypurse.keystore.base import KeyStore

from .applets import domain_key_versions, open_domain
from .channel import SecureChannel
from .keys import isd_keys, sd_keys
from .personalise import IssuedCard, PursePolicy, install_purse

__all__ = ["IssuedPhone", "install_phone_purse", "issue_phone", "phone_domain_keys"]


@dataclass(frozen=True, slots=True)
class IssuedPhone:
    """What issuing a phone wallet produced."""

    phone_id: bytes  # the phone's card id (its serial), distinct from any card's
    isd_key_version: int
    sd_key_version: int  # of the phone's own domain
    purse: IssuedCard | None  # None: the phone has no purse yet


def phone_domain_keys(ks: KeyStore, serial: bytes, version: int | None = None) -> StaticKeys:
    """The phone domain's key set: diversified by phone serial ‖ PHONE_SD_AID."""
    return sd_keys(ks, serial, PHONE_SD_AID, version)


def issue_phone(
    transport: CardTransport,
    ks: KeyStore,
    *,
    serial: bytes,
    now: int,
    policy: PursePolicy | None = None,
    credit: CreditRecord | None = None,
    with_purse: bool = True,
    transport_keys: StaticKeys = TRANSPORT_KEYS,
) -> IssuedPhone:
    """Turn a blank phone secure element (or HCE store) into a phone wallet.

    ISD keys replace the transport keys, the phone's own domain is created with its
    own keys, the purse (unless ``with_purse`` is False) is installed there and
    personalised with the phone's card id and a key generated on the phone, and the
    phone goes to SECURED.
    """
    if len(serial) != 8:
        raise BadInput("phone serial must be 8 bytes")
    if credit is not None and not with_purse:
        raise BadInput("a credit record needs the purse")
    client = ApduClient(transport)
    phone_isd = isd_keys(ks, serial)
    phone_sd = phone_domain_keys(ks, serial)

    isd = SecureChannel.open(client, ISD_AID, transport_keys)
    isd.put_key(phone_isd, replace=transport_keys.version)
    isd = SecureChannel.open(client, ISD_AID, phone_isd)
    isd.install(
        package=SD_PACKAGE_AID,
        module=SD_MODULE_AID,
        aid=PHONE_SD_AID,
        privileges=PRIV_SECURITY_DOMAIN,
        initial_keys=phone_sd,
    )
    isd.set_card_life(CardLifeCycle.INITIALIZED)

    purse: IssuedCard | None = None
    if with_purse:
        sd = SecureChannel.open(client, PHONE_SD_AID, phone_sd)
        certificate, public_key, expiry, app_version = install_purse(
            sd, ks, serial=serial, policy=policy or PursePolicy.default(), now=now,
            credit=credit,
        )
        purse = IssuedCard(serial, certificate, public_key, expiry, phone_isd.version,
                           phone_sd.version, app_version)

    isd = SecureChannel.open(client, ISD_AID, phone_isd)
    isd.set_card_life(CardLifeCycle.SECURED)
    return IssuedPhone(serial, phone_isd.version, phone_sd.version, purse)


def install_phone_purse(
    transport: CardTransport,
    ks: KeyStore,
    *,
    serial: bytes,
    now: int,
    policy: PursePolicy | None = None,
    credit: CreditRecord | None = None,
    keys: StaticKeys | None = None,
) -> IssuedCard:
    """Install and personalise the purse over the air in the phone's own domain, on a
    phone already in the field (SECURED). Only the phone domain's channel is used: the
    card manager (ISD) is not needed to add an applet to an existing domain."""
    if len(serial) != 8:
        raise BadInput("phone serial must be 8 bytes")
    client = ApduClient(transport)
    try:
        sd = open_domain(client, ks, serial, PHONE_SD_AID, keys=keys)
    except CardError as exc:
        if exc.sw == SW.FILE_NOT_FOUND:
            raise BadInput("not a phone wallet: it has no phone security domain") from None
        raise
    certificate, public_key, expiry, app_version = install_purse(
        sd, ks, serial=serial, policy=policy or PursePolicy.default(), now=now, credit=credit
    )
    isd_versions = domain_key_versions(client, ISD_AID)
    return IssuedCard(serial, certificate, public_key, expiry,
                      isd_versions[-1] if isd_versions else 0, sd.keys.version, app_version)
