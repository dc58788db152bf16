"""The keystore interface: the operator's long-lived keys behind one small API.

Every key has a :class:`~tallypurse.core.cert.KeyRef` (name and version), a
kind and a creation time. Private and secret material never leaves the
keystore: callers ask it to sign, to issue a certificate or to diversify a
per-card key from a master key. A software implementation lives in
:mod:`tallypurse.keystore.software`, a PKCS#11 (HSM) one in
:mod:`tallypurse.keystore.pkcs11`. Both also implement :class:`ManagedKeyStore`,
what the key ceremonies (``tallypurse keys``) need beyond the daily protocol, and
both keep their key versions with :class:`KeyBook`: the lookups (refs, current,
info, public key, certificate, KCV), certificates under the issuer root and the
trust bundle are one code for both.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from tallypurse.core import cert, crypto
from tallypurse.core.cert import Certificate, KeyRef, Signer
from tallypurse.core.errors import BadInput, KeystoreError
from tallypurse.core.protocol import CertRole

# --- Key names -------------------------------------------------------------------
ISSUER_ROOT = "issuer-root"
HOST_LIST = "host-list"
HOST_LOAD = "host-load"
HOST_API = "host-api"
MASTER_ISD = "master-isd"
MASTER_SD = "master-sd-operator"
MASTER_APP = "master-app"

# --- Validity periods of the certificates a keystore makes for its own keys -------
YEAR_SECONDS = 365 * 24 * 3600
ROOT_VALIDITY = 20 * YEAR_SECONDS
HOST_VALIDITY = 5 * YEAR_SECONDS

AES_KEY_LEN = 16
MAX_TIME = 2**32 - 1  # certificates carry 4-byte unix seconds

# --- The public trust bundle (export_public) ----------------------------------------
BUNDLE_FORMAT = "tallypurse-trust-bundle"
BUNDLE_FORMAT_VERSION = 1


class KeyKind(StrEnum):
    """What a key is; the value is how it is spelled in files and on screens."""

    EC_P256 = "ec-p256"
    AES_128 = "aes-128"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a named key is: its kind and, for EC keys, the role its certificate carries."""

    kind: KeyKind
    role: CertRole | None = None


KEY_SPECS: dict[str, KeySpec] = {
    ISSUER_ROOT: KeySpec(KeyKind.EC_P256, CertRole.ROOT),
    HOST_LIST: KeySpec(KeyKind.EC_P256, CertRole.HOST_LIST),
    HOST_LOAD: KeySpec(KeyKind.EC_P256, CertRole.HOST_LOAD),
    HOST_API: KeySpec(KeyKind.EC_P256, CertRole.HOST_API),
    MASTER_ISD: KeySpec(KeyKind.AES_128),
    MASTER_SD: KeySpec(KeyKind.AES_128),
    MASTER_APP: KeySpec(KeyKind.AES_128),
}
"""Every key a keystore holds, in the order they are created and listed."""

HOST_KEYS = (HOST_LIST, HOST_LOAD, HOST_API)
MASTER_KEYS = (MASTER_ISD, MASTER_SD, MASTER_APP)


def public_key_fingerprint(public_key: bytes) -> bytes:
    """The first 8 bytes of SHA-256 over a 65-byte public point (for screens and logs)."""
    return crypto.sha256(public_key)[:8]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """The public facts about one key version; safe to log and to print."""

    ref: KeyRef
    kind: KeyKind
    created: int
    public_key: bytes | None = None  # EC keys
    certificate: Certificate | None = None  # EC keys
    kcv: bytes | None = None  # AES keys
    revoked: int | None = None  # unix seconds of the revocation; None while usable

    @property
    def fingerprint(self) -> bytes | None:
        return None if self.public_key is None else public_key_fingerprint(self.public_key)


