"""The ceremony log: an append-only, hash-chained record of every key ceremony.

One JSON object per line (canonical JSON: sorted keys, no spaces)::

    {"seq": 1, "time": unix seconds, "operator": "alice", "reason": "annual rotation",
     "ceremony": "rotate", "details": {...}, "prev": hex(32), "hash": hex(32)}

``hash`` is SHA-256 over the canonical JSON of the record without its
``hash`` field; ``prev`` is the previous record's ``hash`` (64 zeros for the
first). A record edited, removed, reordered or inserted anywhere but at the end
breaks the chain. Cutting records off the end, or rewriting the whole file,
cannot be seen from the file alone: :meth:`CeremonyLog.verify` returns the
head hash, which the ceremony's witnesses write on the paper form, and
``--expect-head`` checks it next time.

Appends take an exclusive lock, check the whole chain first (a broken log is
refused, not extended) and fsync. Details never hold secrets: key check
values and public-key fingerprints only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput, KeystoreError

LOG_FILE = "ceremony.log"
GENESIS = "0" * 64
MAX_TEXT = 200
MAX_LOG_SIZE = 64 * 1024 * 1024


class CeremonyLogError(KeystoreError):
    """The ceremony log is broken: the chain does not verify."""

    code = 1202


@dataclass(frozen=True, slots=True)
class LogCheck:
    """The result of a successful check: how many records and the hash of the last."""

    records: int
    head: str


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(record: dict[str, Any]) -> str:
    return crypto.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hex()


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{what} must not be empty")
    if len(value) > MAX_TEXT or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadInput(f"{what} must be one line of at most {MAX_TEXT} printable characters")
    return value.strip()


class CeremonyLog:
    """The ceremony log file at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CeremonyLog({str(self.path)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeystoreError(f"cannot open ceremony log {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def _read(self) -> bytes:
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_LOG_SIZE + 1)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise KeystoreError(f"cannot read ceremony log {self.path}: {exc.strerror}") from None
        if len(raw) > MAX_LOG_SIZE:
            raise CeremonyLogError(f"ceremony log {self.path} is too large")
        return raw

    def records(self) -> list[dict[str, Any]]:
        """Every record, after checking the chain."""
        return _check_chain(self._read(), self.path)[0]

    def verify(self, *, expect_head: str | None = None) -> LogCheck:
        """Check every record's hash and link; CeremonyLogError names the first bad line.
        With ``expect_head``, also check that the log still ends at that record (catches
        records cut off the end since the head was written down)."""
        records, head = _check_chain(self._read(), self.path)
        if expect_head is not None:
            expected = expect_head.strip().lower()
            if not any(r["hash"] == expected for r in records):
                raise CeremonyLogError(
                    f"ceremony log {self.path} does not contain the expected head {expected}"
                    " (records were cut off or the log was rewritten)"
                )
        return LogCheck(len(records), head)

    def append(
        self,
        *,
        ceremony: str,
        operator: str,
        reason: str,
        details: dict[str, Any],
        now: int,
    ) -> dict[str, Any]:
        """Append one record (after checking the chain so far) and return it."""
        operator = _check_text(operator, "operator")
        reason = _check_text(reason, "reason")
        with self._locked() as fd:
            records, head = _check_chain(self._read(), self.path)
            record: dict[str, Any] = {
                "seq": len(records) + 1,
                "time": now,
                "operator": operator,
                "reason": reason,
                "ceremony": ceremony,
                "details": details,
                "prev": head,
            }
            record["hash"] = record_hash(record)
            line = _canonical(record) + b"\n"
            os.write(fd, line)
            os.fsync(fd)
        return record


def _check_chain(raw: bytes, path: Path) -> tuple[list[dict[str, Any]], str]:
    if raw and not raw.endswith(b"\n"):
        raise CeremonyLogError(f"ceremony log {path}: the last record is truncated")
    prev = GENESIS
    out: list[dict[str, Any]] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        where = f"ceremony log {path} line {number}"
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            raise CeremonyLogError(f"{where} is not JSON") from None
        if not isinstance(record, dict):
            raise CeremonyLogError(f"{where} is not a record")
        if _canonical(record) != line:
            raise CeremonyLogError(f"{where} is not in canonical form (edited?)")
        if record.get("seq") != number:
            raise CeremonyLogError(f"{where}: sequence number is {record.get('seq')!r}")
        if record.get("prev") != prev:
            raise CeremonyLogError(f"{where} does not link to the record before it")
        if record.get("hash") != record_hash(record):
            raise CeremonyLogError(f"{where} does not match its hash (edited?)")
        prev = record["hash"]
        out.append(record)
    return out, prev
