"""The terminal's durable journal: one SQLite file (WAL, synchronous FULL).

Two tables carry the money story:

``attempts``
    one row per card command that can move money or change a card (DEBIT,
    CANCEL, CREDIT, ONLINE AUTHORISE, WRITE-BACK). It is written *before* the
    command (state ``pending``, with the exact signed order sent to the card)
    and again *after* it (``committed``, ``declined`` or ``uncertain``). A
    terminal that restarts turns every ``pending`` row into ``uncertain``; the
    next tap of that card resolves it with GET TRANSACTION PROOF. A committed money
    attempt also keeps its receipt and, once the caller printed or showed it, when it
    was delivered (schema 2; outside the hash chain, see docs/terminal.md).

``journal``
    the outcomes the host must hear of: gap-free sequence numbers, each entry
    hash-chained to the one before and signed by the SAM (purpose journal).
    An entry stays until the host acknowledges it (day-end close).

The outbox and the lists live in the same file (see ``outbox.py``, ``lists.py``)
so that an outcome, its agent debit and its write-back report commit together.

Every write goes through :meth:`Database.write`, which calls a *write hook*
before each statement and before COMMIT: tests pass :class:`CrashAt` to cut the
terminal's power at the N-th write and check that nothing the card committed is lost.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallypurse.core import crypto
from tallypurse.core.hostapi import JournalEntry, canonical
from tallypurse.core.samproto import PURPOSE_JOURNAL, verify_signature

from .errors import JournalCorrupt, TerminalError

GENESIS = b"\x00" * 32

# --- migrations -------------------------------------------------------------------------------
# Numbered, append-only. Each is a list of statements run in one transaction.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "journal, attempts, outbox, lists",
        [
            """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
            """CREATE TABLE attempts (
                id INTEGER PRIMARY KEY,
                kind TEXT NOT NULL,
                state TEXT NOT NULL,
                created INTEGER NOT NULL,
                updated INTEGER NOT NULL,
                card_id TEXT NOT NULL,
                tx_type TEXT NOT NULL,
                amount INTEGER NOT NULL,
                split INTEGER NOT NULL,
                currency TEXT NOT NULL,
                request BLOB,
                reference TEXT NOT NULL DEFAULT '',
                decline_code INTEGER,
                detail TEXT NOT NULL DEFAULT '',
                journal_seq INTEGER)""",
            """CREATE INDEX attempts_open ON attempts(card_id)
                WHERE state IN ('pending', 'uncertain')""",
            """CREATE TABLE journal (
                seq INTEGER PRIMARY KEY,
                kind TEXT NOT NULL,
                time INTEGER NOT NULL,
                card_id TEXT NOT NULL,
                tx_type TEXT NOT NULL,
                amount INTEGER NOT NULL,
                split INTEGER NOT NULL,
                currency TEXT NOT NULL,
                record TEXT NOT NULL,
                reference TEXT NOT NULL,
                prev_hash BLOB NOT NULL,
                entry_hash BLOB NOT NULL,
                sam_signature BLOB NOT NULL,
                attempt INTEGER,
                status TEXT NOT NULL DEFAULT 'open',
                batch_id TEXT,
                reject_code INTEGER,
                reject_reason TEXT)""",
            # no secondary index on journal: each one is another page in every tap's commit;
            # the rare scans (close-day, cancel) walk the table from its newest entry
            """CREATE TABLE outbox (
                id INTEGER PRIMARY KEY,
                kind TEXT NOT NULL,
                idem_key TEXT NOT NULL,
                payload TEXT NOT NULL,
                payload_hash BLOB NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                created INTEGER NOT NULL,
                next_at REAL NOT NULL,
                last_error TEXT NOT NULL DEFAULT '',
                response TEXT,
                done_at INTEGER,
                journal_seq INTEGER,
                UNIQUE (kind, idem_key))""",
            """CREATE INDEX outbox_due ON outbox(state, next_at)""",
            """CREATE TABLE blacklist (card_id BLOB PRIMARY KEY) WITHOUT ROWID""",
            """CREATE TABLE actions (
                action_id TEXT PRIMARY KEY,
                card_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                seq INTEGER NOT NULL,
                sealed TEXT NOT NULL)""",
            """CREATE TABLE applied_actions (
                action_id TEXT PRIMARY KEY,
                card_id TEXT NOT NULL,
                applied INTEGER NOT NULL,
                result TEXT NOT NULL)""",
            """CREATE TABLE lists (
                kind TEXT PRIMARY KEY,
                version INTEGER NOT NULL,
                issued INTEGER NOT NULL,
                fresh_at INTEGER NOT NULL,
                document TEXT)""",
        ],
    ),
    (
        2,
        "receipt of each attempt and when it was handed over",
        [
            # Outside the hash chain on purpose: the journal entries (hashed, SAM-signed)
            # stay as they are; an attempt row is the terminal's own working record.
            """ALTER TABLE attempts ADD COLUMN receipt TEXT""",
            """ALTER TABLE attempts ADD COLUMN receipt_delivered INTEGER""",
            # Attempts finished by older software: whether their receipt was printed is not
            # known; they count as delivered, so that none of them can absorb a new load.
            """UPDATE attempts SET receipt_delivered = updated WHERE state = 'committed'""",
        ],
    ),
]

