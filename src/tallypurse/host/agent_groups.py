"""Agent debits written in groups: one transaction for the debits that arrive together.

Each host process has one writer thread for agent debits. A request is checked in
its own thread (the terminal's signature, the card's record against the card's
certified key), then handed to the writer, which takes every debit waiting at
that moment (at most ``MAX_GROUP``) and writes the common case for all of them in
one database transaction with a statement or two per kind of row: the terminal,
card, earlier debts and ledger accounts read in one statement; the nonces; the
online accounts locked and debited; the debts; the ledger transactions and their
postings; the credit events; the write-backs and their list entries. The group
commits once. A lone debit waits for nothing: it is a group of one. While a group
is being written the next debits gather, so the busier the host, the fewer
commits (and round trips, and row locks) per debit.

Whatever is not the common case goes back to its own thread, which takes it the
one-debit way (:meth:`tallypurse.host.agent.AgentDebits._submit`, the ORM): a
retried key or a debt clearing opened first (answered from the earlier debt), an
online account that holds too little (the bank, collection), an account never
used, a twin of another debit in the same group, a card or terminal the request
was checked against that changed. If the group's transaction fails (a race lost to
another process on a unique constraint, a deadlock, a refusing database), nothing
of it is written and every debit of the group goes the one-debit way.

Locks are taken in the order of every other path (online authorisations, loads,
clearing, the one-debit way): the cards (by card id), the online accounts (by id),
then, at commit, the ledger balances (by account id).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from tallypurse.core.hostapi import AgentDebitAck, AgentDebitRequest
from tallypurse.core.messages import CardEvent, DebtOutcome, SignedEvent
from tallypurse.host.db import bulk
from tallypurse.host.db.bulk import array_literal, plain
from tallypurse.host.errors import REPLAY, HostError
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger
from tallypurse.host.tms import terminal_refusal
from tallypurse.host.writeback import LOCK_CARDS

from .common import log_event, new_id

if TYPE_CHECKING:
    from tallypurse.host.agent import AgentDebits, SignedBy

log = logging.getLogger("tallypurse.host")

MAX_GROUP = 64  # debits in one transaction at most
IDLE_S = 30.0  # a writer thread ends after this long without work (started again on demand)

READ_COLUMNS: list[bulk.Column] = [("n", "bigint"), ("terminal_id", "text"),
                                   ("card_id", "text"), ("key", "text"), ("atc", "bigint")]
# Everything a group's debits read, one row per debit (``v``: the debits themselves). The
# earlier debts and the accounts are scalar subqueries, each an index lookup: a join of
# eight tables took PostgreSQL longer to plan (about 2 ms) than to run.
GROUP_READ = """
SELECT v.n, t.merchant_id, t.status, t.public_key, t.cert_not_after,
       c.card_id, c.cardholder_id, c.currency, c.public_key AS card_key, c.app_key_version,
       (SELECT k.id FROM debts k WHERE k.terminal_id = v.terminal_id
                                   AND k.idempotency_key = v.key) AS prior_id,
       (SELECT d.id FROM debts d WHERE d.card_id = v.card_id AND d.atc = v.atc) AS same_id,
       (SELECT r.id FROM accounts r WHERE r.kind = 'credit_receivable' AND r.owner = ''
                                      AND r.currency = c.currency) AS receivable_id,
       (SELECT m.id FROM accounts m WHERE m.kind = 'merchant_payable'
                                      AND m.owner = t.merchant_id
                                      AND m.currency = c.currency) AS payable_id,
       (SELECT o.id FROM accounts o WHERE o.kind = 'online' AND o.owner = c.cardholder_id
                                      AND o.currency = c.currency) AS online_id
