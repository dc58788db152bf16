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
payable; a cancel moves it back; a load moves the authorised amount out of
load suspense into the purse float (and into the credit receivable for the
part that repaid failed debts). A split debit also opens its debt (see
:mod:`tallypurse.host.agent`). Each batch is processed with a handful of
statements, not one round trip per event.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from sqlalchemy import CursorResult, insert, select, tuple_, update
from sqlalchemy.orm import Session

from tallypurse.core import crypto
from tallypurse.core.errors import DecodeError
from tallypurse.core.hostapi import BatchAck, BatchUpload, JournalEntry, Rejected, Totals
from tallypurse.core.httpsig import batch_signed_bytes
from tallypurse.core.messages import CardEvent, SignedEvent
from tallypurse.core.protocol import EventKind
from tallypurse.core.samproto import PURPOSE_BATCH, verify_signature
from tallypurse.host.db.models import (
    Alert,
    BatchRow,
    Card,
    CardEventConflict,
    CardEventRow,
    JournalRecord,
    LoadRow,
    Terminal,
    table,
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
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger

from .common import alpha_currency, hex_bytes, log_event, payload_hash, retrying

if TYPE_CHECKING:
    from tallypurse.host.service import Host

RECORD_KINDS = {"debit": EventKind.DEBIT, "cancel": EventKind.CANCEL, "load": EventKind.LOAD}
ZERO_TERMINAL = "00" * 8


class Taken(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # a clone's event: paid from losses, card blacklisted


@dataclass(frozen=True, slots=True)
class Incoming:
    """A verified card event to take, with who uploaded it."""

    signed: SignedEvent
    terminal_id: str
    merchant_id: str

    @property
    def event(self) -> CardEvent:
        return self.signed.event

    @property
    def card_id(self) -> str:
        return self.signed.event.card_id.hex()

    @property
    def seqno(self) -> int:
        return self.signed.event.atc + self.signed.event.load_counter

    @property
    def record(self) -> str:
        return self.signed.to_bytes().hex()


class Known(NamedTuple):
    kind: int
    atc: int
    load_counter: int
    balance_before: int
    balance_after: int
    record: str


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


def _consistent(e: CardEvent) -> str:
    if e.kind == EventKind.DEBIT:
        ok = e.balance_after == e.balance_before - e.amount
    elif e.kind == EventKind.CANCEL:
        ok = e.balance_after == e.balance_before + e.amount
    else:
        ok = e.balance_after == e.balance_before + e.amount - e.split
    return "" if ok else "event balance does not add up"


def _known(e: CardEvent, record: str) -> Known:
    return Known(e.kind, e.atc, e.load_counter, e.balance_before, e.balance_after, record)


class Clearing:
    def __init__(self, host: Host) -> None:
        self.host = host

    # --- taking card events (shared with load confirmations) --------------------------------------
    def verify(self, cards: dict[str, Card], raw: bytes) -> SignedEvent:
        """Parse a card record and check its TAC (HostError when it does not verify)."""
        try:
            signed = SignedEvent.parse(raw)
        except DecodeError as exc:
            raise HostError(RECORD_INVALID, f"card record: {exc.message}") from None
        card = cards.get(signed.event.card_id.hex())
        if card is None:
            raise HostError(UNKNOWN_CARD, f"unknown card {signed.event.card_id.hex()}")
        if not signed.verify(bytes.fromhex(card.public_key)):
            raise HostError(RECORD_INVALID, "the card's signature (TAC) does not verify")
        return signed

    def lock_cards(self, s: Session, card_ids: set[str]) -> dict[str, Card]:
        stmt = select(Card).where(Card.card_id.in_(sorted(card_ids))).order_by(Card.card_id)
        if self.host.db.postgres:
            stmt = stmt.with_for_update()
        return {c.card_id: c for c in s.scalars(stmt)}

    def take(self, s: Session, cards: dict[str, Card],
             items: list[Incoming]) -> tuple[list[Taken], list[str]]:
        """Take verified card events (cards locked by the caller): one outcome per item,
        and the bank instructions to submit once the transaction has committed."""
        now = self.host.now()
        wanted = {(it.card_id, it.seqno + d) for it in items for d in (-1, 0, 1)}
        known: dict[tuple[str, int], Known] = {}
        if wanted:
            for row in s.execute(
                select(CardEventRow.card_id, CardEventRow.seqno, CardEventRow.kind,
                       CardEventRow.atc, CardEventRow.load_counter, CardEventRow.balance_before,
                       CardEventRow.balance_after, CardEventRow.record)
                .where(tuple_(CardEventRow.card_id, CardEventRow.seqno).in_(sorted(wanted)))
            ):
                known[(row.card_id, row.seqno)] = Known(row.kind, row.atc, row.load_counter,
                                                        row.balance_before, row.balance_after,
                                                        row.record)
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
            problem = _consistent(e)
            prev, nxt = known.get((it.card_id, it.seqno - 1)), known.get((it.card_id, it.seqno + 1))
            mine = _known(e, it.record)
            if not problem and it.seqno == 1 and e.balance_before != 0:
                problem = "first event does not start from zero"
            if not problem and prev is not None:
                problem = _follows(prev, mine)
            if not problem and nxt is not None:
                problem = _follows(mine, nxt)
            if problem:
                broken.setdefault(it.card_id, f"seqno {it.seqno}: {problem}")

        if new:
            s.execute(insert(table(CardEventRow)), [self._row(it, now) for it in new])
        for it in conflicts:
            s.add(CardEventConflict(card_id=it.card_id, seqno=it.seqno,
                                    terminal_id=it.terminal_id, record=it.record,
                                    detected_at=now))
        entries = [self._entry(cards, it) for it in new]
        entries += [self._clone_entry(cards, it) for it in conflicts]
        Ledger(s, now).post_many([entry for entry in entries if entry is not None])
        self._advance(s, cards, new, now)
        for card_id, why in broken.items():
            self._clone(s, cards[card_id], why)
        return outcomes, self._follow_up(s, cards, new)

    def _conflict_seen(self, s: Session, it: Incoming) -> bool:
        return s.scalar(select(CardEventConflict.id).where(
            CardEventConflict.card_id == it.card_id, CardEventConflict.seqno == it.seqno,
            CardEventConflict.record == it.record)) is not None

    @staticmethod
    def _row(it: Incoming, now: int) -> dict[str, object]:
        e = it.event
        return {
            "card_id": it.card_id, "seqno": it.seqno, "kind": e.kind, "atc": e.atc,
            "load_counter": e.load_counter, "amount": e.amount, "split": e.split,
            "currency": alpha_currency(e.currency), "tx_type": e.tx_type,
            "balance_before": e.balance_before, "balance_after": e.balance_after,
            "terminal_id": it.terminal_id, "terminal_seq": e.terminal_seq, "time": e.time,
            "record": it.record, "cleared_at": now,
        }

    @staticmethod
    def _entry(cards: dict[str, Card], it: Incoming) -> Entry | None:
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
    def _clone_entry(cards: dict[str, Card], it: Incoming) -> Entry | None:
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

    def _advance(self, s: Session, cards: dict[str, Card], new: list[Incoming], now: int) -> None:
        """Move each card's contiguous and highest seqno; open or close its gap."""
        by_card: dict[str, set[int]] = defaultdict(set)
        for it in new:
            by_card[it.card_id].add(it.seqno)
        for cid, seqnos in by_card.items():
            card = cards[cid]
            card.max_seqno = max(card.max_seqno, *seqnos)
            c = card.contiguous_seqno
            while c + 1 in seqnos:
                c += 1
            if c < card.max_seqno and c > card.contiguous_seqno:
                # The filled gap may join events taken earlier: read on from the database.
                later = s.scalars(select(CardEventRow.seqno).where(
                    CardEventRow.card_id == cid, CardEventRow.seqno > c)
                    .order_by(CardEventRow.seqno)).all()
                for n in later:
                    if n != c + 1:
                        break
                    c = n
            card.contiguous_seqno = c
            if card.max_seqno > c:
                card.gap_since = card.gap_since or now
            else:
                card.gap_since = None

    def _clone(self, s: Session, card: Card, why: str) -> None:
        card.status = "cloned"
        newly = self.host.lists.blacklist(s, card, "cloned")
        s.add(Alert(kind="card_cloned", card_id=card.card_id, detail=why[:500],
                    created=self.host.now()))
        log_event("card_cloned", card=card.card_id, why=why, newly_blacklisted=newly)

    def _follow_up(self, s: Session, cards: dict[str, Card], new: list[Incoming]) -> list[str]:
        """Debts of split debits and cancels; loads confirmed and repaying debts."""
        pending: list[str] = []
        for it in new:
            e, card = it.event, cards[it.card_id]
            if e.kind == EventKind.DEBIT and e.split:
                pending += self.host.agent.open_from_clearing(s, card, e, it.terminal_id,
                                                                    it.merchant_id)
            elif e.kind == EventKind.CANCEL and e.split:
                self.host.agent.cancel(s, card, e, it.terminal_id, it.merchant_id)
            elif e.kind == EventKind.LOAD:
                done = s.execute(
                    update(LoadRow).where(LoadRow.card_id == it.card_id,
                                          LoadRow.auth_id == e.terminal_challenge.hex(),
                                          LoadRow.status == "authorised")
                    .values(status="confirmed", confirmed_at=self.host.now()))
                known = cast(CursorResult[Any], done).rowcount or s.scalar(
                    select(LoadRow.id).where(LoadRow.auth_id == e.terminal_challenge.hex()))
                if not known:
                    s.add(Alert(kind="load_unknown", card_id=it.card_id,
                                detail=f"load {e.terminal_challenge.hex()} was not authorised "
                                       "by this host", created=self.host.now()))
                if e.split:
                    self.host.agent.repaid_by_load(s, card, e.split)
        return pending

    # --- batches ----------------------------------------------------------------------------------
    def upload(self, terminal_id: str, batch: BatchUpload) -> BatchAck:
        if batch.terminal_id != terminal_id:
            raise HostError(TERMINAL_MISMATCH, "the batch names another terminal")
        if len(batch.entries) > self.host.settings.max_batch_entries:
            raise HostError(BATCH_TOO_LARGE,
                            f"at most {self.host.settings.max_batch_entries} entries per batch")
        digest = payload_hash(batch)
        ack, pending = retrying(lambda: self._upload(terminal_id, batch, digest))
        for instruction in pending:
            self.host.agent.process_instruction(instruction)
        return ack

    def _upload(self, terminal_id: str, batch: BatchUpload,
                digest: str) -> tuple[BatchAck, list[str]]:
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            prior = s.scalar(select(BatchRow).where(BatchRow.terminal_id == terminal_id,
                                                    BatchRow.batch_id == batch.batch_id))
            if prior is not None:
                if prior.payload_hash != digest:
                    raise HostError(IDEMPOTENCY_CONFLICT, "batch id reused for another batch")
                return BatchAck.model_validate_json(prior.ack), []
            public = self.host.tms.signing_key(s, terminal_id)
            if not verify_signature(public, hex_bytes(batch.signature, "signature"),
                                    batch_signed_bytes(batch), purpose=PURPOSE_BATCH):
                raise HostError(BATCH_SIGNATURE, "the SAM's batch signature does not verify")
            row = BatchRow(terminal_id=terminal_id, batch_id=batch.batch_id, payload_hash=digest,
                           received=now, entries=len(batch.entries), ack="")
            s.add(row)
            s.flush()  # a concurrent upload of the same batch waits here, then fails
            terminal = s.scalar(uow.lock(select(Terminal).where(
                Terminal.terminal_id == terminal_id)))
            assert terminal is not None
            ack, pending = self._entries(s, terminal, batch)
            row.ack = ack.model_dump_json()
            row.mismatch = ack.mismatch
            if ack.mismatch:
                s.add(Alert(kind="totals_mismatch", terminal_id=terminal_id,
                            detail=f"batch {batch.batch_id}: terminal {batch.totals} "
                                   f"host {ack.host_totals}"[:500], created=now))
            uow.commit()
        log_event("batch_cleared", terminal=terminal_id, batch=batch.batch_id,
                  accepted=len(ack.accepted), duplicates=len(ack.duplicates),
                  rejected=len(ack.rejected), mismatch=ack.mismatch)
        return ack, pending

    def _entries(self, s: Session, terminal: Terminal,
                 batch: BatchUpload) -> tuple[BatchAck, list[str]]:
        tid = terminal.terminal_id
        seqs = [e.seq for e in batch.entries]
        seen = dict(s.execute(select(JournalRecord.seq, JournalRecord.entry_hash).where(
            JournalRecord.terminal_id == tid, JournalRecord.seq.in_(seqs))).all())
        card_ids = {e.card_id for e in batch.entries}
        for e in batch.entries:
            if e.record:
                try:
                    card_ids.add(SignedEvent.parse(bytes.fromhex(e.record)).event.card_id.hex())
                except (DecodeError, ValueError):
                    pass
        cards = self.lock_cards(s, card_ids)
        duplicates: list[int] = []
        rejected: list[Rejected] = []
        taken: list[JournalEntry] = []
        events: list[tuple[JournalEntry, Incoming]] = []
        in_batch: set[int] = set()
        for entry in batch.entries:
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
            try:
                incoming = self._check_entry(cards, terminal, entry)
            except HostError as exc:
                rejected.append(Rejected(seq=entry.seq, code=exc.code, reason=exc.message))
                if exc.what is RECORD_INVALID:
                    s.add(Alert(kind="record_invalid", card_id=entry.card_id, terminal_id=tid,
                                detail=f"journal {entry.seq}: {exc.message}"[:500],
                                created=self.host.now()))
                continue
            taken.append(entry)
            if incoming is not None:
                events.append((entry, incoming))
        _, pending = self.take(s, cards, [inc for _, inc in events])
        accepted = [e.seq for e in taken]
        if taken:
            s.execute(insert(table(JournalRecord)), [{
                "terminal_id": tid, "seq": e.seq, "kind": e.kind, "card_id": e.card_id,
                "amount": e.amount, "split": e.split, "currency": e.currency, "time": e.time,
                "reference": e.reference[:160], "entry_hash": e.entry_hash,
                "batch_id": batch.batch_id, "status": "accepted", "code": 0} for e in taken])
        self._journal_progress(s, terminal, taken)
        host_totals: dict[str, Totals] = {}
        counted = [e for e in batch.entries if e.seq in set(accepted) | set(duplicates)]
        for e in counted:
            t = host_totals.get(e.kind, Totals(count=0, amount=0))
            host_totals[e.kind] = Totals(count=t.count + 1, amount=t.amount + e.amount)
        theirs = {k: v for k, v in batch.totals.items() if v.count or v.amount}
        return BatchAck(batch_id=batch.batch_id, accepted=sorted(accepted),
                        duplicates=sorted(duplicates), rejected=rejected,
                        host_totals=host_totals, mismatch=theirs != host_totals), pending

    def _check_entry(self, cards: dict[str, Card], terminal: Terminal,
                     entry: JournalEntry) -> Incoming | None:
        kind = RECORD_KINDS.get(entry.kind)
        if entry.card_id not in cards and kind is not None:
            raise HostError(UNKNOWN_CARD, f"unknown card {entry.card_id}")
        if kind is None:
            return None  # online, reversal, write-back: booked by their own requests
        if not entry.record:
            raise HostError(RECORD_MISMATCH, f"a {entry.kind} entry needs the card's record")
        signed = self.verify(cards, hex_bytes(entry.record, "record"))
        e = signed.event
        expected_terminal = ZERO_TERMINAL if kind == EventKind.LOAD else terminal.terminal_id
        if (e.kind != kind or e.card_id.hex() != entry.card_id or e.amount != entry.amount
                or e.split != entry.split or alpha_currency(e.currency) != entry.currency
                or e.terminal_id.hex() != expected_terminal):
            raise HostError(RECORD_MISMATCH, "the card's record does not match the entry")
        return Incoming(signed, terminal.terminal_id, terminal.merchant_id)

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
