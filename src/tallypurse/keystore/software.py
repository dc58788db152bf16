"""A software keystore: every key in one passphrase-protected JSON file.

File format (``keystore.json``, UTF-8 JSON, binary values as lowercase hex)::

    {
      "format": "tallypurse-keystore",
      "format_version": 1,
      "kdf": {"algorithm": "argon2id", "salt": hex(16), "memory_cost": KiB,
              "iterations": n, "lanes": n, "length": 32},
      "aead": "aes-256-gcm",
      "seal": {"nonce": hex(12), "ciphertext": hex},
      "keys": [
        {"name": ..., "version": n, "kind": "ec-p256" | "aes-128", "created": unix seconds,
         "public_key": hex | null, "certificate": hex | null, "kcv": hex | null,
         ["revoked": unix seconds,]  (present only once the version is revoked)
         "nonce": hex(12), "ciphertext": hex},
        ...
      ]
    }

A 256-bit key is derived from the passphrase (Unicode NFC, UTF-8) with
Argon2id under the stored salt and parameters. With it, AES-256-GCM encrypts

* each entry's secret (the 32-byte P-256 private scalar, or the 16-byte AES
  key), with the canonical JSON of the format and the entry's clear fields
  (name, version, kind, created, public key, certificate, KCV and, once
  revoked, the revocation time) as associated
  data, so an entry whose metadata or ciphertext was swapped or edited does
  not decrypt;
* the *seal*: the sorted list of every key reference, with the canonical JSON
  of the format, the KDF parameters and the AEAD name as associated data.
  The seal tells a wrong passphrase apart from a damaged entry and detects
  entries that were added or removed.

Each encryption uses a fresh random 96-bit nonce. Writes go to a temporary
file in the same directory, are fsynced, then renamed over the old file
(and the directory is fsynced), under an exclusive lock on ``keystore.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from tallypurse.core import cert, crypto
from tallypurse.core.cert import KeyRef, Signer
from tallypurse.core.errors import BadInput, CertificateError, DecodeError, KeystoreError
from tallypurse.core.protocol import CertRole
from tallypurse.keystore.base import (
    AES_KEY_LEN,
    HOST_KEYS,
    HOST_VALIDITY,
    ISSUER_ROOT,
    KEY_SPECS,
    MASTER_KEYS,
    MAX_TIME,
    ROOT_VALIDITY,
    KeyBook,
    KeyInfo,
    KeyKind,
    check_time,
    ref_order,
    revoked_error,
)

FORMAT = "tallypurse-keystore"
FORMAT_VERSION = 1
KEYSTORE_FILE = "keystore.json"
LOCK_FILE = "keystore.lock"
KDF_ALGORITHM = "argon2id"
AEAD_ALGORITHM = "aes-256-gcm"
SALT_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
DERIVED_KEY_LEN = 32
EC_SCALAR_LEN = 32
MAX_FILE_SIZE = 16 * 1024 * 1024

WRONG_PASSPHRASE = "wrong passphrase or corrupt keystore"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters. ``memory_cost`` is in KiB."""

    memory_cost: int
    iterations: int
    lanes: int

    def problem(self) -> str | None:
        """Why these parameters are unacceptable, or None when they are fine."""
        for name, value, lo, hi in (
            ("lanes", self.lanes, 1, 64),
            ("iterations", self.iterations, 1, 64),
            ("memory_cost", self.memory_cost, 8 * max(self.lanes, 1), 4 * 1024 * 1024),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                return f"KDF {name} must be an integer in {lo}..{hi}"
        return None


DEFAULT_KDF_PARAMS = KdfParams(memory_cost=64 * 1024, iterations=3, lanes=4)
"""64 MiB, 3 passes, 4 lanes: about a quarter of a second on a current server core."""


class _Secret:
    """Secret bytes that never show in a repr, a str or a pickle."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("keystore secrets cannot be pickled")


class _Entry:
    """One key version: its public facts, its sealed secret and the secret in memory."""

    __slots__ = ("_aes", "_ec", "ciphertext", "info", "nonce")

    def __init__(
        self,
        info: KeyInfo,
        nonce: bytes,
        ciphertext: bytes,
        ec_key: ec.EllipticCurvePrivateKey | None = None,
        aes_key: _Secret | None = None,
    ) -> None:
        self.info = info
        self.nonce = nonce
        self.ciphertext = ciphertext
        self._ec = ec_key
        self._aes = aes_key

    def __repr__(self) -> str:
        return f"<keystore entry {self.info.ref} {self.info.kind}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("keystore entries cannot be pickled")


class _StoreSigner:
    """A cert.Signer that asks the keystore to sign; it holds no key material."""

    __slots__ = ("_ref", "_store")

    def __init__(self, store: SoftwareKeyStore, ref: KeyRef) -> None:
        self._store = store
        self._ref = ref

    def sign(self, data: bytes) -> bytes:
        return self._store.sign(self._ref, data)

    def __repr__(self) -> str:
        return f"<keystore signer {self._ref}>"


# --- Small helpers ------------------------------------------------------------------


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str) or not passphrase:
        raise KeystoreError("passphrase must be a non-empty string")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _derive(passphrase: bytes, salt: bytes, params: KdfParams) -> AESGCM:
    kdf = Argon2id(
        salt=salt,
        length=DERIVED_KEY_LEN,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_cost,
    )
    return AESGCM(kdf.derive(passphrase))


def _kdf_header(salt: bytes, params: KdfParams) -> dict[str, Any]:
    return {
        "algorithm": KDF_ALGORITHM,
        "salt": salt.hex(),
        "memory_cost": params.memory_cost,
        "iterations": params.iterations,
        "lanes": params.lanes,
        "length": DERIVED_KEY_LEN,
    }


def _seal_ad(salt: bytes, params: KdfParams) -> bytes:
    return _canonical(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kdf": _kdf_header(salt, params),
            "aead": AEAD_ALGORITHM,
        }
    )


def _entry_public(info: KeyInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": info.ref.name,
        "version": info.ref.version,
        "kind": str(info.kind),
        "created": info.created,
        "public_key": None if info.public_key is None else info.public_key.hex(),
        "certificate": None if info.certificate is None else info.certificate.encode().hex(),
        "kcv": None if info.kcv is None else info.kcv.hex(),
    }
    # Only revoked entries carry the field, so that entries written before revocation
    # existed keep their associated data (and still decrypt).
    if info.revoked is not None:
        out["revoked"] = info.revoked
    return out


def _entry_ad(info: KeyInfo) -> bytes:
    return _canonical(
        {"format": FORMAT, "format_version": FORMAT_VERSION, "entry": _entry_public(info)}
    )


# --- Parsing the file, with messages that say which field is wrong ------------------


def _bad(where: str, problem: str) -> NoReturn:
    raise KeystoreError(f"corrupt keystore: {where} {problem}")


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        _bad(f"{where}.{key}", "is missing")
    return obj[key]


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        _bad(f"{where}.{key}", "must be a string")
    return value


def _int(obj: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = _field(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _bad(f"{where}.{key}", f"must be an integer in {lo}..{hi}")
    return value


def _dict(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = _field(obj, key, where)
    if not isinstance(value, dict):
        _bad(f"{where}.{key}", "must be an object")
    return value


def _hex(
    obj: dict[str, Any], key: str, where: str, *, length: int | None = None, nullable: bool = False
) -> bytes | None:
    value = _field(obj, key, where)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        _bad(f"{where}.{key}", "must be a hex string" + (" or null" if nullable else ""))
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        _bad(f"{where}.{key}", "is not valid hex")
    if length is not None and len(raw) != length:
        _bad(f"{where}.{key}", f"must be {length} bytes, not {len(raw)}")
    return raw


def _hex_req(obj: dict[str, Any], key: str, where: str, *, length: int | None = None) -> bytes:
    raw = _hex(obj, key, where, length=length)
    assert raw is not None
    return raw


def _read_document(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise KeystoreError(f"no keystore at {path}") from None
    except IsADirectoryError:
        raise KeystoreError(f"cannot read keystore {path}: it is a directory") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise KeystoreError(f"keystore {path} is too large to be a keystore")
    if not raw.strip():
        raise KeystoreError(f"keystore {path} is empty")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KeystoreError(f"keystore {path} is not valid JSON (truncated or corrupt)") from None
    if not isinstance(doc, dict):
        raise KeystoreError(f"keystore {path} is not a tallypurse keystore")
    return doc, crypto.sha256(raw)


# --- The keystore -------------------------------------------------------------------


class SoftwareKeyStore(KeyBook[_Entry]):
    """The KeyStore protocol over one encrypted ``keystore.json`` file.

    Every secret is decrypted when the keystore is opened and kept in memory
    (EC keys as private key objects, ready to sign). Nothing secret appears in
    a repr or a str, and nothing is logged.
    """

    def __init__(
        self,
        *,
        directory: Path,
        params: KdfParams,
        salt: bytes,
        aead: AESGCM,
        disk_digest: bytes | None,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._directory = directory
        self._params = params
        self._salt = salt
        self._aead = aead
        self._disk_digest = disk_digest
        self._entries: dict[KeyRef, _Entry] = {}
        self._current: dict[str, KeyRef] = {}
        self._lock = threading.RLock()
        self._closed = False

    def __repr__(self) -> str:
        return f"SoftwareKeyStore(directory={str(self._directory)!r}, keys={len(self._entries)})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a keystore cannot be pickled")

    def __enter__(self) -> SoftwareKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget every key held in memory; the store refuses to be used afterwards."""
        with self._lock:
            self._entries.clear()
            self._current.clear()
            self._closed = True

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def location(self) -> str:
        return str(self._directory)

    @property
    def path(self) -> Path:
        return self._directory / KEYSTORE_FILE

    @property
    def kdf_params(self) -> KdfParams:
        return self._params

    # --- Creating and opening ---------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        passphrase: str,
        *,
        now: int,
        kdf_params: KdfParams | None = None,
    ) -> SoftwareKeyStore:
        """Generate every key in KEY_SPECS and write a new keystore in ``directory``.

        The root certificate is self-signed and valid 20 years from ``now``; the
        host keys' certificates are valid 5 years. Refuses a directory that
        already holds a keystore.
        """
        params = kdf_params if kdf_params is not None else DEFAULT_KDF_PARAMS
        problem = params.problem()
        if problem is not None:
            raise BadInput(problem)
        check_time(now, "now")
        if now + ROOT_VALIDITY > MAX_TIME:
            raise BadInput("now is too late for a 20-year root certificate")
        secret = _passphrase_bytes(passphrase)
        path = Path(directory)
        if (path / KEYSTORE_FILE).exists():
            raise KeystoreError(f"a keystore already exists at {path / KEYSTORE_FILE}")
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeystoreError(f"cannot create keystore directory {path}: {exc}") from None
        salt = crypto.random_bytes(SALT_LEN)
        store = cls(
            directory=path,
            params=params,
            salt=salt,
            aead=_derive(secret, salt, params),
            disk_digest=None,
        )
        store._add(store._generate(ISSUER_ROOT, now))
        for name in (*HOST_KEYS, *MASTER_KEYS):
            store._add(store._generate(name, now))
        store._save(creating=True)
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike[str], passphrase: str) -> SoftwareKeyStore:
        """Open the keystore in ``directory``, checking every entry."""
        path = Path(directory)
        doc, digest = _read_document(path / KEYSTORE_FILE)
        if doc.get("format") != FORMAT:
            raise KeystoreError(f"{path / KEYSTORE_FILE} is not a tallypurse keystore")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise KeystoreError(f"unsupported keystore format version {version!r}")
        kdf = _dict(doc, "kdf", "keystore")
        if _str(kdf, "algorithm", "kdf") != KDF_ALGORITHM:
            _bad("kdf.algorithm", f"must be {KDF_ALGORITHM!r}")
        _int(kdf, "length", "kdf", DERIVED_KEY_LEN, DERIVED_KEY_LEN)
        salt = _hex_req(kdf, "salt", "kdf", length=SALT_LEN)
        params = KdfParams(
            memory_cost=_int(kdf, "memory_cost", "kdf", 8, 4 * 1024 * 1024),
            iterations=_int(kdf, "iterations", "kdf", 1, 64),
            lanes=_int(kdf, "lanes", "kdf", 1, 64),
        )
        problem = params.problem()
        if problem is not None:
            _bad("kdf", problem)
        if _str(doc, "aead", "keystore") != AEAD_ALGORITHM:
            _bad("keystore.aead", f"must be {AEAD_ALGORITHM!r}")
        seal = _dict(doc, "seal", "keystore")
        seal_nonce = _hex_req(seal, "nonce", "seal", length=NONCE_LEN)
        seal_ct = _hex_req(seal, "ciphertext", "seal")
        raw_keys = _field(doc, "keys", "keystore")
        if not isinstance(raw_keys, list):
            _bad("keystore.keys", "must be a list")
        entries = [_parse_entry(item, f"keys[{i}]") for i, item in enumerate(raw_keys)]

        aead = _derive(_passphrase_bytes(passphrase), salt, params)
        try:
            sealed = aead.decrypt(seal_nonce, seal_ct, _seal_ad(salt, params))
        except InvalidTag:
            raise KeystoreError(WRONG_PASSPHRASE) from None
        try:
            sealed_refs = json.loads(sealed)["keys"]
        except (ValueError, KeyError, TypeError):
            raise KeystoreError(WRONG_PASSPHRASE) from None

        store = cls(
            directory=path,
            params=params,
            salt=salt,
            aead=aead,
            disk_digest=digest,
        )
        for info, nonce, ciphertext in entries:
            if info.ref in store._entries:
                raise KeystoreError(f"corrupt keystore: key {info.ref} appears twice")
            store._add(store._unseal(info, nonce, ciphertext))
        if sealed_refs != sorted(str(r) for r in store._entries):
            raise KeystoreError(
                "corrupt keystore: the list of keys does not match the sealed list "
                "(an entry was added or removed)"
            )
        for name in KEY_SPECS:
            if name not in store._current:
                raise KeystoreError(f"corrupt keystore: no key named {name!r}")
        for entry in store._entries.values():
            store._check_certificate(entry.info)
        return store

    # --- The KeyStore protocol ------------------------------------------------------

    def sign(self, ref: KeyRef, data: bytes) -> bytes:
        key = self._ec_key(ref)
        self._check_not_revoked(ref)
        return crypto.sign(key, data)

    def signer(self, ref: KeyRef) -> Signer:
        self._ec_key(ref)
        self._check_not_revoked(ref)
        return _StoreSigner(self, ref)

    def diversify(self, master: KeyRef, purpose: bytes, serial: bytes) -> bytes:
        key = self._aes_key(master)
        self._check_not_revoked(master)
        try:
            return crypto.diversify(key, purpose, serial)
        except ValueError as exc:
            raise BadInput(f"cannot diversify: {exc}") from None

    def rotate(self, name: str, *, now: int | None = None) -> KeyRef:
        self._check_open()
        if name not in KEY_SPECS:
            raise KeystoreError(f"unknown key {name!r}")
        at = int(time.time()) if now is None else now
        check_time(at, "now")
        with self._lock:
            entry = self._generate(name, at)
            previous = self._current.get(name)
            self._add(entry)
            try:
                self._save(creating=False)
            except BaseException:
                del self._entries[entry.info.ref]
                if previous is None:
                    del self._current[name]
                else:
                    self._current[name] = previous
                raise
            return entry.info.ref

    # --- Ceremonies (ManagedKeyStore) -----------------------------------------------------

    def generate(self, name: str, *, now: int) -> KeyRef:
        """A software keystore holds every named key from its creation on, so this only
        refuses (with the way forward); an HSM token can receive its keys one by one."""
        self._check_open()
        if name not in KEY_SPECS:
            raise KeystoreError(f"unknown key {name!r}")
        raise KeystoreError(
            f"the keystore already holds {self.current(name)}; "
            f"use 'rotate {name}' for a new version"
        )

    def revoke(self, ref: KeyRef, *, now: int) -> None:
        """Mark a key version revoked; it stays listed but no longer signs or diversifies."""
        check_time(now, "now")
        with self._lock:
            entry = self._entry(ref)
            if entry.info.revoked is not None:
                raise KeystoreError(f"key {ref} is already revoked")
            info = replace(entry.info, revoked=now)
            secret = (
                entry._aes.reveal()
                if entry._aes is not None
                else crypto.private_scalar(self._ec_key(ref))
            )
            nonce = crypto.random_bytes(NONCE_LEN)
            ciphertext = self._aead.encrypt(nonce, secret, _entry_ad(info))
            updated = _Entry(info, nonce, ciphertext, ec_key=entry._ec, aes_key=entry._aes)
            self._entries[ref] = updated
            try:
                self._save(creating=False)
            except BaseException:
                self._entries[ref] = entry
                raise

    def import_master(self, ref: KeyRef, key: bytes, *, now: int) -> None:
        """Add an AES master key version restored from custodians' shares."""
        self._check_open()
        check_time(now, "now")
        spec = KEY_SPECS.get(ref.name)
        if spec is None or spec.kind != KeyKind.AES_128:
            raise KeystoreError(f"{ref.name!r} is not an AES master key")
        if not isinstance(key, bytes) or len(key) != AES_KEY_LEN:
            raise BadInput(f"a master key is {AES_KEY_LEN} bytes")
        if not 1 <= ref.version <= 2**31 - 1:
            raise BadInput("key version must be in 1..2^31-1")
        with self._lock:
            if ref in self._entries:
                raise KeystoreError(f"the keystore already holds {ref}")
            info = KeyInfo(ref=ref, kind=spec.kind, created=now, kcv=crypto.key_check_value(key))
            nonce = crypto.random_bytes(NONCE_LEN)
            entry = _Entry(
                info, nonce, self._aead.encrypt(nonce, key, _entry_ad(info)), aes_key=_Secret(key)
            )
            previous = self._current.get(ref.name)
            self._add(entry)
            try:
                self._save(creating=False)
            except BaseException:
                del self._entries[ref]
                if previous is None:
                    self._current.pop(ref.name, None)
                else:
                    self._current[ref.name] = previous
                raise

    def export_master(self, ref: KeyRef) -> bytes:
        """The clear value of an AES master key, for a backup ceremony only."""
        return self._aes_key(ref)

    # --- Internals --------------------------------------------------------------------

    def _check_not_revoked(self, ref: KeyRef) -> None:
        when = self._entry(ref).info.revoked
        if when is not None:
            raise KeystoreError(revoked_error(ref, when))

    def _ec_key(self, ref: KeyRef) -> ec.EllipticCurvePrivateKey:
        entry = self._entry(ref)
        if entry._ec is None:
            raise KeystoreError(f"key {ref} is {entry.info.kind}, not an EC signing key")
        return entry._ec

    def _aes_key(self, ref: KeyRef) -> bytes:
        entry = self._entry(ref)
        if entry._aes is None:
            raise KeystoreError(f"key {ref} is {entry.info.kind}, not an AES master key")
        return entry._aes.reveal()

    def _generate(self, name: str, now: int) -> _Entry:
        spec = KEY_SPECS[name]
        cur = self._current.get(name)
        ref = KeyRef(name, 1 if cur is None else cur.version + 1)
        if spec.kind == KeyKind.AES_128:
            key = crypto.random_bytes(AES_KEY_LEN)
            info = KeyInfo(ref=ref, kind=spec.kind, created=now, kcv=crypto.key_check_value(key))
            nonce = crypto.random_bytes(NONCE_LEN)
            ct = self._aead.encrypt(nonce, key, _entry_ad(info))
            return _Entry(info, nonce, ct, aes_key=_Secret(key))
        assert spec.role is not None
        private = crypto.generate_private_key()
        public = crypto.encode_public_key(private.public_key())
        if spec.role == CertRole.ROOT:
            certificate = cert.issue(
                cert.KeySigner(private),
                authority=ref,
                holder=ref.encode(),
                role=CertRole.ROOT,
                public_key=public,
                not_before=now,
                not_after=now + ROOT_VALIDITY,
            )
        else:
            root = self.current(ISSUER_ROOT)
            root_cert = self.certificate(root)
            certificate = cert.issue(
                self.signer(root),
                authority=root,
                holder=ref.encode(),
                role=spec.role,
                public_key=public,
                not_before=now,
                not_after=min(now + HOST_VALIDITY, root_cert.not_after),
            )
        info = KeyInfo(
            ref=ref, kind=spec.kind, created=now, public_key=public, certificate=certificate
        )
        nonce = crypto.random_bytes(NONCE_LEN)
        ct = self._aead.encrypt(nonce, crypto.private_scalar(private), _entry_ad(info))
        return _Entry(info, nonce, ct, ec_key=private)

    def _unseal(self, info: KeyInfo, nonce: bytes, ciphertext: bytes) -> _Entry:
        ref = info.ref
        try:
            plain = self._aead.decrypt(nonce, ciphertext, _entry_ad(info))
        except InvalidTag:
            raise KeystoreError(
                f"corrupt keystore: key {ref} does not authenticate "
                "(damaged, edited or swapped with another entry)"
            ) from None
        if info.kind == KeyKind.AES_128:
            if (
                len(plain) != AES_KEY_LEN
                or info.kcv is None
                or not crypto.constant_time_equal(crypto.key_check_value(plain), info.kcv)
            ):
                raise KeystoreError(f"corrupt keystore: key {ref} does not match its KCV")
            return _Entry(info, nonce, ciphertext, aes_key=_Secret(plain))
        try:
            private = crypto.private_key_from_scalar(plain)
        except (DecodeError, ValueError):
            raise KeystoreError(f"corrupt keystore: key {ref} is not a P-256 key") from None
        if crypto.encode_public_key(private.public_key()) != info.public_key:
            raise KeystoreError(f"corrupt keystore: key {ref} does not match its public key")
        return _Entry(info, nonce, ciphertext, ec_key=private)

    def _check_certificate(self, info: KeyInfo) -> None:
        c = info.certificate
        if c is None:
            return
        ref = info.ref
        spec = KEY_SPECS[ref.name]
        if c.public_key != info.public_key or c.role != spec.role or c.holder != ref.encode():
            raise KeystoreError(f"corrupt keystore: the certificate of {ref} is not for {ref}")
        if spec.role == CertRole.ROOT:
            if c.authority != ref:
                raise KeystoreError(f"corrupt keystore: root {ref} is not self-signed")
        elif c.authority.name != ISSUER_ROOT or c.authority not in self._entries:
            raise KeystoreError(
                f"corrupt keystore: the certificate of {ref} names an unknown issuer {c.authority}"
            )
        issuer = self._entries[c.authority].info.public_key
        assert issuer is not None
        if not crypto.verify(issuer, c.signature, c.body):
            raise KeystoreError(f"corrupt keystore: the certificate of {ref} does not verify")

    def _document(self) -> bytes:
        refs = sorted(str(r) for r in self._entries)
        nonce = crypto.random_bytes(NONCE_LEN)
        seal = self._aead.encrypt(
            nonce, _canonical({"keys": refs}), _seal_ad(self._salt, self._params)
        )
        keys = []
        for ref in sorted(self._entries, key=ref_order):
            entry = self._entries[ref]
            keys.append(
                {
                    **_entry_public(entry.info),
                    "nonce": entry.nonce.hex(),
                    "ciphertext": entry.ciphertext.hex(),
                }
            )
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kdf": _kdf_header(self._salt, self._params),
            "aead": AEAD_ALGORITHM,
            "seal": {"nonce": nonce.hex(), "ciphertext": seal.hex()},
            "keys": keys,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeystoreError(f"cannot lock keystore in {self._directory}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self, *, creating: bool) -> None:
        data = self._document()
        path = self.path
        with self._lock, self._locked():
            if creating:
                if path.exists():
                    raise KeystoreError(f"a keystore already exists at {path}")
            else:
                try:
                    on_disk = crypto.sha256(path.read_bytes())
                except OSError as exc:
                    raise KeystoreError(f"cannot read keystore {path}: {exc}") from None
                if on_disk != self._disk_digest:
                    raise KeystoreError(
                        f"keystore {path} changed on disk since it was opened; open it again"
                    )
            try:
                _atomic_write(path, data)
            except OSError as exc:
                raise KeystoreError(f"cannot write keystore {path}: {exc}") from None
            self._disk_digest = crypto.sha256(data)


def _parse_entry(item: object, where: str) -> tuple[KeyInfo, bytes, bytes]:
    if not isinstance(item, dict):
        _bad(where, "must be an object")
    name = _str(item, "name", where)
    spec = KEY_SPECS.get(name)
    if spec is None:
        _bad(f"{where}.name", f"is an unknown key name {name!r}")
    ref = KeyRef(name, _int(item, "version", where, 1, 2**31 - 1))
    where = f"key {ref}"
    kind = _str(item, "kind", where)
    if kind != spec.kind:
        _bad(f"{where}.kind", f"must be {str(spec.kind)!r}")
    created = _int(item, "created", where, 0, MAX_TIME)
    revoked = _int(item, "revoked", where, 0, MAX_TIME) if "revoked" in item else None
    nonce = _hex_req(item, "nonce", where, length=NONCE_LEN)
    ciphertext = _hex_req(item, "ciphertext", where)
    if spec.kind == KeyKind.AES_128:
        if _field(item, "public_key", where) is not None:
            _bad(f"{where}.public_key", "must be null for an AES key")
        if _field(item, "certificate", where) is not None:
            _bad(f"{where}.certificate", "must be null for an AES key")
        kcv = _hex_req(item, "kcv", where, length=3)
        if len(ciphertext) != AES_KEY_LEN + TAG_LEN:
            _bad(f"{where}.ciphertext", f"must be {AES_KEY_LEN + TAG_LEN} bytes")
        info = KeyInfo(ref=ref, kind=spec.kind, created=created, kcv=kcv, revoked=revoked)
        return info, nonce, ciphertext
    if _field(item, "kcv", where) is not None:
        _bad(f"{where}.kcv", "must be null for an EC key")
    public = _hex_req(item, "public_key", where, length=crypto.PUB_LEN)
    try:
        crypto.decode_public_key(public)
    except DecodeError:
        _bad(f"{where}.public_key", "is not a P-256 point")
    try:
        certificate = cert.parse(_hex_req(item, "certificate", where))
    except CertificateError as exc:
        _bad(f"{where}.certificate", f"is not a certificate ({exc.message})")
    if len(ciphertext) != EC_SCALAR_LEN + TAG_LEN:
        _bad(f"{where}.ciphertext", f"must be {EC_SCALAR_LEN + TAG_LEN} bytes")
    info = KeyInfo(
        ref=ref,
        kind=spec.kind,
        created=created,
        public_key=public,
        certificate=certificate,
        revoked=revoked,
    )
    return info, nonce, ciphertext


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".keystore.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
