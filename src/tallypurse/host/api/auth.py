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
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput, CertificateError, DecodeError
from tallypurse.core.httpsig import SignatureError, verify_request
from tallypurse.core.samproto import CertificateRequest
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
    settings = host.settings

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

    try:
        verified = verify_request(method, url, headers, body, resolve_key=key_of,
                                  now=host.now(), max_age=settings.signature_max_age_s,
                                  skew=settings.clock_skew_s)
    except SignatureError as exc:
        raise HostError(_REASONS[exc.reason], exc.message) from None
    host.limits.charge("terminal", verified.key_id)  # counted once the signature verified
    remember_nonce(host, verified.key_id, verified.nonce, verified.created)
    return verified.key_id


def remember_nonce(host: Host, key_id: str, nonce: str, created: int) -> None:
    """Record a nonce; a nonce seen before from the same key is a replay."""
    now = host.now()
    try:
        with host.uow() as uow:
            uow.session.add(RequestNonce(key_id=key_id, nonce=nonce, created=now))
            if secrets.randbelow(PURGE_EVERY) == 0:
                horizon = now - host.settings.signature_max_age_s - host.settings.clock_skew_s
                uow.session.execute(delete(RequestNonce).where(RequestNonce.created < horizon))
            uow.commit()
    except IntegrityError:
        raise HostError(REPLAY, "this request was seen before (nonce reused)") from None

