"""The SYNTHETIC history generator: deterministic by seed, with a planted relationship."""

from __future__ import annotations

from pathlib import Path

import pytest

from tallypurse.credit import metrics, synthetic
from tallypurse.credit.history import read_history, write_history


def test_the_same_seed_gives_the_same_cardholders() -> None:
    assert synthetic.generate(300, seed=7) == synthetic.generate(300, seed=7)


def test_another_seed_gives_other_cardholders() -> None:
    assert synthetic.generate(50, seed=7) != synthetic.generate(50, seed=8)


def test_a_seed_gives_a_fixed_first_cardholder() -> None:
    """Pins the generator: a change to it shows here (and must be on purpose)."""
    first = next(synthetic.cardholders(1, seed=1))
    assert first.reliability == pytest.approx(1.28818475)
    ind = first.row.indicators
    assert (ind.tenure_days, ind.taps_per_week, ind.avg_online_balance_minor) == (1144, 3.82, 32497)
    assert (ind.splits_taken, ind.splits_settled_online, ind.card_evaluation) == (1, 1, 98)
    assert first.row.default is False


def test_synthetic_defaults_follow_the_hidden_reliability() -> None:
    people = list(synthetic.cardholders(3000, seed=2))
    rate = sum(p.row.default for p in people) / len(people)
    assert 0.03 < rate < 0.2
    # the planted relationship: reliable cardholders default less
    auc = metrics.auc([p.reliability for p in people], [int(p.row.default) for p in people])
    assert auc > 0.75


@pytest.mark.parametrize("name", ["h.csv", "h.jsonl"])
def test_synthetic_history_round_trips_through_csv_and_json_lines(tmp_path: Path,
                                                                 name: str) -> None:
    rows = synthetic.generate(200, seed=3)
    path = tmp_path / name
    assert write_history(path, rows) == 200
    assert read_history(path) == rows


def test_synthetic_card_evaluations_are_lower_for_cardholders_who_live_on_credit() -> None:
    people = [p for p in synthetic.cardholders(2000, seed=3)
              if p.row.indicators.card_evaluation is not None]
    evaluations = [p.row.indicators.card_evaluation or 0 for p in people]
    assert all(0 <= e <= 100 for e in evaluations)
    heavy = [e for p, e in zip(people, evaluations, strict=True)
             if p.row.indicators.splits_taken >= 5]
    none = [e for p, e in zip(people, evaluations, strict=True)
            if p.row.indicators.splits_taken == 0]
    assert heavy and none
    assert sum(heavy) / len(heavy) < sum(none) / len(none)
    # and the evaluation carries the planted relationship
    assert metrics.auc(evaluations, [int(p.row.default) for p in people]) > 0.6
