"""Write-backs: what the host tells a card through whichever terminal sees it next.

Each action is sealed under the card's APP key (:func:`core.messages.seal_writeback`)
with the card's next write-back sequence number, published on the action
list, and withdrawn (an ``op: remove`` entry) once a terminal reports the
card's MACed receipt. A card refuses a sequence number at or below the last
one it applied, so when a receipt for number n arrives, every action of that
card still open below n can no longer be applied: it is withdrawn and sealed
again with a fresh number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from tallypurse.core import crypto
from tallypurse.core.errors import DecodeError
from tallypurse.core.hostapi import WriteBackReport
from tallypurse.core.messages import WriteBackHeader, WriteBackReceipt, receipt_mac, seal_writeback
from tallypurse.core.protocol import WriteBackAction as Action
from tallypurse.host.db import bulk
from tallypurse.host.db.bulk import plain
from tallypurse.host.db.models import Card
from tallypurse.host.db.models import WriteBackAction as ActionRow
from tallypurse.host.errors import NOT_FOUND, RECORD_INVALID, RECORD_MISMATCH, HostError
from tallypurse.host.lists import ACTIONS, ENTRY_COLUMNS
from tallypurse.host.tsm.keys import app_key

from .common import hex_bytes, log_event, log_on_commit

if TYPE_CHECKING:
    from tallypurse.host.service import Host

KINDS: dict[str, Action] = {
    "settle_debt": Action.SETTLE_DEBT,
    "fail_debt": Action.FAIL_DEBT,
    "credit_record": Action.CREDIT_RECORD,
    "block": Action.BLOCK,
    "unblock": Action.UNBLOCK,
}


NEXT_SEQ = text("UPDATE cards SET writeback_seq = writeback_seq + 1 WHERE card_id = :card_id "
                "RETURNING writeback_seq")
NEXT_SEQ_BY = ("UPDATE cards SET writeback_seq = writeback_seq + :n WHERE card_id = :card_id "
               "RETURNING writeback_seq")
LOCK_CARDS = ("SELECT card_id FROM cards WHERE card_id = ANY(CAST(:ids AS text[])) "
              "ORDER BY card_id "
              "FOR NO KEY UPDATE")  # as the UPDATE below would: debts hold key-share locks
NEXT_SEQS = ("UPDATE cards SET writeback_seq = cards.writeback_seq + v.n "
             "FROM unnest(CAST(:ids AS text[]), CAST(:ns AS bigint[])) AS v(card_id, n) "
             "WHERE cards.card_id = v.card_id RETURNING cards.card_id, cards.writeback_seq")
ACTION_COLUMNS: list[bulk.Column] = [
    ("action_id", "text"), ("card_id", "text"), ("kind", "text"), ("seq", "bigint"),
    ("payload", "text"), ("sealed", "text"), ("status", "text"), ("debt_id", "text"),
    ("created", "bigint")]
INSERT_ACTION = (
    "INSERT INTO writeback_actions (action_id, card_id, kind, seq, payload, sealed, status, "
    "debt_id, created, applied_at, receipt) VALUES (:action_id, :card_id, :kind, :seq, "
    ":payload, :sealed, 'pending', :debt_id, :created, NULL, NULL)")


class CardKeys(Protocol):
    """What sealing needs of a card: its id and APP key version (a ``Card`` row has both)."""

    @property
    def card_id(self) -> str: ...

    @property
    def app_key_version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Published:
    """An action as it was written (the row is ``writeback_actions`` ``action_id``)."""

    action_id: str
    card_id: str
    kind: str
    seq: int
    sealed: str


class WriteBacks:
    def __init__(self, host: Host) -> None:
        self.host = host

    def _key(self, card: CardKeys) -> bytes:
        _, key = app_key(self.host.keys, bytes.fromhex(card.card_id),
                         version=card.app_key_version)
        return key

    def _next_seq(self, session: Session, card: CardKeys) -> int:
        seq = int(plain(session, NEXT_SEQ.text, {"card_id": card.card_id}).scalar())
        if isinstance(card, Card):  # the row in the session: the value the database holds
            set_committed_value(card, "writeback_seq", seq)
        return seq

    def publish(self, session: Session, card: CardKeys, kind: str, payload: bytes, *,
                debt_id: str | None = None, hot: bool = False) -> Published:
        """Seal an action for ``card`` and put it on the action list (three statements:
        the card's sequence number, the action, its list entry). ``hot``: see
        :meth:`Lists.append`."""
        session.flush()  # what the caller changed through the ORM goes first
        seq = self._next_seq(session, card)
        sealed = seal_writeback(self._key(card), WriteBackHeader(bytes.fromhex(card.card_id), seq,
                                                                 int(KINDS[kind])), payload)
        done = Published(f"wb-{card.card_id}-{seq}", card.card_id, kind, seq, sealed.hex())
        plain(session, INSERT_ACTION, {
            "action_id": done.action_id, "card_id": card.card_id, "kind": kind, "seq": seq,
            "payload": payload.hex(), "sealed": done.sealed, "debt_id": debt_id,
            "created": self.host.now()})
        self.host.lists.append(session, ACTIONS, [self._entry(done, "add")], hot=hot)
        log_on_commit(session, "writeback_published", card=card.card_id, kind=kind, seq=seq,
                      debt=debt_id)
        return done

    def publish_many(self, session: Session, wanted: Sequence[tuple[CardKeys, str, bytes, str]],
                     *, beside: Sequence[tuple[str, Sequence[bulk.Column],
                                               Sequence[Sequence[object]]]] = (),
                     ) -> list[Published]:
        """:meth:`publish` for many actions at once (a group of agent debits): each is
        (card, kind, payload, debt id); a card may appear more than once. The caller has
        locked the cards' rows in card order (``LOCK_CARDS``: no deadlock with another
        writer that shares cards); their sequence numbers move by one statement, the
        actions and their list entries are written in bulk; the list entries are
        published as :meth:`publish` ``hot`` does.
        It logs nothing: the caller logs each action with its own event (one line per
        agent debit, with the write-back's number). ``beside``: the caller's own rows
        (table, columns, rows), inserted first, in the same statement
        (:func:`tallypurse.host.db.bulk.insert_all`)."""
        if not wanted:
            return []
        counts = Counter(card.card_id for card, _, _, _ in wanted)
        ordered = sorted(counts.items())
        top: dict[str, int] = {}
        if bulk.is_postgres(session):  # the caller holds the cards' locks (LOCK_CARDS)
            cur = plain(session, NEXT_SEQS, {"ids": bulk.array_literal([c for c, _ in ordered]),
                                             "ns": bulk.array_literal([n for _, n in ordered])})
            top = {card_id: int(seq) for card_id, seq in cur.fetchall()}
        else:  # SQLite: this transaction holds the database's write lock
            for card_id, n in ordered:
                top[card_id] = int(plain(session, NEXT_SEQ_BY, {"card_id": card_id,
                                                                 "n": n}).scalar())
        nxt = {card_id: top[card_id] - n + 1 for card_id, n in ordered}
        now = self.host.now()
        done: list[Published] = []
        rows: list[tuple[object, ...]] = []
        for card, kind, payload, debt_id in wanted:
            seq = nxt[card.card_id]
            nxt[card.card_id] = seq + 1
            sealed = seal_writeback(self._key(card), WriteBackHeader(
                bytes.fromhex(card.card_id), seq, int(KINDS[kind])), payload)
            one = Published(f"wb-{card.card_id}-{seq}", card.card_id, kind, seq, sealed.hex())
            done.append(one)
            rows.append((one.action_id, card.card_id, kind, seq, payload.hex(), one.sealed,
                         "pending", debt_id, now))
        lists = self.host.lists
        bulk.insert_all(session, [*beside, ("writeback_actions", ACTION_COLUMNS, rows),
                                  ("list_entries", ENTRY_COLUMNS, lists.rows(
                                      ACTIONS, [self._entry(d, "add") for d in done]))])
        lists.publish_after(session, ACTIONS, hot=True)
        return done

    @staticmethod
    def _entry(row: ActionRow | Published, op: str) -> dict[str, object]:
        return {"card_id": row.card_id, "op": op, "action_id": row.action_id, "kind": row.kind,
                "seq": row.seq, "sealed": row.sealed if op == "add" else ""}

    def withdraw(self, session: Session, row: ActionRow, status: str) -> None:
        row.status = status
        self.host.lists.append(session, ACTIONS, [self._entry(row, "remove")])

    def withdraw_for_debt(self, session: Session, debt_id: str) -> None:
        for row in session.scalars(
            select(ActionRow).where(ActionRow.debt_id == debt_id, ActionRow.status == "pending")
        ):
            self.withdraw(session, row, "withdrawn")

    def report(self, terminal_id: str, body: WriteBackReport) -> None:
        """A terminal says it applied an action: check the card's MAC, close the action."""
        try:
            receipt = WriteBackReceipt.parse(hex_bytes(body.receipt, "receipt"))
        except DecodeError as exc:
            raise HostError(RECORD_INVALID, f"receipt: {exc.message}") from None
        mac = hex_bytes(body.mac, "mac")
        with self.host.uow() as uow:
            s = uow.session
            row = s.scalar(uow.lock(select(ActionRow).where(ActionRow.action_id == body.action_id)))
            if row is None or row.card_id != body.card_id:
                raise HostError(NOT_FOUND, "no such write-back action for this card")
            card = s.get(Card, row.card_id)
            assert card is not None
            if not crypto.constant_time_equal(mac, receipt_mac(self._key(card), receipt)):
                raise HostError(RECORD_INVALID, "receipt MAC does not verify")
            if (receipt.card_id.hex() != row.card_id or receipt.seq != row.seq
                    or receipt.action != int(KINDS[row.kind])):
                raise HostError(RECORD_MISMATCH, "receipt is for another action")
            if row.status == "applied":
                return  # a repeated report
            if row.status == "pending":
                self.withdraw(s, row, "applied")
            else:  # withdrawn meanwhile, but the card applied it: record that
                row.status = "applied"
            row.applied_at = self.host.now()
            row.receipt = (body.receipt + body.mac)
            # Everything still open below this number can no longer reach the card.
            stale = s.scalars(
                select(ActionRow).where(ActionRow.card_id == row.card_id,
                                        ActionRow.status == "pending",
                                        ActionRow.seq < row.seq).order_by(ActionRow.seq)
            ).all()
            for old in stale:
                self.withdraw(s, old, "superseded")
                self.publish(s, card, old.kind, bytes.fromhex(old.payload), debt_id=old.debt_id)
            uow.commit()
        log_event("writeback_applied", terminal=terminal_id, card=body.card_id,
                  action=body.action_id, result=receipt.result, reissued=len(stale))
