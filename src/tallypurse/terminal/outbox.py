"""Store-and-forward: what the terminal owes the host, delivered at least once,
taking effect once.

Each outbox entry is a request body (agent debit, reversal, load confirmation,
write-back report, day-end batch) stored in the terminal's SQLite file in the
same transaction as the journal outcome it belongs to. Rules:

* an idempotency key is bound to the SHA-256 of its payload: offering the same
  key with the same payload again is a no-op, with another payload an
  :class:`IdempotencyConflict` (a key is never reused);
* delivery retries with exponential backoff and jitter (``base * 2**(n-1)``,
  capped, times a factor in [0.5, 1) from the injectable ``jitter``), across
  restarts, for days if need be;
* an acknowledged entry is never sent again;
* a definitive refusal (:class:`HostRejected`) is kept with the host's problem
  document, surfaced in ``status`` and never retried.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from tallypurse.core import crypto
from tallypurse.core.hostapi import HostRejected, HostUnavailable

from .errors import IdempotencyConflict
from .journal import Database, Tx

QUEUED, ACKED, REJECTED, CANCELLED = "queued", "acked", "rejected", "cancelled"


class Kind(StrEnum):
    AGENT_DEBIT = "agent_debit"
    REVERSAL = "reverse"
    CONFIRM_LOAD = "confirm_load"
    WRITEBACK_REPORT = "report_writeback"
    BATCH = "upload_batch"


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    kind: Kind
    key: str
    payload: str
    attempts: int
    journal_seq: int | None


@dataclass
class FlushReport:
    sent: int = 0
    acked: int = 0
    retry: int = 0
    rejected: int = 0
    stopped: str = ""  # why the round stopped early (host unavailable)
    responses: dict[int, BaseModel] = field(default_factory=dict)


Deliver = Callable[[Item], BaseModel]
OnAck = Callable[[Tx, Item, BaseModel], None]
OnReject = Callable[[Tx, Item, HostRejected], None]


def payload_hash(payload: str) -> bytes:
    return crypto.sha256(payload.encode())


class Outbox:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float],
        jitter: Callable[[], float],
        base_delay: float = 2.0,
        max_delay: float = 3600.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.jitter = jitter
        self.base_delay = base_delay
        self.max_delay = max_delay

    # --- queueing -----------------------------------------------------------------------------
    def enqueue(
        self, tx: Tx, kind: Kind, key: str, body: BaseModel, *, journal_seq: int | None = None
    ) -> int:
        """Queue ``body`` under ``key`` in the caller's transaction. Returns the entry id."""
        payload = body.model_dump_json()
        digest = payload_hash(payload)
        row = tx.execute(
            "SELECT id, payload_hash FROM outbox WHERE kind = ? AND idem_key = ?", (kind, key)
        ).fetchone()
        if row is not None:
            if bytes(row[1]) != digest:
                raise IdempotencyConflict(
                    f"idempotency key {key!r} is already bound to another {kind} payload"
                )
            return int(row[0])
        cur = tx.execute(
            "INSERT INTO outbox(kind, idem_key, payload, payload_hash, state, created, next_at, "
            "journal_seq) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
            (str(kind), key, payload, digest, int(self.clock()), 0.0, journal_seq),
        )
        return int(cur.lastrowid or 0)

    def cancel(self, tx: Tx, kind: Kind, key: str) -> bool:
        """Withdraw an entry that was never sent. False when it was (or may have been) sent."""
        cur = tx.execute(
            "UPDATE outbox SET state = 'cancelled', done_at = ? "
            "WHERE kind = ? AND idem_key = ? AND state = 'queued' AND attempts = 0",
            (int(self.clock()), str(kind), key),
        )
        return cur.rowcount == 1

    # --- delivery -------------------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        delay = min(self.max_delay, self.base_delay * float(1 << min(max(0, attempts - 1), 40)))
        return delay * (0.5 + 0.5 * min(max(self.jitter(), 0.0), 1.0))

    def due(self, *, now: float | None = None, kinds: tuple[Kind, ...] | None = None,
            include_waiting: bool = False) -> list[Item]:
        t = self.clock() if now is None else now
        sql = ("SELECT id, kind, idem_key, payload, attempts, journal_seq FROM outbox "
               "WHERE state = 'queued'")
        params: list[Any] = []
        if not include_waiting:
            sql += " AND next_at <= ?"
            params.append(t)
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params.extend(str(k) for k in kinds)
        sql += " ORDER BY id"
        return [
            Item(r[0], Kind(r[1]), r[2], r[3], r[4], r[5]) for r in self.db.query(sql, params)
        ]

    def flush(
        self,
        deliver: Deliver,
        *,
        on_ack: OnAck | None = None,
        on_reject: OnReject | None = None,
        kinds: tuple[Kind, ...] | None = None,
        force: bool = False,
    ) -> FlushReport:
        """Send every due entry once, oldest first; stop at the first HostUnavailable.
        ``force`` also sends entries still waiting out their backoff."""
        report = FlushReport()
        for item in self.due(kinds=kinds, include_waiting=force):
            report.sent += 1
            try:
                response = deliver(item)
            except HostUnavailable as exc:
                self._retry(item, f"host unavailable: {exc}")
                report.retry += 1
                report.stopped = str(exc) or "host unavailable"
                break
            except HostRejected as exc:
                problem = exc.problem.model_dump_json()
                with self.db.write() as tx:
                    tx.execute(
                        "UPDATE outbox SET state = 'rejected', attempts = attempts + 1, "
                        "last_error = ?, response = ?, done_at = ? "
                        "WHERE id = ? AND state = 'queued'",
                        (str(exc), problem, int(self.clock()), item.id),
                    )
                    if on_reject is not None:
                        on_reject(tx, item, exc)
                report.rejected += 1
                continue
            except (ValidationError, ValueError) as exc:
                self._retry(item, f"unusable answer from the host: {exc}")
                report.retry += 1
                continue
            with self.db.write() as tx:
                tx.execute(
                    "UPDATE outbox SET state = 'acked', attempts = attempts + 1, response = ?, "
                    "done_at = ?, last_error = '' WHERE id = ? AND state = 'queued'",
                    (response.model_dump_json(), int(self.clock()), item.id),
                )
                if on_ack is not None:
                    on_ack(tx, item, response)
            report.acked += 1
            report.responses[item.id] = response
        return report

    def _retry(self, item: Item, error: str) -> None:
        attempts = item.attempts + 1
        next_at = self.clock() + self.backoff(attempts)
        with self.db.write() as tx:
            tx.execute(
                "UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? "
                "WHERE id = ? AND state = 'queued'",
                (attempts, next_at, error[:500], item.id),
            )

    # --- reporting -------------------------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        out = {str(k): 0 for k in Kind}
        for kind, n in self.db.query(
            "SELECT kind, count(*) FROM outbox WHERE state = 'queued' GROUP BY kind"
        ):
            out[kind] = n
        return out

    def counts(self) -> dict[str, int]:
        out = {QUEUED: 0, ACKED: 0, REJECTED: 0, CANCELLED: 0}
        for state, n in self.db.query("SELECT state, count(*) FROM outbox GROUP BY state"):
            out[state] = n
        return out

    def next_attempt(self) -> float | None:
        value = self.db.one("SELECT min(next_at) FROM outbox WHERE state = 'queued'")
        return None if value is None else float(value)

    def rejected(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r[0],
                "kind": r[1],
                "key": r[2],
                "error": r[3],
                "problem": json.loads(r[4]) if r[4] else None,
            }
            for r in self.db.query(
                "SELECT id, kind, idem_key, last_error, response FROM outbox "
                "WHERE state = 'rejected' ORDER BY id"
            )
        ]

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None:
        row = self.db.conn.execute(
            "SELECT id, state, attempts, payload, response, last_error FROM outbox "
            "WHERE kind = ? AND idem_key = ?",
            (str(kind), key),
        ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0], "state": row[1], "attempts": row[2], "payload": row[3],
            "response": row[4], "last_error": row[5],
        }
