"""Blacklist and action list: versioned changes, signed deltas and snapshots.

Each list has a head version in ``list_heads``; every change is a row in
``list_entries`` that carries the list's version after it. Appending updates
the head row (``UPDATE ... RETURNING``) in the writer's transaction, whose
row lock is held until commit: concurrent writers get consecutive versions
and commit in version order, and the head a reader sees never runs ahead of
the entries it can see. Any number of host processes can append at once.

A terminal that is more than ``list_delta_max`` versions behind (or claims a
version from the future) gets a full snapshot: the cards currently on the
blacklist, the actions currently open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from tallypurse.core.hostapi import ActionEntry, BlacklistEntry, SignedList
from tallypurse.host.db.models import Card, ListEntry, ListHead, table

if TYPE_CHECKING:
    from tallypurse.host.service import Host

ListName = Literal["blacklist", "actions"]
BLACKLIST: ListName = "blacklist"
ACTIONS: ListName = "actions"


class Lists:
    def __init__(self, host: Host) -> None:
        self.host = host

    # --- writing -------------------------------------------------------------------------------
    def append(self, session: Session, name: ListName, entries: list[dict[str, object]]) -> int:
        """Add changes to a list; returns the new head version."""
        if not entries:
            return self.head(session, name)
        session.flush()  # the head stays locked until commit: write the rest first
        head = session.execute(
            text("UPDATE list_heads SET version = version + :n WHERE name = :name "
                 "RETURNING version"),
            {"n": len(entries), "name": name},
        ).scalar_one()
        first = head - len(entries) + 1
        now = self.host.now()
        rows = [{"list_name": name, "version": first + i, "created": now, "reason": "", **e}
                for i, e in enumerate(entries)]
        session.execute(insert(table(ListEntry)), rows)
        return int(head)

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
