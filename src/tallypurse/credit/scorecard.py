"""Scorecards: weight-of-evidence bins and a logistic model, scaled to points.

A scorecard file (TOML) gives, for each indicator it uses, a list of bins with
a weight of evidence (WoE, the natural log of the good:bad odds in that bin
relative to the whole population), a logistic-regression weight per
indicator and an intercept. The model's log-odds of a cardholder being good
(not defaulting) are::

    ln(odds) = intercept + sum(weight_i * woe_i(value_i))

and the score puts those log-odds on a points scale: ``base_score`` points
at ``base_odds`` good:bad odds, and ``pdo`` more points each time the odds
double::

    factor = pdo / ln 2
    offset = base_score - factor * ln(base_odds)
    points(bin) = round(factor * (weight * woe + intercept / n) + offset / n)

with ``n`` the number of indicators in the scorecard. The score is the sum of
each indicator's points, so every point of it can be shown and explained.
Grade bands map scores to grades A..E; reason codes name the indicators that
cost the most points compared with their best bin.

Expert scorecards and fitted ones share this format (see docs/credit.md).
"""

from __future__ import annotations

import bisect
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from importlib import resources
from pathlib import Path
from typing import Any

from tallypurse.core.errors import BadInput
from tallypurse.credit.indicators import INDICATOR_NAMES, INDICATORS, Indicators

FORMAT_VERSION = 1
DEFAULT_MODEL = "expert-v1"
REASONS_SHOWN = 4


class Grade(IntEnum):
    """Credit grades; the number is what the card's credit record carries (1..5)."""

    A = 1
    B = 2
    C = 3
    D = 4
    E = 5

    @classmethod
    def parse(cls, text: str) -> Grade:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise BadInput(f"unknown grade {text!r} (one of A, B, C, D, E)") from None


class ScorecardError(BadInput):
    """A scorecard file that cannot be used; the message names the field."""


# --- the parameters, as written in a file ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class BinSpec:
    woe: float
    below: float | None = None  # exclusive upper bound; None on the last bin
    label: str | None = None


@dataclass(frozen=True, slots=True)
class IndicatorSpec:
    weight: float
    bins: tuple[BinSpec, ...]
    missing_woe: float | None = None  # WoE of a missing value (None), if the indicator has one


@dataclass(frozen=True, slots=True)
class Scaling:
    base_score: float
    base_odds: float
    pdo: float

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)


@dataclass(frozen=True, slots=True)
class ScorecardSpec:
    """Everything a scorecard file says."""

    version: str
    kind: str  # "expert" or "fitted"
    description: str
    scaling: Scaling
    grade_floors: tuple[int, int, int, int]  # lowest score of A, B, C, D; below D's: E
    intercept: float
    indicators: dict[str, IndicatorSpec]
    fit: dict[str, Any] = field(default_factory=dict)  # fitted models: how and how well

    def to_toml(self) -> str:
        return _render(self)


# --- the compiled scorecard -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndicatorScore:
    """One indicator's part of a score."""

    name: str
    code: str
    value: int | float | bool | None
    bin: str
    points: int
    best_points: int


@dataclass(frozen=True, slots=True)
class Reason:
    """An indicator that lowered the score: ``shortfall`` points below its best bin."""

    code: str
    indicator: str
    text: str
    value: int | float | bool | None
    points: int
    best_points: int

    @property
    def shortfall(self) -> int:
        return self.best_points - self.points


@dataclass(frozen=True, slots=True)
class Decision:
    """A scored cardholder: score, grade, the model that said so, and why."""

    score: int
    grade: Grade
    model_version: str
    reasons: tuple[Reason, ...]
    details: tuple[IndicatorScore, ...]
    next_grade_at: int | None  # the score that would reach the next better grade

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "grade": self.grade.name,
            "grade_number": int(self.grade),
            "model_version": self.model_version,
            "next_grade_at": self.next_grade_at,
            "reasons": [
                {"code": r.code, "indicator": r.indicator, "text": r.text, "value": r.value,
                 "points": r.points, "best_points": r.best_points, "shortfall": r.shortfall}
                for r in self.reasons
            ],
            "indicators": [
                {"name": d.name, "code": d.code, "value": d.value, "bin": d.bin,
                 "points": d.points, "best_points": d.best_points}
                for d in self.details
            ],
        }


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    edges: tuple[float, ...]  # the bins' upper bounds, all but the last bin's
    points: tuple[int, ...]
    labels: tuple[str, ...]
    missing_points: int | None
    best: int


