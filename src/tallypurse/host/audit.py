"""The operator audit log: append-only and hash-chained.

Every operator action (card block and unblock, replacement, terminal revocation,
grades set by hand, tokens, parameters, settlement and payment files, write-offs,
console logins) is one row of ``audit_log``: who (actor and role), when, what
(action and target), why (reason), how it ended (outcome: done, refused,
failed), a detail, and where from (console, API, command line).

Tamper evidence, three layers:

* the database refuses UPDATE and DELETE on ``audit_log`` (triggers);
* each row carries ``prev_hash``, the hash of the row before it, and ``hash``,
  SHA-256 over its own fields and ``prev_hash`` (:func:`row_hash`): changing a
  field breaks that row's hash, removing a row breaks the next row's link;
* ``audit_head`` keeps the newest row's id and hash, so rows cut off the end
  are seen too.

:meth:`AuditLog.verify` (``tallypurse host audit``) walks the chain and names
the first row that is missing or altered. Whoever can rewrite every row can
rewrite the chain too: keep the head hash that ``tallypurse host audit --json``
prints (``audit_log.head``) somewhere the database's administrators cannot
change, and compare.

One chain, whatever the number of host processes: :meth:`AuditLog.append` takes
the chain's lock first (a PostgreSQL transaction-level advisory lock; on SQLite
every writing transaction is already exclusive), reads the head, and numbers the
new row head + 1, so that no two rows link to the same predecessor. The lock is
held until the transaction ends: append last in a transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput
from tallypurse.host.db.models import AuditHead, AuditRecord
from tallypurse.host.errors import INTERNAL, HostError

if TYPE_CHECKING:
    from tallypurse.host.service import Host

OUTCOMES = ("done", "refused", "failed")
GENESIS = "0" * 64  # the prev_hash of the first row
ADVISORY_LOCK = 0x7470_6175  # "tpau": the audit chain's lock on PostgreSQL
HEAD_ID = 1
FIELDS = ("id", "at", "actor", "role", "action", "target", "reason", "outcome", "detail",
          "source")
# column widths (see AuditRecord): values are cut to them before they are hashed
WIDTHS = {"actor": 64, "role": 16, "action": 48, "target": 64, "reason": 500, "detail": 1000,
          "source": 64}


def row_hash(prev_hash: str, values: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON array of the row's fields and ``prev_hash``."""
    data = [values[f] for f in FIELDS] + [prev_hash]
    return crypto.sha256(json.dumps(data, ensure_ascii=False, separators=(",", ":"))
                         .encode()).hex()


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


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    records: int
    first_broken: int | None = None  # the id of the first row missing or altered
    problem: str = ""
    head: str = GENESIS  # the newest row's hash (what to keep elsewhere)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "first_broken": self.first_broken,
                "problem": self.problem, "head": self.head}


