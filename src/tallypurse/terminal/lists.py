"""Host-signed lists and parameters, as a terminal keeps them.

* Blacklist: 8-byte card ids, held in memory as a Python ``set`` of ``bytes``
  (a lookup is one hash probe, well under a microsecond even with a million
  cards) and in SQLite (``blacklist``, WITHOUT ROWID) so it survives restarts.
* Action list: write-backs waiting for their card, by card id.
* Parameters: limits, credit-allowed types, fees, journal size.

Each arrives as a :class:`SignedList` delta since the terminal's version (or a
full snapshot) or a :class:`SignedParameters`, signed with a host list key whose
certificate the terminal received at enrolment and verified against the
issuer root. Everything received in one sync is verified first and then applied
in one transaction: a bad signature or a delta that does not follow the local
version changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tallypurse.core import cert
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, CertificateError, DecodeError
from tallypurse.core.hostapi import (
    ActionEntry,
    Parameters,
    SignedList,
    SignedParameters,
    TrustBundle,
    verify_signed,
)
from tallypurse.core.money import currency
from tallypurse.core.protocol import CertRole

from .errors import ListRejected
from .journal import Database, Tx

BLACKLIST, ACTIONS, PARAMETERS = "blacklist", "actions", "parameters"


def host_keys_from_certificates(
    certificates: list[bytes], roots: dict[KeyRef, bytes], *, at: int
) -> dict[CertRole, dict[KeyRef, bytes]]:
    """Verify the host's key certificates against the issuer roots; keys by role and ref.
    A certificate that does not verify is an error (ListRejected)."""
    out: dict[CertRole, dict[KeyRef, bytes]] = {}
    for raw in certificates:
        try:
            parsed = cert.parse(raw)
            if parsed.role not in (CertRole.HOST_LIST, CertRole.HOST_LOAD, CertRole.HOST_API):
                raise CertificateError(f"role {parsed.role.name} is not a host key")
            c = cert.verify(parsed, roots, role=parsed.role, at=at)
            ref = KeyRef.decode(c.holder)
        except (CertificateError, ValueError) as exc:
            raise ListRejected(f"host certificate does not verify: {exc}") from None
        out.setdefault(c.role, {})[ref] = c.public_key
    return out


@dataclass(frozen=True, slots=True)
class NewTrust:
    """A verified TrustBundle: what the terminal trusts from now on."""

    roots: dict[KeyRef, bytes]
    terminal_certificates: list[bytes]
    host_certificates: list[bytes]
    host_keys: dict[CertRole, dict[KeyRef, bytes]]


def verify_trust(bundle: TrustBundle, roots: dict[KeyRef, bytes], *, at: int) -> NewTrust:
    """Check a TrustBundle against the roots the terminal trusts (ListRejected if it
    does not hold together). A new root is learnt only from a link certificate signed by
    a root already trusted; trusted roots the host no longer names are dropped; host and
    terminal certificates are kept only under the roots that remain."""
    try:
        links = [cert.parse(bytes.fromhex(c)) for c in bundle.root_certificates]
        named = {KeyRef.decode(r.encode("ascii")) for r in bundle.roots}
        known = dict(roots)
        learning = True
        while learning:
            learning = False
            for link in links:
                ref = KeyRef.decode(link.holder)
                if ref in known or link.authority not in known:
                    continue
                c = cert.verify(link, known, role=CertRole.ROOT, at=at)
                known[ref] = c.public_key
                learning = True
        kept = {ref: point for ref, point in known.items() if ref in named}
        if not kept:
            raise ListRejected("the host names no issuer root this terminal trusts")

        def under_kept(raw: list[str]) -> list[bytes]:
            out = [bytes.fromhex(c) for c in raw]
            return [c for c in out if cert.parse(c).authority in kept]

        terminal_certs = under_kept(bundle.terminal_certificates)
        host_certs = under_kept(bundle.host_certificates)
    except (CertificateError, DecodeError, ValueError) as exc:
        raise ListRejected(f"trust bundle does not verify: {exc}") from None
    keys = host_keys_from_certificates(host_certs, kept, at=at)
    if not keys.get(CertRole.HOST_LIST):
        raise ListRejected("trust bundle has no host list key under a trusted root")
    return NewTrust(kept, terminal_certs, host_certs, keys)


def load_blacklist(db: Database) -> set[bytes]:
    """The stored blacklist as a set. One aggregate query hands over all ids as a single
    blob (a million cards in well under a second); a row scan is the fallback."""
    blob = db.one("SELECT CAST(group_concat(card_id, '') AS BLOB) FROM blacklist")
    n = int(db.one("SELECT count(*) FROM blacklist"))
    if blob is None:
        return set()
    raw = bytes(blob)
    if len(raw) == 8 * n:
        return {raw[i : i + 8] for i in range(0, len(raw), 8)}
    return {bytes(r[0]) for r in db.conn.execute("SELECT card_id FROM blacklist")}


@dataclass(frozen=True, slots=True)
class ListState:
    version: int
    issued: int
    fresh_at: int  # terminal time of the last sync that confirmed this version


class Lists:
    def __init__(self, db: Database, list_keys: dict[KeyRef, bytes]) -> None:
        self.db = db
        self.list_keys = list_keys
        self.blacklist: set[bytes] = load_blacklist(db)
        self._actions: dict[bytes, list[ActionEntry]] = {}
        self.applied: set[str] = {
            r[0] for r in db.query("SELECT action_id FROM applied_actions")
        }
        for row in db.query("SELECT action_id, card_id, kind, seq, sealed FROM actions"):
            entry = ActionEntry(
                action_id=row[0], card_id=row[1], kind=row[2], seq=row[3], sealed=row[4]
            )
            self._actions.setdefault(bytes.fromhex(row[1]), []).append(entry)
        for entries in self._actions.values():
            entries.sort(key=lambda a: a.seq)
        self.state: dict[str, ListState] = {}
        for kind, version, issued, fresh_at in db.query(
            "SELECT kind, version, issued, fresh_at FROM lists"
        ):
            self.state[kind] = ListState(version, issued, fresh_at)
        self.parameters: Parameters | None = None
        doc = db.one("SELECT document FROM lists WHERE kind = ?", (PARAMETERS,))
        if doc is not None:
            signed = SignedParameters.model_validate_json(doc)
            self.verify_parameters(signed)
            self.parameters = signed.parameters

    # --- queries ---------------------------------------------------------------------------------
    def is_blacklisted(self, card_id: bytes) -> bool:
        return card_id in self.blacklist

    def actions_for(self, card_id: bytes) -> list[ActionEntry]:
        """Write-backs for this card that this terminal has not applied yet, by sequence."""
        entries = self._actions.get(card_id)
        if not entries:
            return []
        return [a for a in entries if a.action_id not in self.applied]

    def version(self, kind: str) -> int:
        s = self.state.get(kind)
        return s.version if s else 0

    def age(self, kind: str, now: int) -> int | None:
        """Seconds since the host last confirmed this list; None before the first sync."""
        s = self.state.get(kind)
        return None if s is None else max(0, now - s.fresh_at)

    def lists_fresh(self, now: int, max_age: int) -> bool:
        for kind in (BLACKLIST, ACTIONS):
            a = self.age(kind, now)
            if a is None or a > max_age:
                return False
        return True

    # --- verification ----------------------------------------------------------------------------
    def verify_list(self, signed: SignedList, kind: str) -> None:
        if signed.kind != kind:
            raise ListRejected(f"expected a {kind} list, got {signed.kind}")
        if not verify_signed(signed.signed_bytes(), signed.signature, signed.key, self.list_keys):
            raise ListRejected(f"{kind} list {signed.to_version} has a bad signature")
        if signed.full:
            if signed.from_version != 0:
                raise ListRejected(f"a full {kind} snapshot must start at version 0")
        elif signed.from_version != self.version(kind):
            raise ListRejected(
                f"{kind} delta {signed.from_version}->{signed.to_version} does not follow "
                f"the local version {self.version(kind)}"
            )
        if signed.to_version < signed.from_version or (
            not signed.full and signed.to_version == signed.from_version
            and (signed.blacklist or signed.actions)
        ):
            raise ListRejected(f"{kind} list versions go backwards")
        if signed.full and signed.to_version < self.version(kind):
            raise ListRejected(f"{kind} snapshot {signed.to_version} is older than the local one")
        if (kind == BLACKLIST and signed.actions) or (kind == ACTIONS and signed.blacklist):
            raise ListRejected(f"{kind} list carries entries of the other list")

    def verify_parameters(self, signed: SignedParameters) -> None:
        if not verify_signed(signed.signed_bytes(), signed.signature, signed.key, self.list_keys):
            raise ListRejected(f"parameters {signed.parameters.version} have a bad signature")
        try:
            currency(signed.parameters.currency)
        except BadInput as exc:
            raise ListRejected(exc.message) from None

    # --- application ----------------------------------------------------------------------------
    def apply(
        self,
        tx: Tx,
        *,
        now: int,
        blacklist: SignedList | None,
        actions: SignedList | None,
        parameters: SignedParameters | None,
    ) -> dict[str, Any]:
        """Verify everything first, then write it in ``tx``; memory follows on commit."""
        if blacklist is not None:
            self.verify_list(blacklist, BLACKLIST)
        if actions is not None:
            self.verify_list(actions, ACTIONS)
        if parameters is not None:
            self.verify_parameters(parameters)
            current = self.parameters.version if self.parameters else 0
            if parameters.parameters.version < current:
                raise ListRejected(
                    f"parameters {parameters.parameters.version} are older than {current}"
                )
        changes: dict[str, Any] = {}
        new_state = dict(self.state)

        if blacklist is not None:
            adds = {bytes.fromhex(e.card_id) for e in blacklist.blacklist if e.op == "add"}
            removes = {bytes.fromhex(e.card_id) for e in blacklist.blacklist if e.op == "remove"}
            if blacklist.full:
                tx.execute("DELETE FROM blacklist")
                removes = set()
            else:
                tx.executemany("DELETE FROM blacklist WHERE card_id = ?", [(c,) for c in removes])
            tx.executemany(
                "INSERT OR IGNORE INTO blacklist(card_id) VALUES (?)", [(c,) for c in adds]
            )
            changes[BLACKLIST] = {"to": blacklist.to_version, "add": len(adds),
                                  "remove": len(removes), "full": blacklist.full}
        if actions is not None:
            add = [a for a in actions.actions if a.op == "add"]
            drop = [a.action_id for a in actions.actions if a.op == "remove"]
            if actions.full:
                tx.execute("DELETE FROM actions")
            else:
                tx.executemany("DELETE FROM actions WHERE action_id = ?", [(d,) for d in drop])
            tx.executemany(
                "INSERT OR REPLACE INTO actions(action_id, card_id, kind, seq, sealed) "
                "VALUES (?, ?, ?, ?, ?)",
                [(a.action_id, a.card_id, a.kind, a.seq, a.sealed) for a in add],
            )
            # an action the host withdrew or marked done is forgotten here too
            tx.executemany(
                "DELETE FROM applied_actions WHERE action_id = ?", [(d,) for d in drop]
            )
            changes[ACTIONS] = {"to": actions.to_version, "add": len(add), "remove": len(drop),
                                "full": actions.full}
        for kind, signed in ((BLACKLIST, blacklist), (ACTIONS, actions)):
            if signed is not None:
                new_state[kind] = ListState(signed.to_version, signed.issued, now)
                self._put_state(tx, kind, new_state[kind], None)
            elif kind in new_state:  # the host said: still current
                s = new_state[kind]
                new_state[kind] = ListState(s.version, s.issued, now)
                self._put_state(tx, kind, new_state[kind], None)
            else:
                new_state[kind] = ListState(0, 0, now)
                self._put_state(tx, kind, new_state[kind], None)
        if parameters is not None:
            p = parameters.parameters
            new_state[PARAMETERS] = ListState(p.version, parameters.issued, now)
            self._put_state(tx, PARAMETERS, new_state[PARAMETERS], parameters.model_dump_json())
            changes[PARAMETERS] = {"to": p.version}
        elif PARAMETERS in new_state:
            s = new_state[PARAMETERS]
            new_state[PARAMETERS] = ListState(s.version, s.issued, now)
            tx.execute("UPDATE lists SET fresh_at = ? WHERE kind = ?", (now, PARAMETERS))

        def done() -> None:
            if blacklist is not None:
                if blacklist.full:
                    self.blacklist = {
                        bytes.fromhex(e.card_id) for e in blacklist.blacklist if e.op == "add"
                    }
                else:
                    for e in blacklist.blacklist:
                        c = bytes.fromhex(e.card_id)
                        if e.op == "add":
                            self.blacklist.add(c)
                        else:
                            self.blacklist.discard(c)
            if actions is not None:
                if actions.full:
                    self._actions = {}
                for a in actions.actions:
                    cid = bytes.fromhex(a.card_id)
                    kept = [x for x in self._actions.get(cid, []) if x.action_id != a.action_id]
                    if a.op == "add":
                        kept.append(a)
                        kept.sort(key=lambda x: x.seq)
                    else:
                        self.applied.discard(a.action_id)
                    if kept:
                        self._actions[cid] = kept
                    else:
                        self._actions.pop(cid, None)
            if parameters is not None:
                self.parameters = parameters.parameters
            self.state = new_state

        tx.after_commit.append(done)
        return changes

    @staticmethod
    def _put_state(tx: Tx, kind: str, s: ListState, document: str | None) -> None:
        tx.execute(
            "INSERT INTO lists(kind, version, issued, fresh_at, document) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(kind) DO UPDATE SET version = excluded.version, issued = "
            "excluded.issued, fresh_at = excluded.fresh_at, "
            "document = coalesce(excluded.document, lists.document)",
            (kind, s.version, s.issued, s.fresh_at, document),
        )

    def mark_applied(self, tx: Tx, action: ActionEntry, now: int, result: str) -> None:
        self.mark_applied_id(tx, action.action_id, action.card_id, now, result)

    def mark_applied_id(self, tx: Tx, action_id: str, card_id_hex: str, now: int,
                        result: str) -> None:
        tx.execute(
            "INSERT OR REPLACE INTO applied_actions(action_id, card_id, applied, result) "
            "VALUES (?, ?, ?, ?)",
            (action_id, card_id_hex, now, result),
        )
        tx.after_commit.append(lambda: self.applied.add(action_id))

    def summary(self, now: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in (BLACKLIST, ACTIONS, PARAMETERS):
            s = self.state.get(kind)
            out[kind] = None if s is None else {
                "version": s.version, "issued": s.issued, "age_s": self.age(kind, now),
            }
        out["blacklist_size"] = len(self.blacklist)
        out["pending_actions"] = sum(len(self.actions_for(c)) for c in self._actions)
        return out

    def parameters_json(self) -> str | None:
        return None if self.parameters is None else json.dumps(self.parameters.model_dump())
