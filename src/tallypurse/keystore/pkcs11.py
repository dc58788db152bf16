"""A PKCS#11 (HSM) keystore: the operator's keys as non-extractable token objects.

The same :class:`~tallypurse.keystore.base.KeyStore` protocol as the software
keystore, over any PKCS#11 v2.40 token (tested against SoftHSM2):

* EC P-256 signing keys are key pairs generated on the token; the private
  half is ``CKA_SENSITIVE`` and not ``CKA_EXTRACTABLE``. Signing hashes with
  SHA-256 in this process and signs the digest with ``CKM_ECDSA`` on the token
  (SoftHSM2 has no ``CKM_ECDSA_SHA256``); PKCS#11 returns r || s, which is
  tallypurse's raw 64-byte signature format already. Every signature is
  verified against the public key before it is returned (a faulty token
  cannot hand out a bad or fault-leaking signature).
* AES-128 master keys are secret keys generated on the token (or imported
  once, by a restore ceremony), sensitive and not extractable. A key check
  value is ``CKM_AES_ECB`` of 16 x 0x01 on the token.
* Diversification runs the SP 800-108 counter-mode KDF of
  :func:`tallypurse.core.crypto.diversify` with ``CKM_AES_CMAC`` on the token,
  over the same fixed-data layout, so the master key never leaves the token.
  The *derived per-card key* is returned in clear: it must be loaded into the
  card (PUT KEY under the card's current DEK, or personalisation). SoftHSM2
  (PKCS#11 2.40) has no mechanism that derives a key *object* by CMAC KDF
  (``CKM_SP800_108_COUNTER_KDF`` is PKCS#11 3.0), so a wrap-under-DEK that
  keeps the derived key inside the token is not offered; see docs/security.md.
* Key references: ``CKA_LABEL`` is the key's name, ``CKA_ID`` its reference
  ``b"name/version"``. Per key version the store also keeps private
  ``CKO_DATA`` objects (``CKA_APPLICATION`` says which, ``CKA_LABEL`` is
  ``"name/version"``): ``tallypurse-key`` (kind and creation time, JSON),
  ``tallypurse-cert`` (the certificate of an EC key) and, once revoked,
  ``tallypurse-revoked`` (JSON with the revocation time).
* The change stamp: one private ``CKO_DATA`` object (``CKA_APPLICATION``
  ``tallypurse-changes``) holding a generation counter and a random nonce (JSON),
  which every ceremony on the token (generate, rotate, revoke, import) replaces
  by a new one as its last step. A running host reads it (one
  ``C_GetAttributeValue`` pair on a handle it keeps) to learn, without reading
  every key, that another process changed the keys (:meth:`Pkcs11KeyStore.change_stamp`,
  :meth:`Pkcs11KeyStore.reload`).

The token is named by a URI (RFC 7512 style; see :func:`parse_uri`)::

    pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=tallypurse;pin-source=env:HSM_PIN
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

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
    revoked_error,
)

URI_SCHEME = "pkcs11:"
APP_KEY = "tallypurse-key"
APP_CERT = "tallypurse-cert"
APP_REVOKED = "tallypurse-revoked"
APP_CHANGES = "tallypurse-changes"
CHANGES_LABEL = "tallypurse"
DIVERSIFY_CONSTANT = 0x10  # as crypto.diversify
KCV_BLOCK = b"\x01" * 16

_URI_ATTRIBUTES = {
    "module": "module",
    "module-path": "module",
    "token": "token",
    "pin-source": "pin-source",
    "pin-value": "pin-value",
}


class _Shared:
    """The one logged-in session of this process on a token.

    PKCS#11 login state belongs to the application, not to a session: a second
    C_Login fails and any C_Logout logs every session out. So every store opened
    on one token in this process shares one session (and one lock, since a
    session runs one operation at a time), counted, and closed with the last.
    """

    def __init__(self, session: pkcs11.Session, pin_digest: bytes) -> None:
        self.session = session
        self.pin_digest = pin_digest
        self.users = 0
        self.lock = threading.RLock()


_shared: dict[tuple[str, str], _Shared] = {}
_open_lock = threading.Lock()


# --- The URI ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """Where the keys are: the PKCS#11 module, the token label and how to get the PIN."""

    module: str
    token: str
    pin_source: str | None = None  # "env:NAME" or "file:/path"
    pin_value: str | None = None

    def pin(self) -> str | None:
        """The user PIN the URI names, or None when it names none (ask the operator)."""
        if self.pin_value is not None:
            return self.pin_value
        if self.pin_source is None:
            return None
        kind, _, where = self.pin_source.partition(":")
        if kind == "env":
            value = os.environ.get(where)
            if not value:
                raise KeystoreError(f"the PIN variable {where} is not set")
            return value
        if kind == "file":
            try:
                return Path(where).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise KeystoreError(f"cannot read the PIN file {where}: {exc.strerror}") from None
        raise BadInput(f"pin-source must be env:NAME or file:PATH, not {self.pin_source!r}")

    def __str__(self) -> str:
        """The URI without a literal PIN (safe to print and to log)."""
        out = f"{URI_SCHEME}module={self.module};token={self.token}"
        if self.pin_source is not None:
            out += f";pin-source={self.pin_source}"
        return out


