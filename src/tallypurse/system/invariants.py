"""The demo's day checked against the system's rules (docs/architecture.md) by the
simulator's checks (:mod:`tallypurse.sim.checks`): one implementation of the rules
for the demo and the simulator. The demo hands over its host, its cards (read
through their own APDUs), the copied card, and its terminals with their merchants.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from random import Random

from tallypurse.card.card import Card
from tallypurse.core.money import currency, format_minor
from tallypurse.host.service import Host
from tallypurse.sim.checks import Checks, Copy
from tallypurse.sim.city import CardPort
from tallypurse.sim.report import RULES
from tallypurse.terminal.engine import Terminal

# the seven rules, in order (the simulator's extra "no_internal_errors" is its own:
# an exception in the demo stops it)
DEMO_RULES = [rule for rule in RULES if rule != "no_internal_errors"]
Result = tuple[bool, str]


@dataclass(frozen=True, slots=True)
class Copied:
    """A card whose memory was copied at its event number ``seqno``."""

    original: Card
    copy: Card
    seqno: int


@dataclass
class DemoDay:
    """The demo's day as the checks see it (a :class:`tallypurse.sim.checks.Subject`)."""

    host_: Host
    all_cards: list[Card]
    copied: list[Copied]
    tills: dict[str, tuple[str, Terminal]]  # terminal id -> (merchant id, terminal)
    final_sync_at: int
    currency: str = "EUR"  # of the cards (the value totals are in it)
    counts: Counter[str] = field(default_factory=Counter)
    rng: Random = field(default_factory=lambda: Random(0))
    online_receipts: list[tuple[str, str, int]] = field(default_factory=list)
    clones_seen_detected: set[str] = field(default_factory=set)
    violations: list[tuple[str, str]] = field(default_factory=list)

    @property
    def host(self) -> Host:
        return self.host_

    def violation(self, rule: str, detail: str) -> None:
        self.violations.append((rule, detail))

    def cards(self) -> dict[str, CardPort]:
        return {c.serial.hex(): CardPort(c) for c in self.all_cards}

    def copies(self) -> list[Copy]:
        return [Copy(c.original.serial.hex(), CardPort(c.original), CardPort(c.copy), c.seqno)
                for c in self.copied]

    def merchants(self) -> list[str]:
        return sorted({merchant for merchant, _ in self.tills.values()})

    def terminals(self) -> dict[str, str]:
        return {tid: merchant for tid, (merchant, _) in self.tills.items()}

    def terminal(self, terminal_id: str) -> Terminal:
        return self.tills[terminal_id][1]

    def bank_collections(self) -> list[str] | None:
        return None  # the demo's sandbox bank keeps no book of what it collected


def check(day: DemoDay) -> dict[str, Result]:
    """Run every check; per rule: (holds, what was checked or what broke)."""
    Checks(day).final()
    out: dict[str, Result] = {}
    for rule in DEMO_RULES:
        broken = [detail for r, detail in day.violations if r == rule]
        if broken:
            more = f" (and {len(broken) - 3} more)" if len(broken) > 3 else ""
            out[rule] = (False, "; ".join(broken[:3]) + more)
        else:
            out[rule] = (True, _held(rule, day.counts, len(day.copied), day.currency))
    return out


def _held(rule: str, c: Counter[str], copied: int, code: str) -> str:
    """What was checked, for a rule that held."""
    cur = currency(code)
    debts = sum(n for k, n in c.items() if k.startswith("debts."))
    return {
        "money_conserved": f"ledger balanced; {c['checked.cards'] - copied} cards' own balance "
                           "chains equal the host's events and purse view",
        "no_double_charge": "each card event, load, debt, collection and payout booked once",
        "nothing_lost": "every event the cards committed reached the host; the tills hold "
                        "nothing unacknowledged",
        "debts_resolved": f"{debts} split debt(s): each settled or in collection, and the "
                          "cards agree",
        "clones_caught": f"{c['clones.detected']} copied card(s) spent beside the original: "
                         "caught and blacklisted",
        "only_host_creates_value": f"{c['checked.signatures']} card signatures verified; the "
                                   f"cards hold {format_minor(c['value.on_cards'], cur)}, "
                                   "what the host loaded less what they paid",
        "merchants_paid_once": f"merchants settled {format_minor(c['merchants.gross'], cur)} once, "
                               "as their terminals' card events add up",
    }.get(rule, RULES[rule])


def money_conserved(host: Host, cards: list[Card]) -> Result:
    """Rule 1 alone, for a host and the cards it served (no copies, no tills): the ledger
    balances and each card's own balance chain equals the host's events and purse view."""
    day = DemoDay(host, cards, [], {}, final_sync_at=0)
    Checks(day).money()
    broken = [detail for rule, detail in day.violations if rule == "money_conserved"]
    if broken:
        return False, "; ".join(broken[:3])
    return True, _held("money_conserved", day.counts, 0, day.currency)
