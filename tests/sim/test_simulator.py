"""The city simulator drives the real card, terminal and host code and checks docs/architecture.md
section 8: every rule holds in a fault-free city and under every fault, on SQLite and on
PostgreSQL; the same seed gives the same run; a planted bug is caught with a seed and a
step that replay it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tallypurse.host.db.models import Card as CardRow
from tallypurse.host.ledger import Entry, Ledger
from tallypurse.host.lists import Lists
from tallypurse.sim import RULES, Faults, SimConfig, SimReport, simulate
from tallypurse.sim.workspace import workspace

# The bounded simulation CI runs with every fault, on each database. 1,000 cards, 50
# terminals and 7 days take 2.5 to 9 minutes here (2 cores): see docs/simulator.md.
CI_CITY = {"cards": 200, "terminals": 10, "days": 3}
SMALL = {"cards": 30, "terminals": 4, "days": 2}


def run(tmp_path: Path, *, db_url: str | None = None, **kw: Any) -> SimReport:
    """One run in a scratch city (memory-backed where the machine has /dev/shm)."""
    with workspace(db_url) as ws:
        config = SimConfig(db_url=ws.db_url, db_schema=ws.db_schema, **kw)
        return simulate(config, ws.workdir)


def every_rule_holds(report: SimReport) -> None:
    assert report.violations == [], report.text()
    assert report.invariants == dict.fromkeys(RULES, True)
    assert report.ok


def test_a_fault_free_city_keeps_every_rule(tmp_path: Path) -> None:
    report = run(tmp_path, seed=3, faults=Faults(), **SMALL)
    every_rule_holds(report)
    c = report.counts
    assert c["taps"] > 50 and c["purchase.offline"] > 40
    assert c["load.cash"] > 0 and c["settlements"] > 0 and c["close.delivered"] > 0
    assert c["final.taps_round_1"] == SMALL["cards"]
    assert not [k for k in c if k.startswith("fault.")]
    assert report.to_json()["latency_ms"]["samples"] > 0


@pytest.mark.slow
def test_a_bounded_city_with_every_fault_keeps_every_rule_on_sqlite(tmp_path: Path) -> None:
    report = run(tmp_path, seed=2026, faults=Faults.parse("all"), **CI_CITY)
    every_rule_holds(report)
    faults_seen(report)


@pytest.mark.slow
def test_a_bounded_city_with_every_fault_keeps_every_rule_on_postgresql(
    tmp_path: Path, pg_url: str,
) -> None:
    report = run(tmp_path, db_url=pg_url, seed=2027, faults=Faults.parse("all"), **CI_CITY)
    assert report.database == "postgresql"
    every_rule_holds(report)
    faults_seen(report)


def faults_seen(report: SimReport) -> None:
    """The faults really happened, and the flows they disturb really ran."""
    c = report.counts
    for fault in ("lost_request", "lost_response", "duplicate", "held_delivered",
                  "partitioned_request", "card_pulled", "terminal_crash", "host_restart"):
        assert c[f"fault.{fault}"] > 0, fault
    assert c["clones.injected"] >= 1 and c["clones.detected"] == c["clones.injected"]
    assert c["purchase.split"] > 0 and c["writebacks.applied"] > 0
    assert c["purchase.recovered_after_fault"] > 0
    # a power cut between a load's commit and its receipt: the retry is not loaded again
    assert c["load.recovered_after_fault"] > 0


def test_the_same_seed_gives_the_same_run(tmp_path: Path) -> None:
    first = run(tmp_path / "a", seed=11, faults=Faults.parse("all"), **SMALL)
    second = run(tmp_path / "b", seed=11, faults=Faults.parse("all"), **SMALL)
    other = run(tmp_path / "c", seed=12, faults=Faults.parse("all"), **SMALL)
    every_rule_holds(first)
    assert first.steps == second.steps and first.counts == second.counts
    assert other.counts != first.counts


def double_booking(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted host bug: clearing books each offline debit twice (through the ledger's
    one writer, so that it survives any rework of clearing's insides)."""
    original = Ledger.post_many

    def post_many(self: Ledger, entries: Sequence[Entry]) -> list[int]:
        again = [replace(e, reference=e.reference + ":again") for e in entries
                 if e.kind == "clear_debit"]
        return original(self, [*entries, *again])

    monkeypatch.setattr(Ledger, "post_many", post_many)


def test_a_planted_double_booking_is_caught_with_a_seed_and_step_that_replay_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    double_booking(monkeypatch)
    report = run(tmp_path / "a", seed=5, faults=Faults(), **SMALL)
    assert not report.ok
    broken = {rule for rule, ok in report.invariants.items() if not ok}
    assert {"money_conserved", "no_double_charge"} <= broken, report.text()
    first = report.violations[0]
    assert "--seed 5 " in report.replay and report.replay.endswith(f"--stop-at {first.step}")
    # Replaying up to that step stops just before it, with nothing broken yet ...
    before = run(tmp_path / "b", seed=5, faults=Faults(), stop_at=first.step, **SMALL)
    assert before.stopped_at == first.step and before.violations == []
    # ... and one step further the same rule breaks at the same step.
    after = run(tmp_path / "c", seed=5, faults=Faults(), stop_at=first.step + 1, **SMALL)
    assert after.violations and after.violations[0] == first


def test_a_planted_blind_spot_for_clones_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Lists.blacklist

    def blacklist(self: Lists, session: Session, card: CardRow, reason: str) -> bool:
        return False if reason == "cloned" else original(self, session, card, reason)

    monkeypatch.setattr(Lists, "blacklist", blacklist)  # clones are never blacklisted
    report = run(tmp_path, seed=8, faults=Faults.parse("clone"), **SMALL)
    assert report.invariants["clones_caught"] is False, report.text()
    assert any("blacklist" in v.detail for v in report.violations)
    assert report.counts["clones.made"] >= 1
