"""Readers: the in-process reader and the PC/SC reader behind the same interface."""

from __future__ import annotations

from typing import Any

import pytest

from tallypurse.card.card import Card
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.terminal.errors import CardLost
from tallypurse.terminal.reader import InProcessReader, PcscReader, Reader


def test_the_in_process_reader_turns_any_card_failure_into_card_lost(card: Card) -> None:
    reader = InProcessReader(card)
    assert isinstance(reader, Reader) and reader.card_present()
    PurseClient(ApduClient(reader)).select()
    card.power_off()
    with pytest.raises(CardLost):
        reader.transmit(bytes.fromhex("00A4040006F05450010001"))
    reader.present = False
    with pytest.raises(CardLost):
        reader.connect()


class FakeConnection:
    def __init__(self, card: Card) -> None:
        self.card = card
        self.connected = False

    def connect(self, protocol: object = None, mode: object = None,
                disposition: object = None) -> None:
        self.connected = True
        self.disposition = disposition

    def disconnect(self) -> None:
        self.connected = False

    def transmit(self, apdu: list[int]) -> tuple[list[int], int, int]:
        out = self.card.transmit(bytes(apdu))
        return list(out[:-2]), out[-2], out[-1]


class FakePcscReader:
    """What pyscard's readers() returns: objects with createConnection()."""

    def __init__(self, name: str, card: Card) -> None:
        self.name, self.card = name, card

    def createConnection(self) -> FakeConnection:  # noqa: N802 (pyscard's name)
        return FakeConnection(self.card)

    def __str__(self) -> str:
        return self.name


def test_the_pcsc_reader_speaks_apdus_through_pyscards_interface(card: Card) -> None:
    readers: list[Any] = [FakePcscReader("Other 00", card), FakePcscReader("Virtual PCD 00", card)]
    reader = PcscReader("Virtual PCD", backend=lambda: readers)
    assert reader.card_present()
    reader.connect()
    assert reader.name == "Virtual PCD 00"
    selected = PurseClient(ApduClient(reader)).select()
    assert selected.card_id == card.serial
    reader.disconnect()


def test_the_pcsc_reader_names_a_missing_reader(card: Card) -> None:
    from tallypurse.terminal.errors import TerminalError

    reader = PcscReader("Nope", backend=lambda: [FakePcscReader("Virtual PCD 00", card)])
    with pytest.raises(TerminalError, match="Nope"):
        reader.connect()