class AuditLog:
    """``host.audit``: append to the chain, read it, verify it."""

    def __init__(self, host: Host) -> None:
        self.host = host

    # --- writing ----------------------------------------------------------------------------------
    def append(self, session: Session, *, actor: str, role: str, action: str,
               target: str = "", reason: str = "", outcome: str = "done", detail: str = "",
               source: str = "") -> int:
        """Add one row inside ``session``'s transaction (call it last: it takes the
        chain's lock, held until that transaction ends). Returns the row's id."""
        if outcome not in OUTCOMES:
            raise BadInput(f"outcome is one of {', '.join(OUTCOMES)}")
        if not action:
            raise BadInput("name the action")
        if self.host.db.postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
        head = session.get(AuditHead, HEAD_ID, populate_existing=True)
        if head is None:  # an emptied log starts again; a log with rows never loses its head
            if session.execute(select(AuditRecord.id).limit(1)).first() is not None:
                raise HostError(INTERNAL, "the audit log's head record is missing while the "
                                          "log has rows: nothing is appended until an "
                                          "auditor has looked (tallypurse host audit)")
            head = AuditHead(id=HEAD_ID, last_id=0, last_hash=GENESIS)
            session.add(head)
        values: dict[str, Any] = {
            "id": head.last_id + 1, "at": self.host.now(), "actor": actor, "role": role,
            "action": action, "target": target, "reason": reason, "outcome": outcome,
            "detail": detail, "source": source}
        for name, width in WIDTHS.items():
            values[name] = str(values[name])[:width]
        digest = row_hash(head.last_hash, values)
        session.add(AuditRecord(**values, prev_hash=head.last_hash, hash=digest))
        head.last_id = values["id"]
        head.last_hash = digest
        session.flush()
        return int(values["id"])

    def record(self, **fields: Any) -> int:
        """Append one row in a transaction of its own."""
        with self.host.uow() as uow:
            row_id = self.append(uow.session, **fields)
            uow.commit()
        return row_id

    # --- reading ----------------------------------------------------------------------------------
    def entries(self, *, limit: int = 100, before: int | None = None, actor: str = "",
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
        with self.host.db.reader() as s:
            return [AuditEntry(r.id, r.at, r.actor, r.role, r.action, r.target, r.reason,
                               r.outcome, r.detail, r.source) for r in s.scalars(stmt)]

    def count(self) -> int:
        with self.host.db.reader() as s:
            return int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)

    # --- verifying --------------------------------------------------------------------------------
    def verify(self) -> ChainReport:
        """Walk the chain in id order; the first row missing or altered ends the walk."""
        columns = [getattr(AuditRecord, f) for f in FIELDS]
        stmt = (select(*columns, AuditRecord.prev_hash, AuditRecord.hash)
                .order_by(AuditRecord.id).execution_options(yield_per=2000))
        records = 0
        prev_id: int | None = None
        prev_hash = GENESIS
        with self.host.db.reader() as s:
            head = s.execute(select(AuditHead.last_id, AuditHead.last_hash)
                             .where(AuditHead.id == HEAD_ID)).first()
            result = s.execute(stmt)  # streamed (a server-side cursor on PostgreSQL)
            try:
                for row in result:
                    records += 1
                    values = dict(zip(FIELDS, row[:len(FIELDS)], strict=True))
                    row_id = int(values["id"])
                    stored_prev, stored_hash = str(row[-2]), str(row[-1])
                    if stored_prev != prev_hash:
                        expected = 1 if prev_id is None else prev_id + 1
                        if row_id > expected:
                            before = f"id {prev_id}" if prev_id is not None else "the start"
                            return ChainReport(False, records, expected,
                                               f"rows missing between {before} and id {row_id}: "
                                               f"id {row_id} links to another predecessor",
                                               prev_hash)
                        return ChainReport(False, records, row_id,
                                           f"id {row_id}: prev_hash altered", prev_hash)
                    if row_hash(stored_prev, values) != stored_hash:
                        return ChainReport(False, records, row_id,
                                           f"id {row_id}: a field was altered (its hash does not "
                                           "match)", prev_hash)
                    prev_id, prev_hash = row_id, stored_hash
            finally:
                result.close()
        if head is None:
            if records:
                return ChainReport(False, records, None, "the chain's head record is missing",
                                   prev_hash)
            return ChainReport(True, 0)
        last_id = prev_id or 0
        if last_id < head.last_id:
            return ChainReport(False, records, last_id + 1,
                               f"rows cut off the end: the head names id {head.last_id}, "
                               f"the last row is id {last_id}", prev_hash)
        if last_id > head.last_id:
            return ChainReport(False, records, head.last_id + 1,
                               f"rows after id {head.last_id} were not appended through the "
                               "chain's head", prev_hash)
        if head.last_hash != prev_hash:
            return ChainReport(False, records, last_id,
                               f"id {last_id}: does not match the hash the head keeps",
                               prev_hash)
        return ChainReport(True, records, head=prev_hash)  # (0 records: the genesis hash)
