"""Re-keying an issued card after a key rotation, through its own commands.

What a card holds is read from the card itself: the key versions of its
issuer domain and of the operator's domain (GET DATA key information), its
purse's APP key version (GET DATA card data) and the root that certified it
(its certificate's authority). Each that is older than the keystore's current
version is replaced, each step on a secure channel opened with the keys the
card holds now:

1. ISD keys: PUT KEY on the ISD's channel replaces the key set (new version).
2. Operator domain keys: PUT KEY on that domain's channel.
3. Purse: on the operator domain's channel, one STORE DATA carries the new APP
   key and, after a root rotation, the new issuer root and the card's own key
   certified under it (the card checks that certificate against the new root,
   for its own key, in the same atomic command), and, after a list key
   rotation, the card's credit record (the same record, same version) signed
   with the current host list key.

Each step is atomic on the card and the plan is read again from the card, so an
interrupted re-keying is finished by running it again. Afterwards the old
versions no longer open the card.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tallypurse.core import cert, tlv
from tallypurse.core import sw as SW
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, CardError
from tallypurse.core.protocol import (
    ISD_AID,
    OPERATOR_SD_AID,
    PURSE_AID,
    T_APP_KEY,
    T_CERTIFICATE,
    T_CREDIT_RECORD,
    T_ISSUER_ROOT,
    CertRole,
)
from tallypurse.core.purse_client import PurseClient, SignedCreditRecord
from tallypurse.core.transport import ApduClient, CardTransport
from tallypurse.keystore.base import (
    HOST_LIST,
    ISSUER_ROOT,
    MASTER_APP,
    MASTER_ISD,
    MASTER_SD,
    KeyStore,
)

from .applets import domain_key_versions, open_domain
from .keys import app_key, isd_keys, sd_keys
from .personalise import signed_credit_record


@dataclass(frozen=True, slots=True)
class CardKeys:
    """The key versions a card holds, as the card reports them."""

    card_id: bytes
    isd_version: int
    sd_version: int
    app_version: int
    root: KeyRef
    certificate: bytes
    credit: SignedCreditRecord | None = None

    def to_json(self) -> dict[str, object]:
        return {"isd": self.isd_version, "sd": self.sd_version, "app": self.app_version,
                "root": str(self.root)}


@dataclass(frozen=True, slots=True)
class RekeyPlan:
    """What re-keying a card changes (empty: the card is current)."""

    before: CardKeys
    isd_version: int
    sd_version: int
    app_version: int
    root: KeyRef
    steps: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.steps)

    def to_json(self) -> dict[str, object]:
        return {"card_id": self.before.card_id.hex(), "before": self.before.to_json(),
                "after": {"isd": self.isd_version, "sd": self.sd_version,
                          "app": self.app_version, "root": str(self.root)},
                "steps": self.steps}


def read_card_keys(transport: CardTransport) -> CardKeys:
    """Read the card's key versions (no secure channel needed)."""
    client = ApduClient(transport)
    isd = domain_key_versions(client, ISD_AID)
    sd = domain_key_versions(client, OPERATOR_SD_AID)
    purse = PurseClient(client)
    selected = purse.select()
    data = purse.card_data()
    certificate = purse.certificate()
    try:
        credit: SignedCreditRecord | None = purse.credit_record()
    except CardError as exc:
        if exc.sw != SW.REF_DATA_NOT_FOUND:
            raise
        credit = None
    return CardKeys(selected.card_id, max(isd, default=0), max(sd, default=0),
                    data.app_key_version, cert.parse(certificate).authority, certificate,
                    credit)


def _credit_resign(held: CardKeys, ks: KeyStore) -> bool:
    """The card's credit record is signed with an older host list key: sign it again.
    A record no host list key ever signed is never signed here (the card is not trusted
    to say what its record is)."""
    if held.credit is None or held.credit.verify(ks.public_key(ks.current(HOST_LIST))):
        return False
    return any(held.credit.verify(ks.public_key(ref)) for ref in ks.refs()
               if ref.name == HOST_LIST)


def plan_rekey(transport: CardTransport, ks: KeyStore) -> RekeyPlan:
    """Compare what the card holds with the keystore's current versions."""
    held = read_card_keys(transport)
    isd, sd = ks.current(MASTER_ISD).version, ks.current(MASTER_SD).version
    app, root = ks.current(MASTER_APP).version, ks.current(ISSUER_ROOT)
    steps = []
    if held.isd_version != isd:
        steps.append(f"PUT KEY issuer domain keys {held.isd_version} -> {isd}")
    if held.sd_version != sd:
        steps.append(f"PUT KEY operator domain keys {held.sd_version} -> {sd}")
    if held.app_version != app:
        steps.append(f"STORE DATA purse APP key {held.app_version} -> {app}")
    if held.root != root:
        steps.append(f"STORE DATA purse issuer root {held.root} -> {root}, "
                     "card certificate under it")
    if _credit_resign(held, ks):
        assert held.credit is not None
        steps.append(f"STORE DATA credit record {held.credit.record.version} signed again "
                     f"with {ks.current(HOST_LIST)}")
    return RekeyPlan(held, isd, sd, app, root, steps)


def rekey_card(transport: CardTransport, ks: KeyStore, *, now: int,
               card_key: bytes) -> tuple[RekeyPlan, CardKeys]:
    """Bring the card's keys to the keystore's current versions; returns the plan carried
    out and what the card holds afterwards (read back from the card). ``card_key`` is the
    card's public key as the host registered it at issuance: the certificate under the new
    root is issued for that key only, never for one the card (or a reader) presents."""
    plan = plan_rekey(transport, ks)
    held = plan.before
    serial = held.card_id
    presented = cert.parse(held.certificate)
    if presented.public_key != card_key or presented.holder != serial:  # before any change
        raise BadInput("the card's certificate does not name the key this host issued it "
                       "with: nothing was changed")
    client = ApduClient(transport)
    if held.isd_version != plan.isd_version:
        channel = open_domain(client, ks, serial, ISD_AID)
        channel.put_key(isd_keys(ks, serial), replace=channel.keys.version)
    if held.sd_version != plan.sd_version:
        channel = open_domain(client, ks, serial, OPERATOR_SD_AID)
        channel.put_key(sd_keys(ks, serial), replace=channel.keys.version)
    items: list[tuple[int, bytes]] = []
    if held.app_version != plan.app_version:
        version, key = app_key(ks, serial)
        items.append((T_APP_KEY, bytes([version]) + key))
    if held.root != plan.root:
        old = cert.parse(held.certificate)
        renewed = ks.issue_certificate(holder=serial, role=CertRole.CARD,
                                       public_key=card_key, not_before=old.not_before,
                                       not_after=old.not_after)
        items.append((T_ISSUER_ROOT, tlv.encode(0x42, plan.root.encode())
                      + tlv.encode(0x86, ks.public_key(plan.root))))
        items.append((T_CERTIFICATE, renewed.encode()))
    if _credit_resign(held, ks):
        assert held.credit is not None
        items.append((T_CREDIT_RECORD, signed_credit_record(ks, held.credit.record)))
    if items:
        channel = open_domain(client, ks, serial, OPERATOR_SD_AID)
        channel.install_for_personalisation(PURSE_AID)
        channel.store_data(tlv.encode_many(items), block=0, last=True)
    return plan, read_card_keys(transport)
