"""An in-memory host for terminal tests: :class:`HostApi` over a Lab keystore.

It does what the real host does at the terminal's edge, with real keys: it
certifies SAMs at enrolment, signs lists and parameters with the host list key
and load authorisations with the load key, verifies cards' online requests and
TACs with the cards' certified keys, takes agent debits, loads, write-back
reports and batches idempotently, and counts how often each took effect.

Fault injection: ``faults`` is a queue of what happens to the next calls
(optionally only calls named in ``fault_on``):

* ``"down"``: HostUnavailable before anything happens;
* ``"lost"``: the request takes effect, then the answer is lost (HostUnavailable);
* ``"dup"``: the request arrives twice (the second answer is returned);
* ``"ok"``: normal.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.hostapi import (
    Ack,
    ActionEntry,
    AgentDebitAck,
    AgentDebitRequest,
    BatchAck,
    BatchUpload,
    BlacklistEntry,
    EnrolRequest,
    EnrolResponse,
    HostRejected,
    HostUnavailable,
    JournalEntry,
    LoadAuthorisationResponse,
    LoadConfirm,
    LoadRequest,
    OnlineAuthoriseRequest,
    OnlineAuthoriseResponse,
    OnlineChallenge,
    Parameters,
    Problem,
    Rejected,
    ReversalRequest,
    ReversalResponse,
    SignedList,
    SignedParameters,
    SyncRequest,
    SyncResponse,
    Totals,
    WriteBackReport,
    canonical,
)
from tallypurse.core.messages import (
    DebtOutcome,
    LoadAuthorisation,
    OnlineRequest,
    SignedEvent,
    WriteBackReceipt,
    receipt_mac,
)
from tallypurse.core.money import currency
from tallypurse.core.protocol import CertRole, EventKind, WriteBackAction
from tallypurse.core.samproto import PURPOSE_BATCH, PURPOSE_JOURNAL, CertificateRequest
from tallypurse.core.samproto import verify_signature as sam_verify
from tallypurse.host.tsm.keys import app_key
from tallypurse.keystore.base import HOST_API, HOST_LIST, HOST_LOAD
from tallypurse.lab import YEAR, Lab
from tallypurse.terminal.journal import GENESIS, entry_hash

R = TypeVar("R")

ENROL_TOKEN = "enrol-token-0001"

DEFAULT_PARAMETERS = Parameters(
    version=1,
    currency="EUR",
    offline_limit=10_000,
    online_threshold=5_000,
    credit_types=["canteen", "transit"],
    max_list_age_s=24 * 3600,
    cancel_window_s=120,
    journal_limit=1_000,
)

_WB_ACTION = {
    "settle_debt": WriteBackAction.SETTLE_DEBT,
    "fail_debt": WriteBackAction.FAIL_DEBT,
    "credit_record": WriteBackAction.CREDIT_RECORD,
    "block": WriteBackAction.BLOCK,
    "unblock": WriteBackAction.UNBLOCK,
}


def problem(status: int, code: int, title: str, detail: str = "") -> HostRejected:
    return HostRejected(Problem(title=title, status=status, code=code, detail=detail))


@dataclass
class Account:
    public_key: bytes
    online_balance: int = 0


@dataclass
class ListHistory:
    """Versions of one list: each version holds the entries that changed in it."""

    version: int = 0
    changes: list[tuple[int, list[Any]]] = field(default_factory=list)
    oldest_delta: int = 0  # deltas from versions below this are gone: full snapshot


class FakeHost:
    def __init__(self, lab: Lab, *, clock: Callable[[], float],
                 parameters: Parameters = DEFAULT_PARAMETERS,
                 merchant_id: str = "M-0001") -> None:
        self.lab = lab
        self.ks = lab.keystore
        self.clock = clock
        self.merchant_id = merchant_id
        self.parameters = parameters
        self.faults: list[str] = []
        self.fault_on: set[str] | None = None
        self.calls: list[str] = []
        self.accounts: dict[bytes, Account] = {}
        self.terminals: dict[str, bytes] = {}
        self.blacklist: dict[str, BlacklistEntry] = {}
        self.bl_history = ListHistory()
        self.actions: dict[str, ActionEntry] = {}
        self.act_history = ListHistory()
        self.tamper: set[str] = set()  # "blacklist", "actions", "parameters": bad signature
        self.agent_debits: dict[str, tuple[bytes, AgentDebitAck]] = {}
        self.agent_effects: Counter[tuple[str, int]] = Counter()
        self.challenges: dict[str, int] = {}
        self.online: dict[str, tuple[bytes, OnlineAuthoriseResponse, int, bytes]] = {}
        self.reversed: set[str] = set()
        self.reversal_calls: Counter[str] = Counter()
        self.loads: dict[str, tuple[bytes, LoadAuthorisationResponse]] = {}
        self.load_confirms: dict[str, str] = {}
        self.writeback_reports: dict[str, WriteBackReport] = {}
        self.cleared: dict[tuple[str, int], JournalEntry] = {}
        self.batches: dict[str, BatchAck] = {}
        self.skew_totals = False
        self.online_approve = True
        self._ids = itertools.count(1)

    # --- test controls -------------------------------------------------------------------------
    def now(self) -> int:
        return int(self.clock())

    def register_card(self, card_id: bytes, public_key: bytes, online_balance: int = 0) -> None:
        self.accounts[card_id] = Account(public_key, online_balance)

    def _bump(self, history: ListHistory, entries: list[Any]) -> None:
        history.version += 1
        history.changes.append((history.version, entries))

    def blacklist_add(self, *card_ids: bytes, reason: str = "lost") -> None:
        entries = []
        for c in card_ids:
            e = BlacklistEntry(card_id=c.hex(), op="add", reason=reason)
            self.blacklist[c.hex()] = e
            entries.append(e)
        self._bump(self.bl_history, entries)

    def blacklist_remove(self, *card_ids: bytes) -> None:
        entries = []
        for c in card_ids:
            self.blacklist.pop(c.hex(), None)
            entries.append(BlacklistEntry(card_id=c.hex(), op="remove"))
        self._bump(self.bl_history, entries)

    def add_action(self, card_id: bytes, kind: str, payload: bytes = b"") -> ActionEntry:
        """Publish a write-back for a card, sealed under its APP key."""
        action = _WB_ACTION[kind]
        seq = self.lab._writeback_seq.get(card_id, 0) + 1
        sealed = self.lab.seal_writeback(card_id, action, payload, seq)
        entry = ActionEntry(action_id=f"act-{next(self._ids)}", card_id=card_id.hex(),
                            op="add", kind=kind, seq=seq, sealed=sealed.hex())  # type: ignore[arg-type]
        self.actions[entry.action_id] = entry
        self._bump(self.act_history, [entry])
        return entry

    def settle(self, card_id: bytes, ref: int, amount: int) -> ActionEntry:
        return self.add_action(card_id, "settle_debt", DebtOutcome(ref, amount).to_bytes())

    def fail(self, card_id: bytes, ref: int, amount: int) -> ActionEntry:
        return self.add_action(card_id, "fail_debt", DebtOutcome(ref, amount).to_bytes())

    def _remove_action(self, action_id: str) -> None:
        entry = self.actions.pop(action_id, None)
        if entry is not None:
            self._bump(self.act_history, [entry.model_copy(update={"op": "remove"})])

    def set_parameters(self, **changes: Any) -> None:
        changes.setdefault("version", self.parameters.version + 1)
        self.parameters = self.parameters.model_copy(update=changes)

    # --- plumbing -------------------------------------------------------------------------------
    def _call(self, name: str, apply: Callable[[], R]) -> R:
        self.calls.append(name)
        fault = "ok"
        if self.faults and (self.fault_on is None or name in self.fault_on):
            fault = self.faults.pop(0)
        if fault == "down":
            raise HostUnavailable(f"fake host down ({name})")
        result = apply()
        if fault == "dup":
            result = apply()
        if fault == "lost":
            raise HostUnavailable(f"answer lost ({name})")
        return result

    def _sign(self, name: str, data: bytes) -> tuple[str, str]:
        ref = self.ks.current(name)
        return str(ref), self.ks.sign(ref, data).hex()

    # --- HostApi ---------------------------------------------------------------------------------
    def enrol(self, body: EnrolRequest) -> EnrolResponse:
        def apply() -> EnrolResponse:
            if body.token != ENROL_TOKEN:
                raise problem(403, 4031, "bad enrolment token")
            req = CertificateRequest.parse(bytes.fromhex(body.csr))
            if req.terminal_id.hex() != body.terminal_id:
                raise problem(422, 4221, "CSR for another terminal")
            c = self.ks.issue_certificate(
                holder=req.terminal_id, role=CertRole.TERMINAL, public_key=req.public_key,
                not_before=self.lab.now, not_after=self.lab.now + 3 * YEAR,
            )
            self.terminals[body.terminal_id] = req.public_key
            return EnrolResponse(
                certificate=c.encode().hex(),
                roots={str(ref): key.hex() for ref, key in self.lab.roots().items()},
                host_certificates=[
                    self.ks.certificate(self.ks.current(n)).encode().hex()
                    for n in (HOST_LIST, HOST_LOAD, HOST_API)
                ],
                merchant_id=self.merchant_id,
            )

        return self._call("enrol", apply)

    def _signed_list(self, kind: str, history: ListHistory, current: dict[str, Any],
                     since: int) -> SignedList | None:
        if since == history.version:
            return None
        full = since > history.version or since < history.oldest_delta
        if full:
            entries = list(current.values())
            frm = 0
        else:
            entries = [e for v, es in history.changes if v > since for e in es]
            frm = since
        sl = SignedList(
            kind=kind,  # type: ignore[arg-type]
            from_version=frm, to_version=history.version, full=full,
            blacklist=entries if kind == "blacklist" else [],
            actions=entries if kind == "actions" else [],
            issued=self.now(), key=str(self.ks.current(HOST_LIST)),
        )
        _, sig = self._sign(HOST_LIST, sl.signed_bytes())
        if kind in self.tamper:
            sig = sig[:-2] + ("00" if sig[-2:] != "00" else "01")
        return sl.model_copy(update={"signature": sig})

    def _signed_parameters(self) -> SignedParameters:
        sp = SignedParameters(parameters=self.parameters, issued=self.now(),
                              key=str(self.ks.current(HOST_LIST)))
        _, sig = self._sign(HOST_LIST, sp.signed_bytes())
        if "parameters" in self.tamper:
            sig = sig[:-2] + ("00" if sig[-2:] != "00" else "01")
        return sp.model_copy(update={"signature": sig})

    def sync(self, body: SyncRequest) -> SyncResponse:
        def apply() -> SyncResponse:
            return SyncResponse(
                blacklist=self._signed_list("blacklist", self.bl_history, self.blacklist,
                                            body.blacklist_version),
                actions=self._signed_list("actions", self.act_history, self.actions,
                                          body.actions_version),
                parameters=None if body.parameters_version == self.parameters.version
                else self._signed_parameters(),
                host_time=self.now(),
            )

        return self._call("sync", apply)

    def agent_debit(self, body: AgentDebitRequest) -> AgentDebitAck:
        def apply() -> AgentDebitAck:
            digest = crypto.sha256(canonical(body.model_dump()))
            known = self.agent_debits.get(body.idempotency_key)
            if known is not None:
                if known[0] != digest:
                    raise problem(409, 4091, "idempotency key reused for another payload")
                return known[1].model_copy(update={"status": "duplicate"})
            card_id = bytes.fromhex(body.card_id)
            account = self.accounts.get(card_id)
            if account is None:
                raise problem(404, 4041, "no online account for this card")
            record = SignedEvent.parse(bytes.fromhex(body.record))
            ev = record.event
            if not record.verify(account.public_key):
                raise problem(422, 4222, "TAC does not verify")
            if (ev.kind != EventKind.DEBIT or ev.card_id != card_id or ev.atc != body.atc
                    or ev.split != body.amount or body.amount == 0):
                raise problem(422, 4223, "agent debit does not match its record")
            key = (body.card_id, body.atc)
            if self.agent_effects[key]:  # same debit under another key
                raise problem(409, 4092, "this split debit was already taken")
            self.agent_effects[key] += 1
            account.online_balance -= body.amount
            ack = AgentDebitAck(idempotency_key=body.idempotency_key, status="accepted",
                                debt_id=f"debt-{next(self._ids)}")
            self.agent_debits[body.idempotency_key] = (digest, ack)
            return ack

        return self._call("agent_debit", apply)

    def online_challenge(self) -> OnlineChallenge:
        def apply() -> OnlineChallenge:
            ch = crypto.random_bytes(16).hex()
            self.challenges[ch] = self.now() + 60
            return OnlineChallenge(challenge=ch, expires=self.now() + 60)

        return self._call("online_challenge", apply)

    def online_authorise(self, body: OnlineAuthoriseRequest) -> OnlineAuthoriseResponse:
        def apply() -> OnlineAuthoriseResponse:
            digest = crypto.sha256(canonical(body.model_dump()))
            known = self.online.get(body.idempotency_key)
            if known is not None:
                if known[0] != digest:
                    raise problem(409, 4091, "idempotency key reused for another payload")
                return known[1]
            req = OnlineRequest.parse(bytes.fromhex(body.request))
            account = self.accounts.get(req.card_id)
            if account is None:
                raise problem(404, 4041, "no online account for this card")
            if not crypto.verify(account.public_key, bytes.fromhex(body.signature),
                                 req.signed_data()):
                raise problem(422, 4224, "card signature does not verify")
            expires = self.challenges.pop(req.host_challenge.hex(), None)
            if expires is None or expires < self.now():
                raise problem(422, 4225, "unknown or expired challenge")
            if body.idempotency_key in self.reversed:
                resp = OnlineAuthoriseResponse(idempotency_key=body.idempotency_key,
                                               approved=False, reason_code=9)
            elif self.online_approve and account.online_balance >= req.amount:
                account.online_balance -= req.amount
                resp = OnlineAuthoriseResponse(
                    idempotency_key=body.idempotency_key, approved=True,
                    auth_code=f"A{next(self._ids):05d}", available_after=account.online_balance,
                )
            else:
                resp = OnlineAuthoriseResponse(idempotency_key=body.idempotency_key,
                                               approved=False, reason_code=51)
            self.online[body.idempotency_key] = (digest, resp, req.amount, req.card_id)
            return resp

        return self._call("online_authorise", apply)

    def reverse(self, body: ReversalRequest) -> ReversalResponse:
        def apply() -> ReversalResponse:
            self.reversal_calls[body.idempotency_key] += 1
            if body.idempotency_key in self.reversed:
                return ReversalResponse(idempotency_key=body.idempotency_key, reversed=True)
            self.reversed.add(body.idempotency_key)
            known = self.online.get(body.idempotency_key)
            if known is not None and known[1].approved:
                self.accounts[known[3]].online_balance += known[2]
            return ReversalResponse(idempotency_key=body.idempotency_key,
                                    reversed=known is not None and known[1].approved)

        return self._call("reverse", apply)

    def load_authorisation(self, body: LoadRequest) -> LoadAuthorisationResponse:
        def apply() -> LoadAuthorisationResponse:
            digest = crypto.sha256(canonical(body.model_dump()))
            known = self.loads.get(body.idempotency_key)
            if known is not None:
                if known[0] != digest:
                    raise problem(409, 4091, "idempotency key reused for another payload")
                return known[1]
            auth = LoadAuthorisation(
                card_id=bytes.fromhex(body.card_id), load_counter=body.load_counter,
                amount=body.amount, currency=currency(body.currency).numeric,
                card_challenge=bytes.fromhex(body.card_challenge),
                auth_id=crypto.sha256(body.idempotency_key.encode())[:8], time=self.now(),
            )
            ref = self.ks.current(HOST_LOAD)
            resp = LoadAuthorisationResponse(
                idempotency_key=body.idempotency_key, authorisation=auth.to_bytes().hex(),
                signature=self.ks.sign(ref, auth.signed_data()).hex(),
                load_certificate=self.ks.certificate(ref).encode().hex(),
            )
            self.loads[body.idempotency_key] = (digest, resp)
            return resp

        return self._call("load_authorisation", apply)

    def confirm_load(self, body: LoadConfirm) -> Ack:
        def apply() -> Ack:
            if body.idempotency_key not in self.loads:
                raise problem(404, 4042, "no such load")
            self.load_confirms[body.idempotency_key] = body.record
            return Ack()

        return self._call("confirm_load", apply)

    def report_writeback(self, body: WriteBackReport) -> Ack:
        def apply() -> Ack:
            card_id = bytes.fromhex(body.card_id)
            receipt = WriteBackReceipt.parse(bytes.fromhex(body.receipt))
            _, key = app_key(self.ks, card_id)
            if not crypto.constant_time_equal(receipt_mac(key, receipt), bytes.fromhex(body.mac)):
                raise problem(422, 4226, "write-back receipt MAC does not verify")
            if body.action_id not in self.writeback_reports:
                self.writeback_reports[body.action_id] = body
                self._remove_action(body.action_id)
            return Ack()

        return self._call("report_writeback", apply)

    def upload_batch(self, body: BatchUpload) -> BatchAck:
        def apply() -> BatchAck:
            if body.batch_id in self.batches:
                return self.batches[body.batch_id]
            public = self.terminals.get(body.terminal_id)
            if public is None:
                raise problem(403, 4032, "unknown terminal")
            unsigned = canonical(body.model_dump(exclude={"signature"}))
            if not sam_verify(public, bytes.fromhex(body.signature), unsigned,
                              purpose=PURPOSE_BATCH):
                raise problem(422, 4227, "batch signature does not verify")
            accepted, duplicates, rejected = [], [], []
            totals: dict[str, list[int]] = {}
            for e in body.entries:
                fields = e.model_dump(exclude={"prev_hash", "entry_hash", "sam_signature"})
                digest = entry_hash(bytes.fromhex(e.prev_hash), fields)
                if digest.hex() != e.entry_hash or not sam_verify(
                    public, bytes.fromhex(e.sam_signature), digest, purpose=PURPOSE_JOURNAL
                ):
                    rejected.append(Rejected(seq=e.seq, code=4228, reason="entry does not verify"))
                    continue
                key = (body.terminal_id, e.seq)
                known = self.cleared.get(key)
                if known is None:
                    self.cleared[key] = e
                    accepted.append(e.seq)
                elif known == e:
                    duplicates.append(e.seq)
                else:
                    rejected.append(Rejected(seq=e.seq, code=4093, reason="different content"))
                    continue
                t = totals.setdefault(e.kind, [0, 0])
                t[0] += 1
                t[1] += e.amount
            host_totals = {k: Totals(count=v[0], amount=v[1]) for k, v in sorted(totals.items())}
            if self.skew_totals and host_totals:
                k = next(iter(host_totals))
                host_totals[k] = Totals(count=host_totals[k].count,
                                        amount=host_totals[k].amount + 1)
            ack = BatchAck(batch_id=body.batch_id, accepted=accepted, duplicates=duplicates,
                           rejected=rejected, host_totals=host_totals,
                           mismatch=host_totals != body.totals)
            self.batches[body.batch_id] = ack
            return ack

        return self._call("upload_batch", apply)

    # --- checks for tests ------------------------------------------------------------------------
    def chain_ok(self, terminal_id: str) -> bool:
        """The cleared entries of a terminal form one unbroken hash chain from genesis."""
        prev = GENESIS
        for seq in sorted(s for t, s in self.cleared if t == terminal_id):
            e = self.cleared[(terminal_id, seq)]
            if bytes.fromhex(e.prev_hash) != prev:
                return False
            prev = bytes.fromhex(e.entry_hash)
        return True


def key_ref(text: str) -> KeyRef:
    return KeyRef.decode(text.encode())