# The attempts that end in a receipt for the customer.
RECEIPT_KINDS = ("debit", "cancel", "load", "online")


# --- crash injection ----------------------------------------------------------------------------
class SimulatedCrash(BaseException):
    """The terminal's power was cut (raised by a write hook). A BaseException, so that
    no ``except Exception`` in the terminal can swallow it: nothing runs after a crash."""


WriteHook = Callable[[str], None]


class CrashAt:
    """A write hook that counts journal writes (statements and commits) and cuts the
    power at write number ``n`` (0-based): that write and everything after it never happen."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.count = 0
        self.labels: list[str] = []

    def __call__(self, label: str) -> None:
        if self.n is not None and self.count == self.n:
            self.n = None
            raise SimulatedCrash(f"terminal power cut at journal write {self.count} ({label})")
        self.count += 1
        self.labels.append(label)


# --- database ------------------------------------------------------------------------------------
class Tx:
    """A write transaction in progress."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.after_commit: list[Callable[[], None]] = []
        self.journal_head: tuple[int, bytes] | None = None  # head after this tx's appends

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        verb = sql.split(None, 1)[0].lower()
        if verb != "select":
            self._db.hook(verb)
        return self._db.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self._db.hook(sql.split(None, 1)[0].lower())
        return self._db.conn.executemany(sql, rows)


class Database:
    """The terminal's SQLite file with its pragmas, migrations and write hook."""

    def __init__(self, path: Path, *, hook: WriteHook | None = None) -> None:
        self.path = Path(path)
        self.hook: WriteHook = hook or (lambda _label: None)
        self.write_seconds = 0.0  # time spent in write transactions (benchmarks)
        self.commits = 0
        self.dead = False
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(f"{self.path} is not a usable terminal journal: {exc}") from None
        self._migrate()

    def _migrate(self) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
        )
        row = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        current = row[0] or 0
        newest = MIGRATIONS[-1][0]
        if current > newest:
            raise TerminalError(
                f"journal {self.path} has schema {current}, newer than this software ({newest})"
            )
        for number, name, statements in MIGRATIONS:
            if number <= current:
                continue
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for sql in statements:
                    self.conn.execute(sql)
                self.conn.execute(
                    "INSERT INTO schema_migrations(version, name) VALUES (?, ?)", (number, name)
                )
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.conn.execute("ROLLBACK")
                raise TerminalError(
                    f"journal migration {number} ({name}) failed, nothing changed: {exc}"
                ) from None

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """One durable transaction. On an error it is rolled back and re-raised as is
        (sqlite errors become TerminalError); after a SimulatedCrash nothing more runs."""
        if self.dead:
            raise TerminalError("the journal is closed")
        t0 = time.perf_counter()
        tx = Tx(self)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            yield tx
            self.hook("commit")
            self.conn.execute("COMMIT")
        except SimulatedCrash:
            self.dead = True  # like a power cut: the open transaction is never committed
            raise
        except BaseException as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise TerminalError(f"the journal refused a write: {exc}") from exc
            raise
        finally:
            self.write_seconds += time.perf_counter() - t0
        self.commits += 1
        for callback in tx.after_commit:
            callback()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        cur = self.conn.execute(sql, params)
        rows: list[Any] = cur.fetchall()
        return rows

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def get_meta(self, key: str) -> str | None:
        value = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if value is None else str(value)

    @staticmethod
    def set_meta(tx: Tx, key: str, value: str) -> None:
        tx.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        """Close the file. An uncommitted transaction (after a crash) is discarded."""
        self.dead = True
        self.conn.close()


