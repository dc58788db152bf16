"""How well a score separates good from bad, and how much a population moved.

Pure Python, no optional dependency, so they are testable everywhere. The
convention throughout: a higher score is better, and a label of 1 is bad (the
cardholder defaulted), 0 good.

- AUC: the probability that a random good scores above a random bad (ties
  count half); 0.5 is no better than chance.
- Gini (accuracy ratio): 2 AUC - 1.
- KS: the largest gap between the cumulative score distributions of the
  bads and the goods.
- PSI (population stability index): sum over buckets of
  (actual% - expected%) * ln(actual% / expected%); under 0.1 is usually read
  as stable, 0.1 to 0.25 as a shift worth a look, above 0.25 as a shift.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

PSI_FLOOR = 1e-4  # an empty bucket counts as this share, so that PSI stays finite


def _check(scores: Sequence[float], bad: Sequence[int]) -> tuple[int, int]:
    if len(scores) != len(bad):
        raise ValueError("scores and labels differ in length")
    if any(b not in (0, 1) for b in bad):
        raise ValueError("labels must be 0 (good) or 1 (bad)")
    n_bad = sum(bad)
    n_good = len(bad) - n_bad
    if n_bad == 0 or n_good == 0:
        raise ValueError("need at least one good and one bad")
    return n_good, n_bad


def auc(scores: Sequence[float], bad: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties)."""
    n_good, n_bad = _check(scores, bad)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum_good = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        midrank = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum_good += midrank * sum(1 for k in order[i:j + 1] if bad[k] == 0)
        i = j + 1
    u_good = rank_sum_good - n_good * (n_good + 1) / 2
    return u_good / (n_good * n_bad)


def gini(scores: Sequence[float], bad: Sequence[int]) -> float:
    return 2 * auc(scores, bad) - 1


def ks(scores: Sequence[float], bad: Sequence[int]) -> float:
    """Kolmogorov-Smirnov statistic: max |F_bad(s) - F_good(s)| over score thresholds."""
    n_good, n_bad = _check(scores, bad)
    pairs = sorted(zip(scores, bad, strict=True))
    cum_good = cum_bad = 0
    best = 0.0
    for i, (score, label) in enumerate(pairs):
        if label:
            cum_bad += 1
        else:
            cum_good += 1
        if i + 1 == len(pairs) or pairs[i + 1][0] != score:  # only between distinct scores
            best = max(best, abs(cum_bad / n_bad - cum_good / n_good))
    return best


def psi(expected: Sequence[float], actual: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """PSI between two distributions over the same buckets (counts or shares)."""
    if len(expected) != len(actual) or not expected:
        raise ValueError("expected and actual need the same, non-zero number of buckets")
    if any(x < 0 for x in (*expected, *actual)):
        raise ValueError("bucket counts cannot be negative")
    te, ta = sum(expected), sum(actual)
    if te <= 0 or ta <= 0:
        raise ValueError("each distribution needs a non-zero total")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe = max(e / te, floor)
        pa = max(a / ta, floor)
        total += (pa - pe) * math.log(pa / pe)
    return total


def quantile_edges(values: Sequence[float], buckets: int) -> list[float]:
    """Inner edges that split ``values`` into about ``buckets`` equal-count buckets
    (fewer when values repeat)."""
    if buckets < 2:
        raise ValueError("need at least 2 buckets")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    edges: list[float] = []
    for k in range(1, buckets):
        edge = ordered[min(len(ordered) - 1, (k * len(ordered)) // buckets)]
        if edge > ordered[0] and (not edges or edge > edges[-1]):
            edges.append(edge)
    return edges


def bucket_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bucket; bucket i holds edges[i-1] <= v < edges[i]."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect.bisect_right(edges, v)] += 1
    return counts


def score_psi(expected: Sequence[float], actual: Sequence[float], buckets: int = 10) -> float:
    """PSI of ``actual`` scores against ``expected`` scores, in buckets of equal
    count of the expected scores (deciles by default)."""
    edges = quantile_edges(expected, buckets)
    return psi(bucket_counts(expected, edges), bucket_counts(actual, edges))