FROM v
LEFT JOIN terminals t ON t.terminal_id = v.terminal_id
LEFT JOIN cards c ON c.card_id = v.card_id
"""
NONCES_PG = ("INSERT INTO request_nonces (key_id, nonce, created) "
             "SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:nonces AS text[]), "
             "CAST(:created AS bigint[])) ON CONFLICT DO NOTHING RETURNING key_id, nonce")
RECORD_NONCE = ("INSERT INTO request_nonces (key_id, nonce, created) "
                "VALUES (:key_id, :nonce, :created) ON CONFLICT DO NOTHING")


def nonce_is_new(s: Any, key_id: str, nonce: str, now: int) -> bool:
    """Record a request's nonce in the caller's transaction; False: seen before."""
    return bool(plain(s, RECORD_NONCE, {"key_id": key_id, "nonce": nonce,
                                        "created": now}).rowcount == 1)
LOCK_ONLINE_PG = ("SELECT id, balance FROM accounts WHERE id = ANY(CAST(:ids AS bigint[])) "
                  "ORDER BY id "
                  "FOR NO KEY UPDATE")
DEBT_COLUMNS: list[bulk.Column] = [
    ("id", "text"), ("card_id", "text"), ("atc", "bigint"), ("amount", "bigint"),
    ("currency", "text"), ("terminal_id", "text"), ("merchant_id", "text"),
    ("cardholder_id", "text"), ("tx_type", "integer"), ("idempotency_key", "text"),
    ("payload_hash", "text"), ("status", "text"), ("origin", "text"), ("event_time", "bigint"),
    ("created", "bigint"), ("updated", "bigint"), ("repaid", "bigint")]
CREDIT_EVENT_COLUMNS: list[bulk.Column] = [
    ("cardholder_id", "text"), ("card_id", "text"), ("kind", "text"), ("amount", "bigint"),
    ("reference", "text"), ("created", "bigint")]


@dataclass(frozen=True, slots=True)
class OneByOne:
    """Take this debit the one-debit way; ``nonce_recorded``: the group's transaction
    committed the request's nonce (the one-debit way must not record it again)."""

    nonce_recorded: bool


@dataclass(frozen=True, slots=True)
class CardKey:
    """What the request was checked against: the card's certified key and currency
    (fixed at issuance; the group's read confirms them)."""

    card_id: str
    currency: str
    public_key: str


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A card as the group read it (what sealing a write-back needs)."""

    card_id: str
    app_key_version: int


class TerminalChangedResult(Exception):
    """Carried back to the request's thread: raise ``TerminalChanged`` there."""


# What the group writer answers for a debit: taken, given back, or refused.
Taken = AgentDebitAck | OneByOne | BaseException


@dataclass(slots=True)
class Waiting:
    terminal_id: str
    req: AgentDebitRequest
    digest: str
    event: CardEvent
    card: CardKey | None
    signed: SignedBy | None
    future: Future[Taken]
    # the record, when ``card`` is None: its signature is checked with the key the group reads
    unverified: SignedEvent | None = None


