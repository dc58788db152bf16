"""Fixtures for the PC/SC tests: one private pcscd with a vpcd reader for the session,
a personalised card file served to it per test, and a pyscard connection to it.

Without pcscd, vsmartcard-vpcd or pyscard these tests skip, naming what is missing;
with CI set they fail instead (.ci/run installs all three)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tallypurse.card.card import Card
from tallypurse.card.vpcd import VpcdCardServer
from tallypurse.cli.bench_pcsc import (
    PcscdProcess,
    PcscTransport,
    PcscUnavailable,
    connect_reader,
    release,
    served,
)
from tallypurse.lab import Lab

from .harness import (
    READER,
    TearingCard,
    card_events,
    card_present,
    ensure_installed,
    unavailable,
    wait_card,
)

_serials = itertools.count(1)


def next_serial() -> bytes:
    """Card serials of their own ("PCSC" prefix): the session lab caches card keys by id."""
    return (0x5043_5343_0000_0000 + next(_serials)).to_bytes(8, "big")


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PcscdProcess]:
    ensure_installed()
    proc = PcscdProcess(tmp_path_factory.mktemp("pcscd"))
    try:
        proc.start()
    except PcscUnavailable as exc:
        unavailable(str(exc))
    yield proc
    proc.stop()


@dataclass
class Served:
    card: Card
    tearing: TearingCard
    path: Path
    server: VpcdCardServer
    pcscd: PcscdProcess
    events: int = 0

    def mark(self) -> int:
        """The reader's card-event counter now (before a removal to wait for)."""
        self.events = card_events(READER)
        return self.events

    def wait_out(self) -> None:
        """Until pcscd's own poll saw the card leave (counter moved since :meth:`mark`)."""
        wait_card(False, events_not=self.events)

    def pull(self) -> None:
        self.mark()
        self.server.pull()
        self.wait_out()

    def insert(self) -> None:
        self.server.insert()
        wait_card(True)


@pytest.fixture
def served_card(lab: Lab, pcscd: PcscdProcess, tmp_path: Path) -> Iterator[Served]:
    """A fresh personalised card (with a credit record) in the virtual reader's field."""
    serial = next_serial()
    path = tmp_path / "card.card"
    card, _ = lab.new_card(serial, credit=lab.credit_record(serial), path=path)
    tearing = TearingCard(card)
    if card_present(READER):
        wait_card(False)  # the previous test's card has left the field
    with served(tearing, pcscd.port) as server:
        wait_card(True)
        yield Served(card, tearing, path, server, pcscd)
    wait_card(False)


@pytest.fixture
def connect(served_card: Served) -> Iterator[Callable[[], Any]]:
    """Factory: a new pyscard connection to the served card (released at the end)."""
    made: list[Any] = []

    def make() -> Any:
        conn = connect_reader(READER)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        release(conn)


@pytest.fixture
def transport(connect: Callable[[], Any]) -> PcscTransport:
    return PcscTransport(connect())
