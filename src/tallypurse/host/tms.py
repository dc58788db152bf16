"""Terminal management: terminals, one-time enrolment tokens, certificates,
signed parameters and list synchronisation."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tallypurse.core import crypto
from tallypurse.core.errors import CertificateError, DecodeError
from tallypurse.core.hostapi import (
    EnrolRequest,
    EnrolResponse,
    Parameters,
    SignedParameters,
    SyncRequest,
    SyncResponse,
)
from tallypurse.core.protocol import CertRole
from tallypurse.core.samproto import CertificateRequest
from tallypurse.host.db.models import EnrolmentToken, Merchant, ParameterSet, Terminal
from tallypurse.host.errors import (
    CONFLICT,
    CSR_INVALID,
    ENROLMENT_REFUSED,
    NOT_FOUND,
    TERMINAL_REVOKED,
    UNKNOWN_TERMINAL,
    HostError,
)
from tallypurse.host.lists import ACTIONS, BLACKLIST

from .common import hex_bytes, log_event

if TYPE_CHECKING:
    from tallypurse.host.service import Host

DEFAULT_PARAMETERS = Parameters(
    version=1,
    currency="EUR",
    offline_limit=10_000,
    online_threshold=10_000,
    credit_types=["canteen", "transit"],
    max_list_age_s=86_400,
    cancel_window_s=120,
    fee_basis_points={},
    journal_limit=100_000,
)


def token_hash(token: str) -> str:
    return crypto.sha256(token.encode()).hex()


@dataclass(frozen=True, slots=True)
class TerminalStatus:
    terminal_id: str
    merchant_id: str
    status: str
    last_contact: int | None
    cert_not_after: int | None
    blacklist_version: int
    actions_version: int
    parameters_version: int
    journal_contiguous: int
    journal_max: int
    last_batch_at: int | None
    stale: bool
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Tms:
    def __init__(self, host: Host) -> None:
        self.host = host

    # --- terminals and enrolment tokens -----------------------------------------------------------
    def create_terminal(self, merchant_id: str, terminal_id: str | None = None) -> tuple[str, str]:
        """Register a terminal for a merchant; returns its id and a one-time enrolment token."""
        tid = terminal_id or secrets.token_hex(8)
        hex_bytes(tid, "terminal id")
        if len(tid) != 16 or tid != tid.lower():
            raise HostError(CONFLICT, "a terminal id is 16 lowercase hex digits")
        now = self.host.now()
        with self.host.uow() as uow:
            if uow.session.get(Merchant, merchant_id) is None:
                raise HostError(NOT_FOUND, f"no merchant {merchant_id}")
            if uow.session.get(Terminal, tid) is not None:
                raise HostError(CONFLICT, f"terminal {tid} exists")
            uow.session.add(Terminal(terminal_id=tid, merchant_id=merchant_id, status="pending",
                                     created=now))
            uow.session.flush()
            token = self._token(uow.session, tid, now)
            uow.commit()
        log_event("terminal_created", terminal=tid, merchant=merchant_id)
        return tid, token

    def _token(self, session: Session, tid: str, now: int) -> str:
        token = secrets.token_urlsafe(18)
        session.add(EnrolmentToken(token_hash=token_hash(token), terminal_id=tid,
                                   expires=now + self.host.settings.enrolment_token_ttl_s,
                                   created=now))
        return token

    def new_token(self, terminal_id: str) -> str:
        """A fresh enrolment token (to renew a certificate or re-enrol a replaced SAM)."""
        now = self.host.now()
        with self.host.uow() as uow:
            if uow.session.get(Terminal, terminal_id) is None:
                raise HostError(NOT_FOUND, f"no terminal {terminal_id}")
            token = self._token(uow.session, terminal_id, now)
            uow.commit()
        return token

    def enrol(self, body: EnrolRequest) -> EnrolResponse:
        """Certify a SAM's key against a one-time token. Retrying the same request
        (same token, same key) after a lost answer returns the same certificate."""
        try:
            csr = CertificateRequest.parse(hex_bytes(body.csr, "csr"))
        except (DecodeError, CertificateError) as exc:
            raise HostError(CSR_INVALID, exc.message) from None
        if csr.terminal_id.hex() != body.terminal_id:
            raise HostError(CSR_INVALID, "the certificate request is for another terminal")
        csr_hash = crypto.sha256(csr.to_bytes()).hex()
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            token = s.scalar(uow.lock(select(EnrolmentToken).where(
                EnrolmentToken.token_hash == token_hash(body.token))))
            terminal = s.scalar(uow.lock(select(Terminal).where(
                Terminal.terminal_id == body.terminal_id)))
            if token is None or terminal is None or token.terminal_id != terminal.terminal_id:
                raise HostError(ENROLMENT_REFUSED, "no such token for this terminal")
            if terminal.status == "revoked":
                raise HostError(TERMINAL_REVOKED, "terminal is revoked")
            if token.used_at is not None:
                if terminal.csr_hash == csr_hash and terminal.certificate is not None:
                    return self._enrolment(s, terminal)  # the same request again
                raise HostError(ENROLMENT_REFUSED, "token already used")
            if token.expires < now:
                raise HostError(ENROLMENT_REFUSED, "token expired")
            c = self.host.keys.issue_certificate(
                holder=csr.terminal_id, role=CertRole.TERMINAL, public_key=csr.public_key,
                not_before=now - self.host.settings.clock_skew_s,  # a terminal a little behind
                not_after=now + self.host.settings.terminal_cert_validity_s)
            token.used_at = now
            terminal.status = "active"
            terminal.public_key = csr.public_key.hex()
            terminal.certificate = c.encode().hex()
            terminal.cert_not_after = c.not_after
            terminal.csr_hash = csr_hash
            terminal.enrolled_at = now
            terminal.last_contact = now
            answer = self._enrolment(s, terminal)
            uow.commit()
        log_event("terminal_enrolled", terminal=body.terminal_id)
        return answer

    def _enrolment(self, session: Session, terminal: Terminal) -> EnrolResponse:
        assert terminal.certificate is not None
        return EnrolResponse(
            certificate=terminal.certificate,
            roots={str(ref): point.hex() for ref, point in self.host.roots().items()},
            host_certificates=[c.hex() for c in self.host.host_certificates()],
            merchant_id=terminal.merchant_id,
        )

    def revoke(self, terminal_id: str, reason: str = "") -> None:
        with self.host.uow() as uow:
            terminal = uow.session.get(Terminal, terminal_id)
            if terminal is None:
                raise HostError(NOT_FOUND, f"no terminal {terminal_id}")
            terminal.status = "revoked"
            uow.commit()
        log_event("terminal_revoked", terminal=terminal_id, reason=reason)

    def signing_key(self, session: Session, terminal_id: str) -> bytes:
        """The public key a terminal's requests must be signed with."""
        terminal = session.get(Terminal, terminal_id)
        if terminal is None:
            raise HostError(UNKNOWN_TERMINAL, f"unknown or unenrolled terminal {terminal_id}")
        refusal = terminal_refusal(terminal_id, terminal.status, terminal.public_key,
                                   terminal.cert_not_after, self.host.now())
        if refusal is not None:
            raise refusal
        assert terminal.public_key is not None
        return bytes.fromhex(terminal.public_key)

    def merchant_of(self, session: Session, terminal_id: str) -> str:
        terminal = session.get(Terminal, terminal_id)
        if terminal is None:
            raise HostError(UNKNOWN_TERMINAL, f"unknown terminal {terminal_id}")
        return terminal.merchant_id

    def touch(self, session: Session, terminal_id: str) -> None:
        session.execute(update(Terminal).where(Terminal.terminal_id == terminal_id)
                        .values(last_contact=self.host.now()))

    # --- parameters -------------------------------------------------------------------------------
    def parameters(self, session: Session) -> SignedParameters:
        """The current signed parameters (version 1, the defaults, if none were published).
        Parameters signed with an older list key are signed again with the current one
        (same version), and kept so in the session's transaction."""
        row = session.scalar(select(ParameterSet).order_by(ParameterSet.version.desc()).limit(1))
        if row is None:
            return self._sign(DEFAULT_PARAMETERS)
        signed = SignedParameters.model_validate_json(row.document)
        if signed.key != str(self.host.list_key()):
            signed = self._sign(signed.parameters)
            row.document = signed.model_dump_json()
            log_event("parameters_resigned", version=signed.parameters.version, key=signed.key)
        return signed

    def publish_parameters(self, **changes: Any) -> SignedParameters:
        """A new version of the parameters with ``changes`` applied, signed."""
        now = self.host.now()
        with self.host.uow() as uow:
            current = self.parameters(uow.session).parameters
            data = {**current.model_dump(), **changes, "version": current.version + 1}
            params = Parameters.model_validate(data)
            signed = self._sign(params)
            uow.session.add(ParameterSet(version=params.version,
                                         document=signed.model_dump_json(), created=now))
            uow.commit()
        log_event("parameters_published", version=params.version)
        return signed

    def _sign(self, params: Parameters) -> SignedParameters:
        ref = self.host.list_key()
        body = SignedParameters(parameters=params, issued=self.host.now(), key=str(ref))
        return body.model_copy(
            update={"signature": self.host.keys.sign(ref, body.signed_bytes()).hex()})

    # --- sync -------------------------------------------------------------------------------------
    def sync(self, terminal_id: str, body: SyncRequest) -> SyncResponse:
        self.host.lists.publish()  # number what has committed, so the answer holds it
        with self.host.uow() as uow:
            s = uow.session
            params = self.parameters(s)
            trust = None
            if body.trust_tag != self.host.trust.tag():
                terminal = s.get(Terminal, terminal_id)
                assert terminal is not None  # the request was signed by its key
                trust = self.host.trust.bundle(terminal)
                log_event("terminal_trust_sent", terminal=terminal_id, tag=trust.tag)
            answer = SyncResponse(
                blacklist=self.host.lists.signed(s, BLACKLIST, body.blacklist_version),
                actions=self.host.lists.signed(s, ACTIONS, body.actions_version),
                # after a key change, the parameters again: signed with the current list key
                parameters=params if params.parameters.version != body.parameters_version
                or trust is not None else None,
                host_time=self.host.now(),
                trust=trust,
            )
            s.execute(update(Terminal).where(Terminal.terminal_id == terminal_id).values(
                blacklist_version=body.blacklist_version, actions_version=body.actions_version,
                parameters_version=body.parameters_version, last_contact=self.host.now()))
            uow.commit()
        return answer

    # --- status -----------------------------------------------------------------------------------
    def terminals(self, merchant_id: str | None = None) -> list[TerminalStatus]:
        now = self.host.now()
        limit = self.host.settings.stale_terminal_after_s
        self.host.lists.publish()
        with self.host.uow() as uow:
            s = uow.session
            heads = {n: self.host.lists.head(s, n) for n in (BLACKLIST, ACTIONS)}
            params_version = self.parameters(s).parameters.version
            stmt = select(Terminal).order_by(Terminal.terminal_id)
            if merchant_id is not None:
                stmt = stmt.where(Terminal.merchant_id == merchant_id)
            out = []
            for t in s.scalars(stmt):
                reasons = []
                if t.status == "active":
                    if t.last_contact is None or now - t.last_contact > limit:
                        reasons.append("no contact")
                    if t.blacklist_version < heads[BLACKLIST] and (
                            t.last_contact is None or now - t.last_contact > limit):
                        reasons.append("blacklist behind")
                    if t.parameters_version < params_version:
                        reasons.append("parameters behind")
                    if t.journal_max > t.journal_contiguous:
                        reasons.append("journal gap")
                    if t.cert_not_after is not None and t.cert_not_after - now < 30 * 86400:
                        reasons.append("certificate expiring")
                out.append(TerminalStatus(
                    t.terminal_id, t.merchant_id, t.status, t.last_contact, t.cert_not_after,
                    t.blacklist_version, t.actions_version, t.parameters_version,
                    t.journal_contiguous, t.journal_max, t.last_batch_at,
                    stale="no contact" in reasons, reasons=reasons))
            return out


def terminal_refusal(terminal_id: str, status: str, public_key: str | None,
                     cert_not_after: int | None, now: int) -> HostError | None:
    """Why a terminal's requests are refused now (None: they are heard): the one rule,
    for the key lookup and for the agent debit's own read of the terminal."""
    if public_key is None:
        return HostError(UNKNOWN_TERMINAL, f"unknown or unenrolled terminal {terminal_id}")
    if status != "active":
        return HostError(TERMINAL_REVOKED, f"terminal {terminal_id} is {status}")
    if cert_not_after is not None and cert_not_after < now:
        return HostError(TERMINAL_REVOKED, "terminal certificate expired; renew it")
    return None
