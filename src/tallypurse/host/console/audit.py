"""The audit trail as the console writes and reads it: who did what to what, when,
why, and how it ended.

The console records every action (logins, card and terminal changes, settlement
runs, payout files, downloads of money files) and every action a role was
refused. The log itself is :mod:`tallypurse.host.audit`: append-only and
hash-chained, one chain for the console, the API and the command line.
"""

from __future__ import annotations

from tallypurse.host.audit import OUTCOMES, AuditEntry
from tallypurse.host.service import Host

__all__ = ["OUTCOMES", "AuditEntry", "entries", "record"]


def record(host: Host, *, actor: str, role: str, action: str, target: str = "",
           reason: str = "", outcome: str = "done", detail: str = "", source: str = "") -> int:
    """Append one entry in a transaction of its own; returns its id."""
    return host.audit.record(actor=actor, role=role, action=action, target=target,
                             reason=reason, outcome=outcome, detail=detail, source=source)


def entries(host: Host, *, limit: int = 100, before: int | None = None, actor: str = "",
            action: str = "", target: str = "") -> list[AuditEntry]:
    """Newest first; ``before`` pages back (an id), the others filter exactly."""
    return host.audit.entries(limit=limit, before=before, actor=actor, action=action,
                              target=target)
