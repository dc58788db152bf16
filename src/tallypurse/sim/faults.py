"""The faults the simulator can inject, and how often.

``--faults`` takes a comma-separated list of names (or ``all`` / ``none``).
Every fault is drawn from the run's one seeded random generator, so a seed
and a fault list name one run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tallypurse.core.errors import BadInput

# name -> what it does (the help text and docs/simulator.md list them in this order)
FAULTS: dict[str, str] = {
    "lost_request": "a request to the host is lost before the host sees it",
    "lost_response": "the host applies a request and its answer is lost",
    "duplicate": "a request reaches the host twice",
    "reorder": "a request is held in the network and delivered later, shuffled with others",
    "partition": "a terminal loses the network for hours to days",
    "late_batch": "a terminal skips its day-end close for one to three days",
    "clock_skew": "terminal clocks run ahead or behind the host's",
    "card_pull": "a card is pulled at a random persistent write of DEBIT, CANCEL, CREDIT or "
                 "WRITE-BACK, or its answer is lost",
    "terminal_crash": "a terminal loses power at a random journal write and is reopened",
    "host_restart": "the host process is dropped and reopened on the same database",
    "clone": "a card's memory image is copied and both copies are spent",
    "bank_failure": "the bank refuses a share of direct debits, some accounts always fail, "
                    "outcomes come hours later and the bank is sometimes down",
}


@dataclass(frozen=True, slots=True)
class Rates:
    """Probabilities and sizes of the faults (when the fault is on)."""

    lost_request: float = 0.03  # per request
    lost_response: float = 0.03  # per request
    duplicate: float = 0.03  # per request
    reorder: float = 0.03  # per request: held back, delivered later
    partition_per_day: float = 0.12  # per terminal and day
    partition_hours: tuple[int, int] = (2, 60)
    late_batch_per_day: float = 0.12  # per terminal and day
    skew_s: int = 45 * 60  # terminal clocks within +- this
    card_pull: float = 0.03  # per card command that changes the card
    terminal_crash: float = 0.02  # per terminal operation
    host_restarts_per_day: float = 2.0
    clones_per_1000_cards: float = 5.0  # at least one per run
    bank_failure_rate: float = 0.25
    bank_failing_accounts: float = 0.2  # share of linked accounts that always fail
    bank_latency_s: tuple[int, int] = (0, 6 * 3600)
    bank_down_per_day: float = 0.3


@dataclass(frozen=True, slots=True)
class Faults:
    enabled: frozenset[str] = frozenset()
    rates: Rates = field(default_factory=Rates)

    def __contains__(self, name: object) -> bool:
        return name in self.enabled

    @classmethod
    def parse(cls, text: str | None) -> Faults:
        """``"all"``, ``"none"``/``""`` or names separated by commas."""
        if text is None:
            return cls()
        names = [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]
        if not names or names == ["none"]:
            return cls()
        if names == ["all"]:
            return cls(frozenset(FAULTS))
        unknown = [n for n in names if n not in FAULTS]
        if unknown:
            raise BadInput(f"unknown fault {', '.join(unknown)} (known: all, none, "
                           f"{', '.join(FAULTS)})")
        return cls(frozenset(names))

    def names(self) -> list[str]:
        return [n for n in FAULTS if n in self.enabled]