def is_uri(text: str) -> bool:
    return text.startswith(URI_SCHEME)


def parse_uri(text: str) -> Pkcs11Uri:
    """Parse ``pkcs11:module=PATH;token=LABEL[;pin-source=env:VAR|file:PATH][;pin-value=PIN]``.

    Attributes are separated by ``;`` (or given as a ``?a=b&c=d`` query, as RFC 7512
    spells ``module-path`` and ``pin-source``); values are percent-decoded.
    ``module-path`` is accepted for ``module``. Unknown or repeated attributes are refused.
    """
    if not is_uri(text):
        raise BadInput(f"a PKCS#11 URI starts with {URI_SCHEME!r}")
    path, _, query = text[len(URI_SCHEME) :].partition("?")
    parts = [p for p in path.split(";") if p] + [q for q in query.split("&") if q]
    found: dict[str, str] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        key = _URI_ATTRIBUTES.get(name)
        if not eq or key is None:
            raise BadInput(
                f"unknown PKCS#11 URI attribute {name!r} "
                "(known: module, token, pin-source, pin-value)"
            )
        if key in found:
            raise BadInput(f"PKCS#11 URI attribute {name!r} is given twice")
        found[key] = unquote(value)
    for required in ("module", "token"):
        if not found.get(required):
            raise BadInput(f"the PKCS#11 URI needs {required}=...")
    if "pin-source" in found and "pin-value" in found:
        raise BadInput("give pin-source or pin-value, not both")
    return Pkcs11Uri(
        module=found["module"],
        token=found["token"],
        pin_source=found.get("pin-source"),
        pin_value=found.get("pin-value"),
    )


# --- Helpers ------------------------------------------------------------------------------


def kdf_block_input(constant: int, context: bytes, bits: int, counter: int) -> bytes:
    """The CMAC input of one block of :func:`tallypurse.core.crypto.scp03_derive`:
    11 zero bytes, the derivation constant, 0x00, L (2 bytes), the counter, the context."""
    return (
        b"\x00" * 11
        + bytes([constant])
        + b"\x00"
        + bits.to_bytes(2, "big")
        + bytes([counter])
        + context
    )


def _ec_point(raw: bytes) -> bytes:
    """The 65-byte point from CKA_EC_POINT (a DER OCTET STRING, or bare on some tokens)."""
    if len(raw) == crypto.PUB_LEN + 2 and raw[0] == 0x04 and raw[1] == crypto.PUB_LEN:
        return raw[2:]
    if len(raw) == crypto.PUB_LEN and raw[0] == 0x04:
        return raw
    raise KeystoreError("the token returned an EC point that is not an uncompressed P-256 point")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _fail(what: str, exc: p11e.PKCS11Error) -> NoReturn:
    raise KeystoreError(f"HSM: {what} failed ({type(exc).__name__})") from None