# --- attempts ------------------------------------------------------------------------------------
PENDING, COMMITTED, UNCERTAIN, DECLINED = "pending", "committed", "uncertain", "declined"
ATTEMPT_STATES = (PENDING, COMMITTED, UNCERTAIN, DECLINED)


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    kind: str
    state: str
    created: int
    card_id: bytes
    tx_type: str
    amount: int
    split: int
    currency: str
    request: bytes | None
    reference: str
    decline_code: int | None
    detail: str
    journal_seq: int | None
    receipt: str | None = None  # the receipt as JSON (receipts.to_json), once committed
    receipt_delivered: int | None = None  # when the caller handed it over (printed, shown)


_ATTEMPT_COLS = (
    "id, kind, state, created, card_id, tx_type, amount, split, currency, request, "
    "reference, decline_code, detail, journal_seq, receipt, receipt_delivered"
)


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        row[0], row[1], row[2], row[3], bytes.fromhex(row[4]), row[5], row[6], row[7], row[8],
        None if row[9] is None else bytes(row[9]), row[10], row[11], row[12], row[13],
        row[14], row[15],
    )


# --- journal entries -----------------------------------------------------------------------------
def entry_hash(prev_hash: bytes, fields: dict[str, Any]) -> bytes:
    """SHA-256 over the previous entry's hash and the canonical JSON of the entry's
    content (JournalEntry without prev_hash, entry_hash and sam_signature)."""
    return crypto.sha256(prev_hash + canonical(fields))


