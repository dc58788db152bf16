"""What a simulation run found: counts per flow, latencies, faults, the rules' results."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# the system's rules (docs/architecture.md), in order; the keys of ``invariants``.
RULES: dict[str, str] = {
    "money_conserved": "1. the ledger balances to zero; the host's purse view after clearing "
                       "equals every card's balance chain",
    "no_double_charge": "2. a debit, a load, an agent debit, a payout takes effect once",
    "nothing_lost": "3. nothing a card committed or the host acknowledged is lost",
    "debts_resolved": "4. every split debt ends settled or in collection, and its outcome "
                    "reaches the card",
    "clones_caught": "5. a cloned card is detected and blacklisted within one clearing run",
    "only_host_creates_value": "6. nobody but the host creates value; every debit carries the "
                        "card's signature",
    "merchants_paid_once": "7. every accepted debit is paid to its merchant exactly once",
    "no_internal_errors": "the host and the terminals never failed unexpectedly",
}


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    step: int
    time: int  # simulated unix time
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "step": self.step, "time": self.time, "detail": self.detail}


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    s = sorted(samples)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class SimReport:
    seed: int
    cards: int
    terminals: int
    days: int
    faults: list[str]
    database: str
    counts: Counter[str] = field(default_factory=Counter)
    tap_ms: list[float] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)
    steps: int = 0
    stopped_at: int | None = None
    wall_s: float = 0.0
    setup_s: float = 0.0
    replay: str = ""

    @property
    def invariants(self) -> dict[str, bool]:
        broken = {v.rule for v in self.violations}
        return {rule: rule not in broken for rule in RULES}

    @property
    def ok(self) -> bool:
        return not self.violations and self.stopped_at is None

    @property
    def taps(self) -> int:
        return self.counts["taps"]

    def taps_per_second(self) -> float:
        run = self.wall_s - self.setup_s
        return round(self.counts["taps"] / run, 1) if run > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        flows = {k: v for k, v in sorted(c.items()) if not k.startswith(("fault.", "net."))}
        return {
            "ok": self.ok,
            "seed": self.seed,
            "cards": self.cards,
            "terminals": self.terminals,
            "days": self.days,
            "faults": self.faults,
            "database": self.database,
            "steps": self.steps,
            "stopped_at": self.stopped_at,
            "taps": c["taps"],
            "splits": c["purchase.split"],
            "clones_injected": c["clones.injected"],
            "clones_detected": c["clones.detected"],
            "invariants": self.invariants,
            "violations": [v.to_json() for v in self.violations],
            "flows": flows,
            "faults_injected": {k[6:]: v for k, v in sorted(c.items())
                                if k.startswith("fault.")},
            "network": {k[4:]: v for k, v in sorted(c.items()) if k.startswith("net.")},
            "latency_ms": {"tap_p50": round(percentile(self.tap_ms, 50), 3),
                           "tap_p99": round(percentile(self.tap_ms, 99), 3),
                           "tap_max": round(max(self.tap_ms, default=0.0), 3),
                           "samples": len(self.tap_ms)},
            "wall_s": round(self.wall_s, 2),
            "setup_s": round(self.setup_s, 2),
            "taps_per_s": self.taps_per_second(),
            "replay": self.replay,
        }

    def text(self) -> str:
        j = self.to_json()
        out = [f"tallypurse simulate: {self.cards} cards, {self.terminals} terminals, "
               f"{self.days} days, seed {self.seed}, faults: {', '.join(self.faults) or 'none'}, "
               f"database: {self.database}"]
        if self.stopped_at is not None:
            out.append(f"stopped before step {self.stopped_at} as asked (--stop-at)")
        out.append(f"  {j['steps']} steps, {j['taps']} taps in {j['wall_s']} s wall "
                   f"({j['setup_s']} s setting up the city): {j['taps_per_s']} taps/s; "
                   f"tap p50 {j['latency_ms']['tap_p50']} ms, p99 {j['latency_ms']['tap_p99']} ms")
        out.append("flows:")
        for k, v in j["flows"].items():
            out.append(f"  {k:<38} {v}")
        if j["faults_injected"]:
            out.append("faults injected:")
            for k, v in j["faults_injected"].items():
                out.append(f"  {k:<38} {v}")
        out.append("rules (docs/architecture.md):")
        for rule, ok in self.invariants.items():
            out.append(f"  {'ok  ' if ok else 'FAIL'} {RULES[rule]}")
        if self.violations:
            out.append(f"{len(self.violations)} violation(s):")
            for v in self.violations[:50]:
                out.append(f"  [{v.rule}] step {v.step}: {v.detail}")
            if len(self.violations) > 50:
                out.append(f"  ... and {len(self.violations) - 50} more (--json lists all)")
            out.append(f"replay: {self.replay}")
        return "\n".join(out)
