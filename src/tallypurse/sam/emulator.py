"""The SAM emulator: a terminal's security module, with its state in one file.

The SAM holds the terminal's P-256 key pair (generated inside it, never
returned by any method), its operator-issued certificate, the trusted issuer
roots and the terminal transaction counter. See the package docstring
(:mod:`tallypurse.sam`) for the signing domains and the state file format.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, NoReturn, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tallypurse.core import cert as certs
from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, CertificateError, DecodeError, KeystoreError
from tallypurse.core.messages import DebitOrder, SignedEvent
from tallypurse.core.protocol import CertRole
from tallypurse.core.samproto import (
    PURPOSE_BATCH,
    PURPOSE_JOURNAL,
    PURPOSE_REQUEST,
    PURPOSE_STATE,
    TERMINAL_ID_LEN,
    CertificateRequest,
    signed_data,
)

#: The purposes :meth:`Sam.sign` accepts.
SIGN_PURPOSES = frozenset({PURPOSE_BATCH, PURPOSE_JOURNAL, PURPOSE_REQUEST})

SEQUENCE_FIRST = 1
SEQUENCE_LIMIT = 1 << 32  # terminal_seq is a 4-byte field; numbers stay below this
DEFAULT_SEQUENCE_BLOCK = 1000
DEFAULT_CARD_CACHE_SIZE = 4096

STATE_FORMAT = "tallypurse-sam"
STATE_VERSION = 1


# --- Helpers ---------------------------------------------------------------------------


def _passphrase(passphrase: bytes | str) -> bytes:
    raw = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
    if not raw:
        raise BadInput("the SAM passphrase must not be empty")
    return raw


def _check_terminal_id(terminal_id: bytes) -> bytes:
    if not isinstance(terminal_id, bytes | bytearray) or len(terminal_id) != TERMINAL_ID_LEN:
        raise BadInput(f"terminal id must be {TERMINAL_ID_LEN} bytes")
    return bytes(terminal_id)


def _check_roots(roots: dict[KeyRef, bytes]) -> dict[KeyRef, bytes]:
    if not roots:
        raise BadInput("at least one trusted root is needed")
    out: dict[KeyRef, bytes] = {}
    for ref, point in roots.items():
        if not isinstance(ref, KeyRef):
            raise BadInput("trusted roots must be keyed by KeyRef")
        try:
            crypto.decode_public_key(bytes(point))
        except DecodeError:
            raise BadInput(f"trusted root {ref} is not a P-256 public key point") from None
        out[ref] = bytes(point)
    return out


def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "seal"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    _fsync_dir(path.parent)


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _acquire_lock(path: Path) -> int:
    """Hold an exclusive lock so that two SAM instances never share one counter."""
    try:
        fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise KeystoreError(f"cannot lock SAM state {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise KeystoreError(f"SAM state {path} is already open in another SAM instance") from None
    return fd


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the descriptor releases the flock


class _Cache:
    """A bounded LRU map from certificate digest to the verified certificate."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise BadInput("cache size must not be negative")
        self.size = size
        self._items: OrderedDict[bytes, certs.Certificate] = OrderedDict()

    def get(self, key: bytes) -> certs.Certificate | None:
        c = self._items.get(key)
        if c is not None:
            self._items.move_to_end(key)
        return c

    def put(self, key: bytes, value: certs.Certificate) -> None:
        if self.size == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_CONSTRUCT = object()


