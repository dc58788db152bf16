"""The card's persistent memory: named objects, a transaction buffer, tearing.

Model
-----
The card's EEPROM holds named objects (bytes). Every change goes through a
transaction: writes are staged in RAM; :meth:`Eeprom.commit` then performs
these *persistent writes*, one at a time:

1. one log-area entry per changed object (name and new value),
2. the commit flag,
3. one write per changed object into the main area,
4. clearing the log area and the commit flag.

At power-up :meth:`Eeprom.recover` redoes a committed log and discards an
uncommitted one, so whatever persistent write the power is cut at, the
objects end exactly as before the transaction (cut at a step-1 write or at
the flag) or exactly as after it (any later cut).

A power-cut injector (``cut_at``) raises :class:`PowerLoss` instead of
performing the N-th persistent write (0-based); the card is then dead until
it is powered up again from the same memory. Tests cut at every index.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tallypurse.core.errors import CardFileError


class PowerLoss(Exception):
    """The power was cut at a persistent write."""


_MAGIC = b"TPCARD\x00\x01"


class Eeprom:
    def __init__(self) -> None:
        self._main: dict[str, bytes] = {}
        self._log: list[tuple[str, bytes | None]] = []
        self._committed = False
        self._pending: dict[str, bytes | None] | None = None
        self.writes = 0
        self.cut_at: int | None = None

    # --- persistent-write primitive -------------------------------------------------
    def _persist(self) -> None:
        if self.cut_at is not None and self.writes >= self.cut_at:
            self.cut_at = None
            raise PowerLoss(f"power cut at persistent write {self.writes}")
        self.writes += 1

    # --- transactions --------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._pending is not None

    def begin(self) -> None:
        if self._pending is not None:
            raise RuntimeError("nested transaction")
        self._pending = {}

    def abort(self) -> None:
        self._pending = None

    def commit(self) -> int:
        """Make the staged writes persistent; returns the number of changed objects."""
        pending = self._pending
        self._pending = None
        if not pending:
            return 0
        changed = [(k, v) for k, v in pending.items() if self._main.get(k) != v]
        if not changed:
            return 0
        for item in changed:
            self._persist()
            self._log.append(item)
        self._persist()
        self._committed = True
        for key, value in changed:
            self._persist()
            self._apply(key, value)
        self._persist()
        self._log.clear()
        self._committed = False
        return len(changed)

    def _apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._main.pop(key, None)
        else:
            self._main[key] = value

    def recover(self) -> None:
        """Power-up recovery: redo a committed log, drop an uncommitted one."""
        self._pending = None
        if self._committed:
            for key, value in self._log:
                self._apply(key, value)
        self._log.clear()
        self._committed = False

    # --- object access -------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        if self._pending is not None and key in self._pending:
            return self._pending[key]
        return self._main.get(key)

    def put(self, key: str, value: bytes) -> None:
        if self._pending is None:
            raise RuntimeError("persistent write outside a transaction")
        self._pending[key] = bytes(value)

    def delete(self, key: str) -> None:
        if self._pending is None:
            raise RuntimeError("persistent write outside a transaction")
        self._pending[key] = None

    def keys(self, prefix: str = "") -> Iterator[str]:
        seen = set()
        if self._pending is not None:
            for k, v in self._pending.items():
                if k.startswith(prefix):
                    seen.add(k)
                    if v is not None:
                        yield k
        for k in list(self._main):
            if k.startswith(prefix) and k not in seen:
                yield k

    def snapshot(self) -> dict[str, bytes]:
        """The committed main area (what survives a power cut after recovery)."""
        return dict(self._main)

    # --- image ---------------------------------------------------------------------------
    def to_image(self) -> bytes:
        """Serialise the whole persistent memory (main area, log area, commit flag)."""
        body = bytearray()

        def put(b: bytes) -> None:
            body.extend(struct.pack(">I", len(b)))
            body.extend(b)

        body.extend(struct.pack(">?I", self._committed, len(self._log)))
        for k, v in self._log:
            put(k.encode())
            body.extend(b"\x01" if v is not None else b"\x00")
            put(v or b"")
        body.extend(struct.pack(">I", len(self._main)))
        for k in sorted(self._main):
            put(k.encode())
            put(self._main[k])
        return _MAGIC + bytes(body) + hashlib.sha256(_MAGIC + bytes(body)).digest()

    @classmethod
    def from_image(cls, image: bytes) -> Eeprom:
        if len(image) < len(_MAGIC) + 32 or not image.startswith(_MAGIC):
            raise CardFileError("not a tallypurse card image (bad magic or truncated)")
        body, digest = image[:-32], image[-32:]
        if hashlib.sha256(body).digest() != digest:
            raise CardFileError("card image is corrupt (checksum mismatch)")
        e = cls()
        view = memoryview(body)
        pos = len(_MAGIC)

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(view):
                raise CardFileError("card image is truncated")
            out = bytes(view[pos : pos + n])
            pos += n
            return out

        def blob() -> bytes:
            (n,) = struct.unpack(">I", take(4))
            return take(n)

        try:
            committed, nlog = struct.unpack(">?I", take(5))
            for _ in range(nlog):
                k = blob().decode()
                present = take(1) == b"\x01"
                v = blob()
                e._log.append((k, v if present else None))
            e._committed = committed
            (nmain,) = struct.unpack(">I", take(4))
            for _ in range(nmain):
                k = blob().decode()
                e._main[k] = blob()
        except (UnicodeDecodeError, struct.error):
            raise CardFileError("card image is corrupt (bad structure)") from None
        if pos != len(view):
            raise CardFileError("card image has trailing bytes")
        return e

    def save(self, path: Path) -> None:
        """Write the image atomically (temporary file, fsync, rename)."""
        save_atomic(path, self.to_image())

    @classmethod
    def load(cls, path: Path) -> Eeprom:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise CardFileError(f"no card file at {path}") from None
        except OSError as exc:
            raise CardFileError(f"cannot read card file {path}: {exc.strerror}") from None
        return cls.from_image(data)


def save_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Store:
    """An applet's view of persistent memory: only its own namespace.

    This is the firewall's storage half: an applet is handed a Store bound to
    its AID and has no other way to reach the card's memory.
    """

    __slots__ = ("__eeprom", "__prefix")

    def __init__(self, eeprom: Eeprom, aid: bytes) -> None:
        self.__eeprom = eeprom
        self.__prefix = aid.hex() + ":"

    def get(self, name: str) -> bytes | None:
        return self.__eeprom.get(self.__prefix + name)

    def put(self, name: str, value: bytes) -> None:
        self.__eeprom.put(self.__prefix + name, value)

    def delete(self, name: str) -> None:
        self.__eeprom.delete(self.__prefix + name)

    def names(self) -> list[str]:
        return [k[len(self.__prefix) :] for k in self.__eeprom.keys(self.__prefix)]

    def __repr__(self) -> str:
        return f"Store({self.__prefix[:-1]})"
