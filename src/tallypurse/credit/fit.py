"""Fitting a scorecard from credit history (needs the ``credit-fit`` extra).

1. Split the history into a training part and a held-out part (stratified by
   the label, seeded).
2. Bin each indicator with a shallow decision tree (scikit-learn) on the
   training part: at most ``max_bins`` bins, each holding at least
   ``min_bin_share`` of the rows, and monotonic in the direction the indicator
   is known to act (or, where no direction is known, the direction of its
   correlation with the label), so that every fitted scorecard reads sensibly.
   A missing value gets its own bin.
3. Compute each bin's weight of evidence and each indicator's information
   value (IV); indicators with an IV below ``min_iv`` are left out.
4. Fit a logistic regression on the WoE-coded indicators; an indicator whose
   weight comes out negative (its evidence points the wrong way once the
   others are known) is dropped and the regression refitted.
5. Scale the points with the current model's base score, base odds and PDO,
   and keep its grade bands, so that a grade means the same odds before and
   after a promotion.
6. Report discrimination (AUC, Gini, KS) on the held-out part, beside the
   current model's on the same rows, and the population stability (PSI) of
   the candidate's scores and grades against the current model's.

The result is a candidate scorecard file in the same format as the expert one;
it is used only after an operator promotes it (:mod:`tallypurse.credit.registry`).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tallypurse.core.errors import TallypurseError
from tallypurse.credit import metrics
from tallypurse.credit.history import HistoryRow
from tallypurse.credit.indicators import INDICATOR_NAMES, INDICATORS
from tallypurse.credit.scorecard import (
    BinSpec,
    Grade,
    IndicatorSpec,
    Scorecard,
    ScorecardSpec,
    loads_scorecard,
)

INSTALL_HINT = (
    "fitting needs the credit-fit extra (scikit-learn): "
    "`uv sync --extra credit-fit` in a checkout, or `pip install 'tallypurse[credit-fit]'`"
)
_INTEGER_INDICATORS = {
    name for name in INDICATOR_NAMES
    if name not in ("taps_per_week", "activity_regularity", "topups_per_month",
                    "topup_regularity")
}
_NULLABLE = {"days_since_last_failure", "card_evaluation"}


class FitUnavailable(TallypurseError):
    """The optional fitting library is not installed."""

    code = 1501


class FitError(TallypurseError):
    """The history cannot give a scorecard (too few rows, no defaults, ...)."""

    code = 1502


@dataclass(frozen=True, slots=True)
class Discrimination:
    auc: float
    gini: float
    ks: float

    @classmethod
    def of(cls, scorecard: Scorecard, rows: Sequence[HistoryRow]) -> Discrimination:
        scores = [scorecard.score_value(r.indicators) for r in rows]
        bad = [int(r.default) for r in rows]
        a = metrics.auc(scores, bad)
        return cls(round(a, 4), round(2 * a - 1, 4), round(metrics.ks(scores, bad), 4))


@dataclass(frozen=True, slots=True)
class Stability:
    """How the candidate's scores and grades differ from the current model's."""

    score_psi: float
    grade_psi: float
    grades_current: dict[str, int]
    grades_candidate: dict[str, int]


def stability(current: Scorecard, candidate: Scorecard,
              rows: Sequence[HistoryRow]) -> Stability:
    cur = [current.score_value(r.indicators) for r in rows]
    cand = [candidate.score_value(r.indicators) for r in rows]
    g_cur = [sum(1 for s in cur if current.grade_of(s) is g) for g in Grade]
    g_cand = [sum(1 for s in cand if candidate.grade_of(s) is g) for g in Grade]
    return Stability(
        round(metrics.score_psi(cur, cand), 4),
        round(metrics.psi(g_cur, g_cand), 4),
        {g.name: n for g, n in zip(Grade, g_cur, strict=True)},
        {g.name: n for g, n in zip(Grade, g_cand, strict=True)},
    )


@dataclass(frozen=True, slots=True)
class FitResult:
    scorecard: Scorecard
    train_rows: int
    test_rows: int
    bad_rate: float
    train: Discrimination
    test: Discrimination
    current_version: str
    current_test: Discrimination
    stability: Stability
    information_values: dict[str, float]
    dropped: dict[str, str]  # indicator -> why it was left out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.scorecard.version,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "bad_rate": self.bad_rate,
            "train": _disc(self.train),
            "test": _disc(self.test),
            "current": {"version": self.current_version, "test": _disc(self.current_test)},
            "stability": {
                "score_psi": self.stability.score_psi,
                "grade_psi": self.stability.grade_psi,
                "grades_current": self.stability.grades_current,
                "grades_candidate": self.stability.grades_candidate,
            },
            "information_values": self.information_values,
            "dropped": self.dropped,
        }


def _disc(d: Discrimination) -> dict[str, float]:
    return {"auc": d.auc, "gini": d.gini, "ks": d.ks}


def _sklearn() -> tuple[Any, Any]:
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.tree import DecisionTreeClassifier
    except ImportError:
        raise FitUnavailable(INSTALL_HINT) from None
    return DecisionTreeClassifier, LogisticRegression


def split(rows: Sequence[HistoryRow], test_share: float,
          seed: int) -> tuple[list[HistoryRow], list[HistoryRow]]:
    """Stratified split: the same share of goods and bads in each part."""
    rng = random.Random(seed)
    train: list[HistoryRow] = []
    test: list[HistoryRow] = []
    for label in (False, True):
        part = [r for r in rows if r.default is label]
        rng.shuffle(part)
        k = round(len(part) * test_share)
        test.extend(part[:k])
        train.extend(part[k:])
    return train, test


def _value(row: HistoryRow, name: str) -> float | None:
    v = getattr(row.indicators, name)
    return None if v is None else float(v)


def _nice_bound(t: float, left_max: float, right_min: float, integer: bool) -> float:
    """A readable upper bound b with left_max < b <= right_min (so ``value < b`` splits
    the training values exactly as the tree's ``value <= t`` did)."""
    if integer:
        return float(math.floor(t) + 1)
    for decimals in range(0, 7):
        b = round(t, decimals)
        if left_max < b <= right_min:
            return b
    return right_min


def _bins(values: list[float], good: list[int], name: str, *, max_bins: int,
          min_leaf: int, tree_cls: Any) -> list[float]:
    """The upper bounds of a monotonic tree binning of one indicator."""
    if len(set(values)) < 2:
        return []
    direction = INDICATORS[name].higher_is_better
    if direction is None:
        direction = _correlation(values, good) >= 0
    tree = tree_cls(max_leaf_nodes=max_bins, min_samples_leaf=min_leaf,
                    monotonic_cst=[1 if direction else -1], random_state=0)
    tree.fit([[v] for v in values], good)
    thresholds = sorted({float(t) for t, left in zip(tree.tree_.threshold,
                                                     tree.tree_.children_left, strict=True)
                         if left != -1})
    ordered = sorted(set(values))
    bounds: list[float] = []
    for t in thresholds:
        left_max = max(v for v in ordered if v <= t)
        right_min = min(v for v in ordered if v > t)
        b = _nice_bound(t, left_max, right_min, name in _INTEGER_INDICATORS)
        if not bounds or b > bounds[-1]:
            bounds.append(b)
    return bounds


def _correlation(x: list[float], y: list[int]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))