def _load_token(uri: Pkcs11Uri) -> pkcs11.Token:
    try:
        lib = pkcs11.lib(uri.module)
    except (OSError, RuntimeError, p11e.PKCS11Error) as exc:
        raise KeystoreError(f"cannot load the PKCS#11 module {uri.module}: {exc}") from None
    try:
        return lib.get_token(token_label=uri.token)
    except p11e.NoSuchToken:
        with _open_lock:
            if _shared:
                # Re-initialising would close every open session.
                raise KeystoreError(f"no PKCS#11 token labelled {uri.token!r}") from None
            # A token initialised after the module was loaded shows only after a reload.
            lib.reinitialize()
        try:
            return lib.get_token(token_label=uri.token)
        except p11e.NoSuchToken:
            raise KeystoreError(f"no PKCS#11 token labelled {uri.token!r}") from None
    except p11e.MultipleTokensReturned:
        raise KeystoreError(f"more than one PKCS#11 token is labelled {uri.token!r}") from None


class _Entry:
    """One key version on the token: its public facts and its object handles."""

    __slots__ = ("info", "key")

    def __init__(self, info: KeyInfo, key: Any) -> None:
        self.info = info
        self.key = key  # pkcs11 PrivateKey (EC) or SecretKey (AES); no value readable

    def __repr__(self) -> str:
        return f"<hsm entry {self.info.ref} {self.info.kind}>"


class _HsmSigner:
    """A cert.Signer that asks the token to sign; it holds no key material."""

    __slots__ = ("_ref", "_store")

    def __init__(self, store: Pkcs11KeyStore, ref: KeyRef) -> None:
        self._store = store
        self._ref = ref

    def sign(self, data: bytes) -> bytes:
        return self._store.sign(self._ref, data)

    def __repr__(self) -> str:
        return f"<hsm signer {self._ref}>"


# --- The keystore -----------------------------------------------------------------------


