"""Who is calling: terminals by their SAM signature, people by bearer tokens.

Terminals sign every request (RFC 9421, :mod:`tallypurse.core.httpsig`); the
host checks the signature with the terminal's certified key, the signature's
age, and that its nonce was not seen before (nonces live in the database, so
every host process refuses the same replay). Operators, auditors and
merchants present ``Authorization: Bearer <token>``; tokens are stored as
SHA-256 hashes, with a role and, for a merchant, the merchant id.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput, CertificateError, DecodeError
from tallypurse.core.httpsig import SignatureError, Verified, verify_request
from tallypurse.core.samproto import CertificateRequest
from tallypurse.host.agent import SignedBy
from tallypurse.host.db.models import ApiToken, Merchant, RequestNonce
from tallypurse.host.errors import (
    CSR_INVALID,
    FORBIDDEN,
    NOT_FOUND,
    REPLAY,
    SIGNATURE_INVALID,
    SIGNATURE_MISSING,
    SIGNATURE_STALE,
    TOKEN_INVALID,
    TOKEN_MISSING,
    UNKNOWN_TERMINAL,
    HostError,
)
from tallypurse.host.service import Host

PURGE_EVERY = 256  # purge expired nonces about once every this many requests


class Role(StrEnum):
    OPERATOR = "operator"
    AUDITOR = "auditor"
    MERCHANT = "merchant"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    merchant_id: str | None = None
    name: str = ""


def _hash(token: str) -> str:
    return crypto.sha256(token.encode()).hex()


def create_token(host: Host, role: Role | str, *, merchant_id: str | None = None,
                 name: str = "") -> str:
    """A new bearer token (shown once; only its hash is stored)."""
    role = Role(role)
    if (role == Role.MERCHANT) != (merchant_id is not None):
        raise BadInput("a merchant token names its merchant; other roles name none")
    token = "tp_" + secrets.token_urlsafe(24)
    with host.uow() as uow:
        if merchant_id is not None and uow.session.get(Merchant, merchant_id) is None:
            raise HostError(NOT_FOUND, f"no merchant {merchant_id}")
        uow.session.add(ApiToken(token_hash=_hash(token), role=role.value,
                                 merchant_id=merchant_id, name=name[:100], created=host.now()))
        uow.commit()
    return token


def revoke_token(host: Host, token: str) -> bool:
    with host.uow() as uow:
        row = uow.session.get(ApiToken, _hash(token))
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = host.now()
        uow.commit()
        return True


def principal(host: Host, authorization: str | None, allowed: tuple[Role, ...]) -> Principal:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HostError(TOKEN_MISSING, "send Authorization: Bearer <token>")
    token = authorization[7:].strip()
    digest = _hash(token)
    with host.uow() as uow:
        # looked up by its SHA-256 (an index of hashes): how long a wrong token takes to
        # be refused tells nothing about the bytes of any real token
        row = uow.session.get(ApiToken, digest)
        if row is None or row.revoked_at is not None:
            raise HostError(TOKEN_INVALID)
        who = Principal(Role(row.role), row.merchant_id, row.name)
    host.limits.charge("token", digest)  # counted once the token is known (ratelimit)
    if who.role not in allowed:
        raise HostError(FORBIDDEN, f"{who.role} may not use this endpoint")
    return who


# --- terminals ------------------------------------------------------------------------------
_REASONS = {"missing": SIGNATURE_MISSING, "invalid": SIGNATURE_INVALID, "stale": SIGNATURE_STALE}


def authenticate_terminal(host: Host, method: str, url: str, headers: Mapping[str, str],
                          body: bytes, *, csr_hex: str | None = None,
                          claimed_terminal: str | None = None) -> str:
    """Check a terminal's signed request; returns the terminal id (the signature's keyid).

    For enrolment the key comes from the certificate request in the body
    (``csr_hex``), which also proves possession of that key."""

    def key_of(key_id: str) -> bytes:
        if csr_hex is not None:
            if key_id != claimed_terminal:
                raise HostError(UNKNOWN_TERMINAL, "keyid must be the enrolling terminal's id")
            try:
                return CertificateRequest.parse(bytes.fromhex(csr_hex)).public_key
            except (ValueError, DecodeError, CertificateError) as exc:
                raise HostError(CSR_INVALID, str(exc)) from None
        with host.uow() as uow:
            return host.tms.signing_key(uow.session, key_id)

    verified = _verify(host, method, url, headers, body, key_of)
    host.limits.charge("terminal", verified.key_id)  # counted once the signature verified
    remember_nonce(host, verified.key_id, verified.nonce, verified.created)
    return verified.key_id


def _verify(host: Host, method: str, url: str, headers: Mapping[str, str], body: bytes,
            key_of: Callable[[str], bytes]) -> Verified:
    settings = host.settings
    try:
        return verify_request(method, url, headers, body, resolve_key=key_of, now=host.now(),
                              max_age=settings.signature_max_age_s, skew=settings.clock_skew_s)
    except SignatureError as exc:
        raise HostError(_REASONS[exc.reason], exc.message) from None


class TerminalKeys:
    """The terminals' request keys, kept per process for checking signatures only: the
    transaction that acts on the request reads the terminal again and refuses to go on
    (:class:`tallypurse.host.agent.TerminalChanged`) if its key, status or certificate
    is not what the signature was checked with; the caller then forgets the key and
    checks the request again against the database."""

    def __init__(self, host: Host, size: int = 4096) -> None:
        self.host = host
        self.size = size
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, terminal_id: str) -> bytes:
        key = self._keys.get(terminal_id)
        if key is None:
            key = self.fresh(terminal_id)
        return key

    def kept(self, terminal_id: str) -> bytes | None:
        """The key if this process holds it (no database)."""
        return self._keys.get(terminal_id)

    def fresh(self, terminal_id: str) -> bytes:
        with self.host.uow() as uow:
            key = self.host.tms.signing_key(uow.session, terminal_id)
        with self._lock:
            if len(self._keys) >= self.size:
                self._keys.clear()
            self._keys[terminal_id] = key
        return key

    def forget(self, terminal_id: str) -> None:
        with self._lock:
            self._keys.pop(terminal_id, None)


class NotKept(Exception):
    """``kept_only``: checking this request needs the database (a key this process does
    not hold, or one that may have changed); nothing was charged."""


def verify_terminal(host: Host, keys: TerminalKeys, method: str, url: str,
                    headers: Mapping[str, str], body: bytes, *, fresh: bool = False,
                    kept_only: bool = False) -> SignedBy:
    """Check a terminal's signed request without recording its nonce: the caller records
    it in the transaction that acts on the request (``record_nonce``). ``kept_only``:
    touch no database (for an event loop): raise :class:`NotKept` where it would, and
    leave the occasional purge of old nonces to :func:`purge_due`."""
    used: dict[str, bytes] = {}

    def key_of(key_id: str) -> bytes:
        if kept_only:
            kept = keys.kept(key_id)
            if kept is None:
                raise NotKept(key_id)
            used[key_id] = kept
        else:
            used[key_id] = keys.fresh(key_id) if fresh else keys.get(key_id)
        return used[key_id]

    try:
        verified = _verify(host, method, url, headers, body, key_of)
    except HostError as exc:
        if fresh or exc.what is not SIGNATURE_INVALID:
            raise
        if kept_only:
            raise NotKept(exc.detail) from None
        # Perhaps a new SAM since the key was kept (re-enrolled): once more, from the database.
        return verify_terminal(host, keys, method, url, headers, body, fresh=True)
    host.limits.charge("terminal", verified.key_id)  # counted once the signature verified
    if not kept_only and purge_due():
        purge_nonces(host)
    return SignedBy(verified.key_id, used[verified.key_id], verified.nonce)


def purge_due() -> bool:
    """About once every ``PURGE_EVERY`` requests: time to :func:`purge_nonces`."""
    return secrets.randbelow(PURGE_EVERY) == 0


def remember_nonce(host: Host, key_id: str, nonce: str, created: int) -> None:
    """Record a nonce; a nonce seen before from the same key is a replay."""
    now = host.now()
    try:
        with host.uow() as uow:
            uow.session.add(RequestNonce(key_id=key_id, nonce=nonce, created=now))
            uow.commit()
    except IntegrityError:
        raise HostError(REPLAY, "this request was seen before (nonce reused)") from None
    if purge_due():
        purge_nonces(host)


def purge_nonces(host: Host) -> None:
    """Forget nonces older than any signature the host still accepts."""
    horizon = host.now() - host.settings.signature_max_age_s - host.settings.clock_skew_s
    with host.uow() as uow:
        uow.session.execute(delete(RequestNonce).where(RequestNonce.created < horizon))
        uow.commit()