class Scorecard:
    """A usable scorecard: integer points per bin, grade bands, reason codes."""

    def __init__(self, spec: ScorecardSpec) -> None:
        self.spec = spec
        n = len(spec.indicators)
        factor, offset = spec.scaling.factor, spec.scaling.offset
        share = spec.intercept / n

        def pts(weight: float, woe: float) -> int:
            return round(factor * (weight * woe + share) + offset / n)

        compiled = []
        for name in INDICATOR_NAMES:  # field order: the reason-code order
            ind = spec.indicators.get(name)
            if ind is None:
                continue
            points = tuple(pts(ind.weight, b.woe) for b in ind.bins)
            missing = None if ind.missing_woe is None else pts(ind.weight, ind.missing_woe)
            candidates = [*points, *([] if missing is None else [missing])]
            compiled.append(
                _Compiled(
                    name=name,
                    edges=tuple(b.below for b in ind.bins if b.below is not None),
                    points=points,
                    labels=tuple(_bin_label(name, ind.bins, i) for i in range(len(ind.bins))),
                    missing_points=missing,
                    best=max(candidates),
                )
            )
        self._indicators = tuple(compiled)

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def min_score(self) -> int:
        return sum(min([*c.points, *_opt(c.missing_points)]) for c in self._indicators)

    @property
    def max_score(self) -> int:
        return sum(c.best for c in self._indicators)

    def points_table(self) -> list[tuple[str, str, int]]:
        """(indicator, bin, points) for every bin, for showing the scorecard."""
        rows: list[tuple[str, str, int]] = []
        for c in self._indicators:
            rows.extend((c.name, label, p) for label, p in zip(c.labels, c.points, strict=True))
            if c.missing_points is not None:
                rows.append((c.name, "missing", c.missing_points))
        return rows

    def grade_of(self, score: int) -> Grade:
        for grade, floor in zip(Grade, self.spec.grade_floors, strict=False):
            if score >= floor:
                return grade
        return Grade.E

    def score_value(self, indicators: Indicators) -> int:
        """The score alone (the fast path for batch scoring)."""
        total = 0
        for c in self._indicators:
            total += self._points(c, getattr(indicators, c.name))[0]
        return total

    def score(self, indicators: Indicators, *, reasons: int = REASONS_SHOWN) -> Decision:
        details = []
        for c in self._indicators:
            value = getattr(indicators, c.name)
            points, label = self._points(c, value)
            details.append(IndicatorScore(c.name, INDICATORS[c.name].code, value, label, points,
                                          c.best))
        total = sum(d.points for d in details)
        grade = self.grade_of(total)
        lowered = sorted((d for d in details if d.points < d.best_points),
                         key=lambda d: (d.points - d.best_points, d.code))
        return Decision(
            score=total,
            grade=grade,
            model_version=self.version,
            reasons=tuple(
                Reason(d.code, d.name, INDICATORS[d.name].reason, d.value, d.points,
                       d.best_points)
                for d in lowered[:reasons]
            ),
            details=tuple(details),
            next_grade_at=None if grade is Grade.A else self.spec.grade_floors[grade - 2],
        )

    def _points(self, c: _Compiled, value: int | float | bool | None) -> tuple[int, str]:
        if value is None:
            if c.missing_points is None:
                raise BadInput(f"{c.name} is missing and scorecard {self.version} has no "
                               f"missing_woe for it")
            return c.missing_points, "missing"
        i = bisect.bisect_right(c.edges, value)  # value < edges[i] is bin i
        return c.points[i], c.labels[i]


def _opt(value: int | None) -> list[int]:
    return [] if value is None else [value]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _bin_label(name: str, bins: Sequence[BinSpec], i: int) -> str:
    b = bins[i]
    if b.label:
        return b.label
    lower = bins[i - 1].below if i > 0 else None
    if lower is None and b.below is None:
        return "any"
    if lower is None:
        return f"< {_fmt(b.below)}" if b.below is not None else "any"
    if b.below is None:
        return f">= {_fmt(lower)}"
    return f"{_fmt(lower)} to < {_fmt(b.below)}"


# --- loading and validating -----------------------------------------------------------------