_CONTENT = ("seq", "kind", "time", "card_id", "tx_type", "amount", "split", "currency",
            "record", "reference")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A journal entry computed and signed outside any transaction, ready to append.
    (Plain values: no model validation on the tap path.)"""

    fields: dict[str, Any]
    prev_hash: bytes
    entry_hash: bytes
    signature: bytes
    attempt: int | None

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])

    @property
    def entry(self) -> JournalEntry:
        return JournalEntry(**self.fields, prev_hash=self.prev_hash.hex(),
                            entry_hash=self.entry_hash.hex(), sam_signature=self.signature.hex())


class Journal:
    """Attempts and the hash-chained, SAM-signed journal over a :class:`Database`."""

    def __init__(self, db: Database, sam_public_key: bytes) -> None:
        self.db = db
        self.sam_public_key = sam_public_key
        anchor_seq = int(db.get_meta("chain_anchor_seq") or 0)
        anchor_hash = bytes.fromhex(db.get_meta("chain_anchor_hash") or GENESIS.hex())
        row = db.conn.execute(
            "SELECT seq, entry_hash FROM journal ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        self.head: tuple[int, bytes] = (
            (row[0], bytes(row[1])) if row else (anchor_seq, anchor_hash)
        )
        self.anchor = (anchor_seq, anchor_hash)
        self.open_entries = int(db.one("SELECT count(*) FROM journal WHERE status = 'open'"))
        self.open_attempts = int(
            db.one("SELECT count(*) FROM attempts WHERE state IN ('pending', 'uncertain')")
        )
        self.last_attempt = int(db.one("SELECT max(id) FROM attempts") or 0)
        self._open_by_card: dict[bytes, int] = {
            bytes.fromhex(r[0]): int(r[1])
            for r in db.query(
                "SELECT card_id, count(*) FROM attempts WHERE state IN ('pending', 'uncertain') "
                "GROUP BY card_id"
            )
        }

    def has_open_attempts(self, card_id: bytes) -> bool:
        return card_id in self._open_by_card

    # --- integrity -------------------------------------------------------------------------------
    def verify(self, *, all_signatures: bool = False) -> int:
        """Check the hash chain from the anchor, and the SAM signature of the newest entry
        (which seals the whole chain) or of every entry. Returns the number of entries.
        Raises JournalCorrupt."""
        prev_seq, prev_hash = self.anchor
        count = 0
        last: tuple[bytes, bytes] | None = None
        cur = self.db.conn.execute(
            "SELECT seq, kind, time, card_id, tx_type, amount, split, currency, record, "
            "reference, prev_hash, entry_hash, sam_signature FROM journal ORDER BY seq"
        )
        for row in cur:
            seq = row[0]
            if seq != prev_seq + 1:
                raise JournalCorrupt(f"journal sequence gap: {prev_seq} then {seq}")
            if bytes(row[10]) != prev_hash:
                raise JournalCorrupt(f"journal entry {seq} is not chained to entry {prev_seq}")
            fields = dict(zip(_CONTENT, row[:10], strict=True))
            digest = entry_hash(prev_hash, fields)
            if digest != bytes(row[11]):
                raise JournalCorrupt(f"journal entry {seq} was altered (hash does not match)")
            if all_signatures and not verify_signature(
                self.sam_public_key, bytes(row[12]), digest, purpose=PURPOSE_JOURNAL
            ):
                raise JournalCorrupt(f"journal entry {seq} has a bad SAM signature")
            last = (digest, bytes(row[12]))
            prev_seq, prev_hash = seq, digest
            count += 1
        if last is not None and not verify_signature(
            self.sam_public_key, last[1], last[0], purpose=PURPOSE_JOURNAL
        ):
            raise JournalCorrupt(f"journal entry {prev_seq} has a bad SAM signature")
        if (prev_seq, prev_hash) != self.head:
            raise JournalCorrupt("journal head moved while verifying")
        return count

    # --- attempts --------------------------------------------------------------------------------
    def begin_attempt(
        self,
        tx: Tx,
        *,
        kind: str,
        now: int,
        card_id: bytes,
        tx_type: str,
        amount: int,
        split: int,
        currency: str,
        request: bytes | None,
        reference: str = "",
    ) -> int:
        cur = tx.execute(
            "INSERT INTO attempts(kind, state, created, updated, card_id, tx_type, amount, "
            "split, currency, request, reference) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, now, now, card_id.hex(), tx_type, amount, split, currency, request, reference),
        )
        attempt_id = int(cur.lastrowid or 0)

        def done() -> None:
            self.open_attempts += 1
            self.last_attempt = attempt_id
            self._open_by_card[card_id] = self._open_by_card.get(card_id, 0) + 1

        tx.after_commit.append(done)
        return attempt_id

    def set_request(self, tx: Tx, attempt_id: int, request: bytes, now: int) -> None:
        tx.execute(
            "UPDATE attempts SET request = ?, updated = ? WHERE id = ?", (request, now, attempt_id)
        )

    def finish_attempt(
        self,
        tx: Tx,
        attempt: int,
        state: str,
        now: int,
        *,
        card_id: bytes,
        decline_code: int | None = None,
        detail: str = "",
        journal_seq: int | None = None,
        was_open: bool = True,
        receipt: str | None = None,
    ) -> None:
        if state not in (COMMITTED, UNCERTAIN, DECLINED):
            raise ValueError(state)
        tx.execute(
            "UPDATE attempts SET state = ?, updated = ?, decline_code = ?, detail = ?, "
            "journal_seq = ?, receipt = ? WHERE id = ?",
            (state, now, decline_code, detail, journal_seq, receipt, attempt),
        )
        if state == UNCERTAIN or not was_open:
            return

        def done() -> None:
            self.open_attempts -= 1
            left = self._open_by_card.get(card_id, 1) - 1
            if left > 0:
                self._open_by_card[card_id] = left
            else:
                self._open_by_card.pop(card_id, None)

        tx.after_commit.append(done)

    def attempt(self, attempt_id: int) -> Attempt | None:
        row = self.db.conn.execute(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE id = ?", (attempt_id,)
        ).fetchone()
        return None if row is None else _attempt(row)

    def open_attempts_for(self, card_id: bytes | None = None) -> list[Attempt]:
        if card_id is None:
            rows = self.db.query(
                f"SELECT {_ATTEMPT_COLS} FROM attempts "
                "WHERE state IN ('pending', 'uncertain') ORDER BY id"
            )
        else:
            rows = self.db.query(
                f"SELECT {_ATTEMPT_COLS} FROM attempts "
                "WHERE card_id = ? AND state IN ('pending', 'uncertain') ORDER BY id",
                (card_id.hex(),),
            )
        return [_attempt(r) for r in rows]

    def last_receipt_attempt(self) -> Attempt | None:
        """The terminal's most recent attempt that ends in a receipt (whatever its state)."""
        row = self.db.conn.execute(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE kind IN "
            f"({', '.join('?' * len(RECEIPT_KINDS))}) ORDER BY id DESC LIMIT 1",
            RECEIPT_KINDS,
        ).fetchone()
        return None if row is None else _attempt(row)

    def receipt_attempt(self, journal_seq: int) -> Attempt | None:
        row = self.db.conn.execute(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE journal_seq = ? AND receipt IS NOT NULL",
            (journal_seq,),
        ).fetchone()
        return None if row is None else _attempt(row)

    def mark_delivered(self, tx: Tx, attempt_id: int, now: int) -> bool:
        """Record that the attempt's receipt was handed over. False if it already was."""
        cur = tx.execute(
            "UPDATE attempts SET receipt_delivered = ? "
            "WHERE id = ? AND receipt IS NOT NULL AND receipt_delivered IS NULL",
            (now, attempt_id),
        )
        return bool(cur.rowcount)

    def attempts(self, limit: int = 50) -> list[Attempt]:
        rows = self.db.query(
            f"SELECT {_ATTEMPT_COLS} FROM attempts ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [_attempt(r) for r in rows]

    # --- journal entries -------------------------------------------------------------------------
    def prepare(
        self,
        sign: Callable[[bytes], bytes],
        *,
        kind: str,
        time: int,
        card_id: bytes,
        tx_type: str,
        amount: int,
        split: int,
        currency: str,
        record: bytes = b"",
        reference: str = "",
        attempt: int | None = None,
        after: Prepared | None = None,
    ) -> Prepared:
        """Build and sign the next entry (``after`` another prepared one in the same
        transaction). Nothing is written: :meth:`append` does that."""
        if after is not None:
            prev_seq, prev_hash = after.seq, after.entry_hash
        else:
            prev_seq, prev_hash = self.head
        fields: dict[str, Any] = {
            "seq": prev_seq + 1,
            "kind": kind,
            "time": time,
            "card_id": card_id.hex(),
            "tx_type": tx_type,
            "amount": amount,
            "split": split,
            "currency": currency,
            "record": record.hex(),
            "reference": reference,
        }
        digest = entry_hash(prev_hash, fields)
        return Prepared(fields, prev_hash, digest, sign(digest), attempt)

    def append(self, tx: Tx, prepared: Prepared) -> int:
        f = prepared.fields
        seq = prepared.seq
        head_seq, head_hash = tx.journal_head or self.head
        if seq != head_seq + 1 or prepared.prev_hash != head_hash:
            raise TerminalError("journal entry prepared against an old head")
        tx.execute(
            "INSERT INTO journal(seq, kind, time, card_id, tx_type, amount, split, currency, "
            "record, reference, prev_hash, entry_hash, sam_signature, attempt) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq, f["kind"], f["time"], f["card_id"], f["tx_type"], f["amount"], f["split"],
                f["currency"], f["record"], f["reference"], prepared.prev_hash,
                prepared.entry_hash, prepared.signature, prepared.attempt,
            ),
        )
        head = (seq, prepared.entry_hash)
        tx.journal_head = head

        def done() -> None:
            self.head = max(self.head, head)
            self.open_entries += 1

        tx.after_commit.append(done)
        return seq

    def entry(self, seq: int) -> JournalEntry | None:
        rows = self._entries("WHERE seq = ?", (seq,))
        return rows[0] if rows else None

    def entries(self, status: str | None = "open", *, unbatched: bool = False,
                limit: int | None = None) -> list[JournalEntry]:
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if unbatched:
            where.append("batch_id IS NULL")
        sql = ("WHERE " + " AND ".join(where)) if where else ""
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._entries(sql, params)

    def _entries(self, where: str, params: Sequence[Any]) -> list[JournalEntry]:
        rows = self.db.query(
            "SELECT seq, kind, time, card_id, tx_type, amount, split, currency, record, "
            f"reference, prev_hash, entry_hash, sam_signature FROM journal {where}",
            params,
        )
        return [
            JournalEntry(
                seq=r[0], kind=r[1], time=r[2], card_id=r[3], tx_type=r[4], amount=r[5],
                split=r[6], currency=r[7], record=r[8], reference=r[9],
                prev_hash=bytes(r[10]).hex(), entry_hash=bytes(r[11]).hex(),
                sam_signature=bytes(r[12]).hex(),
            )
            for r in rows
        ]

    def last_entry_for(self, card_id: bytes, kind: str) -> JournalEntry | None:
        rows = self._entries(
            "WHERE card_id = ? AND kind = ? ORDER BY seq DESC LIMIT 1", (card_id.hex(), kind)
        )
        return rows[0] if rows else None

    # --- acknowledgement -------------------------------------------------------------------------
    def assign_batch(self, tx: Tx, seqs: Sequence[int], batch_id: str) -> None:
        tx.executemany(
            "UPDATE journal SET batch_id = ? WHERE seq = ? AND status = 'open'",
            [(batch_id, s) for s in seqs],
        )

    def release_batch(self, tx: Tx, batch_id: str) -> None:
        """A batch the host refused for good: its entries go into the next batch."""
        tx.execute(
            "UPDATE journal SET batch_id = NULL WHERE batch_id = ? AND status = 'open'",
            (batch_id,),
        )

    def acknowledge(self, tx: Tx, seqs: Sequence[int]) -> None:
        tx.executemany(
            "UPDATE journal SET status = 'acked' WHERE seq = ? AND status = 'open'",
            [(s,) for s in seqs],
        )
        tx.after_commit.append(self._recount)

    def reject(self, tx: Tx, rejected: Sequence[tuple[int, int, str]]) -> None:
        tx.executemany(
            "UPDATE journal SET status = 'rejected', reject_code = ?, reject_reason = ? "
            "WHERE seq = ? AND status = 'open'",
            [(code, reason, seq) for seq, code, reason in rejected],
        )
        tx.after_commit.append(self._recount)

    def _recount(self) -> None:
        self.open_entries = int(self.db.one("SELECT count(*) FROM journal WHERE status = 'open'"))

    def rejected_entries(self) -> list[dict[str, Any]]:
        return [
            {"seq": r[0], "kind": r[1], "card_id": r[2], "code": r[3], "reason": r[4]}
            for r in self.db.query(
                "SELECT seq, kind, card_id, reject_code, reject_reason FROM journal "
                "WHERE status = 'rejected' ORDER BY seq"
            )
        ]

    def counts(self) -> dict[str, Any]:
        attempts = dict.fromkeys(ATTEMPT_STATES, 0)
        for state, n in self.db.query("SELECT state, count(*) FROM attempts GROUP BY state"):
            attempts[state] = n
        entries = {"open": 0, "acked": 0, "rejected": 0}
        for status, n in self.db.query("SELECT status, count(*) FROM journal GROUP BY status"):
            entries[status] = n
        batched = int(self.db.one(
            "SELECT count(*) FROM journal WHERE status = 'open' AND batch_id IS NOT NULL"
        ))
        return {
            "attempts": attempts,
            "entries": entries,
            "in_flight_batch": batched,
            "head_seq": self.head[0],
            "anchor_seq": self.anchor[0],
        }

    def prune_acknowledged(self, tx: Tx) -> int:
        """Drop acknowledged entries from the start of the journal, keeping the chain
        anchor (seq and hash of the last dropped entry) so that verification still works."""
        row = tx.execute(
            "SELECT min(seq) FROM journal WHERE status != 'acked'"
        ).fetchone()
        stop = row[0] if row and row[0] is not None else self.head[0] + 1
        last = tx.execute(
            "SELECT seq, entry_hash FROM journal WHERE seq < ? ORDER BY seq DESC LIMIT 1", (stop,)
        ).fetchone()
        if last is None:
            return 0
        n = tx.execute("DELETE FROM journal WHERE seq < ?", (stop,)).rowcount
        # finished attempts whose outcome the host now has (or that never produced one);
        # the newest attempt and the newest one with a receipt stay (a reprint, a retry)
        tx.execute(
            "DELETE FROM attempts WHERE state IN ('committed', 'declined') "
            "AND (journal_seq IS NULL OR journal_seq < ?) "
            "AND id < (SELECT max(id) FROM attempts) "
            "AND id != (SELECT coalesce(max(id), 0) FROM attempts WHERE kind IN "
            "('debit', 'cancel', 'load', 'online'))",
            (stop,),
        )
        Database.set_meta(tx, "chain_anchor_seq", str(last[0]))
        Database.set_meta(tx, "chain_anchor_hash", bytes(last[1]).hex())
        anchor = (int(last[0]), bytes(last[1]))

        def done() -> None:
            self.anchor = anchor

        tx.after_commit.append(done)
        return int(n)
