"""Blacklist and action list: versioned changes, signed deltas and snapshots.

Every change is a row in ``list_entries``; each list has a head version in
``list_heads``. A writer inserts its entries *unnumbered* (``version`` NULL) in
its own transaction and touches no shared row, so writers never wait for each
other's commits. The publisher (:meth:`Lists.publish`) numbers entries after
they commit, many at a time, in a short transaction of its own: it locks the
head row, gives every committed entry still unnumbered the next versions (in
the order they were written), and moves the head. It runs right after any
transaction that appended commits (skipping if another publisher holds the
head: that one, or the next, numbers the rest) and before every read that
answers a terminal (waiting for the head).

Why a terminal can trust "since N": the head and the entries numbered up to it
commit together, versions are only given above the head under its lock, and
only to entries already committed; so once a reader has seen head N, every
entry with a version <= N is visible to it and no entry will ever get a version
<= N later. An entry not yet numbered is not on the list yet; the next publish
puts it there. Any number of host processes can write, publish and read at once.

A terminal that is more than ``list_delta_max`` versions behind (or claims a
version from the future) gets a full snapshot: the cards currently on the
blacklist, the actions currently open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tallypurse.core.hostapi import ActionEntry, BlacklistEntry, SignedList
from tallypurse.host.db import bulk
from tallypurse.host.db.engine import after_commit
from tallypurse.host.db.models import Card, ListEntry, ListHead

from .common import log

if TYPE_CHECKING:
    from tallypurse.host.service import Host

ListName = Literal["blacklist", "actions"]
BLACKLIST: ListName = "blacklist"
ACTIONS: ListName = "actions"
NAMES: tuple[ListName, ...] = (ACTIONS, BLACKLIST)  # the order heads are locked in
ENTRY_COLUMNS: list[bulk.Column] = [
    ("list_name", "text"), ("card_id", "text"), ("op", "text"), ("reason", "text"),
    ("action_id", "text"), ("kind", "text"), ("seq", "bigint"), ("sealed", "text"),
    ("created", "bigint")]
PUBLISH_EVERY_S = 0.25  # a hot writer (agent debits) publishes at most this often per process


class Lists:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._last_publish = 0.0
        self._lock = threading.Lock()

    # --- writing -------------------------------------------------------------------------------
    def append(self, session: Session, name: ListName, entries: list[dict[str, object]], *,
               hot: bool = False) -> None:
        """Add changes to a list, unnumbered, in the caller's transaction; they are numbered
        once it commits (see :meth:`publish`). ``hot``: a writer on the hot path, which
        publishes after commit only if this process has not done so within
        ``PUBLISH_EVERY_S`` (what it leaves is numbered by the next publish: another
        writer's, or the next read's)."""
        if not entries:
            return
        # one statement whatever their number, in this order (they are numbered by id)
        bulk.insert(session, "list_entries", ENTRY_COLUMNS, self.rows(name, entries))
        self.publish_after(session, name, hot=hot)

    def rows(self, name: ListName, entries: list[dict[str, object]]) -> list[tuple[object, ...]]:
        """The ``list_entries`` rows (``ENTRY_COLUMNS``) of :meth:`append`, for a caller
        that inserts them with its own rows (then :meth:`publish_after`)."""
        now = self.host.now()
        rows = []
        for e in entries:
            row = {"list_name": name, "created": now, "reason": "", "action_id": None,
                   "kind": None, "seq": None, "sealed": None, **e}
            rows.append(tuple(row[c] for c, _ in ENTRY_COLUMNS))
        return rows

    def publish_after(self, session: Session, name: ListName, *, hot: bool = False) -> None:
        """Number the list's new entries once the session's transaction commits."""
        after_commit(session, f"lists.publish.{name}{'.hot' if hot else ''}",
                     (lambda: self._publish_after_commit(name, hot)))

    def _publish_after_commit(self, name: ListName, hot: bool) -> None:
        if hot:
            with self._lock:
                now = time.monotonic()
                if now - self._last_publish < PUBLISH_EVERY_S:
                    return
                self._last_publish = now
        try:
            self.publish([name], wait=False)
        except Exception:  # the entries are committed; the next publish numbers them
            log.exception('{"event": "list_publish_failed"}')

    def publish(self, names: Iterable[ListName] = NAMES, *, wait: bool = True) -> dict[str, int]:
        """Number the committed entries still unnumbered; returns the heads it moved.

        ``wait=False`` skips a list whose head another publisher holds (PostgreSQL): that
        publisher, or the next one, numbers what is left. Readers wait, so that they see
        everything committed before they asked."""
        wanted = [n for n in NAMES if n in set(names)]
        waiting = wanted
        if wait:  # a reader: most find nothing to do, and need no write, no lock
            with self.host.db.reader() as s:
                found = set(s.scalars(select(ListEntry.list_name).distinct().where(
                    ListEntry.list_name.in_(wanted), ListEntry.version.is_(None))))
            waiting = [n for n in wanted if n in found]
            if not waiting:
                return {}
        moved: dict[str, int] = {}
        with self.host.uow() as uow:
            s = uow.session
            stmt = (select(ListHead.name, ListHead.version)
                    .where(ListHead.name.in_(waiting)).order_by(ListHead.name))
            if self.host.db.postgres:  # SQLite: BEGIN IMMEDIATE already holds the database
                stmt = stmt.with_for_update(skip_locked=not wait)
            heads = {str(n): int(v) for n, v in s.execute(stmt)}
            for name in wanted:
                if name not in heads:
                    continue
                # A statement of its own (a fresh snapshot on PostgreSQL, taken now that the
                # head is ours): every publisher before us has committed and is visible.
                count = self._number(s, name, heads[name])
                if count:
                    moved[name] = heads[name] + count
                    s.execute(text("UPDATE list_heads SET version = :v WHERE name = :n"),
                              {"v": moved[name], "n": name})
            uow.commit()
        return moved

    def _number(self, s: Session, name: ListName, head: int) -> int:
        if self.host.db.postgres:
            result = s.execute(text(
                "UPDATE list_entries e SET version = n.v FROM ("
                "SELECT id, :head + row_number() OVER (ORDER BY id) AS v FROM list_entries "
                "WHERE list_name = :name AND version IS NULL) n WHERE e.id = n.id"),
                {"head": head, "name": name})
            return int(result.rowcount)  # type: ignore[attr-defined]
        ids = s.scalars(select(ListEntry.id).where(ListEntry.list_name == name,
                                                   ListEntry.version.is_(None))
                        .order_by(ListEntry.id)).all()
        if ids:
            s.execute(text("UPDATE list_entries SET version = :v WHERE id = :i"),
                      [{"v": head + i, "i": entry_id} for i, entry_id in enumerate(ids, 1)])
        return len(ids)

    def blacklist(self, session: Session, card: Card, reason: str) -> bool:
        """Put a card on the blacklist (once); True if it was not on it."""
        if card.blacklisted:
            return False
        card.blacklisted = True
        self.append(session, BLACKLIST, [{"card_id": card.card_id, "op": "add",
                                          "reason": reason[:64]}])
        return True

    def unblacklist(self, session: Session, card: Card, reason: str) -> bool:
        if not card.blacklisted:
            return False
        card.blacklisted = False
        self.append(session, BLACKLIST, [{"card_id": card.card_id, "op": "remove",
                                          "reason": reason[:64]}])
        return True

    # --- reading -------------------------------------------------------------------------------
    def head(self, session: Session, name: ListName) -> int:
        """The list's published version (call :meth:`publish` first to include what has
        just committed)."""
        return int(session.scalar(select(ListHead.version).where(ListHead.name == name)) or 0)

    def signed(self, session: Session, name: ListName, since: int) -> SignedList | None:
        """What a terminal at version ``since`` needs; None when it is current."""
        head = self.head(session, name)
        if since == head:
            return None
        if since > head or head - since > self.host.settings.list_delta_max:
            return self.sign(self.snapshot(session, name, head))
        rows = session.scalars(
            select(ListEntry).where(ListEntry.list_name == name, ListEntry.version > since,
                                    ListEntry.version <= head).order_by(ListEntry.version)
        ).all()
        return self.sign(self._build(name, since, head, False, rows))

    def snapshot(self, session: Session, name: ListName, head: int | None = None) -> SignedList:
        """Every entry currently in force (unsigned)."""
        head = self.head(session, name) if head is None else head
        key_col = ListEntry.card_id if name == BLACKLIST else ListEntry.action_id
        latest = (
            select(func.max(ListEntry.version))
            .where(ListEntry.list_name == name, ListEntry.version <= head)
            .group_by(key_col)
        )
        rows = session.scalars(
            select(ListEntry).where(ListEntry.list_name == name, ListEntry.version.in_(latest),
                                    ListEntry.op == "add").order_by(ListEntry.version)
        ).all()
        return self._build(name, 0, head, True, rows)

    def _build(self, name: ListName, since: int, head: int, full: bool,
               entries: Sequence[ListEntry]) -> SignedList:
        blacklist: list[BlacklistEntry] = []
        actions: list[ActionEntry] = []
        for r in entries:
            if name == BLACKLIST:
                blacklist.append(BlacklistEntry.model_validate(
                    {"card_id": r.card_id, "op": r.op, "reason": r.reason}))
            else:
                actions.append(ActionEntry.model_validate(
                    {"action_id": r.action_id or "", "card_id": r.card_id, "op": r.op,
                     "kind": r.kind or "settle_debt", "seq": r.seq or 0,
                     "sealed": r.sealed or ""}))
        return SignedList(kind=name, from_version=since, to_version=head, full=full,
                          blacklist=blacklist, actions=actions, issued=self.host.now(),
                          key=str(self.host.list_key()))

    def sign(self, unsigned: SignedList) -> SignedList:
        ref = self.host.list_key()
        body = unsigned.model_copy(update={"key": str(ref), "signature": ""})
        signature = self.host.keys.sign(ref, body.signed_bytes())
        return body.model_copy(update={"signature": signature.hex()})
