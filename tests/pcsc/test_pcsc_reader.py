"""The virtual reader through pcscd: readers, presence, ATR, APDUs, removal, reconnection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tallypurse.card.card import ATR
from tallypurse.cli.bench_pcsc import PcscdProcess, PcscTransport, release
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Response
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab

from .conftest import Served
from .harness import READER, card_present, reader_state, wait_card

GET_BALANCE = bytes.fromhex("80CA010200")


def test_pcscd_lists_the_vpcd_reader(pcscd: PcscdProcess) -> None:
    from smartcard.System import readers

    names = [str(r) for r in readers()]
    assert READER in names, names


def test_the_served_card_is_present_with_its_atr(
    served_card: Served, connect: Callable[[], Any]
) -> None:
    assert card_present(READER) is True
    state = reader_state(READER)
    assert state is not None and state[2] == ATR
    conn = connect()
    assert bytes(conn.getATR()) == ATR


def test_select_the_purse_and_read_the_balance(
    lab: Lab, served_card: Served, transport: PcscTransport
) -> None:
    lab.load(transport, 4_321)  # type: ignore[arg-type]
    purse = PurseClient(ApduClient(transport))
    selected = purse.select()
    assert selected.card_id == served_card.card.serial
    assert purse.counters().balance == 4_321
    assert purse.card_data().card_id == served_card.card.serial


def test_a_pulled_card_leaves_the_reader_and_comes_back_with_ram_cleared(
    served_card: Served, connect: Callable[[], Any]
) -> None:
    transport = PcscTransport(connect())
    PurseClient(ApduClient(transport)).select()
    assert Response.parse(transport.transmit(GET_BALANCE)).sw == SW.OK
    served_card.pull()
    assert card_present(READER) is False
    served_card.insert()
    again = PcscTransport(connect())
    # Power was lost: the selection (RAM) is gone, persistent memory is not.
    assert Response.parse(again.transmit(GET_BALANCE)).sw == SW.CONDITIONS_NOT_SATISFIED
    assert PurseClient(ApduClient(again)).select().card_id == served_card.card.serial


def test_the_card_server_reconnects_when_pcscd_restarts(
    lab: Lab, served_card: Served, connect: Callable[[], Any]
) -> None:
    conn = connect()
    lab.load(PcscTransport(conn), 700)  # type: ignore[arg-type]
    release(conn)
    before = served_card.server.connections
    served_card.pcscd.restart()
    wait_card(True, timeout=15)
    assert served_card.server.connections > before
    purse = PurseClient(ApduClient(PcscTransport(connect())))
    purse.select()
    assert purse.counters().balance == 700
