"""Fitting a scorecard from (synthetic) history: it must beat chance on held-out rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tallypurse.core.errors import BadInput
from tallypurse.credit import synthetic
from tallypurse.credit.fit import (
    FitError,
    FitResult,
    FitUnavailable,
    fit_scorecard,
    split,
    stability,
)
from tallypurse.credit.history import read_history
from tallypurse.credit.scorecard import builtin_scorecard, loads_scorecard

needs_extra = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="the credit-fit extra (scikit-learn) is not installed",
)


@pytest.fixture(scope="module")
def fitted() -> FitResult:
    return fit_scorecard(synthetic.generate(4000, seed=11), current=builtin_scorecard(),
                         source="synthetic seed 11", version="fitted-test-1")


@needs_extra
def test_fitting_synthetic_history_separates_defaulters_on_held_out_rows(
        fitted: FitResult) -> None:
    assert fitted.test_rows == 1200 and fitted.train_rows == 2800
    assert fitted.test.auc > 0.72
    assert fitted.test.gini == pytest.approx(2 * fitted.test.auc - 1, abs=1e-3)
    assert 0.2 < fitted.test.ks < 1


@needs_extra
def test_fitting_recovers_the_planted_effect_of_debts_in_collection(fitted: FitResult) -> None:
    spec = fitted.scorecard.spec.indicators["splits_in_collection"]
    assert spec.weight > 0
    none, some = spec.bins[0], spec.bins[-1]
    assert none.below == 1 and none.woe > 0 > some.woe
    points = {b: p for n, b, p in fitted.scorecard.points_table() if n == "splits_in_collection"}
    assert points["< 1"] > points[">= 1"]


@needs_extra
def test_a_fitted_scorecard_keeps_the_current_scaling_and_grade_bands(fitted: FitResult) -> None:
    spec, current = fitted.scorecard.spec, builtin_scorecard().spec
    assert spec.kind == "fitted" and spec.version == "fitted-test-1"
    assert (spec.scaling, spec.grade_floors) == (current.scaling, current.grade_floors)
    assert spec.fit["test_auc"] == fitted.test.auc
    assert spec.fit["current_version"] == "expert-v1"
    for ind in spec.indicators.values():
        assert ind.weight > 0


@needs_extra
def test_the_fitted_file_is_the_fitted_scorecard(fitted: FitResult) -> None:
    again = loads_scorecard(fitted.scorecard.spec.to_toml())
    assert again.spec == fitted.scorecard.spec
    rows = synthetic.generate(100, seed=99)
    assert [again.score_value(r.indicators) for r in rows] == [
        fitted.scorecard.score_value(r.indicators) for r in rows]


def test_the_psi_of_a_model_against_itself_is_zero() -> None:
    rows = synthetic.generate(1000, seed=4)
    card = builtin_scorecard()
    st = stability(card, card, rows)
    assert st.score_psi == pytest.approx(0, abs=1e-9)
    assert st.grade_psi == pytest.approx(0, abs=1e-9)
    assert st.grades_current == st.grades_candidate


@needs_extra
def test_the_fit_reports_stability_against_the_current_model(fitted: FitResult) -> None:
    st = fitted.stability
    assert sum(st.grades_current.values()) == sum(st.grades_candidate.values()) == 4000
    assert st.score_psi >= 0 and st.grade_psi >= 0
    report = fitted.to_dict()
    assert set(report["test"]) == {"auc", "gini", "ks"}
    assert report["current"]["version"] == "expert-v1"


def test_the_split_is_stratified_and_seeded() -> None:
    rows = synthetic.generate(1000, seed=5)
    train, test = split(rows, 0.3, seed=1)
    assert len(train) + len(test) == 1000
    rate = sum(r.default for r in rows) / len(rows)
    assert sum(r.default for r in test) / len(test) == pytest.approx(rate, abs=0.01)
    assert split(rows, 0.3, seed=1) == (train, test)


@needs_extra
def test_fitting_refuses_too_little_history() -> None:
    with pytest.raises(FitError, match="at least 200 rows"):
        fit_scorecard(synthetic.generate(100, seed=1), current=builtin_scorecard())


def test_fitting_without_the_extra_explains_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.tree", None)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    with pytest.raises(FitUnavailable, match="credit-fit"):
        fit_scorecard(synthetic.generate(300, seed=1), current=builtin_scorecard())


def test_a_history_file_with_a_bad_row_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("tenure_days,default\n10,0\n")
    with pytest.raises(BadInput, match=r"h\.csv:2: missing indicator"):
        read_history(path)
    path.write_text("x\n")
    with pytest.raises(BadInput, match="no rows"):
        read_history(path)
    with pytest.raises(BadInput, match=r"\.csv or \.jsonl"):
        read_history(tmp_path / "h.parquet")