class Pkcs11KeyStore(KeyBook[_Entry]):
    """The KeyStore protocol (and the ceremonies' ManagedKeyStore) on a PKCS#11 token."""

    def __init__(self, uri: Pkcs11Uri, shared: _Shared) -> None:
        """Internal: use :meth:`open` or :meth:`create`."""
        self._uri = uri
        self._shared = shared
        self._session = shared.session
        self._entries: dict[KeyRef, _Entry] = {}
        self._current: dict[str, KeyRef] = {}
        self._lock = shared.lock
        self._closed = False
        self._stamp_objects: list[Any] = []  # the change stamp's objects, once found

    def __repr__(self) -> str:
        return f"Pkcs11KeyStore(uri={str(self._uri)!r}, keys={len(self._entries)})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a keystore cannot be pickled")

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Log out and close the session; the store refuses to be used afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._entries.clear()
            self._current.clear()
        _release(self._uri)

    @property
    def uri(self) -> Pkcs11Uri:
        return self._uri

    @property
    def location(self) -> str:
        return str(self._uri)

    # --- Opening and creating ---------------------------------------------------------

    @classmethod
    def _session_for(cls, uri: Pkcs11Uri, pin: str | None) -> _Shared:
        return _acquire(uri, pin if pin is not None else uri.pin())

    @classmethod
    def open(
        cls, uri: str | Pkcs11Uri, *, pin: str | None = None, allow_empty: bool = False
    ) -> Pkcs11KeyStore:
        """Open the token, read every tallypurse key and check each certificate.
        A token with no tallypurse key is refused unless ``allow_empty`` (a ceremony
        that generates or restores keys one by one)."""
        parsed = parse_uri(uri) if isinstance(uri, str) else uri
        store = cls(parsed, cls._session_for(parsed, pin))
        try:
            store._load()
            if not store._entries and not allow_empty:
                raise KeystoreError(
                    f"PKCS#11 token {parsed.token!r} holds no tallypurse keys "
                    "(run 'tallypurse keys init' on it first)"
                )
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def create(cls, uri: str | Pkcs11Uri, *, now: int, pin: str | None = None) -> Pkcs11KeyStore:
        """Generate every key of KEY_SPECS on an initialised token that holds none yet."""
        check_time(now, "now")
        if now + ROOT_VALIDITY > MAX_TIME:
            raise BadInput("now is too late for a 20-year root certificate")
        parsed = parse_uri(uri) if isinstance(uri, str) else uri
        store = cls(parsed, cls._session_for(parsed, pin))
        try:
            store._load()
            if store._entries:
                raise KeystoreError(f"PKCS#11 token {parsed.token!r} already holds tallypurse keys")
            for name in (ISSUER_ROOT, *HOST_KEYS, *MASTER_KEYS):
                store._generate(name, now)
        except BaseException:
            store.close()
            raise
        return store

    # --- The KeyStore protocol ----------------------------------------------------------

    def sign(self, ref: KeyRef, data: bytes) -> bytes:
        entry = self._usable(ref, KeyKind.EC_P256)
        digest = crypto.sha256(data)
        with self._lock:
            try:
                signature = bytes(entry.key.sign(digest, mechanism=Mechanism.ECDSA))
            except p11e.PKCS11Error as exc:
                _fail(f"signing with {ref}", exc)
        public = entry.info.public_key
        assert public is not None
        if len(signature) != crypto.SIG_LEN or not crypto.verify(public, signature, data):
            raise KeystoreError(f"HSM: the signature made with {ref} does not verify")
        return signature

    def signer(self, ref: KeyRef) -> Signer:
        self._usable(ref, KeyKind.EC_P256)
        return _HsmSigner(self, ref)

    def diversify(self, master: KeyRef, purpose: bytes, serial: bytes) -> bytes:
        """The per-card key of :func:`tallypurse.core.crypto.diversify`, computed on the
        token with CKM_AES_CMAC (the master stays inside; the result is returned)."""
        entry = self._usable(master, KeyKind.AES_128)
        if len(purpose) > 16:
            raise BadInput("cannot diversify: purpose too long")
        context = purpose.ljust(16, b"\x00") + serial
        bits = AES_KEY_LEN * 8
        out = b""
        with self._lock:
            for counter in range(1, bits // 128 + 1):
                block = kdf_block_input(DIVERSIFY_CONSTANT, context, bits, counter)
                try:
                    out += bytes(entry.key.sign(block, mechanism=Mechanism.AES_CMAC))
                except p11e.PKCS11Error as exc:
                    _fail(f"diversifying with {master}", exc)
        return out[: bits // 8]

    def rotate(self, name: str, *, now: int | None = None) -> KeyRef:
        self._check_open()
        if name not in KEY_SPECS:
            raise KeystoreError(f"unknown key {name!r}")
        at = int(time.time()) if now is None else now
        check_time(at, "now")
        with self._lock:
            return self._generate(name, at)

    # --- Ceremonies (ManagedKeyStore) -------------------------------------------------------

    def generate(self, name: str, *, now: int) -> KeyRef:
        """Generate version 1 of a named key the token does not hold yet."""
        self._check_open()
        if name not in KEY_SPECS:
            raise KeystoreError(f"unknown key {name!r}")
        check_time(now, "now")
        with self._lock:
            if name in self._current:
                raise KeystoreError(
                    f"the token already holds {self._current[name]}; "
                    f"use 'rotate {name}' for a new version"
                )
            return self._generate(name, now)

    def revoke(self, ref: KeyRef, *, now: int) -> None:
        check_time(now, "now")
        with self._lock:
            entry = self._entry(ref)
            if entry.info.revoked is not None:
                raise KeystoreError(f"key {ref} is already revoked")
            with _discard_on_failure(self._data(APP_REVOKED, ref, _canonical({"revoked": now}))):
                self._mark_changed()
            entry.info = replace(entry.info, revoked=now)

    def import_master(self, ref: KeyRef, key: bytes, *, now: int) -> None:
        """Import an AES master version restored from shares, as a sensitive,
        non-extractable token object (its CKA_ALWAYS_SENSITIVE is false: it was
        outside a token once, in the ceremony)."""
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
                raise KeystoreError(f"the token already holds {ref}")
            try:
                obj = self._session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.VALUE: key,
                        **self._aes_template(ref),
                    }
                )
            except p11e.PKCS11Error as exc:
                _fail(f"importing {ref}", exc)
            self._finish_aes(ref, obj, now, expect_kcv=crypto.key_check_value(key))

    def export_master(self, ref: KeyRef) -> NoReturn:
        self._entry(ref)
        raise KeystoreError(
            f"{ref} is a non-extractable HSM key and cannot be exported; back up a master "
            "before it enters the HSM (split it, then 'keys restore' it into the token)"
        )

    # --- Following other processes' ceremonies ---------------------------------------------

    def change_stamp(self) -> bytes | None:
        """The token's change stamp: a value every ceremony on the token replaces (None on
        a token whose keys were all made before tokens carried a stamp, until its next
        ceremony). Once found, reading it is one ``C_GetAttributeValue`` pair on a kept
        handle; the search (``C_FindObjects*``) runs the first time, and again only when
        the kept object went away (a ceremony replaced it)."""
        self._check_open()
        with self._lock:
            try:
                if self._stamp_objects:
                    try:
                        return self._stamp_value(self._stamp_objects)
                    except p11e.PKCS11Error:
                        self._stamp_objects = []  # destroyed: look for it again
                found = self._find_stamps()
                if not found:
                    return None
                value = self._stamp_value(found)
                self._stamp_objects = found
                return value
            except p11e.PKCS11Error as exc:
                _fail("reading the change stamp", exc)

    def reload(self) -> None:
        """Read every tallypurse key on the token again (after another process's ceremony:
        :meth:`change_stamp` changed) and use that view from now on. A view that cannot be
        read or checked, or that lacks a key name the store held, is refused
        (KeystoreError) and the store keeps the view it had."""
        self._check_open()
        fresh = Pkcs11KeyStore(self._uri, self._shared)  # the same session, not counted again
        with self._lock:
            fresh._load()
            lost = sorted(set(self._current) - set(fresh._current))
            if lost:
                raise KeystoreError(f"HSM: the token no longer holds {', '.join(lost)}")
            self._entries, self._current = fresh._entries, fresh._current

    def _find_stamps(self) -> list[Any]:
        return list(
            self._session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.PRIVATE: True,
                    Attribute.APPLICATION: APP_CHANGES,
                }
            )
        )

    @staticmethod
    def _stamp_value(objects: list[Any]) -> bytes:
        """The stamp objects' values, both attributes read in one C_GetAttributeValue
        pair per object; a handle that no longer names a stamp object (a token may give
        a destroyed object's handle to a new one) is an error: the caller looks again."""
        out = b""
        for obj in objects:
            got = obj.get_attributes([Attribute.APPLICATION, Attribute.VALUE])
            if str(got[Attribute.APPLICATION]) != APP_CHANGES:
                raise p11e.ObjectHandleInvalid()
            out += bytes(got[Attribute.VALUE])
        return out

    def _mark_changed(self) -> None:
        """The last step of every ceremony (under the lock): a new change stamp, so that
        running hosts (other processes, other sessions) read the keys again. The stamp
        object is replaced, not modified (tokens differ in what they let one modify):
        the new one is made first, then the old one destroyed, so a reader always finds
        one; a reader holding the old handle finds it gone and looks again."""
        try:
            old = self._find_stamps()
            generation = 0
            for obj in old:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    seen = json.loads(bytes(obj[Attribute.VALUE]))["generation"]
                    generation = max(generation, int(seen))
            new = self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.APPLICATION: APP_CHANGES,
                    Attribute.LABEL: CHANGES_LABEL,
                    Attribute.VALUE: _canonical(
                        {"generation": generation + 1, "nonce": secrets.token_hex(16)}
                    ),
                }
            )
            for obj in old:
                with contextlib.suppress(p11e.ObjectHandleInvalid):  # another ceremony's
                    obj.destroy()
        except p11e.PKCS11Error as exc:
            _fail("setting the change stamp", exc)
        self._stamp_objects = [new]

    # --- Internals ---------------------------------------------------------------------------

    def _usable(self, ref: KeyRef, kind: KeyKind) -> _Entry:
        entry = self._entry(ref)
        if entry.info.kind != kind:
            what = "an EC signing key" if kind == KeyKind.EC_P256 else "an AES master key"
            raise KeystoreError(f"key {ref} is {entry.info.kind}, not {what}")
        if entry.info.revoked is not None:
            raise KeystoreError(revoked_error(ref, entry.info.revoked))
        return entry

    def _aes_template(self, ref: KeyRef) -> dict[Attribute, Any]:
        return {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,
            Attribute.LABEL: ref.name,
            Attribute.ID: ref.encode(),
            Attribute.SIGN: True,  # CKM_AES_CMAC: diversification
            Attribute.ENCRYPT: True,  # CKM_AES_ECB: the key check value
            Attribute.DECRYPT: False,
            Attribute.VERIFY: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }

    def _data(self, application: str, ref: KeyRef, value: bytes) -> Any:
        try:
            return self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.APPLICATION: application,
                    Attribute.LABEL: str(ref),
                    Attribute.VALUE: value,
                }
            )
        except p11e.PKCS11Error as exc:
            _fail(f"storing {application} for {ref}", exc)

    def _kcv_on_token(self, ref: KeyRef, key: Any) -> bytes:
        try:
            return bytes(key.encrypt(KCV_BLOCK, mechanism=Mechanism.AES_ECB))[:3]
        except p11e.PKCS11Error as exc:
            _fail(f"the key check value of {ref}", exc)

    def _finish_aes(self, ref: KeyRef, key: Any, now: int, *, expect_kcv: bytes | None) -> KeyRef:
        with _discard_on_failure(key) as made:
            kcv = self._kcv_on_token(ref, key)
            if expect_kcv is not None and not crypto.constant_time_equal(kcv, expect_kcv):
                raise KeystoreError(f"HSM: {ref} does not have the expected key check value")
            made.append(
                self._data(APP_KEY, ref, _canonical({"kind": str(KeyKind.AES_128), "created": now}))
            )
            self._mark_changed()
        self._add(_Entry(KeyInfo(ref=ref, kind=KeyKind.AES_128, created=now, kcv=kcv), key))
        return ref

    def _generate(self, name: str, now: int) -> KeyRef:
        spec = KEY_SPECS[name]
        cur = self._current.get(name)
        ref = KeyRef(name, 1 if cur is None else cur.version + 1)
        if spec.kind == KeyKind.AES_128:
            try:
                key = self._session.generate_key(
                    KeyType.AES, AES_KEY_LEN * 8, store=True, template=self._aes_template(ref)
                )
            except p11e.PKCS11Error as exc:
                _fail(f"generating {ref}", exc)
            return self._finish_aes(ref, key, now, expect_kcv=None)
        assert spec.role is not None
        if spec.role != CertRole.ROOT:
            root = self.current(ISSUER_ROOT)  # before anything is written
            self._usable(root, KeyKind.EC_P256)
        try:
            params = self._session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            pub, priv = params.generate_keypair(
                store=True,
                label=name,
                id=ref.encode(),
                public_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.VERIFY: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.LABEL: name,
                    Attribute.ID: ref.encode(),
                },
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.MODIFIABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DERIVE: False,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                    Attribute.LABEL: name,
                    Attribute.ID: ref.encode(),
                },
            )
            public = _ec_point(bytes(pub[Attribute.EC_POINT]))
        except p11e.PKCS11Error as exc:
            _fail(f"generating {ref}", exc)
        with _discard_on_failure(pub, priv) as made:
            # The entry exists before its certificate so that the root can sign its own.
            entry = _Entry(
                KeyInfo(ref=ref, kind=KeyKind.EC_P256, created=now, public_key=public), priv
            )
            if spec.role == CertRole.ROOT:
                signer: Signer = _EntrySigner(self, entry)
                authority, not_after = ref, now + ROOT_VALIDITY
            else:
                root = self.current(ISSUER_ROOT)
                signer = self.signer(root)
                authority = root
                not_after = min(now + HOST_VALIDITY, self.certificate(root).not_after)
            certificate = cert.issue(
                signer,
                authority=authority,
                holder=ref.encode(),
                role=spec.role,
                public_key=public,
                not_before=now,
                not_after=not_after,
            )
            made.append(self._data(APP_CERT, ref, certificate.encode()))
            made.append(
                self._data(APP_KEY, ref, _canonical({"kind": str(KeyKind.EC_P256), "created": now}))
            )
            self._mark_changed()
            entry.info = KeyInfo(
                ref=ref,
                kind=KeyKind.EC_P256,
                created=now,
                public_key=public,
                certificate=certificate,
            )
        self._add(entry)
        return ref

    def _load(self) -> None:
        """Read every tallypurse object on the token and check it hangs together."""
        try:
            data: dict[tuple[str, str], bytes] = {}
            for obj in self._session.get_objects(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.PRIVATE: True}
            ):
                app = str(obj[Attribute.APPLICATION])
                if app in (APP_KEY, APP_CERT, APP_REVOKED):
                    label = str(obj[Attribute.LABEL])
                    if (app, label) in data:
                        raise KeystoreError(f"HSM: two {app} objects for {label}")
                    data[(app, label)] = bytes(obj[Attribute.VALUE])
            keys: dict[KeyRef, Any] = {}
            publics: dict[KeyRef, bytes] = {}
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY, ObjectClass.PUBLIC_KEY):
                for obj in self._session.get_objects({Attribute.CLASS: cls}):
                    label = str(obj[Attribute.LABEL])
                    if label not in KEY_SPECS:
                        continue
                    try:
                        ref = KeyRef.decode(bytes(obj[Attribute.ID]))
                    except DecodeError:
                        raise KeystoreError(f"HSM: key {label!r} has a malformed CKA_ID") from None
                    if ref.name != label:
                        raise KeystoreError(f"HSM: key {label!r} has the CKA_ID of {ref}")
                    if cls == ObjectClass.PUBLIC_KEY:
                        publics[ref] = _ec_point(bytes(obj[Attribute.EC_POINT]))
                        continue
                    if ref in keys:
                        raise KeystoreError(f"HSM: two keys {ref}")
                    if obj[Attribute.EXTRACTABLE] or not obj[Attribute.SENSITIVE]:
                        raise KeystoreError(
                            f"HSM: key {ref} is extractable or not sensitive; refusing it"
                        )
                    keys[ref] = obj
        except p11e.PKCS11Error as exc:
            _fail("reading the token", exc)
        for ref, obj in keys.items():
            self._add(_Entry(self._read_info(ref, obj, data, publics), obj))
        for entry in self._entries.values():
            self._check_certificate(entry.info)

    def _read_info(
        self,
        ref: KeyRef,
        obj: Any,
        data: dict[tuple[str, str], bytes],
        publics: dict[KeyRef, bytes],
    ) -> KeyInfo:
        spec = KEY_SPECS[ref.name]
        raw = data.get((APP_KEY, str(ref)))
        if raw is None:
            raise KeystoreError(f"HSM: key {ref} has no {APP_KEY} object")
        try:
            meta = json.loads(raw)
            kind, created = meta["kind"], meta["created"]
        except (ValueError, KeyError, TypeError):
            raise KeystoreError(f"HSM: the {APP_KEY} object of {ref} is corrupt") from None
        if kind != spec.kind:
            raise KeystoreError(f"HSM: key {ref} must be {spec.kind}")
        if isinstance(created, bool) or not isinstance(created, int):
            raise KeystoreError(f"HSM: the {APP_KEY} object of {ref} is corrupt")
        revoked: int | None = None
        raw_revoked = data.get((APP_REVOKED, str(ref)))
        if raw_revoked is not None:
            try:
                revoked = int(json.loads(raw_revoked)["revoked"])
            except (ValueError, KeyError, TypeError):
                raise KeystoreError(f"HSM: the revocation of {ref} is corrupt") from None
        if spec.kind == KeyKind.AES_128:
            return KeyInfo(
                ref=ref,
                kind=spec.kind,
                created=created,
                kcv=self._kcv_on_token(ref, obj),
                revoked=revoked,
            )
        public = publics.get(ref)
        raw_cert = data.get((APP_CERT, str(ref)))
        if public is None or raw_cert is None:
            raise KeystoreError(f"HSM: key {ref} has no public key or no certificate")
        try:
            certificate = cert.parse(raw_cert)
        except CertificateError as exc:
            raise KeystoreError(
                f"HSM: the certificate of {ref} is corrupt ({exc.message})"
            ) from None
        return KeyInfo(
            ref=ref,
            kind=spec.kind,
            created=created,
            public_key=public,
            certificate=certificate,
            revoked=revoked,
        )

    def _check_certificate(self, info: KeyInfo) -> None:
        c = info.certificate
        if c is None:
            return
        ref = info.ref
        spec = KEY_SPECS[ref.name]
        if c.public_key != info.public_key or c.role != spec.role or c.holder != ref.encode():
            raise KeystoreError(f"HSM: the certificate of {ref} is not for {ref}")
        issuer = self._entries.get(c.authority)
        if spec.role == CertRole.ROOT and c.authority != ref:
            raise KeystoreError(f"HSM: root {ref} is not self-signed")
        if c.authority.name != ISSUER_ROOT or issuer is None:
            raise KeystoreError(f"HSM: the certificate of {ref} names an unknown issuer")
        assert issuer.info.public_key is not None
        if not crypto.verify(issuer.info.public_key, c.signature, c.body):
            raise KeystoreError(f"HSM: the certificate of {ref} does not verify")