@runtime_checkable
class KeyStore(Protocol):
    """The operator's keys. Implementations never reveal private or secret material."""

    def refs(self) -> list[KeyRef]:
        """Every key version held, in KEY_SPECS order then by version."""
        ...

    def current(self, name: str) -> KeyRef:
        """The latest version of a named key; KeystoreError if there is none."""
        ...

    def info(self, ref: KeyRef) -> KeyInfo:
        """The public facts about a key version."""
        ...

    def sign(self, ref: KeyRef, data: bytes) -> bytes:
        """ECDSA P-256/SHA-256 over ``data``; 64 raw bytes r || s."""
        ...

    def signer(self, ref: KeyRef) -> Signer:
        """An object whose ``sign(data)`` signs with ``ref`` (the key stays inside)."""
        ...

    def public_key(self, ref: KeyRef) -> bytes:
        """The 65-byte uncompressed public point of an EC key."""
        ...

    def certificate(self, ref: KeyRef) -> Certificate:
        """The certificate of an EC key (the root's is self-signed, role ROOT)."""
        ...

    def kcv(self, ref: KeyRef) -> bytes:
        """The 3-byte GlobalPlatform key check value of an AES key."""
        ...

    def diversify(self, master: KeyRef, purpose: bytes, serial: bytes) -> bytes:
        """A per-card key diversified from an AES master key held here."""
        ...

    def issue_certificate(
        self,
        *,
        holder: bytes,
        role: CertRole,
        public_key: bytes,
        not_before: int,
        not_after: int,
    ) -> Certificate:
        """Certify a public key (a card's, a SAM's) with the current issuer root."""
        ...

    def rotate(self, name: str, *, now: int | None = None) -> KeyRef:
        """Create and persist a new version of ``name``; older versions stay usable."""
        ...


@runtime_checkable
class ManagedKeyStore(KeyStore, Protocol):
    """What the key ceremonies need on top of :class:`KeyStore`.

    A revoked key version stays listed, with its public facts, but the store
    refuses to sign or to diversify with it.
    """

    @property
    def location(self) -> str:
        """Where the keys are (a directory or a PKCS#11 URI without its PIN)."""
        ...

    def infos(self) -> list[KeyInfo]:
        """The public facts of every key version, in :meth:`refs` order."""
        ...

    def generate(self, name: str, *, now: int) -> KeyRef:
        """Create version 1 of a key named in KEY_SPECS that the store does not hold yet."""
        ...

    def revoke(self, ref: KeyRef, *, now: int) -> None:
        """Mark a key version revoked (for good): it no longer signs or diversifies."""
        ...

    def import_master(self, ref: KeyRef, key: bytes, *, now: int) -> None:
        """Import an AES master key version (a restore ceremony). Refuses a version
        the store already holds."""
        ...

    def export_master(self, ref: KeyRef) -> bytes:
        """The clear value of an AES master key, for a backup split among custodians.
        An HSM refuses: its master keys are not extractable."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ManagedKeyStore: ...

    def __exit__(self, *exc: object) -> None: ...


def revoked_error(ref: KeyRef, when: int) -> str:
    """The message with which a store refuses to use a revoked key."""
    return f"key {ref} is revoked (since unix time {when}); refusing to use it"


def check_time(value: int, what: str) -> None:
    """Refuse a time that is not unix seconds a certificate can carry."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIME:
        raise BadInput(f"{what} must be unix seconds in 0..{MAX_TIME}")


def ref_order(ref: KeyRef) -> tuple[int, str, int]:
    """The listing order of key versions: KEY_SPECS order, then by version."""
    names = list(KEY_SPECS)
    index = names.index(ref.name) if ref.name in names else len(names)
    return (index, ref.name, ref.version)


class _Held(Protocol):
    """What a store keeps per key version: at least its public facts."""

    info: KeyInfo


E = TypeVar("E", bound=_Held)


