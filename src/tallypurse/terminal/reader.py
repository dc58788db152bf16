"""Card readers: where the terminal's transaction code meets a card.

A :class:`Reader` connects to the card in its field, exchanges APDUs and
disconnects. :class:`InProcessReader` wraps any :class:`CardTransport` (the card
emulator, a phone in card-emulation mode); :class:`PcscReader` talks PC/SC
through pyscard (real contactless readers, virtual readers). The purchase,
load and recovery code is the same for both: it only calls :meth:`Reader.transmit`.

A reader that loses the card in the middle of an exchange raises
:class:`~tallypurse.terminal.errors.CardLost`; whether the card carried out
that command is then unknown, which is what the journal's *uncertain* state is for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from tallypurse.core.transport import CardTransport

from .errors import CardLost, TerminalError


@runtime_checkable
class Reader(Protocol):
    """A card reader as the terminal sees it."""

    name: str

    def card_present(self) -> bool: ...

    def connect(self) -> None: ...

    def transmit(self, apdu: bytes) -> bytes: ...

    def disconnect(self) -> None: ...


class InProcessReader:
    """A reader around an in-process card (anything with ``transmit(apdu) -> bytes``).

    Any exception from the card (the emulator's power loss, a removed card) becomes
    :class:`CardLost`: the terminal must not depend on the card package's exceptions.
    """

    def __init__(self, card: CardTransport, *, name: str = "in-process") -> None:
        self.card = card
        self.name = name
        self.connected = False
        self.present = True

    def card_present(self) -> bool:
        return self.present

    def connect(self) -> None:
        if not self.present:
            raise CardLost("no card in the field")
        self.connected = True

    def transmit(self, apdu: bytes) -> bytes:
        if not self.connected:
            self.connect()
        try:
            return self.card.transmit(apdu)
        except Exception as exc:
            self.connected = False
            raise CardLost(f"card lost during the exchange: {exc}") from exc

    def disconnect(self) -> None:
        self.connected = False


class PcscReader:
    """A PC/SC reader through pyscard (``pip install 'tallypurse[pcsc]'`` where a wheel
    exists; it needs the PC/SC daemon, pcscd). pyscard is imported only when this
    reader is used, so the rest of the terminal never needs it."""

    def __init__(self, reader_name: str | None = None,
                 *, backend: Callable[[], Any] | None = None) -> None:
        self._wanted = reader_name
        self._backend = backend
        self._reader: Any = None
        self._conn: Any = None
        self.name = reader_name or "pcsc"

    @staticmethod
    def _smartcard() -> Any:
        try:
            import smartcard.System
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise TerminalError(
                "PC/SC needs pyscard: install the 'pcsc' extra (pyscard, pcscd)"
            ) from exc
        return smartcard.System

    @classmethod
    def available(cls) -> list[str]:
        """Names of the PC/SC readers on this machine."""
        return [str(r) for r in cls._smartcard().readers()]

    def _pick(self) -> Any:
        readers = self._backend() if self._backend else self._smartcard().readers()
        for r in readers:
            if self._wanted is None or str(r) == self._wanted or self._wanted in str(r):
                return r
        raise TerminalError(f"no PC/SC reader named {self._wanted!r}")

    @staticmethod
    def _open(reader: Any) -> Any:
        """A connection that leaves the card powered when it closes (a reset would end
        the card session of any other connection)."""
        conn = reader.createConnection()
        try:
            from smartcard.scard import SCARD_LEAVE_CARD
        except ImportError:
            conn.connect()
        else:
            conn.connect(disposition=SCARD_LEAVE_CARD)
        return conn

    @staticmethod
    def _close(conn: Any) -> None:
        for step in ("disconnect", "release"):
            fn = getattr(conn, step, None)
            if fn is not None:
                with contextlib.suppress(Exception):
                    fn()

    def card_present(self) -> bool:
        if self._conn is not None:
            return True
        reader = self._reader or self._pick()
        try:
            conn = self._open(reader)
        except Exception:
            return False
        self._close(conn)
        return True

    def connect(self) -> None:
        """Connect to the card in the field; an open connection is kept across taps."""
        if self._conn is not None:
            return
        self._reader = self._reader or self._pick()
        self.name = str(self._reader)
        try:
            self._conn = self._open(self._reader)
        except Exception as exc:
            raise CardLost(f"no card on {self.name}: {exc}") from exc

    def transmit(self, apdu: bytes) -> bytes:
        if self._conn is None:
            self.connect()
        try:
            data, sw1, sw2 = self._conn.transmit(list(apdu))
        except Exception as exc:
            self.disconnect()
            raise CardLost(f"card lost on {self.name}: {exc}") from exc
        return bytes(data) + bytes([sw1, sw2])

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._close(conn)