class _Reader:
    """Field access with error messages that name the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ScorecardError:
        return ScorecardError(f"{self.source}: {path}: {message}")

    def table(self, data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = data.get(key)
        if not isinstance(value, Mapping):
            raise self.fail(f"{path}{key}", "missing table" if value is None else "must be a table")
        return value

    def number(self, data: Mapping[str, Any], key: str, path: str, *, positive: bool = False,
               required: bool = True) -> float | None:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(f"{path}{key}", "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{path}{key}", f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise self.fail(f"{path}{key}", "must be finite")
        if positive and value <= 0:
            raise self.fail(f"{path}{key}", "must be greater than 0")
        return float(value)

    def string(self, data: Mapping[str, Any], key: str, path: str, *,
               required: bool = True) -> str | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{path}{key}", "missing" if value is None else "must be a string")
        return value

    def no_extra(self, data: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        extra = sorted(set(data) - set(allowed))
        if extra:
            raise self.fail(f"{path}{extra[0]}",
                            f"unknown field (expected one of: {', '.join(allowed)})")


def parse_scorecard(data: Mapping[str, Any], source: str = "scorecard") -> ScorecardSpec:
    """Validate a scorecard read from TOML; errors name the file and the field."""
    r = _Reader(source)
    r.no_extra(data, ["format", "model", "scaling", "grades", "logit", "indicators", "fit"], "")
    fmt = data.get("format")
    if fmt != FORMAT_VERSION:
        raise r.fail("format", f"must be {FORMAT_VERSION} (this tallypurse reads scorecard "
                               f"format {FORMAT_VERSION}), not {fmt!r}")

    model = r.table(data, "model", "")
    r.no_extra(model, ["version", "kind", "description"], "model.")
    version = r.string(model, "version", "model.")
    assert version is not None
    if not all(ch.isalnum() or ch in "-_." for ch in version):
        raise r.fail("model.version", "may hold only letters, digits, '-', '_' and '.'")
    kind = r.string(model, "kind", "model.")
    if kind not in ("expert", "fitted"):
        raise r.fail("model.kind", f"must be \"expert\" or \"fitted\", not {kind!r}")
    description = r.string(model, "description", "model.", required=False) or ""

    sc = r.table(data, "scaling", "")
    r.no_extra(sc, ["base_score", "base_odds", "pdo"], "scaling.")
    base_score = r.number(sc, "base_score", "scaling.")
    base_odds = r.number(sc, "base_odds", "scaling.", positive=True)
    pdo = r.number(sc, "pdo", "scaling.", positive=True)
    assert base_score is not None and base_odds is not None and pdo is not None
    scaling = Scaling(base_score, base_odds, pdo)

    grades = r.table(data, "grades", "")
    r.no_extra(grades, ["A", "B", "C", "D"], "grades.")
    floors: list[int] = []
    for letter in "ABCD":
        value = grades.get(letter)
        if value is None:
            raise r.fail(f"grades.{letter}", "missing (the lowest score of that grade; "
                                             "E is everything below D)")
        if isinstance(value, bool) or not isinstance(value, int):
            raise r.fail(f"grades.{letter}", f"must be a whole number of points, not {value!r}")
        if floors and value >= floors[-1]:
            raise r.fail(f"grades.{letter}", f"must be below grade {'ABCD'[len(floors) - 1]}'s "
                                             f"{floors[-1]}")
        floors.append(value)

    logit = r.table(data, "logit", "")
    r.no_extra(logit, ["intercept"], "logit.")
    intercept = r.number(logit, "intercept", "logit.")
    assert intercept is not None

    inds = r.table(data, "indicators", "")
    if not inds:
        raise r.fail("indicators", "must name at least one indicator")
    specs: dict[str, IndicatorSpec] = {}
    for name, raw in inds.items():
        path = f"indicators.{name}"
        if name not in INDICATORS:
            raise r.fail(path, f"unknown indicator (known: {', '.join(INDICATOR_NAMES)})")
        if not isinstance(raw, Mapping):
            raise r.fail(path, "must be a table")
        specs[name] = _parse_indicator(r, raw, path + ".")

    fit = data.get("fit", {})
    if not isinstance(fit, Mapping):
        raise r.fail("fit", "must be a table")
    return ScorecardSpec(version, kind, description, scaling,
                         (floors[0], floors[1], floors[2], floors[3]), intercept, specs,
                         dict(fit))


def _parse_indicator(r: _Reader, raw: Mapping[str, Any], path: str) -> IndicatorSpec:
    r.no_extra(raw, ["weight", "missing_woe", "bins"], path)
    weight = r.number(raw, "weight", path)
    missing = r.number(raw, "missing_woe", path, required=False)
    assert weight is not None
    bins_raw = raw.get("bins")
    if not isinstance(bins_raw, list) or not bins_raw:
        raise r.fail(f"{path}bins", "must be a non-empty list of bins")
    bins: list[BinSpec] = []
    for i, b in enumerate(bins_raw):
        bpath = f"{path}bins[{i}]."
        if not isinstance(b, Mapping):
            raise r.fail(f"{path}bins[{i}]", "must be a table such as { below = 30, woe = -0.5 }")
        r.no_extra(b, ["below", "woe", "label"], bpath)
        woe = r.number(b, "woe", bpath)
        below = r.number(b, "below", bpath, required=False)
        label = r.string(b, "label", bpath, required=False)
        assert woe is not None
        last = i == len(bins_raw) - 1
        if last and below is not None:
            raise r.fail(f"{bpath}below", "the last bin takes every value above the others: "
                                          "remove 'below'")
        if not last and below is None:
            raise r.fail(f"{bpath}below", "missing (every bin but the last needs an upper bound)")
        if below is not None and bins and bins[-1].below is not None and below <= bins[-1].below:
            raise r.fail(f"{bpath}below", f"must be greater than the previous bin's "
                                          f"{_fmt(bins[-1].below)}")
        bins.append(BinSpec(woe, below, label))
    return IndicatorSpec(weight, tuple(bins), missing)


def loads_scorecard(text: str, source: str = "scorecard") -> Scorecard:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScorecardError(f"{source}: not valid TOML: {exc}") from None
    return Scorecard(parse_scorecard(data, source))


def load_scorecard(path: Path) -> Scorecard:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScorecardError(f"{path}: cannot read: {exc.strerror}") from None
    return loads_scorecard(text, str(path))


def builtin_scorecard_text(version: str = DEFAULT_MODEL) -> str:
    """The file of a scorecard shipped with tallypurse (``expert-v1``), comments and all."""
    res = resources.files("tallypurse.credit").joinpath("scorecards", f"{version}.toml")
    if not res.is_file():
        raise ScorecardError(f"no built-in scorecard {version!r}")
    return res.read_text(encoding="utf-8")


def builtin_scorecard(version: str = DEFAULT_MODEL) -> Scorecard:
    """A scorecard shipped with tallypurse (``expert-v1``)."""
    return loads_scorecard(builtin_scorecard_text(version), f"{version}.toml (built in)")


# --- writing ---------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("TOML cannot hold a non-finite number here")
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _render(spec: ScorecardSpec) -> str:
    a, b, c, d = spec.grade_floors
    lines = [
        "# tallypurse credit scorecard (see docs/credit.md for every field)",
        f"format = {FORMAT_VERSION}",
        "",
        "[model]",
        f"version = {_toml_value(spec.version)}",
        f"kind = {_toml_value(spec.kind)}",
        *([f"description = {_toml_value(spec.description)}"] if spec.description else []),
        "",
        "[scaling]",
        f"base_score = {_toml_value(_whole(spec.scaling.base_score))}",
        f"base_odds = {_toml_value(_whole(spec.scaling.base_odds))}",
        f"pdo = {_toml_value(_whole(spec.scaling.pdo))}",
        "",
        "[grades]",
        f"A = {a}",
        f"B = {b}",
        f"C = {c}",
        f"D = {d}",
        "",
        "[logit]",
        f"intercept = {_toml_value(spec.intercept)}",
    ]
    for name in INDICATOR_NAMES:
        ind = spec.indicators.get(name)
        if ind is None:
            continue
        lines += ["", f"[indicators.{name}]", f"weight = {_toml_value(ind.weight)}"]
        if ind.missing_woe is not None:
            lines.append(f"missing_woe = {_toml_value(ind.missing_woe)}")
        lines.append("bins = [")
        for bin_ in ind.bins:
            item: dict[str, Any] = {}
            if bin_.below is not None:
                item["below"] = _whole(bin_.below)
            item["woe"] = bin_.woe
            if bin_.label:
                item["label"] = bin_.label
            lines.append(f"    {_toml_value(item)},")
        lines.append("]")
    if spec.fit:
        lines += ["", "[fit]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in spec.fit.items()]
    return "\n".join(lines) + "\n"