def _woe(goods: list[int], bads: list[int], total_good: int,
         total_bad: int) -> tuple[list[float], float]:
    """WoE per bin (with 0.5 added to every count, so empty cells stay finite) and IV."""
    k = len(goods)
    woes, iv = [], 0.0
    for g, b in zip(goods, bads, strict=True):
        pg = (g + 0.5) / (total_good + 0.5 * k)
        pb = (b + 0.5) / (total_bad + 0.5 * k)
        w = math.log(pg / pb)
        woes.append(w)
        iv += (pg - pb) * w
    return woes, iv


@dataclass(slots=True)
class _Binned:
    bounds: list[float]
    woes: list[float]
    missing_woe: float | None
    iv: float

    def woe_of(self, v: float | None) -> float:
        if v is None:
            assert self.missing_woe is not None
            return self.missing_woe
        return self.woes[bisect.bisect_right(self.bounds, v)]

    def spec(self, weight: float) -> IndicatorSpec:
        uppers: list[float | None] = [*self.bounds, None]
        return IndicatorSpec(
            weight=round(weight, 4),
            bins=tuple(BinSpec(round(w, 4), b) for w, b in zip(self.woes, uppers, strict=True)),
            missing_woe=None if self.missing_woe is None else round(self.missing_woe, 4),
        )