class KeyBook(Generic[E]):
    """The bookkeeping every keystore does the same way, whatever holds the secrets:
    the key versions held (``_entries``, by reference), the current version of each
    name (``_current``), the lookups of the KeyStore protocol over them, and what is
    made from public facts alone (certificates under the issuer root, the trust
    bundle). A store sets these four attributes in its ``__init__`` and adds the
    cryptography (``sign``, ``signer``, ``diversify``, ...) and the persistence.
    """

    _entries: dict[KeyRef, E]
    _current: dict[str, KeyRef]
    _lock: threading.RLock
    _closed: bool

    # --- Lookups (KeyStore) -------------------------------------------------------------

    def refs(self) -> list[KeyRef]:
        self._check_open()
        with self._lock:
            return sorted(self._entries, key=ref_order)

    def current(self, name: str) -> KeyRef:
        with self._lock:
            ref = self._current.get(name)
        if ref is None:
            self._check_open()
            raise KeystoreError(f"unknown key {name!r}")
        return ref

    def info(self, ref: KeyRef) -> KeyInfo:
        return self._entry(ref).info

    def infos(self) -> list[KeyInfo]:
        return [self.info(ref) for ref in self.refs()]

    def public_key(self, ref: KeyRef) -> bytes:
        info = self._entry(ref).info
        if info.public_key is None:
            raise KeystoreError(f"key {ref} is {info.kind}, not an EC key pair")
        return info.public_key

    def certificate(self, ref: KeyRef) -> Certificate:
        info = self._entry(ref).info
        if info.certificate is None:
            raise KeystoreError(f"key {ref} is {info.kind} and has no certificate")
        return info.certificate

    def kcv(self, ref: KeyRef) -> bytes:
        info = self._entry(ref).info
        if info.kcv is None:
            raise KeystoreError(f"key {ref} is {info.kind}, not an AES key")
        return info.kcv

    def signer(self, ref: KeyRef) -> Signer:  # pragma: no cover - every store overrides it
        raise NotImplementedError

    # --- Made from public facts and a signer ----------------------------------------------

    def issue_certificate(
        self,
        *,
        holder: bytes,
        role: CertRole,
        public_key: bytes,
        not_before: int,
        not_after: int,
    ) -> Certificate:
        if role == CertRole.ROOT:
            raise BadInput("the issuer root certifies only itself; refusing role ROOT")
        check_time(not_before, "not_before")
        check_time(not_after, "not_after")
        if not_after < not_before:
            raise BadInput("not_after is before not_before")
        crypto.decode_public_key(public_key)  # DecodeError (a BadInput) if not a P-256 point
        if not 1 <= len(holder) <= 32:
            raise BadInput("holder reference must be 1-32 bytes")
        root = self.current(ISSUER_ROOT)
        if not_after > self.certificate(root).not_after:
            raise BadInput(f"certificate would outlive the issuer root {root}")
        return cert.issue(
            self.signer(root),
            authority=root,
            holder=holder,
            role=role,
            public_key=public_key,
            not_before=not_before,
            not_after=not_after,
        )

    def export_public(self) -> dict[str, Any]:
        """The public trust bundle for terminals and cards (JSON-ready, hex values).

        ``certificates`` holds every version of the issuer root and of the host
        keys (so that objects signed before a rotation still verify);
        ``current`` names the version in use for each of them.
        """
        refs = [r for r in self.refs() if KEY_SPECS[r.name].kind == KeyKind.EC_P256]
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "issuer_root": str(self.current(ISSUER_ROOT)),
            "current": {
                name: str(self.current(name))
                for name, spec in KEY_SPECS.items()
                if spec.kind == KeyKind.EC_P256 and name in self._current
            },
            "certificates": {str(r): self.certificate(r).encode().hex() for r in refs},
        }

    # --- For the stores ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KeystoreError("the keystore is closed")

    def _entry(self, ref: KeyRef) -> E:
        entry = self._entries.get(ref)
        if entry is None:
            self._check_open()
            raise KeystoreError(f"unknown key {ref}")
        return entry

    def _add(self, entry: E) -> None:
        """Hold a key version; it becomes the current one of its name if it is newer."""
        ref = entry.info.ref
        self._entries[ref] = entry
        cur = self._current.get(ref.name)
        if cur is None or cur.version < ref.version:
            self._current[ref.name] = ref
