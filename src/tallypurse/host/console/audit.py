"""The audit trail: who did what to what, when, why, and how it ended.

Rows are only ever added (the database refuses UPDATE and DELETE on
``audit_log``). The console records every action (logins, card and terminal
changes, settlement runs, payout files, downloads of money files) and every
action a role was refused; anyone with a host can record with :func:`record`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from tallypurse.host.db.models import AuditRecord
from tallypurse.host.service import Host

OUTCOMES = ("done", "refused", "failed")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: int
    actor: str
    role: str
    action: str
    target: str
    reason: str
    outcome: str
    detail: str
    source: str


def record(host: Host, *, actor: str, role: str, action: str, target: str = "",
           reason: str = "", outcome: str = "done", detail: str = "", source: str = "") -> int:
    """Append one entry; returns its id."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome is one of {OUTCOMES}")
    with host.uow() as uow:
        row = AuditRecord(at=host.now(), actor=actor[:64], role=role[:16], action=action[:48],
                          target=target[:64], reason=reason[:500], outcome=outcome,
                          detail=detail[:1000], source=source[:64])
        uow.session.add(row)
        uow.commit()
        return row.id


def entries(host: Host, *, limit: int = 100, before: int | None = None, actor: str = "",
            action: str = "", target: str = "") -> list[AuditEntry]:
    """Newest first; ``before`` pages back (an id), the others filter exactly."""
    stmt = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(AuditRecord.id < before)
    if actor:
        stmt = stmt.where(AuditRecord.actor == actor)
    if action:
        stmt = stmt.where(AuditRecord.action == action)
    if target:
        stmt = stmt.where(AuditRecord.target == target)
    with host.uow() as uow:
        return [AuditEntry(r.id, r.at, r.actor, r.role, r.action, r.target, r.reason, r.outcome,
                           r.detail, r.source) for r in uow.session.scalars(stmt)]
