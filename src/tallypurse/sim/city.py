"""The simulated city: merchants and their terminals, cardholders and their cards.

Everything here is the real thing: cards are card emulators personalised by
the host's TSM through their own APDUs, terminals are :class:`Terminal`
engines with their own SAM and SQLite journal in a data directory. What the
simulator adds is the hands around them: a card port that can pull the card
from the field in the middle of a command, and a journal write hook that can
cut the terminal's power.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom
from tallypurse.core.protocol import Ins, TxType
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.journal import SimulatedCrash
from tallypurse.terminal.reader import InProcessReader

from .network import SimHostApi

SAM_PASSPHRASE = "simulated terminal"
MONEY_INS = frozenset({Ins.DEBIT, Ins.CANCEL_LAST_DEBIT, Ins.CREDIT, Ins.WRITE_BACK})


@dataclass(frozen=True, slots=True)
class Trade:
    """A kind of merchant: its transaction type, usual amounts (minor units) and fee."""

    kind: str
    tx_type: TxType
    amounts: tuple[int, int]
    fee_bp: int
    big_ticket: float = 0.0  # share of sales above the offline limit (paid online)


TRADES: tuple[Trade, ...] = (
    Trade("canteen", TxType.CANTEEN, (250, 1_200), 100),
    Trade("transit", TxType.TRANSIT, (150, 450), 50),
    Trade("retail", TxType.RETAIL, (300, 3_500), 150, big_ticket=0.04),
    Trade("vending", TxType.VENDING, (100, 350), 200),
)


def iban_de(number: int) -> str:
    """A German IBAN with valid check digits (bank code 37040044, account ``number``)."""
    bban = f"37040044{number % 10**10:010d}"
    check = 98 - int(bban + "131400") % 97
    return f"DE{check:02d}{bban}"


class CardPort:
    """The card in the customer's hand, as a transport the reader talks to.

    :meth:`arm` makes the next money command (DEBIT, CANCEL, CREDIT, WRITE-BACK)
    fail: the card loses power at its ``cut``-th persistent write inside that
    command (a later cut than the command has writes lets it complete), or,
    with ``lose``, the command completes and its answer is lost."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.cut: int | None = None
        self.lose = False
        self.fired = 0

    def arm(self, *, cut: int | None = None, lose: bool = False) -> None:
        self.cut, self.lose = cut, lose

    def disarm(self) -> None:
        self.cut, self.lose = None, False

    def present(self) -> None:
        """The card enters a field: it powers up (recovering from any cut)."""
        if self.card.os is None:
            self.card.power_up()

    def transmit(self, apdu: bytes) -> bytes:
        if (self.cut is None and not self.lose) or len(apdu) < 2 or apdu[1] not in MONEY_INS:
            return self.card.transmit(apdu)
        cut, lose = self.cut, self.lose
        self.disarm()
        eeprom = self.card.eeprom
        if cut is not None:
            eeprom.cut_at = eeprom.writes + cut
        try:
            out = self.card.transmit(apdu)
        except Exception:
            self.fired += 1
            raise
        finally:
            eeprom.cut_at = None
        if lose:
            self.fired += 1
            raise ConnectionError("the card's answer was lost")
        return out

    def reader(self) -> InProcessReader:
        self.present()
        return InProcessReader(self)


class CrashSwitch:
    """A terminal journal write hook: when armed, cuts the power ``k`` writes later."""

    def __init__(self) -> None:
        self.count = 0
        self.at: int | None = None

    def arm(self, k: int) -> None:
        self.at = self.count + k

    def disarm(self) -> None:
        self.at = None

    def __call__(self, label: str) -> None:
        if self.at is not None and self.count >= self.at:
            self.at = None
            raise SimulatedCrash(f"simulated power cut at journal write {self.count} ({label})")
        self.count += 1


@dataclass
class Shop:
    """A merchant in the city."""

    merchant_id: str
    name: str
    trade: Trade
    terminals: list[int] = field(default_factory=list)


@dataclass
class Pos:
    """A terminal at a merchant."""

    index: int
    terminal_id: str
    shop: Shop
    directory: Path
    api: SimHostApi
    crash: CrashSwitch
    skew: int  # seconds its clock is ahead of the host's (negative: behind)
    terminal: Terminal | None = None
    skip_close_until: int = 0  # late batches: no day-end close before this time
    crashes: int = 0

    def term(self) -> Terminal:
        assert self.terminal is not None
        return self.terminal


@dataclass
class Person:
    """A cardholder (or the bearer of an anonymous card) and their habits."""

    index: int
    card_id: bytes
    port: CardPort
    holder: str | None  # cardholder id at the host; None: anonymous card
    haunts: list[int]  # terminals they use
    taps_per_day: float
    topup_p: float  # chance to top up when the purse runs low
    topup_amount: int
    funding: str  # cash | online_account
    online_funding: int  # bank transfer to the online account now and then (0: never)
    failing_bank: bool = False
    balance: int = 0  # what the receipts told them the purse holds
    clone: CardPort | None = None  # a copy of the card in a fraudster's hand
    clone_seqno: int = 0  # the card's event count when it was copied

    @property
    def card(self) -> Card:
        return self.port.card


def copy_card(card: Card, random: Callable[[int], bytes]) -> Card:
    """A clone: the card's whole persistent memory copied into another chip."""
    return Card(Eeprom.from_image(card.eeprom.to_image()), random=random)


def poisson(rng: Random, mean: float) -> int:
    """A small Poisson draw (Knuth), deterministic for a given generator."""
    if mean <= 0:
        return 0
    import math

    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
