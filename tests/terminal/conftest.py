"""Fixtures for the terminal tests: a clock, a fake host, enrolled terminals, purses."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tallypurse.card.card import Card
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.personalise import IssuedCard, PursePolicy
from tallypurse.lab import Lab
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.journal import WriteHook
from tallypurse.terminal.reader import InProcessReader

from .fakehost import ENROL_TOKEN, FakeHost

NOW = 1_767_225_600  # the lab's time (tests/conftest.py)
PASSPHRASE = "terminal sam passphrase"
TERMINAL_ID = bytes.fromhex("5445524d00000001")
_serials = itertools.count(1)


def next_serial() -> bytes:
    return (0x2000_0000_0000_0000 + next(_serials)).to_bytes(8, "big")


class Clock:
    """A settable clock: the terminal's and the fake host's time."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Purse:
    """A card in the customer's hand."""

    card: Card
    issued: IssuedCard
    reader: InProcessReader

    @property
    def card_id(self) -> bytes:
        return self.issued.card_id

    def client(self) -> PurseClient:
        purse = PurseClient(ApduClient(self.card))
        purse.select()
        return purse

    @property
    def balance(self) -> int:
        return self.client().counters().balance

    @property
    def atc(self) -> int:
        return self.client().counters().atc

    def debts(self) -> list[tuple[int, int, int]]:
        return [(s.state, s.ref, s.amount) for s in self.client().debts() if s.state]


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW + 3600)


@pytest.fixture
def host(lab: Lab, clock: Clock) -> FakeHost:
    return FakeHost(lab, clock=clock)


def make_terminal(directory: Path, host: FakeHost, clock: Clock, *,
                  write_hook: WriteHook | None = None, **kw: Any) -> Terminal:
    return Terminal.enrol(
        directory, passphrase=PASSPHRASE, host=host, token=ENROL_TOKEN,
        terminal_id=kw.pop("terminal_id", TERMINAL_ID), merchant_name="Canteen One",
        clock=clock, jitter=lambda: 0.5, write_hook=write_hook, **kw,
    )


def reopen(directory: Path, host: FakeHost | None, clock: Clock, **kw: Any) -> Terminal:
    return Terminal.open(directory, passphrase=PASSPHRASE, host=host, clock=clock,
                         jitter=lambda: 0.5, **kw)


@pytest.fixture
def terminal(tmp_path: Path, host: FakeHost, clock: Clock) -> Iterator[Terminal]:
    t = make_terminal(tmp_path / "terminal", host, clock)
    yield t
    if not t.db.dead:
        t.close()


@pytest.fixture
def new_purse(lab: Lab, host: FakeHost) -> Callable[..., Purse]:
    """Factory: a personalised card with ``balance`` on it (and, with ``credit``, a
    credit record and an online account at the host holding ``online_balance``)."""

    def make(balance: int = 5_000, *, credit: bool = True, online_balance: int = 10_000,
             policy: PursePolicy | None = None, issuer: Lab | None = None) -> Purse:
        lab_ = issuer or lab
        serial = next_serial()
        record = lab_.credit_record(serial) if credit else None
        card, issued = lab_.new_card(serial, credit=record, policy=policy)
        if balance:
            lab_.load(card, balance)
        if issuer is None:
            host.register_card(serial, issued.public_key, online_balance)
        return Purse(card, issued, InProcessReader(card))

    return make
