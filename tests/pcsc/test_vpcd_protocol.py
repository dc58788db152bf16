"""The card side of the vpcd protocol against a stand-in for vpcd (no pcscd needed):
framing, control bytes, power, latency options, reconnection, tearing, shutdown."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tallypurse.card.card import ATR, Card
from tallypurse.card.vpcd import (
    CTRL_ATR,
    CTRL_OFF,
    CTRL_ON,
    CTRL_RESET,
    VpcdCardServer,
    read_message,
    write_message,
)
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Response
from tallypurse.core.protocol import PURSE_AID, Ins
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab

from .conftest import next_serial
from .harness import TearingCard

SELECT = bytes((0x00, 0xA4, 0x04, 0x00, len(PURSE_AID))) + PURSE_AID + b"\x00"
GET_BALANCE = bytes.fromhex("80CA010200")


class FakeVpcd:
    """Listens like vpcd in server mode and speaks its side of the protocol."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self.listener.getsockname()[1])
        self.listener.settimeout(10)
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        if self.conn is not None:
            self.conn.close()
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(10)
        return self.conn

    def ctrl(self, byte: int) -> None:
        assert self.conn is not None
        write_message(self.conn, bytes([byte]))

    def ask(self, msg: bytes) -> bytes:
        assert self.conn is not None
        write_message(self.conn, msg)
        answer = read_message(self.conn)
        assert answer is not None, "the card side closed the connection"
        return answer

    def transmit(self, apdu: bytes) -> bytes:  # a CardTransport, as through the reader
        return self.ask(apdu)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def card(lab: Lab, tmp_path: Path) -> Card:
    serial = next_serial()
    c, _ = lab.new_card(serial, credit=lab.credit_record(serial), path=tmp_path / "c.card")
    return c


