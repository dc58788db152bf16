"""Personalisation: turn a blank card into a tallypurse card, through its own commands.

Everything goes through APDUs on secure channels: the transport keys are
replaced by the card's diversified ISD keys (PUT KEY), the operator's
security domain is created with its own diversified keys (INSTALL), the
purse is installed into that domain and personalised (INSTALL [for
personalization] + STORE DATA), the card generates its signing key, the
issuer certifies it, and the card is moved to SECURED.
"""

from __future__ import annotations

from dataclasses import dataclass

from tallypurse.core import cert, tlv
from tallypurse.core.errors import BadInput, CryptoError
from tallypurse.core.messages import CreditRecord
from tallypurse.core.money import Currency, currency
from tallypurse.core.protocol import (
    ISD_AID,
    OPERATOR_SD_AID,
    PRIV_SECURITY_DOMAIN,
    PURSE_AID,
    PURSE_MODULE_AID,
    PURSE_PACKAGE_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    T_APP_KEY,
    T_CANCEL_WINDOW,
    T_CAP,
    T_CARD_ID,
    T_CERTIFICATE,
    T_CREDIT_RECORD,
    T_CURRENCY,
    T_EXPIRY,
    T_ISSUER_ROOT,
    T_LOG_SIZE,
    T_OFFLINE_LIMIT,
    T_PUBLIC_KEY,
    CardLifeCycle,
    CertRole,
)
from tallypurse.core.scp03 import TRANSPORT_KEYS, StaticKeys
from tallypurse.core.transport import ApduClient, CardTransport
from tallypurse.keystore.base import HOST_LIST, ISSUER_ROOT, KeyStore

from .channel import SecureChannel
from .keys import app_key, isd_keys, sd_keys

YEAR = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class PursePolicy:
    """Operator parameters written into a new purse."""

    currency: Currency
    cap: int = 100_000  # 1,000.00 in a two-decimal currency
    offline_limit: int = 10_000  # per tap
    validity_years: int = 5
    cancel_window: int = 120  # seconds
    log_size: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.offline_limit <= self.cap <= 0xFFFFFFFF:
            raise BadInput("need 0 < offline limit <= cap")
        if not 10 <= self.log_size <= 32:
            raise BadInput("log size must be 10..32")

    @classmethod
    def default(cls, code: str = "EUR") -> PursePolicy:
        return cls(currency(code))


@dataclass(frozen=True, slots=True)
class IssuedCard:
    card_id: bytes
    certificate: bytes
    public_key: bytes
    expiry: int
    isd_key_version: int
    sd_key_version: int
    app_key_version: int


def signed_credit_record(ks: KeyStore, record: CreditRecord) -> bytes:
    return record.to_bytes() + ks.sign(ks.current(HOST_LIST), record.signed_data())


def personalise(
    transport: CardTransport,
    ks: KeyStore,
    *,
    serial: bytes,
    policy: PursePolicy,
    now: int,
    credit: CreditRecord | None = None,
    transport_keys: StaticKeys = TRANSPORT_KEYS,
) -> IssuedCard:
    """Personalise the blank card behind ``transport``; its card id is its serial."""
    if len(serial) != 8:
        raise BadInput("card serial must be 8 bytes")
    client = ApduClient(transport)
    card_isd = isd_keys(ks, serial)
    card_sd = sd_keys(ks, serial)

    # 1. Card manager: replace the transport keys, create the operator's domain.
    isd = SecureChannel.open(client, ISD_AID, transport_keys)
    isd.put_key(card_isd, replace=transport_keys.version)
    isd = SecureChannel.open(client, ISD_AID, card_isd)
    isd.install(
        package=SD_PACKAGE_AID,
        module=SD_MODULE_AID,
        aid=OPERATOR_SD_AID,
        privileges=PRIV_SECURITY_DOMAIN,
        initial_keys=card_sd,
    )
    isd.set_card_life(CardLifeCycle.INITIALIZED)

    # 2. Operator's domain: install and personalise the purse.
    sd = SecureChannel.open(client, OPERATOR_SD_AID, card_sd)
    card_cert, public_key, expiry, app_version = install_purse(
        sd, ks, serial=serial, policy=policy, now=now, credit=credit
    )

    # 3. Card manager: the card goes into the field.
    isd = SecureChannel.open(client, ISD_AID, card_isd)
    isd.set_card_life(CardLifeCycle.SECURED)
    return IssuedCard(
        serial, card_cert, public_key, expiry, card_isd.version, card_sd.version, app_version
    )


def install_purse(
    sd: SecureChannel,
    ks: KeyStore,
    *,
    serial: bytes,
    policy: PursePolicy,
    now: int,
    credit: CreditRecord | None = None,
) -> tuple[bytes, bytes, int, int]:
    """Install the purse into the domain ``sd`` is open on and personalise it: card id
    ``serial``, APP key, issuer root, key pair generated on the card, certificate.

    Used by :func:`personalise` (operator domain of a new card) and by the phone wallet
    (the phone's own domain, also over the air on a phone already in the field).
    Returns (certificate, card public key, expiry, APP key version).
    """
    if credit is not None and credit.card_id != serial:
        raise BadInput("credit record is for another card")
    app_version, app = app_key(ks, serial)
    sd.install(package=PURSE_PACKAGE_AID, module=PURSE_MODULE_AID, aid=PURSE_AID)
    sd.install_for_personalisation(PURSE_AID)
    root_ref = ks.current(ISSUER_ROOT)
    expiry = now + policy.validity_years * YEAR
    sd.store_data(
        tlv.encode_many(
            [
                (T_CARD_ID, serial),
                (T_CURRENCY, policy.currency.numeric.to_bytes(2, "big")),
                (T_CAP, policy.cap.to_bytes(4, "big")),
                (T_OFFLINE_LIMIT, policy.offline_limit.to_bytes(4, "big")),
                (T_EXPIRY, expiry.to_bytes(4, "big")),
                (T_CANCEL_WINDOW, policy.cancel_window.to_bytes(2, "big")),
                (T_LOG_SIZE, bytes([policy.log_size])),
                (
                    T_ISSUER_ROOT,
                    tlv.encode(0x42, root_ref.encode()) + tlv.encode(0x86, ks.public_key(root_ref)),
                ),
                (T_APP_KEY, bytes([app_version]) + app),
            ]
        ),
        block=0,
    )
    answer = tlv.decode_map(
        sd.store_data(tlv.encode(T_PUBLIC_KEY, b""), block=1), required=(T_PUBLIC_KEY,)
    )
    public_key = answer[T_PUBLIC_KEY]
    card_cert = ks.issue_certificate(
        holder=serial,
        role=CertRole.CARD,
        public_key=public_key,
        not_before=now,
        not_after=expiry,
    ).encode()
    last = tlv.encode(T_CERTIFICATE, card_cert)
    if credit is not None:
        last += tlv.encode(T_CREDIT_RECORD, signed_credit_record(ks, credit))
    sd.store_data(last, block=2, last=True)
    parsed = cert.parse(card_cert)
    if parsed.public_key != public_key:  # pragma: no cover - issue_certificate bug guard
        raise CryptoError("issued certificate does not carry the card key")
    return card_cert, public_key, expiry, app_version