class _EntrySigner:
    """Signs with a key pair being generated (the root signing its own certificate)."""

    def __init__(self, store: Pkcs11KeyStore, entry: _Entry) -> None:
        self._store = store
        self._entry = entry

    def sign(self, data: bytes) -> bytes:
        try:
            signature = bytes(self._entry.key.sign(crypto.sha256(data), mechanism=Mechanism.ECDSA))
        except p11e.PKCS11Error as exc:
            _fail(f"signing with {self._entry.info.ref}", exc)
        public = self._entry.info.public_key
        assert public is not None
        if not crypto.verify(public, signature, data):
            raise KeystoreError("HSM: a self-signature does not verify")
        return signature


def _acquire(uri: Pkcs11Uri, pin: str | None) -> _Shared:
    """This process's logged-in session on the token (opened and logged in if none is)."""
    if not pin:
        raise KeystoreError("no PIN for the PKCS#11 token (give pin-source in the URI)")
    digest = crypto.sha256(pin.encode("utf-8"))
    key = (uri.module, uri.token)
    with _open_lock:
        shared = _shared.get(key)
        if shared is not None:
            if not crypto.constant_time_equal(shared.pin_digest, digest):
                raise KeystoreError(f"wrong PIN for PKCS#11 token {uri.token!r}")
            shared.users += 1
            return shared
    token = _load_token(uri)
    try:
        session = token.open(rw=True, user_pin=pin)
    except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
        raise KeystoreError(f"wrong PIN for PKCS#11 token {uri.token!r}") from None
    except p11e.PinLocked:
        raise KeystoreError(f"the PIN of PKCS#11 token {uri.token!r} is locked") from None
    except p11e.PKCS11Error as exc:
        _fail(f"opening a session on token {uri.token!r}", exc)
    with _open_lock:
        shared = _Shared(session, digest)
        shared.users = 1
        _shared[key] = shared
    return shared


def _release(uri: Pkcs11Uri) -> None:
    key = (uri.module, uri.token)
    with _open_lock:
        shared = _shared.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _shared[key]
    with shared.lock, contextlib.suppress(p11e.PKCS11Error):
        shared.session.close()


@contextlib.contextmanager
def _discard_on_failure(*objects: Any) -> Iterator[list[Any]]:
    """Destroy the token objects made for a key (and those appended to the list
    yielded) if making the key fails halfway: no orphan objects are left behind."""
    made = list(objects)
    try:
        yield made
    except BaseException:
        for obj in reversed(made):
            with contextlib.suppress(p11e.PKCS11Error):
                obj.destroy()
        raise
