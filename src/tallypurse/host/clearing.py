"""Clearing: taking terminals' day-end batches of card-signed events.

For every uploaded event the host checks the card's signature (TAC) with the
card's certified key, then takes each card event once. Card events are
numbered ``seqno = ATC + load counter`` (a debit or cancel moves the ATC, a
load the load counter, so every event moves exactly one of them):

* a second copy of an event already taken is a no-op (a duplicate);
* a different event with the same (card, seqno) cannot come from one card: it
  is a clone (or a tampered card). The second event is still paid to its
  merchant, from the operator's losses, and the card is blacklisted in the
  same transaction;
* a broken balance chain (the balance after event n differs from the balance
  before event n+1, loads included; or the counters do not follow) marks
  the card cloned and blacklisted too;
* a missing seqno is a gap: it stays open until the missing upload arrives
  and the gap report lists gaps older than ``gap_report_after_s``.

Ledger: a debit moves value from the card's purse float to the merchant's
payable; a batch's debits are booked together, one transaction per terminal,
currency and value day with one posting per card (the sum of its debits) and
one to the merchant, and each card event names the transaction that booked it
(``card_events.transaction_id``: the per-debit record an auditor follows). A
cancel moves value back; a load moves the authorised amount out of load
suspense into the purse float (and into the credit receivable for the part
that repaid failed debts); each is a transaction of its own. A split debit
also opens its debt (see :mod:`tallypurse.host.agent`).

Speed: the SAM's batch signature is checked before the write transaction
begins, with keys read in a read-only transaction (card keys are kept in a
per-process cache: a card's certified key never changes). The TACs of a large
batch are verified on several threads (OpenSSL runs without the GIL) while the
write transaction runs: it takes the entries as if every TAC verified and asks
for the outcome just before it commits; if one did not verify, it rolls back
and the batch is taken again with that entry rejected. The batch is put in
canonical JSON once (its payload hash and the SAM-signed bytes come from the
same dump) and each card record is parsed once. The write transaction takes
the whole batch with a handful of bulk statements
(:mod:`tallypurse.host.db.bulk`), whatever its size: lock the batch's cards in
card order, read each card's progress (its gap, if any, and its newest event:
the highest seqno is the newest event's), read the other neighbours of its
events (late or out-of-order uploads only), book the ledger, insert the events
and the journal entries, and open, narrow or close the cards' gaps
(``card_gaps``: nothing is written of a card's progress when its next event
follows the newest, the common case). Account
ids are kept across batches (:class:`~tallypurse.host.ledger.AccountIds`). Only
the rare events (clones, split debits, cancels, loads) go through the ORM.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tallypurse.core import crypto
from tallypurse.core.errors import DecodeError
from tallypurse.core.hostapi import (
    BatchAck,
    BatchUpload,
    JournalEntry,
    Rejected,
    Totals,
    batch_json,
)
from tallypurse.core.messages import EVENT_RECORD_LEN, CardEvent, SignedEvent, domain
from tallypurse.core.protocol import EventKind
from tallypurse.core.samproto import PURPOSE_BATCH, verify_signature
from tallypurse.host.db import bulk
from tallypurse.host.db.engine import after_commit
from tallypurse.host.db.models import (
    Alert,
    BatchRow,
    Card,
    CardEventConflict,
    CardGap,
    JournalRecord,
    Terminal,
)
from tallypurse.host.errors import (
    BATCH_SIGNATURE,
    BATCH_TOO_LARGE,
    CONFLICT,
    IDEMPOTENCY_CONFLICT,
    RECORD_INVALID,
    RECORD_MISMATCH,
    TERMINAL_MISMATCH,
    UNKNOWN_CARD,
    HostError,
)
from tallypurse.host.ledger import AccountIds, Acct, Entry, Kind, Ledger, day_of

from .common import alpha_currency, hex_bytes, log_event, retrying

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's own wait only
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from tallypurse.host.service import Host

RECORD_KINDS = {"debit": EventKind.DEBIT, "cancel": EventKind.CANCEL, "load": EventKind.LOAD}
ZERO_TERMINAL = "00" * 8
EVENT_SIZE = CardEvent.size()
EVENT_DOMAIN = domain(CardEvent.MSG)
KEY_CACHE_MAX = 200_000  # card keys kept per process (about 200 bytes each)
PARALLEL_FROM = 64  # TACs in a batch from which they are verified on several threads
VERIFY_THREADS = min(8, os.cpu_count() or 1)
DAY = 86_400

EVENT_COLUMNS: list[bulk.Column] = [
    ("card_id", "text"), ("seqno", "bigint"), ("kind", "integer"), ("atc", "bigint"),
    ("load_counter", "bigint"), ("amount", "bigint"), ("split", "bigint"),
    ("currency", "text"), ("tx_type", "integer"), ("balance_before", "bigint"),
    ("balance_after", "bigint"), ("terminal_id", "text"), ("terminal_seq", "bigint"),
    ("time", "bigint"), ("record", "text"), ("cleared_at", "bigint"),
    ("transaction_id", "bigint")]
JOURNAL_COLUMNS: list[bulk.Column] = [
    ("terminal_id", "text"), ("seq", "bigint"), ("kind", "text"), ("card_id", "text"),
    ("amount", "bigint"), ("split", "bigint"), ("currency", "text"), ("time", "bigint"),
    ("reference", "text"), ("entry_hash", "text"), ("batch_id", "text"), ("status", "text"),
    ("code", "integer")]
CARD_KEY: bulk.Column = ("card_id", "text")
CARD_EVENT_KEY: list[bulk.Column] = [("card_id", "text"), ("seqno", "bigint")]
GAP_COLUMNS: list[bulk.Column] = [("card_id", "text"), ("contiguous_seqno", "bigint"),
                                   ("since", "bigint")]
# Reads of card events by (card, seqno), for a batch's cards (``v``). On PostgreSQL each
# event is looked up by its index (a LATERAL subquery, which the planner does not merge
# into a hash join that would scan the whole table); SQLite looks rows up by index anyway.
# Keyed by "is PostgreSQL".
_EVENT_COLS = ("{e}.seqno, {e}.kind, {e}.atc, {e}.load_counter, {e}.balance_before, "
          "{e}.balance_after, {e}.record")
# PostgreSQL: the cards' rows locked, in card order (``v`` comes sorted, and each row is
# looked up and locked by its key in turn), before their progress is read by a statement
# of its own, which sees what a writer that held a lock committed. A card is read by its
# key whatever the table's size (a join would scan the whole table for small ones); its
# progress needs no read of its wide row (the caller knows its currency).
LOCK_CARDS = ("SELECT c.card_id FROM v JOIN LATERAL (SELECT y.card_id FROM cards y "
              "WHERE y.card_id = v.card_id FOR UPDATE) c ON true")
PROGRESS = {  # each card's gap (if any) and its newest event (if any)
    False: f"SELECT v.card_id, g.contiguous_seqno, g.since, {_EVENT_COLS.format(e='e')} FROM v "
           "LEFT JOIN card_gaps g ON g.card_id = v.card_id "
           "LEFT JOIN card_events e ON e.id = (SELECT x.id FROM card_events x "
           "WHERE x.card_id = v.card_id ORDER BY x.seqno DESC LIMIT 1)",
    True: "SELECT v.card_id, g.contiguous_seqno, g.since, "
          f"{_EVENT_COLS.format(e='e')} FROM v "
          "LEFT JOIN LATERAL (SELECT h.contiguous_seqno, h.since FROM card_gaps h "
          "WHERE h.card_id = v.card_id OFFSET 0) g ON true "
          f"LEFT JOIN LATERAL (SELECT {_EVENT_COLS.format(e='x')} FROM card_events x "
          "WHERE x.card_id = v.card_id ORDER BY x.seqno DESC LIMIT 1) e ON true",
}
EVENTS_AT = {  # the events at these (card, seqno)
    False: f"SELECT e.card_id, {_EVENT_COLS.format(e='e')} FROM card_events e "
           "JOIN v ON e.card_id = v.card_id AND e.seqno = v.seqno",
    True: f"SELECT v.card_id, {_EVENT_COLS.format(e='e')} FROM v "
          f"JOIN LATERAL (SELECT {_EVENT_COLS.format(e='x')} FROM card_events x "
          "WHERE x.card_id = v.card_id AND x.seqno = v.seqno LIMIT 1) e ON true",
}
EVENTS_AFTER = {  # the seqnos of each card's events after the given one, in order
    False: "SELECT e.card_id, e.seqno FROM card_events e "
           "JOIN v ON e.card_id = v.card_id AND e.seqno > v.seqno ORDER BY e.card_id, e.seqno",
    True: "SELECT v.card_id, e.seqno FROM v JOIN LATERAL (SELECT x.seqno FROM card_events x "
          "WHERE x.card_id = v.card_id AND x.seqno > v.seqno ORDER BY x.seqno OFFSET 0) e "
          "ON true ORDER BY v.card_id, e.seqno",
}


class Taken(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # a clone's event: paid from losses, card blacklisted


class EventFields(NamedTuple):
    """A card event's fields as a plain tuple, in :class:`CardEvent`'s order: what
    clearing reads of each of the thousands of records in a batch (a tuple is built in a
    tenth of the time of the frozen dataclass). :meth:`card_event` gives the dataclass."""

    kind: int
    card_id: bytes
    atc: int
    load_counter: int
    amount: int
    split: int
    currency: int
    tx_type: int
    balance_before: int
    balance_after: int
    terminal_id: bytes
    terminal_seq: int
    time: int
    card_challenge: bytes
    terminal_challenge: bytes
    debt_slot: int
    cvr: int

    @classmethod
    def of(cls, event: CardEvent) -> EventFields:
        return cls._make(getattr(event, name) for name in cls._fields)

    def card_event(self) -> CardEvent:
        return CardEvent(*self)


if EventFields._fields != tuple(f.name for f in fields(CardEvent)):  # pragma: no cover
    raise ImportError("CardEvent's fields changed: update EventFields")


class Incoming:
    """A verified card event to take, with who uploaded it (``record``: the signed
    event as hex, as uploaded)."""

    __slots__ = ("card_id", "event", "merchant_id", "record", "seqno", "terminal_id")

    def __init__(self, event: EventFields, terminal_id: str, merchant_id: str, record: str,
                 card_id: str) -> None:
        self.event = event
        self.terminal_id = terminal_id
        self.merchant_id = merchant_id
        self.record = record
        self.card_id = card_id
        self.seqno = event.atc + event.load_counter

    @classmethod
    def of(cls, signed: SignedEvent, terminal_id: str, merchant_id: str) -> Incoming:
        e = signed.event
        return cls(EventFields.of(e), terminal_id, merchant_id, signed.to_bytes().hex(),
                   e.card_id.hex())


@dataclass(slots=True)
class CardState:
    """A card's clearing progress: its events are contiguous up to ``contiguous_seqno``,
    the highest is ``max_seqno`` (that of its newest event; 0: none yet) and a gap above
    the contiguous ones is open since ``gap_since`` (None: no gap)."""

    card_id: str
    currency: str
    contiguous_seqno: int
    max_seqno: int
    gap_since: int | None


class Known(NamedTuple):
    kind: int
    atc: int
    load_counter: int
    balance_before: int
    balance_after: int
    record: str


def card_states(s: Session, currencies: Mapping[str, str]
                ) -> tuple[dict[str, CardState], dict[tuple[str, int], Known]]:
    """The progress of these existing cards (keyed by card, with each card's currency), in
    one statement, with each card's newest event, keyed by (card, seqno). Consistent when
    the cards are locked (clearing and load confirmations) or in a read-only transaction
    (reports). On SQLite the newest event is found on the (card, seqno) index and read by
    its row id."""
    rows = bulk.select_with(s, [CARD_KEY], [(c,) for c in sorted(currencies)],
                            PROGRESS[bulk.is_postgres(s)])
    states: dict[str, CardState] = {}
    newest: dict[tuple[str, int], Known] = {}
    for cid, contiguous, since, n, *event in rows:
        top = 0 if n is None else int(n)
        low = top if contiguous is None else int(contiguous)
        states[cid] = CardState(cid, currencies[cid], low, top,
                                None if since is None else int(since))
        if n is not None:
            newest[(cid, top)] = Known(int(event[0]), int(event[1]), int(event[2]),
                                       int(event[3]), int(event[4]), event[5])
    return states, newest


class _Checked(NamedTuple):
    """An entry's card record parsed and its TAC verified, outside any write transaction."""

    event: EventFields
    record: str
    card_id: str
    currency: str  # the card's (alphabetic)


class _CardKey(NamedTuple):
    """What clearing keeps of a card per process: neither ever changes."""

    key: ec.EllipticCurvePublicKey  # its certified key
    currency: str


Check = _Checked | HostError | None  # None: an entry without a card record


class _TacFailed(Exception):
    """A TAC assumed good did not verify: the write transaction is rolled back."""


class _Checks:
    """A batch's checks, one per entry, while its TACs are verified on other threads.

    ``assumed``: the checks as they are if every TAC verifies; the write transaction is
    built from them and asks ``all_verified`` just before it commits. ``final``: the
    checks with the entries whose TAC did not verify rejected."""

    __slots__ = ("_outcomes", "_results", "_waiting", "assumed", "ready")

    def __init__(self, assumed: list[Check], waiting: list[int],
                 outcomes: Callable[[], list[bool]], *, ready: bool) -> None:
        self.assumed = assumed
        self._waiting = waiting
        self._outcomes = outcomes
        self._results: list[bool] | None = None
        self.ready = ready  # the outcomes are known already (a small batch, verified here)

    def _verified(self) -> list[bool]:
        if self._results is None:
            self._results = self._outcomes()
        return self._results

    def all_verified(self) -> bool:
        return all(self._verified())

    def final(self) -> list[Check]:
        checks = list(self.assumed)
        for i, ok in zip(self._waiting, self._verified(), strict=True):
            if not ok:
                checks[i] = HostError(RECORD_INVALID,
                                      "the card's signature (TAC) does not verify")
        return checks


def _follows(prev: Known, nxt: Known) -> str:
    """Why ``nxt`` cannot be the event after ``prev`` on one card ('' if it can)."""
    if nxt.kind == EventKind.LOAD:
        counters_ok = (nxt.atc, nxt.load_counter) == (prev.atc, prev.load_counter + 1)
    else:
        counters_ok = (nxt.atc, nxt.load_counter) == (prev.atc + 1, prev.load_counter)
    if not counters_ok:
        return "counters do not follow"
    if prev.balance_after != nxt.balance_before:
        return f"balance chain broken ({prev.balance_after} then {nxt.balance_before})"
    return ""


def _consistent(e: EventFields) -> str:
    if e.kind == EventKind.DEBIT:
        ok = e.balance_after == e.balance_before - e.amount
    elif e.kind == EventKind.CANCEL:
        ok = e.balance_after == e.balance_before + e.amount
    else:
        ok = e.balance_after == e.balance_before + e.amount - e.split
    return "" if ok else "event balance does not add up"


def _known(e: EventFields, record: str) -> Known:
    return Known(e.kind, e.atc, e.load_counter, e.balance_before, e.balance_after, record)


_EVENT = struct.Struct(CardEvent.FORMAT)
_EVENT_KINDS = frozenset(int(k) for k in EventKind)
_ALPHA: dict[int, str] = {}


def _alpha(numeric: int) -> str:
    code = _ALPHA.get(numeric)
    if code is None:
        code = _ALPHA[numeric] = alpha_currency(numeric)  # BadInput for an unknown number
    return code


def parse_record(record_hex: str) -> tuple[EventFields, bytes, bytes] | HostError:
    """A journal entry's card record (hex, already checked to be hex): the event, its TAC
    and the record's bytes, or why it cannot be one."""
    raw = bytes.fromhex(record_hex)
    if len(raw) == EVENT_RECORD_LEN:
        values = _EVENT.unpack_from(raw)
        if values[0] in _EVENT_KINDS:
            return EventFields._make(values), raw[EVENT_SIZE:], raw
    try:  # the one parser says what is wrong
        SignedEvent.parse(raw)
    except DecodeError as exc:
        return HostError(RECORD_INVALID, f"card record: {exc.message}")
    raise AssertionError("a record the fast parser refused was parsed")  # pragma: no cover


def batch_digest(batch: BatchUpload) -> tuple[str, bytes]:
    """The batch's payload hash (``payload_hash``) and the bytes its SAM signed
    (``batch_signed_bytes``), from one pass over the batch (:func:`batch_json`)."""
    full, signed = batch_json(batch)
    return crypto.sha256(full).hex(), signed


def _verify_each(jobs: Sequence[tuple[ec.EllipticCurvePublicKey, bytes, bytes]]) -> list[bool]:
    return [crypto.verify(key, tac, data) for key, tac, data in jobs]


class Clearing:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._keys: dict[str, _CardKey] = {}
        self._accounts = AccountIds()
        self._turn_lock = threading.Lock()  # threads of this process: one at a time
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # --- card keys and TACs -----------------------------------------------------------------------
    def _key(self, card_id: str, point_hex: str, currency: str) -> _CardKey:
        known = self._keys.get(card_id)
        if known is None:
            if len(self._keys) >= KEY_CACHE_MAX:
                self._keys.clear()
            known = self._keys[card_id] = _CardKey(
                crypto.decode_public_key(bytes.fromhex(point_hex)), currency)
        return known

    def _known_keys(self, s: Session, card_ids: set[str]) -> dict[str, _CardKey]:
        """The certified keys and currencies of those of ``card_ids`` that exist."""
        out = {cid: k for cid in card_ids if (k := self._keys.get(cid)) is not None}
        missing = sorted(card_ids - out.keys())
        for cid, point, cur in bulk.select_with(
                s, [CARD_KEY], [(c,) for c in missing],
                "SELECT c.card_id, c.public_key, c.currency FROM cards c "
                "JOIN v ON c.card_id = v.card_id"):
            out[cid] = self._key(cid, point, cur)
        return out

    def _verify_all(self, jobs: list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]]
                    ) -> tuple[Callable[[], list[bool]], bool]:
        """Verify TACs: returns the function that gives the outcomes, one per job, and
        whether they are known already. A large batch is verified on several threads,
        which start at once and run while the caller goes on (its write transaction:
        OpenSSL verifies without the GIL); a small one before this returns."""
        if len(jobs) < PARALLEL_FROM or VERIFY_THREADS < 2:
            done = _verify_each(jobs)
            return (lambda: done), True
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="tac")
            pool = self._pool
        size = -(-len(jobs) // VERIFY_THREADS)
        parts = [pool.submit(_verify_each, jobs[i:i + size]) for i in range(0, len(jobs), size)]
        return (lambda: [ok for part in parts for ok in part.result()]), False

    def verify(self, cards: Mapping[str, Card], raw: bytes) -> SignedEvent:
        """Parse a card record and check its TAC (HostError when it does not verify)."""
        try:
            signed = SignedEvent.parse(raw)
        except DecodeError as exc:
            raise HostError(RECORD_INVALID, f"card record: {exc.message}") from None
        card = cards.get(signed.event.card_id.hex())
        if card is None:
            raise HostError(UNKNOWN_CARD, f"unknown card {signed.event.card_id.hex()}")
        key = self._key(card.card_id, card.public_key, card.currency).key
        if not crypto.verify(key, signed.tac, EVENT_DOMAIN + raw[:EVENT_SIZE]):
            raise HostError(RECORD_INVALID, "the card's signature (TAC) does not verify")
        return signed

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On a SQLite file: wait for this process's turn at the write lock on a lock file
        beside the database (``<file>-clearing.lock``), so that clearing writers in
        several processes follow one another as soon as the lock is free. SQLite's own
        wait for a busy database sleeps between tries (up to 100 ms each), during which
        the lock may sit unused. The write transaction itself is SQLite's, as before."""
        path = None if self.host.db.postgres else self.host.db.engine.url.database
        if not path or path == ":memory:" or fcntl is None:
            yield
            return
        with self._turn_lock, open(f"{path}-clearing.lock", "a+b") as turn:
            fcntl.flock(turn.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield

    # --- taking card events (shared with load confirmations) --------------------------------------
    def lock_cards(self, s: Session, card_ids: set[str]) -> dict[str, Card]:
        stmt = select(Card).where(Card.card_id.in_(sorted(card_ids))).order_by(Card.card_id)
        if self.host.db.postgres:
            stmt = stmt.with_for_update()
        return {c.card_id: c for c in s.scalars(stmt)}

    def _lock_states(self, s: Session, currencies: Mapping[str, str]
                     ) -> tuple[dict[str, CardState], dict[tuple[str, int], Known]]:
        """Lock the cards' rows in card order (PostgreSQL; on SQLite the write transaction
        holds the database), then read their progress with each card's newest event: the
        one a new upload follows in the common case (:func:`card_states`)."""
        if self.host.db.postgres:
            bulk.select_with(s, [CARD_KEY], [(c,) for c in sorted(currencies)], LOCK_CARDS)
        return card_states(s, currencies)

    def take(self, s: Session, cards: Mapping[str, Card],
             items: list[Incoming]) -> tuple[list[Taken], list[str]]:
        """Take verified card events (cards locked by the caller): one outcome per item,
        and the bank instructions to submit once the transaction has committed."""
        s.flush()  # the progress is read with plain SQL: what the session holds goes first
        states, newest = card_states(s, {cid: c.currency for cid, c in cards.items()})
        return self._take(s, states, items, newest=newest)

    def _take(self, s: Session, cards: dict[str, CardState], items: list[Incoming],
              batch: str = "", newest: Mapping[tuple[str, int], Known] | None = None
              ) -> tuple[list[Taken], list[str]]:
        """``newest``: events already read with the cards (see ``_lock_states``)."""
        now = self.host.now()
        s.flush()
        known: dict[tuple[str, int], Known] = dict(newest or {})
        wanted: set[tuple[str, int]] = set()
        for it in items:
            cid, n = it.card_id, it.seqno
            top = cards[cid].max_seqno  # no event of the card is above its max seqno
            if n > top:
                if n == top + 1 and top:  # the common case: the event after the newest
                    wanted.add((cid, top))
                continue  # after a gap: no neighbour taken yet
            wanted.update((cid, m) for m in (n - 1, n, n + 1) if 1 <= m <= top)
        wanted -= known.keys()
        for row in bulk.select_with(s, CARD_EVENT_KEY, sorted(wanted),
                                    EVENTS_AT[bulk.is_postgres(s)]):
            known[(row[0], int(row[1]))] = Known(int(row[2]), int(row[3]), int(row[4]),
                                                 int(row[5]), int(row[6]), row[7])
        outcomes: list[Taken] = []
        new: list[Incoming] = []
        conflicts: list[Incoming] = []
        broken: dict[str, str] = {}
        for it in items:
            key = (it.card_id, it.seqno)
            have = known.get(key)
            if have is not None:
                if have.record == it.record:
                    outcomes.append(Taken.DUPLICATE)
                    continue
                if self._conflict_seen(s, it):
                    outcomes.append(Taken.DUPLICATE)
                    continue
                outcomes.append(Taken.CONFLICT)
                conflicts.append(it)
                broken[it.card_id] = f"two different events with seqno {it.seqno}"
                continue
            known[key] = _known(it.event, it.record)
            new.append(it)
            outcomes.append(Taken.ACCEPTED)
        for it in new:
            e = it.event
            cid, n = it.card_id, it.seqno
            problem = _consistent(e)
            if not problem:
                mine = known[(cid, n)]
                prev = known.get((cid, n - 1))
                if n == 1 and e.balance_before != 0:
                    problem = "first event does not start from zero"
                elif prev is not None:
                    problem = _follows(prev, mine)
                if not problem and (nxt := known.get((cid, n + 1))) is not None:
                    problem = _follows(mine, nxt)
            if problem:
                broken.setdefault(cid, f"seqno {n}: {problem}")

        for it in conflicts:
            s.add(CardEventConflict(card_id=it.card_id, seqno=it.seqno,
                                    terminal_id=it.terminal_id, record=it.record,
                                    detected_at=now))
        booked = self._book(s, cards, new, conflicts, now, batch)
        bulk.insert(s, "card_events", EVENT_COLUMNS,
                    [self._row(it, now, txn) for it, txn in zip(new, booked, strict=True)])
        self._advance(s, cards, new, now)
        for card_id, why in broken.items():
            self._clone(s, self._card(s, card_id), why)
        return outcomes, self._follow_up(s, new)

    @staticmethod
    def _card(s: Session, card_id: str) -> Card:
        card = s.get(Card, card_id)
        assert card is not None  # locked by the caller
        return card

    def _conflict_seen(self, s: Session, it: Incoming) -> bool:
        return s.scalar(select(CardEventConflict.id).where(
            CardEventConflict.card_id == it.card_id, CardEventConflict.seqno == it.seqno,
            CardEventConflict.record == it.record)) is not None

    @staticmethod
    def _row(it: Incoming, now: int, txn: int | None) -> tuple[object, ...]:
        e = it.event
        return (it.card_id, it.seqno, e.kind, e.atc, e.load_counter, e.amount, e.split,
                _alpha(e.currency), e.tx_type, e.balance_before, e.balance_after,
                it.terminal_id, e.terminal_seq, e.time, it.record, now, txn)

    def _book(self, s: Session, cards: Mapping[str, CardState], new: list[Incoming],
              conflicts: list[Incoming], now: int, batch: str) -> list[int | None]:
        """Book the new events and the clones' on the ledger; the transaction of each new
        event (None: it moved no money).

        A batch's debits are one ``clear_debit`` transaction per terminal, currency and
        value day, with one posting per card (what its purse paid) and one to the
        merchant; its reference names the batch (``terminal:batch:day:currency``) and
        each card event names the transaction. Cancels, loads and clones' events are a
        transaction each, referenced by the event (``card:seqno``)."""
        entries: list[Entry] = []
        slot: list[int] = []  # per new event: its entry, or -1
        groups: dict[tuple[str, str, str, int], list[int]] = {}
        for i, it in enumerate(new):
            e = it.event
            if e.kind == EventKind.DEBIT and e.amount:
                key = (it.terminal_id, it.merchant_id, cards[it.card_id].currency,
                       e.time // DAY)
                groups.setdefault(key, []).append(i)
                slot.append(-1)
                continue
            entry = self._entry(cards, it)
            slot.append(-1 if entry is None else len(entries))
            if entry is not None:
                entries.append(entry)
        for (tid, mid, cur, _), members in groups.items():
            paid: dict[str, int] = {}
            total = 0
            first = new[members[0]]
            when = first.event.time
            for i in members:
                it = new[i]
                amount = it.event.amount
                paid[it.card_id] = paid.get(it.card_id, 0) + amount
                total += amount
                when = min(when, it.event.time)
                slot[i] = len(entries)
            legs = [(Acct(Kind.PURSE_FLOAT, cid, cur), amount)
                    for cid, amount in sorted(paid.items())]
            legs.append((Acct(Kind.MERCHANT_PAYABLE, mid, cur), -total))
            day = day_of(when).isoformat()
            ref = f"{tid}:{batch}:{day}:{cur}" if batch else f"{first.card_id}:{first.seqno}"
            entries.append(Entry(
                "clear_debit", ref, legs, value_time=when, merchant_id=mid,
                card_id=first.card_id if len(paid) == 1 else None,
                memo=f"{len(members)} debits" + (f" of batch {batch}" if batch else "")))
        entries += [entry for it in conflicts
                    if (entry := self._clone_entry(cards, it)) is not None]
        ids = Ledger(s, now, self._accounts).post_many(entries)
        return [ids[n] if n >= 0 else None for n in slot]

    @staticmethod
    def _entry(cards: Mapping[str, CardState], it: Incoming) -> Entry | None:
        e, cid = it.event, it.card_id
        cur = cards[cid].currency
        purse = Acct(Kind.PURSE_FLOAT, cid, cur)
        ref = f"{cid}:{it.seqno}"
        if e.kind == EventKind.LOAD:
            return Entry("clear_load", ref, [
                (Acct.system(Kind.LOAD_SUSPENSE, cur), e.amount),
                (purse, -(e.amount - e.split)),
                (Acct.system(Kind.CREDIT_RECEIVABLE, cur), -e.split),
            ], value_time=e.time, card_id=cid, memo=f"load {e.terminal_challenge.hex()}")
        if not e.amount:
            return None
        payable = Acct(Kind.MERCHANT_PAYABLE, it.merchant_id, cur)
        sign = 1 if e.kind == EventKind.DEBIT else -1
        return Entry("clear_debit" if sign > 0 else "clear_cancel", ref,
                     [(purse, sign * e.amount), (payable, -sign * e.amount)],
                     value_time=e.time, merchant_id=it.merchant_id, card_id=cid)

    @staticmethod
    def _clone_entry(cards: Mapping[str, CardState], it: Incoming) -> Entry | None:
        e, cid = it.event, it.card_id
        cur = cards[cid].currency
        if not e.amount:
            return None
        ref = f"{cid}:{it.seqno}:{crypto.sha256(bytes.fromhex(it.record))[:8].hex()}"
        losses = Acct.system(Kind.LOSSES, cur)
        if e.kind == EventKind.LOAD:
            return Entry("clone_load", ref, [(Acct.system(Kind.LOAD_SUSPENSE, cur), e.amount),
                                             (losses, -e.amount)], value_time=e.time, card_id=cid)
        payable = Acct(Kind.MERCHANT_PAYABLE, it.merchant_id, cur)
        sign = 1 if e.kind == EventKind.DEBIT else -1
        return Entry("clone_debit" if sign > 0 else "clone_cancel", ref,
                     [(losses, sign * e.amount), (payable, -sign * e.amount)],
                     value_time=e.time, merchant_id=it.merchant_id, card_id=cid)

    def _advance(self, s: Session, cards: dict[str, CardState], new: list[Incoming],
                 now: int) -> None:
        """Move each card's contiguous and highest seqno; open, narrow or close its gap (a
        gap is as old as its oldest missing event: one filled whole while a new one opens
        above it starts again)."""
        by_card: dict[str, list[int]] = {}
        for it in new:
            seqnos = by_card.get(it.card_id)
            if seqnos is None:
                by_card[it.card_id] = [it.seqno]
            else:
                seqnos.append(it.seqno)
        moved: dict[str, tuple[int, int]] = {}  # per card: contiguous and highest seqno
        walk: list[tuple[str, int]] = []
        for cid, seqnos in by_card.items():
            card = cards[cid]
            c = card.contiguous_seqno
            if len(seqnos) == 1:  # the common case: one event of the card in the batch
                top = max(card.max_seqno, seqnos[0])
                if seqnos[0] == c + 1:
                    c += 1
            else:
                top = max(card.max_seqno, *seqnos)
                got = set(seqnos)
                while c + 1 in got:
                    c += 1
            moved[cid] = (c, top)
            if card.contiguous_seqno < c < top:
                walk.append((cid, c))  # the filled gap may join events taken earlier
        if walk:
            later: dict[str, list[int]] = defaultdict(list)
            for cid, n in bulk.select_with(s, CARD_EVENT_KEY, walk,
                                           EVENTS_AFTER[bulk.is_postgres(s)]):
                later[cid].append(int(n))
            for cid, n in walk:
                c = n
                for m in later.get(cid, ()):
                    if m != c + 1:
                        break
                    c = m
                moved[cid] = (c, moved[cid][1])
        opened: list[tuple[str, int, int]] = []
        narrowed: list[tuple[str, int, int]] = []
        closed: list[str] = []
        for cid, (c, top) in moved.items():
            card = cards[cid]
            if top > c:
                if card.gap_since is None:
                    card.gap_since = now
                    opened.append((cid, c, now))
                elif c != card.contiguous_seqno:
                    if c >= card.max_seqno:  # the old gap is filled, a new one opened above
                        card.gap_since = now
                    narrowed.append((cid, c, card.gap_since))
            elif card.gap_since is not None:
                card.gap_since = None
                closed.append(cid)
            card.max_seqno = top
            card.contiguous_seqno = c
        # The common case writes nothing here: a card's highest seqno is its newest event's.
        if opened:
            bulk.insert(s, "card_gaps", GAP_COLUMNS, opened)
        if narrowed:
            bulk.update(s, "card_gaps", CARD_KEY, [("contiguous_seqno", "bigint", "{v}"),
                                                   ("since", "bigint", "{v}")], narrowed)
        if closed:
            s.execute(delete(CardGap).where(CardGap.card_id.in_(sorted(closed))))

    def _clone(self, s: Session, card: Card, why: str) -> None:
        card.status = "cloned"
        newly = self.host.lists.blacklist(s, card, "cloned")
        s.add(Alert(kind="card_cloned", card_id=card.card_id, detail=why[:500],
                    created=self.host.now()))
        after_commit(s, f"card_cloned:{card.card_id}", lambda: log_event(  # not if rolled back
            "card_cloned", card=card.card_id, why=why, newly_blacklisted=newly))

    def _follow_up(self, s: Session, new: list[Incoming]) -> list[str]:
        """Debts of split debits and cancels; loads confirmed and repaying debts."""
        pending: list[str] = []
        for it in new:
            e = it.event
            if e.kind == EventKind.DEBIT and e.split:
                pending += self.host.agent.open_from_clearing(
                    s, self._card(s, it.card_id), e.card_event(), it.terminal_id, it.merchant_id)
            elif e.kind == EventKind.CANCEL and e.split:
                self.host.agent.cancel(s, self._card(s, it.card_id), e.card_event(),
                                       it.terminal_id, it.merchant_id)
            elif e.kind == EventKind.LOAD:
                self.host.loads.seen_on_card(s, it.card_id, e.card_event())
                if e.split:
                    self.host.agent.repaid_by_load(s, self._card(s, it.card_id), e.split)
        return pending

    # --- batches ----------------------------------------------------------------------------------
    def upload(self, terminal_id: str, batch: BatchUpload) -> BatchAck:
        if batch.terminal_id != terminal_id:
            raise HostError(TERMINAL_MISMATCH, "the batch names another terminal")
        if len(batch.entries) > self.host.settings.max_batch_entries:
            raise HostError(BATCH_TOO_LARGE,
                            f"at most {self.host.settings.max_batch_entries} entries per batch")
        digest, signed_bytes = batch_digest(batch)
        checked = self._check_batch(terminal_id, batch, digest, signed_bytes)
        if isinstance(checked, BatchAck):
            return checked  # this batch was taken before: the same answer again
        if checked.ready:  # every TAC's outcome known: no attempt that a bad one undoes
            final = checked.final()
            ack, pending = retrying(lambda: self._upload(terminal_id, batch, digest, final))
        else:
            try:
                ack, pending = retrying(lambda: self._upload(
                    terminal_id, batch, digest, checked.assumed, checked.all_verified))
            except _TacFailed:  # rolled back: again, with those entries rejected
                final = checked.final()
                ack, pending = retrying(lambda: self._upload(terminal_id, batch, digest,
                                                             final))
        for instruction in pending:
            self.host.agent.process_instruction(instruction)
        return ack

    def _check_batch(self, terminal_id: str, batch: BatchUpload, digest: str,
                     signed_bytes: bytes) -> BatchAck | _Checks:
        """Before any write transaction: the batch's earlier answer if it was taken,
        else its SAM signature and every entry's card record checked (one per entry),
        the TACs still being verified (see :class:`_Checks`)."""
        parsed: list[tuple[EventFields, bytes, bytes, str] | HostError | None] = []
        card_ids: set[str] = set()
        for entry in batch.entries:
            if entry.kind not in RECORD_KINDS:
                parsed.append(None)
                continue
            card_ids.add(entry.card_id)
            if not entry.record:
                parsed.append(None)
                continue
            one = parse_record(entry.record)
            if isinstance(one, HostError):
                parsed.append(one)
            else:
                cid = one[0].card_id.hex()
                card_ids.add(cid)
                parsed.append((*one, cid))
        with self.host.db.reader() as s:
            prior = s.execute(select(BatchRow.payload_hash, BatchRow.ack).where(
                BatchRow.terminal_id == terminal_id, BatchRow.batch_id == batch.batch_id)).first()
            if prior is not None:
                if prior.payload_hash != digest:
                    raise HostError(IDEMPOTENCY_CONFLICT, "batch id reused for another batch")
                if prior.ack:
                    return BatchAck.model_validate_json(prior.ack)
            public = self.host.tms.signing_key(s, terminal_id)
            keys = self._known_keys(s, card_ids)
        if not verify_signature(public, hex_bytes(batch.signature, "signature"),
                                signed_bytes, purpose=PURPOSE_BATCH):
            raise HostError(BATCH_SIGNATURE, "the SAM's batch signature does not verify")
        checks: list[Check] = []
        jobs: list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]] = []
        waiting: list[int] = []
        for i, (entry, record) in enumerate(zip(batch.entries, parsed, strict=True)):
            check: Check = None
            if entry.kind in RECORD_KINDS:
                if entry.card_id not in keys:
                    check = HostError(UNKNOWN_CARD, f"unknown card {entry.card_id}")
                elif not entry.record:
                    check = HostError(RECORD_MISMATCH,
                                      f"a {entry.kind} entry needs the card's record")
                elif isinstance(record, HostError):
                    check = record
                elif record is not None:
                    _, tac, raw, cid = record
                    key = keys.get(cid)
                    if key is None:
                        check = HostError(UNKNOWN_CARD, f"unknown card {cid}")
                    else:
                        jobs.append((key.key, tac, EVENT_DOMAIN + raw[:EVENT_SIZE]))
                        waiting.append(i)
            checks.append(check)
        outcomes, ready = self._verify_all(jobs)  # on threads, while the entries are matched
        terminals = {False: bytes.fromhex(terminal_id), True: bytes.fromhex(ZERO_TERMINAL)}
        entries = batch.entries
        for i in waiting:
            verified = parsed[i]
            assert isinstance(verified, tuple)
            cid = verified[3]
            checks[i] = self._match(verified[0], cid, keys[cid].currency, entries[i], terminals)
        return _Checks(checks, waiting, outcomes, ready=ready)

    @staticmethod
    def _match(e: EventFields, card_id: str, currency: str, entry: JournalEntry,
               terminals: Mapping[bool, bytes]) -> Check:
        """A record (of card ``card_id``, whose currency is ``currency``) against its journal
        entry; ``terminals``: the
        terminal a record names, by "is a load" (a load names none)."""
        kind = RECORD_KINDS[entry.kind]
        if (e.kind != kind or card_id != entry.card_id or e.amount != entry.amount
                or e.split != entry.split or _alpha(e.currency) != entry.currency
                or e.terminal_id != terminals[kind == EventKind.LOAD]):
            return HostError(RECORD_MISMATCH, "the card's record does not match the entry")
        return _Checked(e, entry.record, card_id, currency)

    def _upload(self, terminal_id: str, batch: BatchUpload, digest: str, checks: list[Check],
                verified: Callable[[], bool] = lambda: True) -> tuple[BatchAck, list[str]]:
        """Take the batch in one write transaction. ``verified``: asked before the commit;
        False (a TAC that the checks assumed good did not verify) rolls everything back
        (``_TacFailed``)."""
        now = self.host.now()
        with self._writer_turn(), self.host.uow() as uow:
            s = uow.session
            prior = s.scalar(select(BatchRow).where(BatchRow.terminal_id == terminal_id,
                                                    BatchRow.batch_id == batch.batch_id))
            if prior is not None:
                if prior.payload_hash != digest:
                    raise HostError(IDEMPOTENCY_CONFLICT, "batch id reused for another batch")
                return BatchAck.model_validate_json(prior.ack), []
            row = BatchRow(terminal_id=terminal_id, batch_id=batch.batch_id, payload_hash=digest,
                           received=now, entries=len(batch.entries), ack="")
            s.add(row)
            s.flush()  # a concurrent upload of the same batch waits here, then fails
            terminal = s.scalar(uow.lock(select(Terminal).where(
                Terminal.terminal_id == terminal_id)))
            assert terminal is not None
            ack, pending = self._entries(s, terminal, batch, checks)
            row.ack = ack.model_dump_json()
            row.mismatch = ack.mismatch
            if ack.mismatch:
                s.add(Alert(kind="totals_mismatch", terminal_id=terminal_id,
                            detail=f"batch {batch.batch_id}: terminal {batch.totals} "
                                   f"host {ack.host_totals}"[:500], created=now))
            if not verified():
                raise _TacFailed
            uow.commit()
        log_event("batch_cleared", terminal=terminal_id, batch=batch.batch_id,
                  accepted=len(ack.accepted), duplicates=len(ack.duplicates),
                  rejected=len(ack.rejected), mismatch=ack.mismatch)
        return ack, pending

    def _entries(self, s: Session, terminal: Terminal, batch: BatchUpload,
                 checks: list[Check]) -> tuple[BatchAck, list[str]]:
        tid = terminal.terminal_id
        merchant = terminal.merchant_id
        seen = self._journal_seen(s, tid, [e.seq for e in batch.entries])
        duplicates: list[int] = []
        rejected: list[Rejected] = []
        taken: list[JournalEntry] = []
        events: list[Incoming] = []
        currencies: dict[str, str] = {}  # the events' cards
        in_batch: set[int] = set()
        for entry, check in zip(batch.entries, checks, strict=True):
            if entry.seq in in_batch:
                rejected.append(Rejected(seq=entry.seq, code=CONFLICT.code,
                                         reason="journal number twice in one batch"))
                continue
            in_batch.add(entry.seq)
            if entry.seq in seen:
                if seen[entry.seq] == entry.entry_hash:
                    duplicates.append(entry.seq)
                else:
                    rejected.append(Rejected(seq=entry.seq, code=CONFLICT.code,
                                             reason="journal number used for another entry"))
                continue
            if isinstance(check, HostError):
                rejected.append(Rejected(seq=entry.seq, code=check.code, reason=check.message))
                if check.what is RECORD_INVALID:
                    s.add(Alert(kind="record_invalid", card_id=entry.card_id, terminal_id=tid,
                                detail=f"journal {entry.seq}: {check.message}"[:500],
                                created=self.host.now()))
                continue
            taken.append(entry)
            if check is not None:
                events.append(Incoming(check.event, tid, merchant, check.record,
                                       check.card_id))
                currencies[check.card_id] = check.currency
        cards, newest = self._lock_states(s, currencies)
        _, pending = self._take(s, cards, events, batch.batch_id, newest)
        bulk.insert(s, "journal_records", JOURNAL_COLUMNS, [
            (tid, e.seq, e.kind, e.card_id, e.amount, e.split, e.currency, e.time,
             e.reference[:160], e.entry_hash, batch.batch_id, "accepted", 0) for e in taken])
        self._journal_progress(s, terminal, taken)
        sums: dict[str, list[int]] = {}  # per kind: count, amount
        counted = {e.seq for e in taken} | set(duplicates)
        for e in batch.entries:
            if e.seq in counted:
                counted.discard(e.seq)  # an entry counts once, even if sent twice
                t = sums.get(e.kind)
                if t is None:
                    t = sums[e.kind] = [0, 0]
                t[0] += 1
                t[1] += e.amount
        host_totals = {k: Totals(count=n, amount=a) for k, (n, a) in sums.items()}
        theirs = {k: v for k, v in batch.totals.items() if v.count or v.amount}
        return BatchAck(batch_id=batch.batch_id, accepted=sorted(e.seq for e in taken),
                        duplicates=sorted(duplicates), rejected=rejected,
                        host_totals=host_totals, mismatch=theirs != host_totals), pending

    @staticmethod
    def _journal_seen(s: Session, tid: str, seqs: list[int]) -> dict[int, str]:
        """The entry hashes of those of the terminal's journal numbers already taken: one
        range of its journal when the numbers are close together (a day's batch), else
        number by number."""
        if not seqs:
            return {}
        low, high = min(seqs), max(seqs)
        if high - low < 4 * len(seqs):
            wanted = set(seqs)
            rows = s.execute(select(JournalRecord.seq, JournalRecord.entry_hash).where(
                JournalRecord.terminal_id == tid, JournalRecord.seq.between(low, high))).all()
            return {int(seq): h for seq, h in rows if seq in wanted}
        return {int(seq): h for seq, h in bulk.select_with(
            s, [("terminal_id", "text"), ("seq", "bigint")], [(tid, n) for n in seqs],
            "SELECT j.seq, j.entry_hash FROM journal_records j "
            "JOIN v ON j.terminal_id = v.terminal_id AND j.seq = v.seq")}

    def _journal_progress(self, s: Session, terminal: Terminal, taken: list[JournalEntry]) -> None:
        """Move the terminal's journal high-water marks; alert on a broken hash chain."""
        terminal.last_batch_at = terminal.last_contact = self.host.now()
        if not taken:
            return
        hashes = {e.seq: e.entry_hash for e in taken}
        before = {e.seq - 1 for e in taken} - hashes.keys()
        if before:
            hashes.update(s.execute(select(JournalRecord.seq, JournalRecord.entry_hash).where(
                JournalRecord.terminal_id == terminal.terminal_id,
                JournalRecord.seq.in_(sorted(before)))).all())
        broken = [e.seq for e in taken if e.seq - 1 in hashes and e.prev_hash != hashes[e.seq - 1]]
        if broken:
            s.add(Alert(kind="journal_chain", terminal_id=terminal.terminal_id,
                        detail=f"journal entries {broken[:20]} do not follow their predecessors",
                        created=self.host.now()))
        seqs = {e.seq for e in taken}
        terminal.journal_max = max(terminal.journal_max, *seqs)
        c = terminal.journal_contiguous
        while c + 1 in seqs:
            c += 1
        if c < terminal.journal_max:
            later = s.scalars(select(JournalRecord.seq).where(
                JournalRecord.terminal_id == terminal.terminal_id, JournalRecord.seq > c)
                .order_by(JournalRecord.seq)).all()
            for n in later:
                if n != c + 1:
                    break
                c = n
        terminal.journal_contiguous = c