class Sam:
    """A terminal's security module. Build one with :meth:`create` or :meth:`open`.

    Thread-safe. Holds an exclusive lock on ``<path>.lock`` while open; call
    :meth:`close` (or use it as a context manager) to release it and to
    record the exact counter position, so that no sequence number is skipped.
    """

    __slots__ = (
        "__weakref__",
        "_alternates",
        "_cache",
        "_certificate",
        "_closed",
        "_finalizer",
        "_hits",
        "_key",
        "_lock",
        "_lock_fd",
        "_next_seq",
        "_path",
        "_pem",
        "_public",
        "_reserved",
        "_roots",
        "_seq_block",
        "_terminal_id",
    )

    def __init__(
        self,
        token: object,
        *,
        path: Path,
        key: ec.EllipticCurvePrivateKey,
        pem: str,
        terminal_id: bytes,
        certificate: bytes | None,
        roots: dict[KeyRef, bytes],
        high_water: int,
        lock_fd: int,
        sequence_block: int,
        card_cache_size: int,
    ) -> None:
        if token is not _CONSTRUCT:
            raise TypeError("use Sam.create() or Sam.open()")
        self._path = path
        self._key = key
        self._pem = pem  # the encrypted PKCS#8 PEM, as stored
        self._public = crypto.encode_public_key(key.public_key())
        self._terminal_id = terminal_id
        self._certificate = certificate
        self._alternates: list[bytes] = []  # the same key certified under other roots
        self._roots = roots
        self._next_seq = high_water
        self._reserved = high_water  # numbers below this are durably reserved
        self._seq_block = sequence_block
        self._lock = threading.RLock()
        self._lock_fd = lock_fd
        self._cache = _Cache(card_cache_size)
        self._hits = 0
        self._closed = False
        # An instance dropped without close() still frees its lock (like a crash would),
        # but does not record its counter position.
        self._finalizer = weakref.finalize(self, _release_lock, lock_fd)

    # --- life cycle --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        passphrase: bytes | str,
        *,
        terminal_id: bytes,
        sequence_block: int = DEFAULT_SEQUENCE_BLOCK,
        card_cache_size: int = DEFAULT_CARD_CACHE_SIZE,
    ) -> Sam:
        """Generate a new key pair inside a new SAM and persist it at ``path``.

        Refuses (KeystoreError) when ``path`` already exists.
        """
        p = Path(path)
        pw = _passphrase(passphrase)
        tid = _check_terminal_id(terminal_id)
        _check_block(sequence_block)
        if not p.parent.is_dir():
            raise KeystoreError(f"cannot create SAM state {p}: no such directory")
        fd = _acquire_lock(p)
        try:
            if p.exists():
                raise KeystoreError(f"SAM state {p} already exists; refusing to overwrite it")
            key = crypto.generate_private_key()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(pw),
            ).decode("ascii")
            sam = cls(
                _CONSTRUCT,
                path=p,
                key=key,
                pem=pem,
                terminal_id=tid,
                certificate=None,
                roots={},
                high_water=SEQUENCE_FIRST,
                lock_fd=fd,
                sequence_block=sequence_block,
                card_cache_size=card_cache_size,
            )
        except BaseException:
            _release_lock(fd)
            raise
        sam._save()
        return sam

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        passphrase: bytes | str,
        *,
        sequence_block: int = DEFAULT_SEQUENCE_BLOCK,
        card_cache_size: int = DEFAULT_CARD_CACHE_SIZE,
    ) -> Sam:
        """Open a SAM persisted at ``path``. Wrong passphrase or a corrupt,
        tampered or missing file raises KeystoreError."""
        p = Path(path)
        pw = _passphrase(passphrase)
        _check_block(sequence_block)
        if not p.is_file():
            raise KeystoreError(f"no SAM state at {p}")
        fd = _acquire_lock(p)
        try:
            return cls._load(p, pw, fd, sequence_block, card_cache_size)
        except BaseException:
            _release_lock(fd)
            raise

    @classmethod
    def _load(
        cls, p: Path, pw: bytes, fd: int, sequence_block: int, card_cache_size: int
    ) -> Sam:
        def corrupt(why: str) -> NoReturn:
            raise KeystoreError(f"SAM state {p} is corrupt: {why}")

        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise KeystoreError(f"cannot read SAM state {p}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            corrupt("not a JSON document")
        if not isinstance(doc, dict):
            corrupt("not a JSON object")
        if doc.get("format") != STATE_FORMAT:
            corrupt(f"not a {STATE_FORMAT} file")
        if doc.get("version") != STATE_VERSION:
            corrupt(f"unsupported version {doc.get('version')!r}")
        try:
            pem = doc["private_key"]
            tid = bytes.fromhex(doc["terminal_id"])
            public = bytes.fromhex(doc["public_key"])
            cert_hex = doc["certificate"]
            roots_doc = doc["trusted_roots"]
            high_water = doc["sequence_high_water"]
            seal = bytes.fromhex(doc["seal"])
            if not isinstance(pem, str) or not isinstance(roots_doc, dict):
                raise TypeError
            if type(high_water) is not int or not SEQUENCE_FIRST <= high_water <= SEQUENCE_LIMIT:
                corrupt("sequence high-water mark out of range")
            certificate = None if cert_hex is None else bytes.fromhex(cert_hex)
            roots = {
                KeyRef.decode(name.encode("ascii")): bytes.fromhex(point)
                for name, point in roots_doc.items()
            }
            alternates = [bytes.fromhex(c) for c in doc.get("alternate_certificates", [])]
        except KeystoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, DecodeError):
            corrupt("missing or malformed field")
        if len(tid) != TERMINAL_ID_LEN:
            corrupt("terminal id must be 8 bytes")
        try:
            key = serialization.load_pem_private_key(pem.encode("ascii"), pw)
        except (ValueError, TypeError, UnicodeEncodeError):
            raise KeystoreError(
                f"cannot unlock SAM state {p}: wrong passphrase or damaged private key"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != crypto.CURVE.name:
            corrupt("the private key is not a P-256 key")
        if crypto.encode_public_key(key.public_key()) != public:
            corrupt("the public key does not match the private key")
        if not crypto.verify(public, seal, signed_data(_canonical(doc), purpose=PURPOSE_STATE)):
            corrupt("integrity seal does not verify (file damaged or altered)")
        stored = [("certificate", certificate)] if certificate is not None else []
        for what, raw in [*stored, *(("alternate certificate", a) for a in alternates)]:
            try:
                c = certs.parse(raw)
            except CertificateError:
                corrupt(f"stored {what} is malformed")
            if c.public_key != public or c.holder != tid:
                corrupt(f"stored {what} is not this SAM's")
        sam = cls(
            _CONSTRUCT,
            path=p,
            key=key,
            pem=pem,
            terminal_id=tid,
            certificate=certificate,
            roots=roots,
            high_water=high_water,
            lock_fd=fd,
            sequence_block=sequence_block,
            card_cache_size=card_cache_size,
        )
        sam._alternates = alternates
        return sam

    def _document(self, high_water: int) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "terminal_id": self._terminal_id.hex(),
            "public_key": self._public.hex(),
            "private_key": self._pem,
            "certificate": None if self._certificate is None else self._certificate.hex(),
            "trusted_roots": {str(ref): point.hex() for ref, point in self._roots.items()},
            "sequence_high_water": high_water,
        }
        if self._alternates:  # absent until a key rotation: older files stay valid
            doc["alternate_certificates"] = [c.hex() for c in self._alternates]
        seal = crypto.sign(self._key, signed_data(_canonical(doc), purpose=PURPOSE_STATE))
        doc["seal"] = seal.hex()
        return doc

    def _save(self, high_water: int | None = None) -> None:
        """Persist the state durably; ``high_water`` defaults to the current reservation."""
        hw = self._reserved if high_water is None else high_water
        data = json.dumps(self._document(hw), indent=2).encode("utf-8") + b"\n"
        try:
            _atomic_write(self._path, data)
        except OSError as exc:
            raise KeystoreError(f"cannot write SAM state {self._path}: {exc.strerror}") from None

    def close(self) -> None:
        """Record the exact counter position and release the state file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._next_seq != self._reserved:
                    # Give back the unused part of the reserved block: nothing at or
                    # above _next_seq was handed out.
                    self._save(self._next_seq)
                    self._reserved = self._next_seq
            finally:
                self._closed = True
                self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise KeystoreError("the SAM is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        enrolled = "enrolled" if self._certificate is not None else "not enrolled"
        return (
            f"<Sam terminal={self._terminal_id.hex()} "
            f"key={crypto.sha256(self._public)[:8].hex()} {enrolled} {state}>"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SAM cannot be pickled or copied")

    # --- identity and enrolment ----------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def terminal_id(self) -> bytes:
        return self._terminal_id

    @property
    def public_key(self) -> bytes:
        """The SAM's public key, a 65-byte uncompressed P-256 point."""
        return self._public

    @property
    def enrolled(self) -> bool:
        return self._certificate is not None

    @property
    def certificate(self) -> bytes:
        """The encoded terminal certificate; KeystoreError before enrolment."""
        if self._certificate is None:
            raise KeystoreError("the SAM is not enrolled: no certificate installed")
        return self._certificate

    @property
    def certificates(self) -> list[bytes]:
        """The terminal certificate, then the same key certified under other trusted roots
        (while several issuer roots are in force): a card refuses a certificate from a root
        it does not hold, and the terminal shows it the next one."""
        if self._certificate is None:
            raise KeystoreError("the SAM is not enrolled: no certificate installed")
        return [self._certificate, *self._alternates]

    @property
    def trusted_roots(self) -> dict[KeyRef, bytes]:
        return dict(self._roots)

    def update_trust(
        self, roots: dict[KeyRef, bytes], certificates: list[bytes], *, at: int
    ) -> None:
        """Replace the trusted roots and the SAM's certificates after a key rotation.

        Every certificate must verify against ``roots`` as this SAM's TERMINAL
        certificate at ``at``; the first becomes the certificate, the others (one per
        other root) the alternates. With no certificate given, the current ones are kept
        if they still verify against ``roots``. CertificateError (or BadInput) and no
        change otherwise.
        """
        new_roots = _check_roots(roots)
        with self._lock:
            self._check_open()
            given = list(certificates) or [
                c for c in self.certificates if certs.parse(c).authority in new_roots]
        if not given:
            raise CertificateError("no certificate of this SAM is from a root still trusted")
        kept: list[bytes] = []
        authorities: set[KeyRef] = set()
        for raw in given:
            c = certs.verify(bytes(raw), new_roots, role=CertRole.TERMINAL, at=at,
                             holder=self._terminal_id)
            if c.public_key != self._public:
                raise CertificateError("certificate is for another public key than this SAM's")
            if c.authority not in authorities:
                authorities.add(c.authority)
                kept.append(c.encode())
        with self._lock:
            self._check_open()
            old = (self._certificate, self._alternates, self._roots)
            self._certificate, self._alternates, self._roots = kept[0], kept[1:], new_roots
            try:
                self._save()
            except BaseException:
                self._certificate, self._alternates, self._roots = old
                raise
            self._cache.clear()

    def certificate_request(self) -> bytes:
        """A signed :class:`CertificateRequest` (terminal id, public key, proof of possession)."""
        with self._lock:
            self._check_open()
            req = CertificateRequest(self._terminal_id, self._public, b"")
            sig = crypto.sign(self._key, req.signed_part())
        return req.signed_part() + sig

    def install_certificate(
        self, cert_bytes: bytes, roots: dict[KeyRef, bytes], *, at: int | None = None
    ) -> None:
        """Verify and store the SAM's certificate and the trusted roots.

        The certificate must verify against ``roots``, be a TERMINAL certificate
        valid at ``at`` (default: now), name this SAM's terminal id as holder and
        certify this SAM's own public key. Raises CertificateError otherwise;
        nothing changes on failure.
        """
        new_roots = _check_roots(roots)
        when = int(time.time()) if at is None else at
        c = certs.verify(
            bytes(cert_bytes), new_roots, role=CertRole.TERMINAL, at=when, holder=self._terminal_id
        )
        if c.public_key != self._public:
            raise CertificateError("certificate is for another public key than this SAM's")
        with self._lock:
            self._check_open()
            old = (self._certificate, self._alternates, self._roots)
            self._certificate, self._alternates, self._roots = c.encode(), [], new_roots
            try:
                self._save()
            except BaseException:
                self._certificate, self._alternates, self._roots = old
                raise
            self._cache.clear()

    # --- transaction counter ------------------------------------------------------------

    def next_sequence(self) -> int:
        """The next terminal transaction sequence number: strictly increasing, never reused,
        across restarts and crashes (a crash may skip numbers)."""
        with self._lock:
            self._check_open()
            n = self._next_seq
            if n >= self._reserved:
                if n >= SEQUENCE_LIMIT:
                    raise KeystoreError("terminal sequence numbers are exhausted")
                limit = min(n + self._seq_block, SEQUENCE_LIMIT)
                self._save(limit)  # durable before any number of the block is used
                self._reserved = limit
            self._next_seq = n + 1
            return n

    # --- signing ------------------------------------------------------------------------

    def sign_debit_order(self, order: DebitOrder) -> bytes:
        """Sign a DebitOrder (or CancelOrder) issued by this terminal: 64 bytes r||s
        over ``order.signed_data()``."""
        if not isinstance(order, DebitOrder):
            raise BadInput("not a debit or cancel order")
        if order.terminal_id != self._terminal_id:
            raise BadInput("order names another terminal id than this SAM's; refusing to sign")
        try:
            data = order.signed_data()
        except struct.error as exc:
            raise BadInput(f"order does not fit its layout: {exc}") from None
        self._check_open()
        return crypto.sign(self._key, data)

    def sign(self, data: bytes, *, purpose: bytes) -> bytes:
        """Sign ``b"TP\\x01" + purpose + data``; ``purpose`` is PURPOSE_BATCH,
        PURPOSE_JOURNAL or PURPOSE_REQUEST."""
        if purpose not in SIGN_PURPOSES:
            raise BadInput(f"unknown signing purpose {bytes(purpose).hex()}")
        self._check_open()
        return crypto.sign(self._key, signed_data(bytes(data), purpose=purpose))

    # --- verification -------------------------------------------------------------------

    def verify_card_certificate(self, cert_bytes: bytes, *, card_id: bytes, at: int) -> bytes:
        """Verify a card's certificate against the trusted roots and return the card's
        public key point. A certificate seen before costs no signature verification.
        Raises CertificateError."""
        raw = bytes(cert_bytes)
        if len(raw) > certs.MAX_CERT_LEN:
            raise CertificateError("certificate too long")
        digest = crypto.sha256(raw)
        with self._lock:
            cached = self._cache.get(digest)
            roots = self._roots
        if cached is not None:
            if cached.holder != card_id:
                raise CertificateError("certificate holder does not match")
            if not cached.not_before <= at <= cached.not_after:
                raise CertificateError("certificate is not valid at this time")
            with self._lock:
                self._hits += 1
            return cached.public_key
        if not roots:
            raise CertificateError("the SAM has no trusted roots (not enrolled)")
        c = certs.verify(raw, roots, role=CertRole.CARD, at=at, holder=card_id)
        with self._lock:
            if self._roots is roots:  # not replaced meanwhile
                self._cache.put(digest, c)
        return c.public_key

    @property
    def card_cache_info(self) -> tuple[int, int]:
        """(entries, hits) of the card certificate cache."""
        with self._lock:
            return len(self._cache), self._hits

    def verify_tac(self, event: SignedEvent, card_public_key: bytes) -> bool:
        """True when ``event.tac`` is the card's valid signature over the event."""
        return event.verify(card_public_key)


def _check_block(block: int) -> None:
    if type(block) is not int or block < 1:
        raise BadInput("sequence block must be a positive integer")
