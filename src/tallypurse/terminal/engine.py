"""The terminal: card flows over a reader, with a durable journal, an outbox and lists.

A :class:`Terminal` lives in a data directory::

    sam.json      the SAM (key pair, certificate, trusted roots, sequence counter)
    journal.db    SQLite: attempts, journal, outbox, lists, parameters, enrolment data
    terminal.json terminal id, host URL, merchant name

Every tap starts the same way: SELECT the purse, apply the action-list
write-backs for that card, resolve any interrupted command of that card (GET
TRANSACTION PROOF), then do what was asked. A money command is recorded in the
journal before it is sent (``pending``) and after its answer (``committed``,
``declined`` or ``uncertain``); an offline purchase costs two journal
transactions. See docs/terminal.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from tallypurse.core import cert, crypto
from tallypurse.core import sw as SW
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, CardError, CertificateError, DecodeError
from tallypurse.core.hostapi import (
    AgentDebitAck,
    AgentDebitRequest,
    BatchAck,
    BatchUpload,
    EnrolRequest,
    HostApi,
    HostRejected,
    HostUnavailable,
    LoadConfirm,
    LoadRequest,
    OnlineAuthoriseRequest,
    Parameters,
    ReversalRequest,
    ReversalResponse,
    SyncRequest,
    Totals,
    WriteBackReport,
    batch_json,
)
from tallypurse.core.messages import (
    CancelOrder,
    CardEvent,
    DebitOrder,
    LoadAuthorisation,
    OnlineRequest,
    SignedEvent,
    WriteBackHeader,
    WriteBackReceipt,
)
from tallypurse.core.money import MAX_MINOR, Currency, currency_by_numeric, format_minor
from tallypurse.core.money import currency as currency_of
from tallypurse.core.protocol import (
    FLAG_BLOCKED,
    CertRole,
    DebtState,
    EventKind,
    TxType,
)
from tallypurse.core.purse_client import PurchaseSession, PurseClient, debit_event
from tallypurse.core.samproto import PURPOSE_BATCH, PURPOSE_JOURNAL, PURPOSE_REQUEST
from tallypurse.core.transport import ApduClient
from tallypurse.sam import Sam

from . import receipts as _receipts
from .errors import (
    CardLost,
    DeclineCode,
    Declined,
    JournalCorrupt,
    JournalFull,
    ListRejected,
    TapInterrupted,
    TerminalError,
)
from .journal import (
    COMMITTED,
    DECLINED,
    PENDING,
    UNCERTAIN,
    Attempt,
    Database,
    Journal,
    Tx,
    WriteHook,
)
from .lists import Lists, host_keys_from_certificates, verify_trust
from .outbox import FlushReport, Item, Kind, Outbox
from .reader import Reader
from .receipts import Receipt

SAM_FILE = "sam.json"
CARD_KEY_CACHE = 8192
JOURNAL_FILE = "journal.db"
CONFIG_FILE = "terminal.json"

T = TypeVar("T")

_SW_DECLINE: dict[int, DeclineCode] = {
    SW.INSUFFICIENT_FUNDS: DeclineCode.INSUFFICIENT_FUNDS,
    SW.CARD_BLOCKED: DeclineCode.CARD_BLOCKED,
    SW.CARD_EXPIRED: DeclineCode.CARD_EXPIRED,
    SW.NO_FREE_DEBT_SLOT: DeclineCode.NO_FREE_DEBT_SLOT,
    SW.INVALID_CERTIFICATE: DeclineCode.CARD_UNKNOWN_ISSUER,
    SW.OFFLINE_LIMIT_EXCEEDED: DeclineCode.OVER_OFFLINE_LIMIT,
    SW.CAP_EXCEEDED: DeclineCode.CAP_EXCEEDED,
    SW.FILE_NOT_FOUND: DeclineCode.CARD_NOT_PERSONALISED,
    SW.CREDIT_NOT_ALLOWED: DeclineCode.CARD_REFUSED,
    SW.CONDITIONS_NOT_SATISFIED: DeclineCode.CARD_REFUSED,
    SW.REPLAY: DeclineCode.CARD_REFUSED,
}


def decline_for_sw(sw: int) -> DeclineCode:
    return _SW_DECLINE.get(sw, DeclineCode.CARD_ERROR)


def tx_type_name(tx_type: int) -> str:
    try:
        return TxType(tx_type).name.lower()
    except ValueError:
        return str(tx_type)


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    terminal_id: bytes
    host_url: str = ""
    merchant_name: str = ""

    def save(self, path: Path) -> None:
        doc = {
            "format": "tallypurse-terminal",
            "version": 1,
            "terminal_id": self.terminal_id.hex(),
            "host_url": self.host_url,
            "merchant_name": self.merchant_name,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TerminalConfig:
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != "tallypurse-terminal":
                raise ValueError("not a terminal config")
            return cls(bytes.fromhex(doc["terminal_id"]), str(doc.get("host_url", "")),
                       str(doc.get("merchant_name", "")))
        except FileNotFoundError:
            raise TerminalError(
                f"no terminal in {path.parent} (run `tallypurse terminal enrol`)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TerminalError(f"{path} is damaged: {exc}") from None


@dataclass(frozen=True, slots=True)
class Resolution:
    """What became of an interrupted command when its card came back."""

    attempt: int
    kind: str
    outcome: str  # committed, declined (never carried out), uncertain (still unknown)
    detail: str = ""
    receipt: Receipt | None = None


@dataclass
class TapResult:
    receipt: Receipt | None
    recovered: bool = False  # the receipt is that of an interrupted tap, completed now
    resolutions: list[Resolution] = field(default_factory=list)
    writebacks: list[str] = field(default_factory=list)


@dataclass
class _Tap:
    purse: PurseClient
    card_id: bytes
    now: int
    resolutions: list[Resolution] = field(default_factory=list)
    writebacks: list[str] = field(default_factory=list)
    card_key: bytes | None = None


@dataclass
class CloseDayReport:
    batch_id: str | None
    entries: int
    totals: dict[str, Totals]
    delivered: bool
    host_totals: dict[str, Totals] | None = None
    mismatch: bool = False
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    flush: FlushReport | None = None
    results: list[dict[str, Any]] = field(default_factory=list)  # batches answered now
    refused: list[str] = field(default_factory=list)
    message: str = ""


def batch_totals(entries: list[Any]) -> dict[str, Totals]:
    """Count and sum of ``amount`` per journal kind."""
    acc: dict[str, list[int]] = {}
    for e in entries:
        t = acc.setdefault(e.kind, [0, 0])
        t[0] += 1
        t[1] += e.amount
    return {k: Totals(count=v[0], amount=v[1]) for k, v in sorted(acc.items())}


def _request_signer(sam: Sam, terminal_id: bytes, clock: Callable[[], float]
                    ) -> Callable[[str, str, bytes], dict[str, str]]:
    from tallypurse.core.httpsig import sign_request

    key_id = terminal_id.hex()

    def sign(method: str, url: str, body: bytes) -> dict[str, str]:
        return sign_request(
            method, url, body, key_id=key_id, created=int(clock()),
            signer=lambda base: sam.sign(base, purpose=PURPOSE_REQUEST),
        )

    return sign


class Terminal:
    """A POS terminal. Build one with :meth:`enrol` (first time) or :meth:`open`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        config: TerminalConfig,
        sam: Sam,
        db: Database,
        journal: Journal,
        lists: Lists,
        host: HostApi | None,
        clock: Callable[[], float],
        random: Callable[[int], bytes],
        jitter: Callable[[], float],
        host_keys: dict[CertRole, dict[KeyRef, bytes]],
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.sam = sam
        self.db = db
        self.journal = journal
        self.lists = lists
        self.host = host
        self.clock = clock
        self.random = random
        self.outbox = Outbox(db, clock=clock, jitter=jitter)
        self.host_keys = host_keys
        self.terminal_id = sam.terminal_id
        self.merchant_id = db.get_meta("merchant_id") or ""
        self._credit_ok: dict[bytes, bool] = {}
        self._card_keys: dict[bytes, tuple[bytes, int, int]] = {}
        self._batch_results: list[dict[str, Any]] = []
        self._handed_seq = 0  # journal seq of the last receipt returned in this process

    # --- life cycle ----------------------------------------------------------------------------
    @classmethod
    def enrol(
        cls,
        data_dir: Path,
        *,
        passphrase: str,
        host: HostApi,
        token: str,
        terminal_id: bytes,
        merchant_name: str = "",
        host_url: str = "",
        clock: Callable[[], float] = _time.time,
        random: Callable[[int], bytes] = os.urandom,
        jitter: Callable[[], float] | None = None,
        write_hook: WriteHook | None = None,
        sync: bool = True,
    ) -> Terminal:
        """Create the SAM, have the host certify it, store the trust material, sync."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        sam_path = data_dir / SAM_FILE
        if sam_path.exists() or (data_dir / JOURNAL_FILE).exists():
            raise TerminalError(f"{data_dir} already holds a terminal")
        now = int(clock())
        sam = Sam.create(sam_path, passphrase, terminal_id=terminal_id)
        db: Database | None = None
        if hasattr(host, "sign_request"):
            # The enrolment request is signed by the new SAM key too (the host checks it
            # against the key in the certificate request); later requests likewise.
            host.sign_request = _request_signer(sam, terminal_id, clock)
        try:
            try:
                resp = host.enrol(
                    EnrolRequest(
                        terminal_id=terminal_id.hex(),
                        csr=sam.certificate_request().hex(),
                        token=token,
                    )
                )
            except HostUnavailable as exc:
                raise TerminalError(f"enrolment failed, host unavailable: {exc}") from None
            except HostRejected as exc:
                raise TerminalError(f"enrolment refused by the host: {exc}") from None
            try:
                roots = {
                    KeyRef.decode(name.encode("ascii")): bytes.fromhex(point)
                    for name, point in resp.roots.items()
                }
                host_certs = [bytes.fromhex(c) for c in resp.host_certificates]
            except (ValueError, DecodeError) as exc:
                raise TerminalError(f"enrolment answer is malformed: {exc}") from None
            sam.install_certificate(bytes.fromhex(resp.certificate), roots, at=now)
            keys = host_keys_from_certificates(host_certs, roots, at=now)
            if not keys.get(CertRole.HOST_LIST):
                raise TerminalError("enrolment answer has no host list key certificate")
            db = Database(data_dir / JOURNAL_FILE, hook=write_hook)
            with db.write() as tx:
                Database.set_meta(tx, "merchant_id", resp.merchant_id)
                Database.set_meta(tx, "host_certificates", json.dumps(resp.host_certificates))
                Database.set_meta(tx, "enrolled_at", str(now))
            config = TerminalConfig(terminal_id, host_url, merchant_name)
            config.save(data_dir / CONFIG_FILE)
        except BaseException:
            sam.close()
            if db is not None:
                db.close()
            for name in (SAM_FILE, JOURNAL_FILE, JOURNAL_FILE + "-wal", JOURNAL_FILE + "-shm",
                         CONFIG_FILE):
                (data_dir / name).unlink(missing_ok=True)
            raise
        sam.close()
        db.close()
        terminal = cls.open(data_dir, passphrase=passphrase, host=host, clock=clock,
                            random=random, jitter=jitter, write_hook=write_hook)
        if hasattr(host, "sign_request"):
            host.sign_request = terminal.request_signer()  # the reopened SAM from now on
        if sync:
            try:
                terminal.sync()
            except TerminalError:
                pass  # enrolled; the first sync can be retried
        return terminal

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        passphrase: str,
        host: HostApi | None = None,
        clock: Callable[[], float] = _time.time,
        random: Callable[[int], bytes] = os.urandom,
        jitter: Callable[[], float] | None = None,
        write_hook: WriteHook | None = None,
    ) -> Terminal:
        data_dir = Path(data_dir)
        config = TerminalConfig.load(data_dir / CONFIG_FILE)
        sam = Sam.open(data_dir / SAM_FILE, passphrase)
        db: Database | None = None
        try:
            if sam.terminal_id != config.terminal_id:
                raise TerminalError("the SAM belongs to another terminal id than terminal.json")
            if not sam.enrolled:
                raise TerminalError("the SAM is not enrolled")
            db = Database(data_dir / JOURNAL_FILE, hook=write_hook)
            certs = json.loads(db.get_meta("host_certificates") or "[]")
            keys = host_keys_from_certificates(
                [bytes.fromhex(c) for c in certs], sam.trusted_roots, at=int(clock())
            )
            journal = Journal(db, sam.public_key)
            journal.verify()
            lists = Lists(db, keys.get(CertRole.HOST_LIST, {}))
        except ListRejected as exc:
            sam.close()
            if db is not None:
                db.close()
            raise JournalCorrupt(f"stored lists or parameters do not verify: {exc}") from None
        except BaseException:
            sam.close()
            if db is not None:
                db.close()
            raise
        import random as _random

        terminal = cls(
            data_dir=data_dir, config=config, sam=sam, db=db, journal=journal, lists=lists,
            host=host, clock=clock, random=random,
            jitter=jitter or _random.SystemRandom().random, host_keys=keys,
        )
        terminal._recover_after_restart()
        return terminal

    def close(self) -> None:
        self.db.close()
        self.sam.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover_after_restart(self) -> None:
        """Attempts left ``pending`` by a stop in the middle of a command: a card command
        that may have happened becomes ``uncertain``; an online authorisation that may
        have reached the host is reversed through the outbox."""
        pending = [a for a in self.journal.open_attempts_for() if a.state == PENDING]
        if not pending:
            return
        now = self._now()
        with self.db.write() as tx:
            after = None
            for a in pending:
                if a.kind == "online":
                    if a.request:
                        after = self._queue_reversal(tx, a, now, after)
                    else:
                        self.journal.finish_attempt(
                            tx, a.id, DECLINED, now, card_id=a.card_id,
                            decline_code=DeclineCode.NOT_APPLIED,
                            detail="stopped before the host was asked",
                        )
                else:
                    self.journal.finish_attempt(
                        tx, a.id, UNCERTAIN, now, card_id=a.card_id,
                        detail="terminal stopped during the card command",
                    )

    # --- helpers -------------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self.clock())

    def request_signer(self) -> Callable[[str, str, bytes], dict[str, str]]:
        """The ``sign_request`` hook for :class:`HttpHostClient`: RFC 9421 headers
        signed inside the SAM (purpose request), see :mod:`tallypurse.core.httpsig`."""
        return _request_signer(self.sam, self.terminal_id, self.clock)

    def _sign_journal(self, digest: bytes) -> bytes:
        return self.sam.sign(digest, purpose=PURPOSE_JOURNAL)

    def _params(self) -> Parameters:
        p = self.lists.parameters
        if p is None:
            raise Declined(DeclineCode.NO_PARAMETERS, "no parameters yet: sync with the host")
        return p

    def _currency(self) -> Currency:
        return currency_of(self._params().currency)

    def _host(self) -> HostApi:
        if self.host is None:
            raise Declined(DeclineCode.HOST_UNAVAILABLE, "no host configured")
        return self.host

    @staticmethod
    def _tx_type(name: str) -> TxType:
        try:
            return TxType.parse(name)
        except BadInput as exc:
            raise Declined(DeclineCode.UNKNOWN_TX_TYPE, exc.message) from None

    @staticmethod
    def _check_amount(amount: int) -> None:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise Declined(DeclineCode.AMOUNT_INVALID, "an amount is a whole number of minor units")
        if amount <= 0:
            raise Declined(DeclineCode.AMOUNT_INVALID, "the amount must be more than zero")
        if amount > MAX_MINOR:
            raise Declined(DeclineCode.AMOUNT_INVALID, "the amount is too large")

    def _check_room(self, params: Parameters) -> None:
        used = self.journal.open_entries + self.journal.open_attempts
        reserve = max(10, params.journal_limit // 20)
        if used >= params.journal_limit - reserve:
            raise JournalFull(
                f"the journal holds {used} entries the host has not acknowledged "
                f"(limit {params.journal_limit}); run `tallypurse terminal close-day` "
                "before taking more payments"
            )

    def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except CardLost as exc:
            raise TapInterrupted(
                f"card removed during {what}: nothing was charged; tap again"
            ) from exc
        except CardError as exc:
            raise Declined(decline_for_sw(exc.sw), f"{what}: {exc.message}") from None
        except DecodeError as exc:
            raise Declined(DeclineCode.CARD_ERROR, f"{what}: {exc.message}") from None

    def _card_key(self, tap: _Tap) -> bytes:
        """The card's public key, from its certificate verified by the SAM. A card seen
        before costs nothing: its key and validity are kept by card id (the TAC, checked
        at every tap, proves the card still holds that key); a miss reads the
        certificate (one APDU) and has the SAM verify it."""
        if tap.card_key is not None:
            return tap.card_key
        known = self._card_keys.get(tap.card_id)
        if known is not None and known[1] <= tap.now <= known[2]:
            tap.card_key = known[0]
            return known[0]
        raw = self._call(tap.purse.certificate, "reading the card certificate")
        try:
            key = self.sam.verify_card_certificate(raw, card_id=tap.card_id, at=tap.now)
            parsed = cert.parse(raw)
        except CertificateError as exc:
            code = (
                DeclineCode.CARD_EXPIRED
                if "not valid at this time" in exc.message
                else DeclineCode.CARD_UNKNOWN_ISSUER
            )
            raise Declined(code, f"card certificate: {exc.message}") from None
        if len(self._card_keys) >= CARD_KEY_CACHE:
            self._card_keys.pop(next(iter(self._card_keys)))
        self._card_keys[tap.card_id] = (key, parsed.not_before, parsed.not_after)
        tap.card_key = key
        return key

    def _check_card(self, tap: _Tap, *, flags: int, expiry: int | None, currency: int) -> None:
        if flags & FLAG_BLOCKED:
            raise Declined(DeclineCode.CARD_BLOCKED, "the card is blocked")
        if expiry is not None and tap.now > expiry:
            raise Declined(DeclineCode.CARD_EXPIRED, "the card has expired")
        if currency != self._currency().numeric:
            raise Declined(DeclineCode.CURRENCY_MISMATCH, f"card currency {currency}")

    def _check_blacklist(self, tap: _Tap) -> None:
        if self.lists.is_blacklisted(tap.card_id):
            raise Declined(DeclineCode.CARD_BLACKLISTED, "the card is on the blacklist")

    def _receipt(self, kind: str, ev: CardEvent, seq: int, *, reference: str = "",
                 tac: bytes = b"", recovered: bool = False) -> Receipt:
        return Receipt(
            kind=kind,
            merchant=self.config.merchant_name or self.merchant_id,
            terminal_id=self.terminal_id,
            time=ev.time,
            card_id=ev.card_id,
            currency=currency_by_numeric(ev.currency),
            tx_type=tx_type_name(ev.tx_type),
            purse_amount=ev.amount,
            online_amount=ev.split,
            online_pending=kind == "split purchase",
            balance_after=ev.balance_after,
            atc=ev.atc,
            tac=tac,
            journal_seq=seq,
            reference=reference,
            recovered=recovered,
        )

    # --- the start of every tap -----------------------------------------------------------------
    def _start(self, reader: Reader) -> _Tap:
        try:
            reader.connect()
        except CardLost as exc:
            raise TapInterrupted(f"no card: {exc.message}") from None
        purse = PurseClient(ApduClient(reader))
        selected = self._call(purse.select, "SELECT")
        if not selected.card_id:
            raise Declined(DeclineCode.CARD_NOT_PERSONALISED, "the purse is not personalised")
        tap = _Tap(purse, selected.card_id, self._now())
        if self.lists.actions_for(tap.card_id):
            self._apply_writebacks(tap)
        if self.journal.has_open_attempts(tap.card_id):
            self._resolve(tap)
        return tap

    def _recovered(self, tap: _Tap, kinds: tuple[str, ...], last: int) -> TapResult | None:
        """The terminal's most recent attempt, interrupted and now found committed on the
        card, is the sale in progress: complete it instead of charging again."""
        for r in tap.resolutions:
            if r.attempt == last and r.kind in kinds and r.outcome == COMMITTED and r.receipt:
                return self._hand(tap, r.receipt, recovered=True)
        return None

    def _hand(self, tap: _Tap, receipt: Receipt, *, recovered: bool = False) -> TapResult:
        """The result a tap returns: its receipt goes to the caller, who prints or shows
        it and then calls :meth:`receipt_delivered`."""
        self._handed_seq = receipt.journal_seq
        return TapResult(receipt, recovered, tap.resolutions, tap.writebacks)

    # --- receipts not handed over ----------------------------------------------------------------
    def undelivered(self) -> tuple[Attempt, Receipt] | None:
        """The terminal's most recent money attempt if it went through but its receipt
        was never marked delivered (the terminal stopped before the cashier saw it)."""
        a = self.journal.last_receipt_attempt()
        if a is None or a.state != COMMITTED or a.receipt is None or a.receipt_delivered:
            return None
        return a, _receipts.from_json(a.receipt)

    def receipt_delivered(self, receipt: Receipt | None) -> bool:
        """The caller printed or showed ``receipt``: a later request is a new one.
        Returns False if it was marked before (or is None, or not of this journal)."""
        if receipt is None:
            return False
        a = self.journal.last_receipt_attempt()  # nearly always the one (a primary-key probe)
        if a is None or a.journal_seq != receipt.journal_seq:
            a = self.journal.receipt_attempt(receipt.journal_seq)
        if a is None or a.receipt_delivered:
            return False
        with self.db.write() as tx:
            return self.journal.mark_delivered(tx, a.id, self._now())

    def last_receipt(self, journal_seq: int | None = None) -> Receipt | None:
        """The last receipt (or that of journal entry ``journal_seq``) as a copy to print
        again; None if the journal no longer holds it."""
        if journal_seq is None:
            a = self.journal.last_receipt_attempt()
            while a is not None and a.receipt is None:  # the newest one never completed
                older = self.db.one(
                    "SELECT max(id) FROM attempts WHERE id < ? AND receipt IS NOT NULL", (a.id,)
                )
                a = None if older is None else self.journal.attempt(int(older))
        else:
            a = self.journal.receipt_attempt(journal_seq)
        if a is None or a.receipt is None:
            return None
        return dataclasses.replace(_receipts.from_json(a.receipt), copy=True)

    def _undelivered_first(self, tap: _Tap, kind: str, amount: int | None,
                           tx_type: str = "") -> TapResult | None:
        """Before a new money command on this card: if the terminal's last one, on the same
        card, went through but its receipt never reached the cashier (a power cut after the
        card committed), the cashier's retry must not charge or load again. The same request
        (kind and amount) gets that receipt, marked RECOVERED; another one is refused until
        it is printed (``tallypurse terminal reprint``)."""
        found = self.undelivered()
        if found is None:
            return None
        a, receipt = found
        if a.card_id != tap.card_id or a.journal_seq == self._handed_seq:
            return None  # another customer; or returned in this process, to a caller that holds it
        same = {
            "load": a.kind == "load" and a.amount == amount,
            "purchase": a.kind in ("debit", "online") and a.amount + a.split == amount
            and a.tx_type == tx_type,
            "cancel": a.kind == "cancel",
        }[kind]
        if same:
            return self._hand(tap, dataclasses.replace(receipt, recovered=True), recovered=True)
        if kind == "cancel":
            return None  # cancelling the last purchase settles it either way
        what = receipt.kind + (f" ({receipt.tx_type})"
                               if receipt.tx_type and receipt.kind != "load" else "")
        money = format_minor(receipt.total, receipt.currency)
        raise Declined(
            DeclineCode.RECEIPT_NOT_DELIVERED,
            f"this card's {what} of {money} (journal {a.journal_seq}) went through but its "
            "receipt was never handed over: print it (`tallypurse terminal reprint`) and "
            "give it to the customer before a new transaction on this card; nothing was "
            "done now",
        )

    # --- write-back ------------------------------------------------------------------------------
    def _apply_writebacks(self, tap: _Tap) -> None:
        actions = self.lists.actions_for(tap.card_id)
        counters = self._call(tap.purse.counters, "GET DATA")
        cur = self._currency().code
        for action in actions:
            now = tap.now
            if action.seq <= counters.writeback_seq:
                with self.db.write() as tx:
                    self.lists.mark_applied(tx, action, now, "already on the card")
                continue
            sealed = bytes.fromhex(action.sealed)
            with self.db.write() as tx:
                attempt = self.journal.begin_attempt(
                    tx, kind="writeback", now=now, card_id=tap.card_id, tx_type=action.kind,
                    amount=0, split=0, currency=cur, request=sealed, reference=action.action_id,
                )
            try:
                receipt, mac = tap.purse.write_back(sealed)
            except CardLost:
                self._finish(attempt, tap.card_id, UNCERTAIN, detail="card removed in WRITE-BACK")
                raise TapInterrupted(
                    "card removed during a write-back: tap again", attempt
                ) from None
            except (CardError, DecodeError) as exc:
                sw = exc.sw if isinstance(exc, CardError) else 0
                with self.db.write() as tx:
                    if sw == SW.REPLAY:  # the card has it already; its receipt was lost
                        self.journal.finish_attempt(
                            tx, attempt, COMMITTED, now, card_id=tap.card_id,
                            detail="already applied",
                        )
                        self.lists.mark_applied(tx, action, now, "already on the card")
                    else:
                        self.journal.finish_attempt(
                            tx, attempt, DECLINED, now, card_id=tap.card_id,
                            decline_code=DeclineCode.CARD_REFUSED, detail=exc.message,
                        )
                        self.lists.mark_applied(tx, action, now, f"refused: {exc.message}")
                continue
            self._record_writeback(tap.card_id, attempt, action.action_id, action.kind,
                                   receipt, mac, now, cur)
            tap.writebacks.append(action.action_id)

    def _record_writeback(self, card_id: bytes, attempt: int, action_id: str, kind: str,
                          receipt: WriteBackReceipt, mac: bytes, now: int, cur: str) -> None:
        """Journal an applied write-back and queue its receipt for the host."""
        report = WriteBackReport(
            action_id=action_id, card_id=card_id.hex(),
            receipt=receipt.to_bytes().hex(), mac=mac.hex(),
        )
        prepared = self.journal.prepare(
            self._sign_journal, kind="writeback", time=now, card_id=card_id,
            tx_type=kind, amount=0, split=0, currency=cur, reference=action_id,
            attempt=attempt,
        )
        with self.db.write() as tx:
            seq = self.journal.append(tx, prepared)
            self.journal.finish_attempt(tx, attempt, COMMITTED, now, card_id=card_id,
                                        journal_seq=seq)
            self.lists.mark_applied_id(tx, action_id, card_id.hex(), now,
                                       "applied" if not receipt.result else "nothing to do")
            self.outbox.enqueue(tx, Kind.WRITEBACK_REPORT, action_id, report,
                                journal_seq=seq)

    # --- resolving interrupted commands ------------------------------------------------------
    def _finish(self, attempt: int, card_id: bytes, state: str, *,
                code: DeclineCode | None = None, detail: str = "") -> None:
        with self.db.write() as tx:
            self.journal.finish_attempt(
                tx, attempt, state, self._now(), card_id=card_id,
                decline_code=None if code is None else int(code), detail=detail,
            )

    def _resolve(self, tap: _Tap) -> None:
        counters = self._call(tap.purse.counters, "GET DATA")
        for a in self.journal.open_attempts_for(tap.card_id):
            outcome = self._resolve_one(tap, a, counters.atc, counters.load_counter,
                                        counters.writeback_seq)
            tap.resolutions.append(outcome)

    def _resolve_one(self, tap: _Tap, a: Attempt, atc: int, load_counter: int,
                     writeback_seq: int) -> Resolution:
        def not_applied(why: str) -> Resolution:
            self._finish(a.id, a.card_id, DECLINED, code=DeclineCode.NOT_APPLIED, detail=why)
            return Resolution(a.id, a.kind, DECLINED, why)

        def still_unknown(why: str) -> Resolution:
            self._finish(a.id, a.card_id, UNCERTAIN, detail=why)
            return Resolution(a.id, a.kind, UNCERTAIN, why)

        request = a.request or b""
        if a.kind in ("debit", "cancel"):
            layout = CancelOrder if a.kind == "cancel" else DebitOrder
            kind = EventKind.CANCEL if a.kind == "cancel" else EventKind.DEBIT
            order = layout.parse(request)
            if atc <= order.atc:
                return not_applied("the card never carried it out (ATC unchanged)")
            try:
                proof = tap.purse.transaction_proof(order.atc + 1)
            except CardLost:
                raise TapInterrupted("card removed while resolving: tap again") from None
            except CardError as exc:
                if exc.sw == SW.RECORD_NOT_FOUND:
                    return still_unknown("ATC no longer in the card's log")
                raise Declined(decline_for_sw(exc.sw), exc.message) from None
            ev = proof.event
            mine = (
                ev.kind == kind
                and ev.terminal_id == order.terminal_id
                and ev.terminal_seq == order.terminal_seq
                and ev.terminal_challenge == order.terminal_challenge
                and ev.card_challenge == order.card_challenge
            )
            if not mine:
                return not_applied("the card's transaction at that ATC is another one")
            if not self.sam.verify_tac(proof, self._card_key(tap)):
                self._finish(a.id, a.card_id, DECLINED, code=DeclineCode.TAC_INVALID,
                             detail="the card's proof does not verify")
                return Resolution(a.id, a.kind, DECLINED, "TAC does not verify")
            receipt = self._commit_event(a.id, a.kind, proof, reference=a.reference,
                                         recovered=True)
            return Resolution(a.id, a.kind, COMMITTED, "the card had committed it", receipt)
        if a.kind == "load":
            auth = LoadAuthorisation.parse(request)
            if load_counter <= auth.load_counter:
                return not_applied("the card never carried it out (load counter unchanged)")
            try:
                log = tap.purse.log()
            except CardLost:
                raise TapInterrupted("card removed while resolving: tap again") from None
            for rec in log:
                ev = rec.event
                if (ev.kind == EventKind.LOAD and ev.load_counter == auth.load_counter + 1
                        and ev.terminal_challenge == auth.auth_id):
                    if not self.sam.verify_tac(rec, self._card_key(tap)):
                        break
                    receipt = self._commit_event(a.id, "load", rec, reference=a.reference,
                                                 recovered=True)
                    return Resolution(a.id, a.kind, COMMITTED, "the card had loaded it", receipt)
            return still_unknown("the load is not in the card's log")
        if a.kind == "writeback":
            header = WriteBackHeader.parse(request[: WriteBackHeader.size()])
            if writeback_seq == header.seq:
                # The card answers its last receipt again when asked the same write-back.
                answer: tuple[WriteBackReceipt, bytes] | None
                try:
                    answer = tap.purse.write_back(request)
                except (CardError, DecodeError):
                    answer = None
                if answer is not None and answer[0].seq == header.seq:
                    self._record_writeback(a.card_id, a.id, a.reference, a.tx_type, answer[0],
                                           answer[1], self._now(), a.currency)
                    return Resolution(a.id, a.kind, COMMITTED, "applied; receipt recovered")
            if writeback_seq >= header.seq:
                self._finish(a.id, a.card_id, COMMITTED, detail="applied; receipt lost")
                return Resolution(a.id, a.kind, COMMITTED, "applied; receipt lost")
            return not_applied("the card never applied it")
        return not_applied("nothing to resolve on the card")

    def _commit_event(self, attempt: int, kind: str, signed: SignedEvent, *,
                      reference: str = "", recovered: bool = False) -> Receipt:
        """Journal a card-signed debit, cancel or load (and what it owes the host)."""
        ev = signed.event
        cur = currency_by_numeric(ev.currency).code
        now = self._now()
        tx_type = tx_type_name(ev.tx_type) if kind != "load" else ""
        body: BaseModel | None = None
        outbox_kind: Kind | None = None
        key = ""
        if kind == "debit" and ev.split:
            key = f"ad-{self.terminal_id.hex()}-{ev.card_id.hex()}-{ev.atc}"
            outbox_kind = Kind.AGENT_DEBIT
            body = AgentDebitRequest(
                idempotency_key=key, terminal_id=self.terminal_id.hex(),
                card_id=ev.card_id.hex(), atc=ev.atc, amount=ev.split, currency=cur,
                tx_type=tx_type, record=signed.to_bytes().hex(),
            )
            reference = key
        elif kind == "load":
            key = reference
            outbox_kind = Kind.CONFIRM_LOAD
            body = LoadConfirm(idempotency_key=key, record=signed.to_bytes().hex())
        prepared = self.journal.prepare(
            self._sign_journal, kind=kind, time=ev.time, card_id=ev.card_id, tx_type=tx_type,
            amount=ev.amount, split=ev.split, currency=cur, record=signed.to_bytes(),
            reference=reference, attempt=attempt,
        )
        label = {"debit": "split purchase" if ev.split else "purchase", "cancel": "cancel",
                 "load": "load"}[kind]
        receipt = self._receipt(label, ev, prepared.seq,
                                reference=reference if kind == "load" else "", tac=signed.tac)
        with self.db.write() as tx:
            seq = self.journal.append(tx, prepared)
            self.journal.finish_attempt(tx, attempt, COMMITTED, now, card_id=ev.card_id,
                                        journal_seq=seq, receipt=_receipts.to_json(receipt))
            if body is not None and outbox_kind is not None:
                self.outbox.enqueue(tx, outbox_kind, key, body, journal_seq=seq)
            if kind == "cancel" and ev.split:
                # withdraw the cancelled purchase's agent debit if it never left
                self.outbox.cancel(
                    tx, Kind.AGENT_DEBIT,
                    f"ad-{self.terminal_id.hex()}-{ev.card_id.hex()}-{ev.atc - 1}",
                )
        return dataclasses.replace(receipt, recovered=recovered) if recovered else receipt

    def _commit_or_interrupt(self, attempt: int, kind: str, signed: SignedEvent, *,
                             reference: str = "") -> Receipt:
        """Journal what the card committed; if the journal refuses the write, the attempt
        stays open (pending or uncertain) and the card's next tap records it."""
        try:
            return self._commit_event(attempt, kind, signed, reference=reference)
        except TerminalError as exc:
            with contextlib.suppress(TerminalError):
                self._finish(attempt, signed.event.card_id, UNCERTAIN,
                             detail=f"journal write failed: {exc.message}")
            raise TapInterrupted(
                f"the card completed the {kind} but the journal could not record it "
                f"({exc.message}); it is kept as uncertain: tap the same card again "
                "(no receipt until then)", attempt,
            ) from exc

    # --- offline and split purchase --------------------------------------------------------------
    def purchase(
        self, reader: Reader, amount: int, *, tx_type: str = "general", online: bool | None = None
    ) -> TapResult:
        """Take ``amount`` (minor units). ``online=None`` goes online above the offline
        limit; True always; False never. Raises Declined or TapInterrupted."""
        params = self._params()
        ttype = self._tx_type(tx_type)
        self._check_amount(amount)
        go_online = online if online is not None else amount > params.offline_limit
        if go_online:
            return self._online_purchase(reader, amount, ttype, params)
        if amount > params.offline_limit:
            raise Declined(
                DeclineCode.OVER_OFFLINE_LIMIT,
                f"{amount} is above the offline limit {params.offline_limit}; take it online",
            )
        self._check_room(params)
        last = self.journal.last_attempt
        tap = self._start(reader)
        recovered = self._recovered(tap, ("debit",), last) or self._undelivered_first(
            tap, "purchase", amount, ttype.name.lower())
        if recovered is not None:
            return recovered
        session = self._initialize_purchase(tap)
        purse = tap.purse
        card_key = self._card_key(tap)
        purse_part, split = amount, 0
        if amount > session.balance:
            purse_part, split = session.balance, amount - session.balance
            self._check_split(tap, session, ttype, split, params)
        if purse_part > session.offline_limit:
            raise Declined(DeclineCode.OVER_OFFLINE_LIMIT,
                           f"above the card's own offline limit {session.offline_limit}")
        order = DebitOrder(
            card_id=tap.card_id, atc=session.atc, amount=purse_part, split=split,
            currency=session.currency, tx_type=int(ttype), terminal_id=self.terminal_id,
            terminal_seq=self.sam.next_sequence(), time=tap.now,
            card_challenge=session.challenge, terminal_challenge=self.random(8),
        )
        signature = self.sam.sign_debit_order(order)
        with self.db.write() as tx:
            attempt = self.journal.begin_attempt(
                tx, kind="debit", now=tap.now, card_id=tap.card_id,
                tx_type=ttype.name.lower(), amount=purse_part, split=split,
                currency=params.currency, request=order.to_bytes(),
            )
        result = self._money_command(tap, attempt, lambda: purse.debit(order, signature),
                                     "DEBIT", "the payment: tap the same card again "
                                     "(no receipt until then)")
        signed = SignedEvent(debit_event(session, order, result), result.tac)
        if not self.sam.verify_tac(signed, card_key):
            self._finish(attempt, tap.card_id, DECLINED, code=DeclineCode.TAC_INVALID,
                         detail="TAC does not verify")
            raise Declined(DeclineCode.TAC_INVALID, "the card's transaction certificate is bad")
        receipt = self._commit_or_interrupt(attempt, "debit", signed)
        return self._hand(tap, receipt)

    def _credit_record_valid(self, raw: bytes, verify: Callable[[bytes], bool]) -> bool:
        digest = crypto.sha256(raw)
        ok = self._credit_ok.get(digest)
        if ok is None:
            ok = any(verify(k) for k in self.lists.list_keys.values())
            if len(self._credit_ok) > 4096:
                self._credit_ok.clear()
            self._credit_ok[digest] = ok
        return ok

    def _check_split(self, tap: _Tap, session: PurchaseSession, ttype: TxType, split: int,
                     params: Parameters) -> None:
        short = f"purse holds {session.balance}"
        if ttype.name.lower() not in params.credit_types:
            raise Declined(DeclineCode.CREDIT_TYPE_NOT_ALLOWED,
                           f"{short}; {ttype.name.lower()} cannot be paid on credit")
        credit = session.credit
        if credit is None:
            raise Declined(DeclineCode.NO_ONLINE_ACCOUNT, f"{short}; the card has no credit")
        if not self.lists.lists_fresh(tap.now, params.max_list_age_s):
            raise Declined(DeclineCode.LISTS_TOO_OLD,
                           f"{short}; lists are older than {params.max_list_age_s} s: sync")
        record = credit.record
        if (not self._credit_record_valid(credit.to_bytes(), credit.verify)
                or record.card_id != session.card_id or record.currency != session.currency):
            raise Declined(DeclineCode.CREDIT_RECORD_INVALID,
                           f"{short}; the credit record does not verify")
        if record.grade == 0:
            raise Declined(DeclineCode.CREDIT_RECORD_INVALID, f"{short}; no credit grade")
        if tap.now > record.expires:
            raise Declined(DeclineCode.CREDIT_RECORD_EXPIRED, f"{short}; credit record expired")
        if not (record.allowed_types >> int(ttype)) & 1:
            raise Declined(DeclineCode.CREDIT_TYPE_NOT_ALLOWED,
                           f"{short}; the card's credit does not cover {ttype.name.lower()}")
        if split > record.per_tap_overdraft:
            raise Declined(DeclineCode.OVERDRAFT_LIMIT,
                           f"{short}; {split} is above the per-tap overdraft "
                           f"{record.per_tap_overdraft}")
        if any(s.state == DebtState.FAILED for s in session.debts):
            raise Declined(DeclineCode.FAILED_DEBT_OUTSTANDING,
                           f"{short}; a failed debt must be repaid first (load)")
        outstanding = sum(s.amount for s in session.debts if s.state != DebtState.FREE)
        if outstanding + split > record.max_outstanding:
            raise Declined(DeclineCode.MAX_OUTSTANDING,
                           f"{short}; outstanding {outstanding} + {split} is above "
                           f"{record.max_outstanding}")
        usable = session.debts[: record.max_slots]
        if not any(s.state == DebtState.FREE for s in usable):
            raise Declined(DeclineCode.NO_FREE_DEBT_SLOT, f"{short}; no free debt slot")

    # --- online purchase -------------------------------------------------------------------------
    def _online_purchase(self, reader: Reader, amount: int, ttype: TxType,
                         params: Parameters) -> TapResult:
        host = self._host()
        self._check_room(params)
        tap = self._start(reader)
        recovered = self._undelivered_first(tap, "purchase", amount, ttype.name.lower())
        if recovered is not None:
            return recovered
        session = self._initialize_purchase(tap)
        purse = tap.purse
        self._card_key(tap)
        try:
            challenge = host.online_challenge()
            host_challenge = bytes.fromhex(challenge.challenge)
        except HostUnavailable as exc:
            raise Declined(DeclineCode.HOST_UNAVAILABLE, str(exc)) from None
        except HostRejected as exc:
            raise Declined(DeclineCode.HOST_REJECTED, str(exc)) from None
        if len(host_challenge) != 16:
            raise Declined(DeclineCode.HOST_REJECTED, "the host's challenge is not 16 bytes")
        counter, card_signature = self._call(
            lambda: purse.online_authorise(amount=amount, currency=session.currency,
                                           tx_type=int(ttype), time=tap.now,
                                           host_challenge=host_challenge),
            "ONLINE AUTHORISE",
        )
        request = OnlineRequest(
            card_id=tap.card_id, online_counter=counter, amount=amount,
            currency=session.currency, tx_type=int(ttype), terminal_id=self.terminal_id,
            time=tap.now, host_challenge=host_challenge,
        )
        key = f"on-{self.terminal_id.hex()}-{tap.card_id.hex()}-{counter}"
        with self.db.write() as tx:
            attempt = self.journal.begin_attempt(
                tx, kind="online", now=tap.now, card_id=tap.card_id,
                tx_type=ttype.name.lower(), amount=amount, split=0, currency=params.currency,
                request=request.to_bytes(), reference=key,
            )
        try:
            resp = host.online_authorise(OnlineAuthoriseRequest(
                idempotency_key=key, request=request.to_bytes().hex(),
                signature=card_signature.hex(),
            ))
            if resp.idempotency_key != key:
                raise HostUnavailable("the host answered for another request")
        except HostUnavailable as exc:
            a = self.journal.attempt(attempt)
            assert a is not None
            with self.db.write() as tx:
                self._queue_reversal(tx, a, tap.now, None)
            self.flush(kinds=(Kind.REVERSAL,))
            raise Declined(DeclineCode.ONLINE_TIMEOUT_REVERSED,
                           f"no answer from the host ({exc}); the authorisation is being "
                           "reversed, nothing was charged") from None
        except HostRejected as exc:
            self._finish(attempt, tap.card_id, DECLINED, code=DeclineCode.HOST_REJECTED,
                         detail=str(exc))
            raise Declined(DeclineCode.HOST_REJECTED, str(exc)) from None
        if not resp.approved:
            self._finish(attempt, tap.card_id, DECLINED, code=DeclineCode.HOST_DECLINED,
                         detail=f"host reason {resp.reason_code}")
            raise Declined(DeclineCode.HOST_DECLINED, f"host reason code {resp.reason_code}")
        reference = resp.auth_code or key
        prepared = self.journal.prepare(
            self._sign_journal, kind="online", time=tap.now, card_id=tap.card_id,
            tx_type=ttype.name.lower(), amount=amount, split=0, currency=params.currency,
            reference=reference, attempt=attempt,
        )
        receipt = Receipt(
            kind="online purchase", merchant=self.config.merchant_name or self.merchant_id,
            terminal_id=self.terminal_id, time=tap.now, card_id=tap.card_id,
            currency=currency_by_numeric(session.currency), tx_type=ttype.name.lower(),
            purse_amount=0, online_amount=amount, balance_after=session.balance,
            journal_seq=prepared.seq, reference=reference,
        )
        with self.db.write() as tx:
            seq = self.journal.append(tx, prepared)
            self.journal.finish_attempt(tx, attempt, COMMITTED, tap.now, card_id=tap.card_id,
                                        journal_seq=seq, receipt=_receipts.to_json(receipt))
        return self._hand(tap, receipt)

    def _queue_reversal(self, tx: Tx, a: Attempt, now: int, after: Any) -> Any:
        prepared = self.journal.prepare(
            self._sign_journal, kind="reversal", time=now, card_id=a.card_id,
            tx_type=a.tx_type, amount=a.amount, split=0, currency=a.currency,
            reference=a.reference, attempt=a.id, after=after,
        )
        seq = self.journal.append(tx, prepared)
        self.journal.finish_attempt(
            tx, a.id, DECLINED, now, card_id=a.card_id,
            decline_code=DeclineCode.ONLINE_TIMEOUT_REVERSED,
            detail="no answer from the host: reversal queued", journal_seq=seq,
        )
        self.outbox.enqueue(tx, Kind.REVERSAL, a.reference,
                            ReversalRequest(idempotency_key=a.reference, reason="timeout"),
                            journal_seq=seq)
        return prepared

    # --- load ------------------------------------------------------------------------------------
    def load(self, reader: Reader, amount: int, *, funding: str = "cash") -> TapResult:
        """Top up the purse with a host-signed load authorisation (online)."""
        params = self._params()
        self._check_amount(amount)
        if funding not in ("cash", "online_account"):
            raise Declined(DeclineCode.AMOUNT_INVALID, f"unknown funding {funding!r}")
        host = self._host()
        self._check_room(params)
        last = self.journal.last_attempt
        tap = self._start(reader)
        recovered = self._recovered(tap, ("load",), last) or self._undelivered_first(
            tap, "load", amount)
        if recovered is not None:
            return recovered
        self._check_blacklist(tap)
        purse = tap.purse
        card_key = self._card_key(tap)
        session = self._call(purse.initialize_load, "INITIALIZE LOAD")
        self._check_card(tap, flags=session.flags, expiry=None, currency=session.currency)
        failed = sum(s.amount for s in session.debts if s.state == DebtState.FAILED)
        if session.balance + max(0, amount - failed) > session.cap:
            raise Declined(DeclineCode.CAP_EXCEEDED,
                           f"the purse would hold more than its cap {session.cap}")
        key = f"ld-{self.terminal_id.hex()}-{self.sam.next_sequence()}"
        try:
            resp = host.load_authorisation(LoadRequest(
                idempotency_key=key, card_id=tap.card_id.hex(),
                load_counter=session.load_counter, card_challenge=session.challenge.hex(),
                amount=amount, currency=params.currency, funding=funding,  # type: ignore[arg-type]
            ))
            auth = LoadAuthorisation.parse(bytes.fromhex(resp.authorisation))
            auth_sig = bytes.fromhex(resp.signature)
            load_cert = bytes.fromhex(resp.load_certificate)
        except HostUnavailable as exc:
            raise Declined(DeclineCode.HOST_UNAVAILABLE, str(exc)) from None
        except HostRejected as exc:
            raise Declined(DeclineCode.HOST_REJECTED, str(exc)) from None
        except (ValueError, DecodeError) as exc:
            raise Declined(DeclineCode.HOST_REJECTED, f"malformed authorisation: {exc}") from None
        if (auth.card_id, auth.load_counter, auth.amount, auth.currency, auth.card_challenge) != (
            tap.card_id, session.load_counter, amount, session.currency, session.challenge
        ):
            raise Declined(DeclineCode.HOST_REJECTED, "the authorisation is for another load")
        with self.db.write() as tx:
            attempt = self.journal.begin_attempt(
                tx, kind="load", now=tap.now, card_id=tap.card_id, tx_type="", amount=amount,
                split=0, currency=params.currency, request=auth.to_bytes(), reference=key,
            )
        signed = self._money_command(tap, attempt,
                                     lambda: purse.credit(auth, auth_sig, load_cert),
                                     "CREDIT", "the load: tap the same card again")
        ev = signed.event
        if (ev.kind != EventKind.LOAD or ev.terminal_challenge != auth.auth_id
                or not self.sam.verify_tac(signed, card_key)):
            self._finish(attempt, tap.card_id, DECLINED, code=DeclineCode.TAC_INVALID,
                         detail="the load record does not verify")
            raise Declined(DeclineCode.TAC_INVALID, "the card's load record is bad")
        receipt = self._commit_or_interrupt(attempt, "load", signed, reference=key)
        # A stop from here until the caller marks the receipt delivered leaves it
        # undelivered in the journal: the retry gets it back (see _undelivered_first).
        self.flush(kinds=(Kind.CONFIRM_LOAD,))
        return self._hand(tap, receipt)

    def _money_command(self, tap: _Tap, attempt: int, command: Callable[[], T], ins: str,
                       during: str) -> T:
        """Send a command that moves money, the attempt already journalled as pending.

        A card pulled or an answer garbled leaves the attempt uncertain (resolved at the
        card's next tap); a refusal by the card declines it."""
        try:
            return command()
        except CardLost:
            self._finish(attempt, tap.card_id, UNCERTAIN, detail=f"card removed during {ins}")
            raise TapInterrupted(f"card removed during {during}", attempt) from None
        except CardError as exc:
            code = decline_for_sw(exc.sw)
            self._finish(attempt, tap.card_id, DECLINED, code=code, detail=exc.message)
            raise Declined(code, exc.message) from None
        except DecodeError as exc:
            self._finish(attempt, tap.card_id, UNCERTAIN, detail=f"garbled answer: {exc}")
            raise TapInterrupted("the card's answer was garbled: tap again", attempt) from None

    def _initialize_purchase(self, tap: _Tap) -> PurchaseSession:
        """Blacklist check, INITIALIZE PURCHASE with the SAM's certificate, card checks."""
        self._check_blacklist(tap)
        purse = tap.purse

        def initialize() -> PurchaseSession:
            # While several issuer roots are in force the SAM holds a certificate under
            # each; a card refuses one from a root it does not hold: show it the next.
            certificates = self.sam.certificates
            for i, certificate in enumerate(certificates):
                try:
                    return purse.initialize_purchase(certificate)
                except CardError as exc:
                    if exc.sw != SW.INVALID_CERTIFICATE or i + 1 == len(certificates):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

        session = self._call(initialize, "INITIALIZE PURCHASE")
        self._check_card(tap, flags=session.flags, expiry=session.expiry,
                         currency=session.currency)
        return session

    # --- cancel ----------------------------------------------------------------------------------
    def cancel_last(self, reader: Reader) -> TapResult:
        """Cancel this terminal's last purchase on this card, within the cancel window."""
        params = self._params()
        self._check_room(params)
        last = self.journal.last_attempt
        tap = self._start(reader)
        recovered = self._recovered(tap, ("cancel",), last) or self._undelivered_first(
            tap, "cancel", None)
        if recovered is not None:
            return recovered
        session = self._initialize_purchase(tap)
        purse = tap.purse
        entry = self.journal.last_entry_for(tap.card_id, "debit")
        if entry is None:
            raise Declined(DeclineCode.NOTHING_TO_CANCEL, "no purchase of this card here")
        last_ev = SignedEvent.parse(bytes.fromhex(entry.record)).event
        if last_ev.atc != session.atc or last_ev.terminal_id != self.terminal_id:
            raise Declined(DeclineCode.NOTHING_TO_CANCEL,
                           "the card's last transaction is not this terminal's purchase")
        if tap.now - last_ev.time > params.cancel_window_s:
            raise Declined(DeclineCode.CANCEL_WINDOW_PASSED,
                           f"more than {params.cancel_window_s} s since the purchase")
        card_key = self._card_key(tap)
        order = CancelOrder(
            card_id=tap.card_id, atc=session.atc, amount=last_ev.amount, split=last_ev.split,
            currency=session.currency, tx_type=last_ev.tx_type, terminal_id=self.terminal_id,
            terminal_seq=self.sam.next_sequence(), time=tap.now,
            card_challenge=session.challenge, terminal_challenge=self.random(8),
        )
        signature = self.sam.sign_debit_order(order)
        with self.db.write() as tx:
            attempt = self.journal.begin_attempt(
                tx, kind="cancel", now=tap.now, card_id=tap.card_id, tx_type=entry.tx_type,
                amount=last_ev.amount, split=last_ev.split, currency=params.currency,
                request=order.to_bytes(), reference=f"cancels-{entry.seq}",
            )
        result = self._money_command(tap, attempt, lambda: purse.cancel(order, signature),
                                     "CANCEL", "the cancel: tap the same card again")
        event = CardEvent(
            kind=EventKind.CANCEL, card_id=tap.card_id, atc=result.atc,
            load_counter=session.load_counter, amount=last_ev.amount, split=last_ev.split,
            currency=session.currency, tx_type=last_ev.tx_type, balance_before=session.balance,
            balance_after=result.balance_after, terminal_id=self.terminal_id,
            terminal_seq=order.terminal_seq, time=order.time,
            card_challenge=order.card_challenge, terminal_challenge=order.terminal_challenge,
            debt_slot=last_ev.debt_slot, cvr=result.cvr,
        )
        signed = SignedEvent(event, result.tac)
        if not self.sam.verify_tac(signed, card_key):
            self._finish(attempt, tap.card_id, DECLINED, code=DeclineCode.TAC_INVALID,
                         detail="TAC does not verify")
            raise Declined(DeclineCode.TAC_INVALID, "the card's cancel certificate is bad")
        receipt = self._commit_or_interrupt(attempt, "cancel", signed,
                                     reference=f"cancels-{entry.seq}")
        return self._hand(tap, receipt)

    # --- a tap that only settles what is pending for the card ------------------------------------
    def resolve(self, reader: Reader) -> TapResult:
        """Apply write-backs and resolve interrupted commands of the card in the field."""
        tap = self._start(reader)
        return TapResult(None, False, tap.resolutions, tap.writebacks)

    # --- host side: sync, outbox, close-day ------------------------------------------------------
    def sync(self) -> dict[str, Any]:
        """Flush the outbox, then download lists and parameters (verified, applied atomically)."""
        host = self._host()
        flushed = self.flush()  # reports first, so that the host can retire done actions
        request = SyncRequest(
            blacklist_version=self.lists.version("blacklist"),
            actions_version=self.lists.version("actions"),
            parameters_version=self.lists.parameters.version if self.lists.parameters else 0,
            trust_tag=self.db.get_meta("trust_tag") or "",
        )
        try:
            resp = host.sync(request)
        except HostUnavailable as exc:
            raise TerminalError(f"sync failed, host unavailable: {exc}") from None
        except HostRejected as exc:
            raise TerminalError(f"sync refused by the host: {exc}") from None
        now = self._now()
        trust = None
        old_list_keys = self.lists.list_keys
        if resp.trust is not None:
            # Keys were rotated or revoked: verify the new trust first, install it in the
            # SAM, then verify and apply the lists and parameters with the new list keys.
            trust = verify_trust(resp.trust, self.sam.trusted_roots, at=now)
            try:
                self.sam.update_trust(trust.roots, trust.terminal_certificates, at=now)
            except CertificateError as exc:
                raise ListRejected(f"trust bundle: {exc.message}") from None
            self.lists.list_keys = trust.host_keys.get(CertRole.HOST_LIST, {})
        try:
            with self.db.write() as tx:
                changes = self.lists.apply(
                    tx, now=now, blacklist=resp.blacklist, actions=resp.actions,
                    parameters=resp.parameters,
                )
                Database.set_meta(tx, "last_sync", str(now))
                Database.set_meta(tx, "host_time", str(resp.host_time))
                if trust is not None and resp.trust is not None:
                    Database.set_meta(tx, "host_certificates",
                                      json.dumps([c.hex() for c in trust.host_certificates]))
                    Database.set_meta(tx, "trust_tag", resp.trust.tag)
        except BaseException:
            self.lists.list_keys = old_list_keys
            raise
        if trust is not None and resp.trust is not None:
            self.host_keys = trust.host_keys
            self._credit_ok.clear()
            changes["trust"] = {"tag": resp.trust.tag, "roots": sorted(map(str, trust.roots)),
                                "list_keys": sorted(map(str, self.lists.list_keys))}
        return {"changes": changes, "host_time": resp.host_time, "outbox": flushed}

    def _deliver(self, item: Item) -> BaseModel:
        host = self.host
        if host is None:
            raise HostUnavailable("no host configured")
        if item.kind == Kind.AGENT_DEBIT:
            body = AgentDebitRequest.model_validate_json(item.payload)
            ack: AgentDebitAck = host.agent_debit(body)
            if ack.idempotency_key != body.idempotency_key:
                raise ValueError("agent debit acknowledged under another key")
            return ack
        if item.kind == Kind.REVERSAL:
            rev = ReversalRequest.model_validate_json(item.payload)
            out: ReversalResponse = host.reverse(rev)
            if out.idempotency_key != rev.idempotency_key:
                raise ValueError("reversal acknowledged under another key")
            return out
        if item.kind == Kind.CONFIRM_LOAD:
            return host.confirm_load(LoadConfirm.model_validate_json(item.payload))
        if item.kind == Kind.WRITEBACK_REPORT:
            return host.report_writeback(WriteBackReport.model_validate_json(item.payload))
        if item.kind == Kind.BATCH:
            batch = BatchUpload.model_validate_json(item.payload)
            batch_ack = host.upload_batch(batch)
            if batch_ack.batch_id != batch.batch_id:
                raise ValueError("batch acknowledged under another id")
            return batch_ack
        raise ValueError(f"unknown outbox kind {item.kind}")

    def _on_ack(self, tx: Tx, item: Item, response: BaseModel) -> None:
        if item.kind != Kind.BATCH or not isinstance(response, BatchAck):
            return
        batch = BatchUpload.model_validate_json(item.payload)
        seqs = {e.seq for e in batch.entries}
        taken = [s for s in response.accepted + response.duplicates if s in seqs]
        rejected = [(r.seq, r.code, r.reason) for r in response.rejected if r.seq in seqs]
        answered = set(taken) | {r[0] for r in rejected}
        missing = sorted(seqs - answered)
        self.journal.acknowledge(tx, taken)
        self.journal.reject(tx, rejected)
        if missing:  # the host did not say: they go into the next batch
            tx.executemany("UPDATE journal SET batch_id = NULL WHERE seq = ? AND status = 'open'",
                           [(s,) for s in missing])
        ours = {k: v.model_dump() for k, v in batch.totals.items()}
        theirs = {k: v.model_dump() for k, v in response.host_totals.items()}
        result = {
            "batch_id": batch.batch_id,
            "time": self._now(),
            "entries": len(batch.entries),
            "accepted": len(response.accepted),
            "duplicates": len(response.duplicates),
            "rejected": [{"seq": s, "code": c, "reason": r} for s, c, r in rejected],
            "missing": missing,
            "totals": ours,
            "host_totals": theirs,
            "mismatch": bool(response.mismatch or ours != theirs),
        }
        Database.set_meta(tx, "last_close", json.dumps(result))
        self.journal.prune_acknowledged(tx)
        tx.after_commit.append(lambda: self._batch_results.append(result))

    def _on_reject(self, tx: Tx, item: Item, exc: HostRejected) -> None:
        if item.kind == Kind.BATCH:
            batch_id = BatchUpload.model_validate_json(item.payload).batch_id
            self.journal.release_batch(tx, batch_id)
            result = {"batch_id": batch_id, "time": self._now(), "refused": str(exc),
                      "mismatch": False}
            Database.set_meta(tx, "last_close", json.dumps(result))
            tx.after_commit.append(lambda: self._batch_results.append(result))

    def flush(self, *, kinds: tuple[Kind, ...] | None = None, force: bool = False) -> FlushReport:
        """Deliver what is due in the outbox (best effort; never raises HostUnavailable)."""
        return self.outbox.flush(self._deliver, on_ack=self._on_ack, on_reject=self._on_reject,
                                 kinds=kinds, force=force)

    def close_day(self) -> CloseDayReport:
        """Upload every unacknowledged journal entry in one SAM-signed batch and compare
        the host's totals with ours. A mismatch is reported, never hidden."""
        self.journal.verify(all_signatures=True)
        entries = self.journal.entries("open", unbatched=True)
        batch_id: str | None = None
        totals = batch_totals(entries)
        if entries:
            digest = crypto.sha256(
                b"".join(bytes.fromhex(e.entry_hash) for e in entries)
            )[:6].hex()
            batch_id = (f"b-{self.terminal_id.hex()}-{entries[0].seq}-{entries[-1].seq}-"
                        f"{digest}")
            unsigned = BatchUpload(batch_id=batch_id, terminal_id=self.terminal_id.hex(),
                                   entries=entries, totals=totals, signature="")
            signature = self.sam.sign(batch_json(unsigned)[1], purpose=PURPOSE_BATCH)
            batch = unsigned.model_copy(update={"signature": signature.hex()})
            with self.db.write() as tx:
                self.journal.assign_batch(tx, [e.seq for e in entries], batch_id)
                self.outbox.enqueue(tx, Kind.BATCH, batch_id, batch)
        self._batch_results = []
        flushed = self.flush(force=True)
        results, self._batch_results = self._batch_results, []
        waiting = self.outbox.due(kinds=(Kind.BATCH,), include_waiting=True)
        report = CloseDayReport(batch_id=batch_id, entries=len(entries), totals=totals,
                                delivered=not waiting, flush=flushed, results=results)
        for r in results:
            if "refused" in r:
                report.refused.append(f"{r['batch_id']}: {r['refused']}")
                continue
            report.mismatch = report.mismatch or bool(r["mismatch"])
            report.accepted += int(r["accepted"])
            report.duplicates += int(r["duplicates"])
            report.rejected.extend(r["rejected"])
            if r["batch_id"] == batch_id:
                report.host_totals = {k: Totals(**v) for k, v in r["host_totals"].items()}
        if waiting:
            report.message = (f"{len(waiting)} batch(es) waiting for the host; "
                              "entries are kept until acknowledged")
        elif report.refused:
            report.message = "the host refused: " + "; ".join(report.refused)
        return report

    # --- reporting -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = self._now()
        params = self.lists.parameters
        counts = self.journal.counts()
        nxt = self.outbox.next_attempt()
        last_sync = self.db.get_meta("last_sync")
        open_attempts = self.journal.open_attempts_for()
        undelivered = self.undelivered()
        return {
            "terminal_id": self.terminal_id.hex(),
            "merchant_id": self.merchant_id,
            "merchant_name": self.config.merchant_name,
            "host_url": self.config.host_url,
            "time": now,
            "journal": {
                **counts,
                "unacknowledged": self.journal.open_entries,
                "limit": params.journal_limit if params else None,
                "schema": self.db.schema_version,
            },
            "open_attempts": [
                {"attempt": a.id, "kind": a.kind, "state": a.state, "card_id": a.card_id.hex(),
                 "amount": a.amount, "split": a.split, "detail": a.detail}
                for a in open_attempts
            ],
            "outbox": {
                "depth": sum(self.outbox.depth().values()),
                "by_kind": self.outbox.depth(),
                "states": self.outbox.counts(),
                "next_attempt_in_s": None if nxt is None else max(0, round(nxt - now, 1)),
                "rejected": self.outbox.rejected(),
            },
            "undelivered_receipt": None if undelivered is None else {
                "attempt": undelivered[0].id, "kind": undelivered[1].kind,
                "journal_seq": undelivered[1].journal_seq,
                "card_id": undelivered[1].card_id.hex(), "amount": undelivered[1].total,
                "currency": undelivered[1].currency.code, "time": undelivered[1].time,
            },
            "rejected_entries": self.journal.rejected_entries(),
            "lists": self.lists.summary(now),
            "parameters": params.model_dump() if params else None,
            "last_sync": None if last_sync is None else int(last_sync),
            "last_sync_age_s": None if last_sync is None else now - int(last_sync),
            "last_close": json.loads(self.db.get_meta("last_close") or "null"),
        }
