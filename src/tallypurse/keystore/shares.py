"""M-of-N backups of AES master keys: Shamir secret sharing among custodians.

The split is pycryptodome's :mod:`Crypto.Protocol.SecretSharing` (Shamir over
GF(2^128), 16-byte secrets). Each custodian gets one share file (JSON)::

    {"format": "tallypurse-key-share", "format_version": 1,
     "key": "master-isd/1", "split": hex(8), "threshold": M, "shares": N, "index": i,
     "custodian": "alice", "created": unix seconds,
     "share": hex(16), "share_kcv": hex(3), "key_kcv": hex(3)}

``share_kcv`` is the key check value of the share itself (AES of 16 x 0x01
under the share): the custodian checks with ``tallypurse keys check-share``
that the file they hold is the one they were handed. ``key_kcv`` is the KCV of
the master key: the restore ceremony checks the rebuilt key against it. ``split``
is a random id of one split, so that shares of two splits are told apart. Fewer
than M shares, or a wrong share, rebuild a *different* key, which the KCV
check refuses. A share file alone says nothing about the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Protocol.SecretSharing import Shamir

from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, DecodeError

SHARE_FORMAT = "tallypurse-key-share"
SHARE_FORMAT_VERSION = 1
SECRET_LEN = 16
MAX_SHARES = 32
MAX_SHARE_FILE = 64 * 1024


class ShareError(BadInput):
    """A share file that is malformed, does not check, or does not fit with the others."""

    code = 1203


@dataclass(frozen=True, slots=True)
class Share:
    key: KeyRef
    split: bytes
    threshold: int
    total: int
    index: int
    custodian: str
    created: int
    value: bytes
    key_kcv: bytes

    @property
    def share_kcv(self) -> bytes:
        return crypto.key_check_value(self.value)

    def __repr__(self) -> str:
        return f"<share {self.index}/{self.total} of {self.key} for {self.custodian!r}>"

    __str__ = __repr__

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHARE_FORMAT,
            "format_version": SHARE_FORMAT_VERSION,
            "key": str(self.key),
            "split": self.split.hex(),
            "threshold": self.threshold,
            "shares": self.total,
            "index": self.index,
            "custodian": self.custodian,
            "created": self.created,
            "share": self.value.hex(),
            "share_kcv": self.share_kcv.hex(),
            "key_kcv": self.key_kcv.hex(),
        }

    def filename(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.custodian)
        return f"{self.key.name}-v{self.key.version}-share-{self.index}-of-{self.total}-{safe}.json"


def split(
    ref: KeyRef,
    key: bytes,
    *,
    threshold: int,
    custodians: list[str],
    now: int,
) -> list[Share]:
    """Split a 16-byte master key into one share per custodian, any ``threshold`` of
    which rebuild it."""
    total = len(custodians)
    if len(key) != SECRET_LEN:
        raise BadInput(f"only {SECRET_LEN}-byte (AES-128) keys can be split")
    if not 2 <= threshold <= total <= MAX_SHARES:
        raise BadInput(f"a split needs 2 <= M <= N <= {MAX_SHARES} (got {threshold}-of-{total})")
    if len(set(custodians)) != total or any(not c.strip() for c in custodians):
        raise BadInput("custodian names must be distinct and non-empty")
    parts = Shamir.split(threshold, total, key)
    kcv = crypto.key_check_value(key)
    split_id = crypto.random_bytes(8)
    return [
        Share(
            key=ref,
            split=split_id,
            threshold=threshold,
            total=total,
            index=index,
            custodian=custodian,
            created=now,
            value=bytes(value),
            key_kcv=kcv,
        )
        for (index, value), custodian in zip(parts, custodians, strict=True)
    ]


def _bad(where: str, problem: str) -> ShareError:
    return ShareError(f"share {where}: {problem}")


def parse(doc: object, where: str = "file") -> Share:
    """Read a share file's JSON and check it (its own KCV included)."""
    if not isinstance(doc, dict):
        raise _bad(where, "is not a JSON object")
    if doc.get("format") != SHARE_FORMAT or doc.get("format_version") != SHARE_FORMAT_VERSION:
        raise _bad(where, "is not a tallypurse key share")

    def integer(name: str, lo: int, hi: int) -> int:
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _bad(where, f"{name} must be an integer in {lo}..{hi}")
        return value

    def hexa(name: str, length: int) -> bytes:
        value = doc.get(name)
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else None
        except ValueError:
            raw = None
        if raw is None or len(raw) != length:
            raise _bad(where, f"{name} must be {length} bytes of hex")
        return raw

    try:
        ref = KeyRef.decode(str(doc.get("key", "")).encode("ascii", "replace"))
    except DecodeError:
        raise _bad(where, "key must be 'name/version'") from None
    custodian = doc.get("custodian")
    if not isinstance(custodian, str) or not custodian:
        raise _bad(where, "custodian must be a non-empty string")
    total = integer("shares", 2, MAX_SHARES)
    share = Share(
        key=ref,
        split=hexa("split", 8),
        threshold=integer("threshold", 2, total),
        total=total,
        index=integer("index", 1, total),
        custodian=custodian,
        created=integer("created", 0, 2**32 - 1),
        value=hexa("share", SECRET_LEN),
        key_kcv=hexa("key_kcv", 3),
    )
    if not crypto.constant_time_equal(share.share_kcv, hexa("share_kcv", 3)):
        raise _bad(where, "does not match its own check value (damaged or mistyped)")
    return share


def read(path: str | Path) -> Share:
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SHARE_FILE + 1)
    except OSError as exc:
        raise ShareError(f"cannot read share {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SHARE_FILE:
        raise _bad(str(path), "is too large")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _bad(str(path), "is not JSON") from None
    return parse(doc, str(path))


def combine(shares: list[Share]) -> tuple[KeyRef, bytes]:
    """Rebuild the master key from at least M shares of one backup, checking its KCV."""
    if not shares:
        raise ShareError("no shares given")
    first = shares[0]
    for s in shares[1:]:
        if (s.key, s.split, s.threshold, s.total, s.key_kcv) != (
            first.key,
            first.split,
            first.threshold,
            first.total,
            first.key_kcv,
        ):
            raise ShareError(
                f"share {s.index} ({s.custodian}) is from another backup than share "
                f"{first.index} ({first.custodian})"
            )
    indices = [s.index for s in shares]
    if len(set(indices)) != len(indices):
        raise ShareError("the same share was given twice")
    if len(shares) < first.threshold:
        raise ShareError(
            f"{first.key} needs {first.threshold} of {first.total} shares; got {len(shares)}"
        )
    key = bytes(Shamir.combine([(s.index, s.value) for s in shares]))
    if not crypto.constant_time_equal(crypto.key_check_value(key), first.key_kcv):
        raise ShareError(
            f"the shares do not rebuild {first.key} (key check value differs): "
            "one share is wrong or from another split"
        )
    return first.key, key
