"""Scorecards: points per bin, PDO scaling, grade bands, reason codes, the config file."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallypurse.core.errors import BadInput
from tallypurse.credit.indicators import INDICATOR_NAMES, INDICATORS, Indicators
from tallypurse.credit.scorecard import (
    Grade,
    ScorecardError,
    builtin_scorecard,
    load_scorecard,
    loads_scorecard,
)

Make = Callable[..., Indicators]


def test_a_known_scorecard_gives_known_points_per_bin(small_toml: str) -> None:
    card = loads_scorecard(small_toml)
    assert card.points_table() == [
        ("tenure_days", "< 30", 280),
        ("tenure_days", "30 to < 365", 300),
        ("tenure_days", ">= 365", 340),
        ("splits_in_collection", "none", 300),
        ("splits_in_collection", ">= 1", 260),
    ]


@pytest.mark.parametrize(("tenure", "in_collection", "score"), [
    (10, 0, 580), (29, 0, 580), (30, 0, 600), (364, 0, 600), (365, 0, 640), (365, 1, 600),
    (10, 3, 540),
])
def test_a_known_scorecard_gives_known_scores(small_toml: str, make_indicators: Make,
                                               tenure: int, in_collection: int,
                                               score: int) -> None:
    card = loads_scorecard(small_toml)
    ind = make_indicators(tenure_days=tenure, splits_in_collection=in_collection,
                          splits_failed=in_collection)
    assert card.score(ind).score == score
    assert card.score_value(ind) == score


def test_pdo_scaling_puts_base_odds_at_base_score_and_adds_pdo_per_doubling() -> None:
    card = builtin_scorecard()
    sc = card.spec.scaling
    assert sc.factor == pytest.approx(20 / math.log(2))
    # offset + factor * ln(odds) is base_score at base_odds, +pdo at twice the odds
    assert sc.offset + sc.factor * math.log(50) == pytest.approx(600)
    assert sc.offset + sc.factor * math.log(100) == pytest.approx(620)
    assert sc.offset + sc.factor * math.log(25) == pytest.approx(580)


def test_changing_pdo_changes_the_points_of_one_doubling(small_toml: str,
                                                          make_indicators: Make) -> None:
    card = loads_scorecard(small_toml.replace("pdo = 20", "pdo = 40"))
    assert card.score(make_indicators(tenure_days=10)).score == 600 - 40
    assert card.score(make_indicators(tenure_days=100)).score == 600
    assert card.score(make_indicators(tenure_days=1000)).score == 600 + 80


@pytest.mark.parametrize(("score", "grade"), [
    (700, Grade.A), (640, Grade.A), (639, Grade.B), (620, Grade.B), (619, Grade.C),
    (600, Grade.C), (599, Grade.D), (580, Grade.D), (579, Grade.E), (0, Grade.E),
])
def test_grade_bands_take_each_floor_into_its_own_grade(small_toml: str, score: int,
                                                        grade: Grade) -> None:
    assert loads_scorecard(small_toml).grade_of(score) is grade


def test_a_decision_carries_score_grade_model_version_and_next_grade(
        small_toml: str, make_indicators: Make) -> None:
    d = loads_scorecard(small_toml).score(make_indicators(tenure_days=100))
    assert (d.score, d.grade, d.model_version, d.next_grade_at) == (600, Grade.C, "small-1", 620)
    top = loads_scorecard(small_toml).score(make_indicators(tenure_days=1000))
    assert top.grade is Grade.A and top.next_grade_at is None and top.reasons == ()
    data = d.to_dict()
    assert data["grade"] == "C" and data["grade_number"] == 3
    assert [i["name"] for i in data["indicators"]] == ["tenure_days", "splits_in_collection"]


def test_reason_codes_name_the_biggest_shortfall_first(small_toml: str,
                                                        make_indicators: Make) -> None:
    card = loads_scorecard(small_toml)
    d = card.score(make_indicators(tenure_days=10, splits_in_collection=1, splits_failed=1))
    # tenure: 280 of 340 (60 short); in collection: 260 of 300 (40 short)
    assert [(r.code, r.shortfall) for r in d.reasons] == [("R01", 60), ("R13", 40)]
    d2 = card.score(make_indicators(tenure_days=100, splits_in_collection=1, splits_failed=1))
    assert [(r.code, r.shortfall) for r in d2.reasons] == [("R01", 40), ("R13", 40)]  # tie: code


def test_reason_codes_are_stable_and_limited_to_four(make_indicators: Make) -> None:
    assert [INDICATORS[n].code for n in INDICATOR_NAMES] == [f"R{i:02d}" for i in range(1, 18)]
    card = builtin_scorecard()
    poor = make_indicators(tenure_days=5, taps_per_week=0.1, activity_regularity=0.1,
                           topups_per_month=0.1, topup_regularity=0.1, splits_failed=2,
                           splits_in_collection=1, days_since_last_failure=3,
                           bank_account_verified=False, blacklist_history=1,
                           card_evaluation=10)
    d = card.score(poor)
    assert len(d.reasons) == 4
    shortfalls = [r.shortfall for r in d.reasons]
    assert shortfalls == sorted(shortfalls, reverse=True)
    everything = card.score(poor, reasons=17)
    assert everything.reasons[:4] == d.reasons
    assert min(r.shortfall for r in everything.reasons) > 0


def test_a_missing_value_needs_a_missing_bin(small_toml: str, make_indicators: Make) -> None:
    card = builtin_scorecard()
    never = card.score(make_indicators(days_since_last_failure=None))
    failed = card.score(make_indicators(days_since_last_failure=10, splits_failed=1))
    assert {d.name: d.bin for d in never.details}["days_since_last_failure"] == "missing"
    assert never.score > failed.score
    text = small_toml.replace("splits_in_collection", "card_evaluation")
    with pytest.raises(BadInput, match="card_evaluation is missing"):
        loads_scorecard(text).score(make_indicators(card_evaluation=None))


def test_the_expert_scorecard_ships_readable_and_versioned(make_indicators: Make) -> None:
    card = builtin_scorecard()
    assert card.version == "expert-v1" and card.spec.kind == "expert"
    assert set(card.spec.indicators) == set(INDICATOR_NAMES)
    good = card.score(make_indicators(tenure_days=800, splits_settled_online=7,
                                      splits_taken=7))
    bad = card.score(make_indicators(splits_failed=2, splits_in_collection=1,
                                     days_since_last_failure=20))
    assert good.grade is Grade.A
    assert bad.grade is Grade.E
    assert bad.reasons[0].code == "R13"


def test_a_scorecard_written_out_reads_back_the_same(small_toml: str) -> None:
    for card in (builtin_scorecard(), loads_scorecard(small_toml)):
        again = loads_scorecard(card.spec.to_toml())
        assert again.spec == card.spec
        assert again.points_table() == card.points_table()


def test_a_scorecard_file_loads_from_disk_and_names_itself_in_errors(tmp_path: Path,
                                                                     small_toml: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(small_toml)
    assert load_scorecard(path).version == "small-1"
    path.write_text("format = [")
    with pytest.raises(ScorecardError, match=r"m\.toml: not valid TOML"):
        load_scorecard(path)
    with pytest.raises(ScorecardError, match="cannot read"):
        load_scorecard(tmp_path / "absent.toml")


@pytest.mark.parametrize(("old", "new", "message"), [
    ("format = 1", "format = 2", r"format: must be 1"),
    ('version = "small-1"', 'version = "small 1"', r"model\.version: may hold only"),
    ('kind = "expert"', 'kind = "guess"', r"model\.kind: must be"),
    ("pdo = 20", "pdo = 0", r"scaling\.pdo: must be greater than 0"),
    ("base_odds = 50", "base_odds = -1", r"scaling\.base_odds: must be greater than 0"),
    ("base_score = 600", 'base_score = "600"', r"scaling\.base_score: must be a number"),
    ("B = 620", "B = 650", r"grades\.B: must be below grade A's 640"),
    ("D = 580", "", r"grades\.D: missing"),
    ("C = 600", "C = 600.5", r"grades\.C: must be a whole number"),
    ("[logit]", "[logit]\nslope = 1", r"logit\.slope: unknown field"),
    ("intercept = 3.912023005428146", "", r"logit\.intercept: missing"),
    ("[indicators.tenure_days]", "[indicators.tenure]", r"indicators\.tenure: unknown indicator"),
    ("weight = 1.0", "weight = nan", r"indicators\.tenure_days\.weight: must be finite"),
    ("{ below = 365, woe = 0.0 }", "{ below = 20, woe = 0.0 }",
     r"indicators\.tenure_days\.bins\[1\]\.below: must be greater than the previous bin's 30"),
    ("{ woe = 1.3862943611198906 }", "{ below = 999, woe = 1.3862943611198906 }",
     r"indicators\.tenure_days\.bins\[2\]\.below: the last bin"),
    ("{ below = 30, woe", "{ woe", r"indicators\.tenure_days\.bins\[0\]\.below: missing"),
    ("{ below = 1, woe = 0.0, label", "{ below = 1, label",
     r"indicators\.splits_in_collection\.bins\[0\]\.woe: missing"),
    ("{ below = 1, woe = 0.0, label", "{ below = 1, woe = 0.0, colour = 1, label",
     r"indicators\.splits_in_collection\.bins\[0\]\.colour: unknown field"),
    ("[model]", "colour = 1\n[model]", r": colour: unknown field"),
])
def test_config_errors_name_the_field(small_toml: str, old: str, new: str,
                                      message: str) -> None:
    assert old in small_toml
    with pytest.raises(ScorecardError, match=message):
        loads_scorecard(small_toml.replace(old, new, 1), "bad.toml")


def test_a_scorecard_needs_at_least_one_indicator(small_toml: str) -> None:
    head = small_toml.split("[indicators.")[0] + "[indicators]\n"
    with pytest.raises(ScorecardError, match="indicators: must name at least one"):
        loads_scorecard(head)


_shares = st.floats(0, 1, allow_nan=False)
_counts = st.integers(0, 20)
indicator_values = st.builds(
    lambda t, tp, ar, tm, tr, at, ap, ao, taken, online, bank, failed, coll, since, bv, bl, ev:
    Indicators(t, tp, ar, tm, tr, at, ap, ao, taken, online, bank, max(failed, coll), coll,
               since if max(failed, coll) else None, bv, bl, ev),
    st.integers(0, 3000), st.floats(0, 30, allow_nan=False), _shares,
    st.floats(0, 10, allow_nan=False), _shares, st.integers(0, 20000), st.integers(0, 20000),
    st.integers(-1000, 50000), _counts, _counts, _counts, _counts, st.integers(0, 5),
    st.integers(0, 2000), st.booleans(), st.integers(0, 3),
    st.one_of(st.none(), st.integers(0, 100)),
)


def _improve(name: str, value: int | float | bool) -> int | float | bool:
    """A better value of one indicator, in the direction it is known to act."""
    up = INDICATORS[name].higher_is_better
    if isinstance(value, bool):
        return bool(up)
    if name.endswith("regularity"):
        return min(1.0, value + 0.3) if up else value / 2
    if name == "card_evaluation":
        return min(100, int(value) * 2 + 1)
    if isinstance(value, float):
        return value * 2 + 1 if up else value / 2
    return value * 2 + 1 if up else value // 2


@given(indicator_values, st.sampled_from(
    [n for n in INDICATOR_NAMES if INDICATORS[n].higher_is_better is not None]))
def test_the_expert_score_moves_the_right_way_when_one_indicator_improves(
        ind: Indicators, name: str) -> None:
    card = builtin_scorecard()
    value = getattr(ind, name)
    if value is None:
        return
    changes: dict[str, Any] = {name: _improve(name, value)}
    try:
        better = dataclasses.replace(ind, **changes)
    except BadInput:
        return  # e.g. fewer failures than debts in collection: not a cardholder
    assert card.score_value(better) >= card.score_value(ind)