def fit_scorecard(
    rows: Sequence[HistoryRow],
    *,
    current: Scorecard,
    version: str | None = None,
    description: str = "",
    source: str = "",
    seed: int = 1,
    test_share: float = 0.3,
    max_bins: int = 5,
    min_bin_share: float = 0.05,
    min_iv: float = 0.02,
    now: dt.datetime | None = None,
) -> FitResult:
    """Fit a candidate scorecard from history; see the module's docstring."""
    tree_cls, logit_cls = _sklearn()
    n_bad = sum(1 for r in rows if r.default)
    if len(rows) < 200 or n_bad < 20 or len(rows) - n_bad < 20:
        raise FitError(f"need at least 200 rows with 20 defaults and 20 non-defaults "
                       f"(got {len(rows)} rows, {n_bad} defaults)")
    if not 0.05 <= test_share <= 0.5:
        raise FitError("test_share must be 0.05..0.5")
    train, test = split(rows, test_share, seed)
    good = [0 if r.default else 1 for r in train]
    total_good, total_bad = sum(good), len(good) - sum(good)

    binned: dict[str, _Binned] = {}
    ivs: dict[str, float] = {}
    dropped: dict[str, str] = {}
    for name in INDICATOR_NAMES:
        col = [_value(r, name) for r in train]
        present = [(v, g) for v, g in zip(col, good, strict=True) if v is not None]
        values = [v for v, _ in present]
        min_leaf = max(1, math.ceil(min_bin_share * len(present)))
        bounds = _bins(values, [g for _, g in present], name, max_bins=max_bins,
                       min_leaf=min_leaf, tree_cls=tree_cls) if present else []
        k = len(bounds) + 1
        goods, bads = [0] * k, [0] * k
        m_good = m_bad = 0
        for v, g in zip(col, good, strict=True):
            if v is None:
                m_good += g
                m_bad += 1 - g
                continue
            i = bisect.bisect_right(bounds, v)
            goods[i] += g
            bads[i] += 1 - g
        with_missing = m_good + m_bad > 0
        all_woes, iv = _woe(goods + [m_good] * with_missing, bads + [m_bad] * with_missing,
                            total_good, total_bad)
        woes = all_woes[:k]
        missing = all_woes[k] if with_missing else (0.0 if name in _NULLABLE else None)
        ivs[name] = round(iv, 4)
        if k == 1 and not with_missing:
            dropped[name] = "no split found (a single bin)"
        elif iv < min_iv:
            dropped[name] = f"information value {iv:.4f} below {min_iv}"
        else:
            binned[name] = _Binned(bounds, woes, missing, iv)

    weights, intercept = _regress(binned, train, good, logit_cls, dropped)
    if not weights:
        raise FitError("no indicator separates defaults from the rest in this history")

    spec = ScorecardSpec(
        version="pending",
        kind="fitted",
        description=description or "Scorecard fitted with tallypurse credit fit.",
        scaling=current.spec.scaling,
        grade_floors=current.spec.grade_floors,
        intercept=round(intercept, 4),
        indicators={
            name: binned[name].spec(weights[name])
            for name in INDICATOR_NAMES if name in weights
        },
    )
    if version is None:
        digest = hashlib.sha256(spec.to_toml().encode()).hexdigest()[:8]
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d")
        version = f"fitted-{stamp}-{digest}"
    spec = replace(spec, version=version)
    candidate = loads_scorecard(spec.to_toml(), "fitted scorecard")  # what is written is used

    bad_rate = round(n_bad / len(rows), 4)
    result = FitResult(
        scorecard=candidate,
        train_rows=len(train),
        test_rows=len(test),
        bad_rate=bad_rate,
        train=Discrimination.of(candidate, train),
        test=Discrimination.of(candidate, test),
        current_version=current.version,
        current_test=Discrimination.of(current, test),
        stability=stability(current, candidate, rows),
        information_values=ivs,
        dropped=dropped,
    )
    fit_info: dict[str, Any] = {
        "created": (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "history": source,
        "seed": seed,
        "train_rows": result.train_rows,
        "test_rows": result.test_rows,
        "bad_rate": bad_rate,
        "test_auc": result.test.auc,
        "test_gini": result.test.gini,
        "test_ks": result.test.ks,
        "current_version": current.version,
        "current_test_auc": result.current_test.auc,
        "score_psi_vs_current": result.stability.score_psi,
        "grade_psi_vs_current": result.stability.grade_psi,
        "dropped": sorted(dropped),
    }
    final = loads_scorecard(replace(spec, fit=fit_info).to_toml(), "fitted scorecard")
    return replace(result, scorecard=final)


def _regress(binned: dict[str, _Binned], train: Sequence[HistoryRow], good: list[int],
             logit_cls: Any, dropped: dict[str, str]) -> tuple[dict[str, float], float]:
    """Logistic regression on WoE codes, dropping indicators with a negative weight."""
    names = [n for n in INDICATOR_NAMES if n in binned]
    while names:
        x = [[binned[n].woe_of(_value(r, n)) for n in names] for r in train]
        model = logit_cls(C=1.0, max_iter=2000)
        model.fit(x, good)
        coefs = [float(c) for c in model.coef_[0]]
        worst = min(range(len(names)), key=lambda i: coefs[i])
        if coefs[worst] > 0:
            return dict(zip(names, coefs, strict=True)), float(model.intercept_[0])
        dropped[names[worst]] = f"weight {coefs[worst]:.4f} not positive once the others are known"
        names.pop(worst)
    return {}, 0.0
