"""Card-verifiable certificates (compact, TLV, in the style of ISO 7816-8 CV certificates).

Layout (all BER-TLV)::

    7F21 certificate
      7F4E body
        5F29 profile (1 byte, 0x01)
        42   authority reference: issuer key id "name/version" (ASCII)
        5F20 holder reference: card id, terminal id or key id (1-32 bytes)
        5F4C role (1 byte, see CertRole)
        86   public key: uncompressed P-256 point (65 bytes)
        5F25 not before: unix seconds (4 bytes)
        5F24 not after: unix seconds (4 bytes)
      5F37 signature: ECDSA P-256/SHA-256, raw r||s (64 bytes), over the
           whole encoded 7F4E object (tag, length and value)

A root certificate is self-signed (role ROOT, authority reference = its
own holder reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from tallypurse.core import crypto, tlv
from tallypurse.core.errors import CertificateError, DecodeError
from tallypurse.core.protocol import CertRole

PROFILE = 0x01
T_CERT = 0x7F21
T_BODY = 0x7F4E
T_PROFILE = 0x5F29
T_AUTHORITY = 0x42
T_HOLDER = 0x5F20
T_ROLE = 0x5F4C
T_PUBKEY = 0x86
T_NOT_BEFORE = 0x5F25
T_NOT_AFTER = 0x5F24
T_SIGNATURE = 0x5F37

MAX_CERT_LEN = 400


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A key's identity: a name and a version, so that keys can be rotated."""

    name: str
    version: int

    def encode(self) -> bytes:
        return f"{self.name}/{self.version}".encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> KeyRef:
        try:
            text = raw.decode("ascii")
            name, _, ver = text.rpartition("/")
            if not name or not ver.isdigit():
                raise ValueError
            return cls(name, int(ver))
        except (UnicodeDecodeError, ValueError):
            raise DecodeError("key reference must be ASCII 'name/version'", 0) from None

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True, slots=True)
class Certificate:
    authority: KeyRef
    holder: bytes
    role: CertRole
    public_key: bytes
    not_before: int
    not_after: int
    signature: bytes
    body: bytes  # the encoded 7F4E object, exactly as signed

    def encode(self) -> bytes:
        return tlv.encode(T_CERT, self.body + tlv.encode(T_SIGNATURE, self.signature))

    @property
    def fingerprint(self) -> bytes:
        return crypto.sha256(self.encode())[:8]


class Signer(Protocol):
    """Anything that can sign with a private key it does not reveal."""

    def sign(self, data: bytes) -> bytes: ...


class KeySigner:
    """A Signer over a private key object held in this process."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def sign(self, data: bytes) -> bytes:
        return crypto.sign(self._key, data)


def encode_body(
    *,
    authority: KeyRef,
    holder: bytes,
    role: CertRole,
    public_key: bytes,
    not_before: int,
    not_after: int,
) -> bytes:
    if not 1 <= len(holder) <= 32:
        raise ValueError("holder reference must be 1-32 bytes")
    if len(public_key) != crypto.PUB_LEN:
        raise ValueError("public key must be a 65-byte point")
    return tlv.encode(
        T_BODY,
        tlv.encode_many(
            [
                (T_PROFILE, bytes([PROFILE])),
                (T_AUTHORITY, authority.encode()),
                (T_HOLDER, holder),
                (T_ROLE, bytes([int(role)])),
                (T_PUBKEY, public_key),
                (T_NOT_BEFORE, not_before.to_bytes(4, "big")),
                (T_NOT_AFTER, not_after.to_bytes(4, "big")),
            ]
        ),
    )


def issue(
    signer: Signer,
    *,
    authority: KeyRef,
    holder: bytes,
    role: CertRole,
    public_key: bytes,
    not_before: int,
    not_after: int,
) -> Certificate:
    body = encode_body(
        authority=authority,
        holder=holder,
        role=role,
        public_key=public_key,
        not_before=not_before,
        not_after=not_after,
    )
    return parse(tlv.encode(T_CERT, body + tlv.encode(T_SIGNATURE, signer.sign(body))))


def parse(raw: bytes) -> Certificate:
    """Parse a certificate's structure (no signature check)."""
    if len(raw) > MAX_CERT_LEN:
        raise CertificateError("certificate too long")
    try:
        inner = tlv.decode_one(raw, T_CERT)
        items = tlv.decode(inner)
        if len(items) != 2 or items[0].tag != T_BODY or items[1].tag != T_SIGNATURE:
            raise DecodeError("certificate must hold a body then a signature", 0)
        body_value = items[0].value
        body = tlv.encode(T_BODY, body_value)
        fields = tlv.decode_map(
            body_value,
            required=(
                T_PROFILE,
                T_AUTHORITY,
                T_HOLDER,
                T_ROLE,
                T_PUBKEY,
                T_NOT_BEFORE,
                T_NOT_AFTER,
            ),
        )
        if fields[T_PROFILE] != bytes([PROFILE]):
            raise DecodeError("unknown certificate profile", 0)
        role_raw = tlv.uint(fields[T_ROLE], 1, "role")
        try:
            role = CertRole(role_raw)
        except ValueError:
            raise DecodeError(f"unknown role {role_raw}", 0) from None
        holder = fields[T_HOLDER]
        if not 1 <= len(holder) <= 32:
            raise DecodeError("holder reference must be 1-32 bytes", 0)
        pub = fields[T_PUBKEY]
        crypto.decode_public_key(pub)
        sig = items[1].value
        if len(sig) != crypto.SIG_LEN:
            raise DecodeError("signature must be 64 bytes", 0)
        return Certificate(
            authority=KeyRef.decode(fields[T_AUTHORITY]),
            holder=holder,
            role=role,
            public_key=pub,
            not_before=tlv.uint(fields[T_NOT_BEFORE], 4, "not before"),
            not_after=tlv.uint(fields[T_NOT_AFTER], 4, "not after"),
            signature=sig,
            body=body,
        )
    except DecodeError as exc:
        raise CertificateError(f"malformed certificate: {exc.message}") from None


def verify(
    raw: bytes | Certificate,
    roots: dict[KeyRef, bytes],
    *,
    role: CertRole,
    at: int,
    holder: bytes | None = None,
) -> Certificate:
    """Parse and verify a certificate against trusted issuer keys.

    ``roots`` maps a key reference to its public key point. Checks the issuer
    is trusted, the signature, the role, the validity period at time ``at``
    and, when given, the holder reference.
    """
    # A Certificate object is re-read from its bytes so that its fields are the signed ones.
    c = parse(raw.encode() if isinstance(raw, Certificate) else raw)
    issuer = roots.get(c.authority)
    if issuer is None:
        raise CertificateError(f"certificate issued by unknown key {c.authority}")
    if not crypto.verify(issuer, c.signature, c.body):
        raise CertificateError("certificate signature does not verify")
    if c.role != role:
        raise CertificateError(f"certificate role is {c.role.name}, expected {role.name}")
    if not c.not_before <= at <= c.not_after:
        raise CertificateError("certificate is not valid at this time")
    if holder is not None and c.holder != holder:
        raise CertificateError("certificate holder does not match")
    return c
