"""The card side of vsmartcard's virtual reader (vpcd): a card file behind PC/SC.

vpcd is a pcscd reader driver (Debian package ``vsmartcard-vpcd``). Its
``/etc/reader.conf.d/vpcd`` says ``DEVICENAME /dev/null:0x8C7B``: the host part
``/dev/null`` puts vpcd in server mode, listening on TCP port 0x8C7B (35963),
and the card side connects to it (a ``hostname:port`` there instead would make
vpcd connect out to a listening card). While a card side is connected the
reader has a card in its field; when the connection closes the card is gone.

Every message in both directions is a 2-byte big-endian length and then the
message. From vpcd to the card:

- one byte ``0x00`` power off, ``0x01`` power on, ``0x02`` reset: no answer;
- one byte ``0x04`` get ATR: answered by the ATR (vpcd asks for it on every
  presence poll, about every 400 ms, so it must not touch the card);
- anything else is a command APDU, answered by the response APDU.

An empty answer would read as "card removed" to vpcd, so there is none.

Latency: vpcd writes the length and the message with one ``send`` and reads
the answer with two ``recv(MSG_WAITALL)`` calls. With Nagle's algorithm and
delayed acknowledgements an exchange then waits ~40 ms for a timer; setting
``TCP_NODELAY`` once and ``TCP_QUICKACK`` before every read (Linux clears it
again after it acts) brings a round trip down to a fraction of a millisecond.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from typing import Protocol

from tallypurse.core import sw as SW

from .card import ATR, CardRemoved
from .storage import PowerLoss

VPCD_PORT = 35963
CTRL_OFF = 0x00
CTRL_ON = 0x01
CTRL_RESET = 0x02
CTRL_ATR = 0x04

log = logging.getLogger(__name__)


class ServedCard(Protocol):
    """What the server needs of a card (a :class:`Card` has all of it)."""

    def transmit(self, apdu: bytes) -> bytes: ...
    def power_up(self) -> None: ...
    def power_off(self) -> None: ...
    def save(self) -> None: ...


def _quickack(sock: socket.socket) -> None:
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None when the peer closed the connection first."""
    buf = bytearray()
    while len(buf) < n:
        _quickack(sock)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_message(sock: socket.socket) -> bytes | None:
    """One length-prefixed message, or None at end of stream."""
    head = _recv_exact(sock, 2)
    if head is None:
        return None
    (size,) = struct.unpack(">H", head)
    return _recv_exact(sock, size) if size else b""


def write_message(sock: socket.socket, payload: bytes) -> None:
    if not 0 < len(payload) <= 0xFFFF:
        raise ValueError("a vpcd message is 1 to 65535 bytes")
    sock.sendall(struct.pack(">H", len(payload)) + payload)


class VpcdCardServer:
    """Keeps a card in vpcd's field: connect, answer, reconnect when vpcd comes back.

    :meth:`serve_forever` runs until :meth:`stop`; :meth:`pull` takes the card out
    of the field (closes the connection, power off) and :meth:`insert` puts it back.
    A power cut inside the card (:class:`PowerLoss`, only with an injected cut) saves
    the torn memory and pulls the card: the reader sees it vanish mid-command.
    """

    def __init__(
        self,
        card: ServedCard,
        host: str = "127.0.0.1",
        port: int = VPCD_PORT,
        *,
        atr: bytes = ATR,
        retry_delay: float = 0.2,
        max_retry_delay: float = 2.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.atr = atr
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.connect_timeout = connect_timeout
        self.apdus = 0
        self.connections = 0
        self._stop = threading.Event()
        self._present = threading.Event()
        self._present.set()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._powered = True  # a Card is powered when constructed

    # --- control (any thread, or a signal handler) -------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._present.set()  # wake a pulled card's wait
        self._drop()

    def pull(self) -> None:
        """Take the card out of the field: vpcd sees it removed at its next poll."""
        self._present.clear()
        self._drop()

    def insert(self) -> None:
        self._present.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _drop(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # --- the loop -------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        delay = self.retry_delay
        waiting_logged = False
        while not self._stop.is_set():
            self._present.wait()
            if self._stop.is_set():
                break
            sock = self._connect()
            if sock is None:
                if not waiting_logged:
                    log.info("waiting for vpcd at %s:%d", self.host, self.port)
                    waiting_logged = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry_delay)
                continue
            delay = self.retry_delay
            waiting_logged = False
            self.connections += 1
            log.info("card in the field of vpcd at %s:%d", self.host, self.port)
            try:
                self._serve_connection(sock)
            except OSError as exc:
                if not self._stop.is_set():
                    log.info("connection to vpcd lost: %s", exc)
            finally:
                self._connected.clear()
                with self._lock:
                    self._sock = None
                sock.close()
                self._power_off()
            if not self._stop.is_set():
                log.info("card out of the field")
                self._stop.wait(self.retry_delay)
        log.info("card server stopped")

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError:
            return None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stop.is_set() or not self._present.is_set():
                sock.close()
                return None
            self._sock = sock
        self._connected.set()
        return sock

    def _serve_connection(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            msg = read_message(sock)
            if msg is None:
                return
            answer = self.handle(msg)
            if answer is None and len(msg) != 1:
                return  # the card lost power mid-command: it leaves the field unanswered
            if answer is not None:
                write_message(sock, answer)

    # --- one message -------------------------------------------------------------------------
    def handle(self, msg: bytes) -> bytes | None:
        """The answer to one message from vpcd (None: no answer is due, or the card died)."""
        if len(msg) == 1:
            ctrl = msg[0]
            if ctrl == CTRL_ATR:
                return self.atr
            if ctrl == CTRL_OFF:
                self._power_off()
            elif ctrl in (CTRL_ON, CTRL_RESET):
                self._power_up()
            else:
                log.warning("unknown vpcd control byte 0x%02x ignored", ctrl)
            return None
        self.apdus += 1
        if not self._powered:
            # vpcd powers a card up before sending it commands; a real unpowered card
            # would be mute, but an empty answer would read as a removal.
            self._power_up()
        try:
            return self.card.transmit(msg)
        except PowerLoss:
            log.warning("power cut inside the card; torn memory saved, card pulled")
            self._powered = False
            self.card.save()
            self._present.clear()
            return None
        except CardRemoved:
            self._power_up()
            return self.card.transmit(msg)
        except Exception:
            log.exception("the card failed on APDU %s", msg[:4].hex())
            self._power_up()
            return struct.pack(">H", SW.UNKNOWN)

    def _power_off(self) -> None:
        if self._powered:
            self.card.power_off()
            self._powered = False

    def _power_up(self) -> None:
        """Power up (again): clears RAM and recovers an interrupted transaction, which
        the card file records at once."""
        eeprom = getattr(self.card, "eeprom", None)
        before = eeprom.to_image() if eeprom is not None else None
        self.card.power_up()
        self._powered = True
        if eeprom is not None and eeprom.to_image() != before:
            self.card.save()