def start(server: VpcdCardServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


@pytest.fixture
def vpcd() -> Iterator[FakeVpcd]:
    v = FakeVpcd()
    yield v
    v.close()


@pytest.fixture
def running(card: Card, vpcd: FakeVpcd) -> Iterator[VpcdCardServer]:
    server = VpcdCardServer(card, "127.0.0.1", vpcd.port, retry_delay=0.02)
    t = start(server)
    vpcd.accept()
    assert server.wait_connected(5)
    yield server
    server.stop()
    t.join(5)
    assert not t.is_alive()


def test_messages_are_length_prefixed_big_endian() -> None:
    a, b = socket.socketpair()
    with a, b:
        write_message(a, b"\x01\x02\x03")
        assert b.recv(5) == b"\x00\x03\x01\x02\x03"
        # Delivered in pieces, a message is still read whole.
        a.sendall(b"\x00")
        threading.Timer(0.05, lambda: a.sendall(b"\x02\xaa")).start()
        threading.Timer(0.1, lambda: a.sendall(b"\xbb")).start()
        assert read_message(b) == b"\xaa\xbb"
        a.close()
        assert read_message(b) is None
    with pytest.raises(ValueError):
        write_message(a, b"")


def test_get_atr_answers_the_atr_and_power_controls_answer_nothing(
    running: VpcdCardServer, vpcd: FakeVpcd
) -> None:
    assert vpcd.ask(bytes([CTRL_ATR])) == ATR
    for ctrl in (CTRL_ON, CTRL_RESET, CTRL_OFF, CTRL_ON):
        vpcd.ctrl(ctrl)
    # Nothing was answered to the power controls: the next answer is the ATR's.
    assert vpcd.ask(bytes([CTRL_ATR])) == ATR
    assert Response.parse(vpcd.ask(SELECT)).sw == SW.OK


def test_an_apdu_is_answered_by_the_card(running: VpcdCardServer, vpcd: FakeVpcd,
                                         card: Card) -> None:
    purse = PurseClient(ApduClient(vpcd))
    assert purse.select().card_id == card.serial
    assert purse.counters().balance == 0
    assert running.apdus == 2


def test_power_off_clears_ram_and_keeps_persistent_memory(
    running: VpcdCardServer, vpcd: FakeVpcd, lab: Lab, card: Card
) -> None:
    lab.load(vpcd, 1_500)  # type: ignore[arg-type]
    assert Response.parse(vpcd.ask(SELECT)).sw == SW.OK
    assert Response.parse(vpcd.ask(GET_BALANCE)).sw == SW.OK
    vpcd.ctrl(CTRL_OFF)
    vpcd.ctrl(CTRL_ON)
    assert Response.parse(vpcd.ask(GET_BALANCE)).sw == SW.CONDITIONS_NOT_SATISFIED
    vpcd.ask(SELECT)
    assert PurseClient(ApduClient(vpcd)).counters().balance == 1_500
    # ... and the card file has it too.
    reopened = PurseClient(ApduClient(Card.open(card.path)))  # type: ignore[arg-type]
    reopened.select()
    assert reopened.counters().balance == 1_500


def test_reset_clears_ram_too(running: VpcdCardServer, vpcd: FakeVpcd) -> None:
    vpcd.ask(SELECT)
    vpcd.ctrl(CTRL_RESET)
    assert Response.parse(vpcd.ask(GET_BALANCE)).sw == SW.CONDITIONS_NOT_SATISFIED


def test_nodelay_is_set_and_a_round_trip_takes_no_delayed_ack(
    running: VpcdCardServer, vpcd: FakeVpcd
) -> None:
    assert running._sock is not None
    assert running._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    # Like vpcd: length and APDU in one send, the answer read in two recv calls.
    assert vpcd.conn is not None
    vpcd.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    vpcd.ask(SELECT)
    samples = []
    for _ in range(50):
        t0 = time.perf_counter()
        vpcd.ask(GET_BALANCE)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    assert samples[25] < 0.02, f"median round trip {samples[25] * 1000:.1f} ms"


def test_the_card_side_waits_for_vpcd_and_reconnects_when_it_comes_back(card: Card) -> None:
    first = FakeVpcd()
    port = first.port
    first.close()  # nothing listens yet
    server = VpcdCardServer(card, "127.0.0.1", port, retry_delay=0.02, max_retry_delay=0.05)
    t = start(server)
    try:
        time.sleep(0.2)
        assert server.connections == 0
        v1 = FakeVpcd(port)
        v1.accept()
        assert v1.ask(bytes([CTRL_ATR])) == ATR
        v1.close()  # vpcd (pcscd) goes away ...
        time.sleep(0.1)
        v2 = FakeVpcd(port)  # ... and comes back
        v2.accept()
        v2.ctrl(CTRL_ON)
        assert Response.parse(v2.ask(SELECT)).sw == SW.OK
        assert server.connections == 2
        v2.close()
    finally:
        server.stop()
        t.join(5)
    assert not t.is_alive()


def test_stop_ends_the_loop_promptly_while_connected_and_while_waiting(card: Card) -> None:
    v = FakeVpcd()
    server = VpcdCardServer(card, "127.0.0.1", v.port)
    t = start(server)
    v.accept()
    t0 = time.monotonic()
    server.stop()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 1
    v.close()
    waiting = VpcdCardServer(card, "127.0.0.1", v.port, retry_delay=10)
    t = start(waiting)
    time.sleep(0.1)
    t0 = time.monotonic()
    waiting.stop()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 1


def test_a_power_cut_inside_a_command_drops_the_card_unanswered_with_its_memory_saved(
    lab: Lab, card: Card, tmp_path: Path
) -> None:
    tearing = TearingCard(card)
    v = FakeVpcd()
    server = VpcdCardServer(tearing, "127.0.0.1", v.port, retry_delay=0.02)
    t = start(server)
    try:
        v.accept()
        lab.load(v, 2_000)  # type: ignore[arg-type]
        tearing.arm(Ins.INITIALIZE_LOAD, None)
        assert v.conn is not None
        v.ask(SELECT)
        write_message(v.conn, bytes.fromhex("804A000000"))
        assert read_message(v.conn) is None  # no answer; the card left
        time.sleep(0.1)
        assert server.connections == 1  # and stays out until inserted again
        server.insert()
        v.accept()
        assert Response.parse(v.ask(SELECT)).sw == SW.OK
        assert server.connections == 2
    finally:
        server.stop()
        t.join(5)
        v.close()
    reopened = PurseClient(ApduClient(Card.open(card.path)))  # type: ignore[arg-type]
    reopened.select()
    assert reopened.counters().balance == 2_000


def test_an_internal_card_error_answers_6f00_and_keeps_serving(
    running: VpcdCardServer, vpcd: FakeVpcd, card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = card.transmit

    def broken(apdu: bytes) -> bytes:
        if apdu[1] == 0xCA:
            raise RuntimeError("bug")
        return real(apdu)

    monkeypatch.setattr(card, "transmit", broken)
    vpcd.ask(SELECT)
    assert struct.unpack(">H", vpcd.ask(GET_BALANCE))[0] == SW.UNKNOWN
    monkeypatch.setattr(card, "transmit", real)
    vpcd.ask(SELECT)
    assert Response.parse(vpcd.ask(GET_BALANCE)).sw == SW.OK