class AgentGroups:
    """The writer thread of one host process (started on the first debit)."""

    def __init__(self, agent: AgentDebits, *, max_group: int = MAX_GROUP,
                 idle_s: float = IDLE_S) -> None:
        self.agent = agent
        self.host = agent.host
        self.max_group = max_group
        self.idle_s = idle_s
        self._queue: queue.SimpleQueue[Waiting] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = 0  # writer threads: one (two made smaller groups and cost more CPU)
        self.groups = 0  # groups written in this process
        # called with (debits in the group, debits it took) after each group (metrics)
        self.listeners: list[Callable[[int, int], None]] = []

    def take(self, item: Waiting) -> None:
        with self._lock:
            self._queue.put(item)
            if not self._running:
                self._running += 1
                threading.Thread(target=self._run, name="agent-debit-writer",
                                 daemon=True).start()

    def _run(self) -> None:
        group: list[Waiting] = []
        try:
            while True:
                try:
                    first = self._queue.get(timeout=self.idle_s)
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty():
                            self._running -= 1
                            return
                    continue
                group = [first]
                while len(group) < self.max_group:
                    try:
                        group.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                # A request that was cancelled (its client gone) is dropped here, before
                # anything is written for it; the others can no longer be cancelled.
                group = [it for it in group if it.future.set_running_or_notify_cancel()]
                if group:
                    self._write(group)
                group = []
        except BaseException:
            # Never leave a request waiting: what this thread held goes one by one, and
            # the next debit starts a new writer.
            for it in group:
                if not it.future.done():
                    it.future.set_result(OneByOne(False))
            with self._lock:
                self._running -= 1
            raise

    def _write(self, group: list[Waiting]) -> None:
        try:
            results = self.write(group)
        except Exception:  # nothing of the group was written: each goes the one-debit way
            log.warning('{"event": "agent_group_failed", "debits": %d}', len(group),
                        exc_info=True)
            results = [OneByOne(False)] * len(group)
        for item, result in zip(group, results, strict=True):
            item.future.set_result(result)

    # --- one group, one transaction -----------------------------------------------------------
    def write(self, group: Sequence[Waiting]) -> list[AgentDebitAck | OneByOne | BaseException]:
        """Write the group's common cases in one transaction; the result per debit."""
        host = self.host
        now = host.now()
        started = time.perf_counter()
        out: list[AgentDebitAck | OneByOne | BaseException | None] = [None] * len(group)
        seen: set[tuple[str, str, str]] = set()
        candidates: list[int] = []
        for n, it in enumerate(group):
            marks = [("key", it.terminal_id, it.req.idempotency_key),
                     ("atc", it.req.card_id, str(it.req.atc))]
            if it.signed is not None:
                marks.append(("nonce", it.signed.terminal_id, it.signed.nonce))
            if any(m in seen for m in marks):  # a twin in this group: after it commits
                out[n] = OneByOne(False)
                continue
            seen.update(marks)
            candidates.append(n)
        taken: list[tuple[int, Any]] = []
        with host.uow() as uow:
            s = uow.session
            postgres = bulk.is_postgres(s)
            rows = {int(r[0]): r for r in bulk.select_with(s, READ_COLUMNS, [
                (n, group[n].terminal_id, group[n].req.card_id, group[n].req.idempotency_key,
                 group[n].req.atc) for n in candidates], GROUP_READ)}
            go: list[tuple[int, Any]] = []
            for n in candidates:
                it, row = group[n], _Row(*rows[n])
                if it.signed is not None and (
                        row.status is None or terminal_refusal(
                            it.terminal_id, row.status, row.public_key, row.cert_not_after,
                            now) is not None
                        or bytes.fromhex(row.public_key) != it.signed.key):
                    out[n] = TerminalChangedResult(it.terminal_id)
                elif (row.status is None or row.card_id is None or row.prior_id is not None
                      or row.same_id is not None or row.cardholder_id is None
                      or row.currency != it.req.currency or not self._card_checked(it, row)
                      or None in (row.receivable_id, row.payable_id, row.online_id)):
                    out[n] = OneByOne(False)
                else:
                    go.append((n, row))
            go = self._record_nonces(s, group, go, out, now, postgres)
            # Locks in the order every path takes them: the cards (card order), then the
            # online accounts (id order), then, at commit, the balances (id order).
            if postgres and go:
                plain(s, LOCK_CARDS, {"ids": array_literal(sorted({r.card_id for _, r in go}))})
            balances = self._lock_online(s, sorted({int(r.online_id) for _, r in go}), postgres)
            for n, row in go:
                amount = group[n].req.amount
                if -balances[int(row.online_id)] >= amount:
                    balances[int(row.online_id)] += amount
                    taken.append((n, row))
                else:  # too little online: the bank or collection, one by one
                    out[n] = OneByOne(group[n].signed is not None)
            booked = self._book(s, group, taken, now) if taken else []
            uow.commit()
        # Committed: from here on nothing may turn the group into a failure.
        for (n, _), (debt_id, _seq) in zip(taken, booked, strict=True):
            out[n] = AgentDebitAck(idempotency_key=group[n].req.idempotency_key,
                                   status="accepted", debt_id=debt_id)
        self.groups += 1
        try:
            for (n, _), (debt_id, seq) in zip(taken, booked, strict=True):
                it = group[n]
                log_event("agent_debit", terminal=it.terminal_id, card=it.req.card_id,
                          atc=it.req.atc, amount=it.req.amount, debt=debt_id,
                          status="settled", writeback_seq=seq)
            log_event("agent_debit_group", debits=len(group), taken=len(taken),
                      ms=round((time.perf_counter() - started) * 1000, 2))
            for listener in list(self.listeners):
                listener(len(group), len(taken))
        except Exception:  # a log or a metric: the debits stand, their answers too
            log.warning('{"event": "agent_group_report_failed"}', exc_info=True)
        return [r if r is not None else OneByOne(False) for r in out]

    def _card_checked(self, it: Waiting, row: _Row) -> bool:
        """The record was checked against the key the card has (the process's kept key),
        or checks now with the key just read, which the process then keeps."""
        if it.card is not None:
            return bool(row.card_key == it.card.public_key)
        assert it.unverified is not None
        if not it.unverified.verify(bytes.fromhex(row.card_key)):
            return False
        self.agent.remember_card(CardKey(row.card_id, row.currency, row.card_key))
        return True

    def _record_nonces(self, s: Any, group: Sequence[Waiting], go: list[tuple[int, Any]],
                       out: list[Any], now: int, postgres: bool) -> list[tuple[int, Any]]:
        """Record the signed requests' nonces; a nonce seen before is a replay."""
        signed = [(n, r) for n, r in go if group[n].signed is not None]
        if not signed:
            return go
        fresh: set[tuple[str, str]] = set()
        if postgres:
            cur = plain(s, NONCES_PG, {
                "keys": array_literal(
                    [group[n].signed.terminal_id for n, _ in signed]),  # type: ignore[union-attr]
                "nonces": array_literal(
                    [group[n].signed.nonce for n, _ in signed]),  # type: ignore[union-attr]
                "created": array_literal([now] * len(signed))})
            fresh = {(k, v) for k, v in cur.fetchall()}
        else:  # SQLite: in-process, one statement per nonce costs no round trip
            for n, _ in signed:
                by = group[n].signed
                assert by is not None
                if nonce_is_new(s, by.terminal_id, by.nonce, now):
                    fresh.add((by.terminal_id, by.nonce))
        kept = []
        for n, row in go:
            by = group[n].signed
            if by is not None and (by.terminal_id, by.nonce) not in fresh:
                out[n] = HostError(REPLAY, "this request was seen before (nonce reused)")
            else:
                kept.append((n, row))
        return kept

    @staticmethod
    def _lock_online(s: Any, ids: list[int], postgres: bool) -> dict[int, int]:
        if not ids:
            return {}
        if postgres:
            cur = plain(s, LOCK_ONLINE_PG, {"ids": array_literal(ids)})
        else:
            marks = ", ".join(f":a{i}" for i in range(len(ids)))
            cur = plain(s, f"SELECT id, balance FROM accounts WHERE id IN ({marks})",
                        {f"a{i}": v for i, v in enumerate(ids)})
        return {int(i): int(b) for i, b in cur.fetchall()}

    def _book(self, s: Any, group: Sequence[Waiting], taken: list[tuple[int, Any]],
              now: int) -> list[tuple[str, int]]:
        """The rows of the debits taken: each opened (merchant paid) and collected from
        the online account at once, exactly as the one-debit way books that case. Returns
        each debt's id and its write-back's number."""
        host = self.host
        debt_ids: list[str] = []
        debts: list[tuple[Any, ...]] = []
        entries: list[Entry] = []
        known: dict[Acct, int] = {}
        events: list[tuple[Any, ...]] = []
        actions: list[tuple[GroupRow, str, bytes, str]] = []
        for n, row in taken:
            it = group[n]
            event = it.event
            currency: str = row.currency
            debt_id = new_id("debt")
            debt_ids.append(debt_id)
            debts.append((debt_id, row.card_id, event.atc, event.split, currency, it.terminal_id,
                          row.merchant_id, row.cardholder_id, event.tx_type,
                          it.req.idempotency_key, it.digest, "settled", "agent", event.time,
                          now, now, 0))
            receivable = Acct.system(Kind.CREDIT_RECEIVABLE, currency)
            payable = Acct(Kind.MERCHANT_PAYABLE, row.merchant_id, currency)
            online = Acct(Kind.ONLINE, row.cardholder_id, currency)
            known[receivable] = int(row.receivable_id)
            known[payable] = int(row.payable_id)
            known[online] = int(row.online_id)
            entries.append(Entry("debt_open", debt_id,
                                 [(receivable, event.split), (payable, -event.split)],
                                 value_time=event.time, merchant_id=row.merchant_id,
                                 card_id=row.card_id,
                                 memo=f"split remainder of ATC {event.atc}"))
            entries.append(Entry("debt_collect_online", debt_id,
                                 [(online, event.split), (receivable, -event.split)],
                                 value_time=now, card_id=row.card_id))
            events.append((row.cardholder_id, row.card_id, "debt_settled_online", event.split,
                           debt_id, now))
            actions.append((GroupRow(row.card_id, int(row.app_key_version)), "settle_debt",
                            DebtOutcome(event.atc, event.split).to_bytes(), debt_id))
        Ledger(s, now).post_many(entries, known=known)
        for _, row in taken:
            host.credit.note_event(s, row.cardholder_id, "debt_settled_online")
        # the debts and credit events go in one statement with the write-backs
        published = host.writebacks.publish_many(s, actions, beside=[
            ("debts", DEBT_COLUMNS, debts), ("credit_events", CREDIT_EVENT_COLUMNS, events)])
        return [(debt_id, done.seq) for debt_id, done in zip(debt_ids, published, strict=True)]


class _Row(NamedTuple):
    """A row of ``GROUP_READ`` with its columns by name."""

    n: int
    merchant_id: Any
    status: Any
    public_key: Any
    cert_not_after: Any
    card_id: Any
    cardholder_id: Any
    currency: Any
    card_key: Any
    app_key_version: Any
    prior_id: Any
    same_id: Any
    receivable_id: Any
    payable_id: Any
    online_id: Any
