"""Discrimination and stability metrics against answers worked out by hand."""

from __future__ import annotations

import random

import pytest

from tallypurse.credit import metrics

# goods score 3, 5, 6; bads 1, 2, 4: 8 of the 9 good-bad pairs are ordered right
SCORES = [1, 2, 3, 4, 5, 6]
BAD = [1, 1, 0, 1, 0, 0]


def test_auc_gini_and_ks_of_a_small_known_sample() -> None:
    assert metrics.auc(SCORES, BAD) == pytest.approx(8 / 9)
    assert metrics.gini(SCORES, BAD) == pytest.approx(7 / 9)
    assert metrics.ks(SCORES, BAD) == pytest.approx(2 / 3)


def test_perfect_reversed_and_uninformative_scores() -> None:
    assert metrics.auc([1, 2, 3, 4], [1, 1, 0, 0]) == 1.0
    assert metrics.ks([1, 2, 3, 4], [1, 1, 0, 0]) == 1.0
    assert metrics.auc([1, 2, 3, 4], [0, 0, 1, 1]) == 0.0
    assert metrics.gini([1, 2, 3, 4], [0, 0, 1, 1]) == -1.0
    assert metrics.auc([7, 7, 7, 7], [0, 1, 0, 1]) == 0.5
    assert metrics.ks([7, 7, 7, 7], [0, 1, 0, 1]) == 0.0


def test_ties_count_half_in_auc_and_are_never_split_in_ks() -> None:
    # goods 2, 3; bads 1, 2: pairs 1 + 0.5 + 1 + 1 of 4
    assert metrics.auc([1, 2, 2, 3], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert metrics.ks([1, 2, 2, 3], [1, 1, 0, 0]) == pytest.approx(0.5)
    assert metrics.auc([2, 2, 1, 3], [0, 1, 1, 0]) == pytest.approx(0.875)  # order-free


def test_auc_agrees_with_scikit_learn_on_random_data() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = random.Random(3)
    scores = [rng.randint(0, 50) for _ in range(500)]
    bad = [int(rng.random() < 0.2 + s / 200) for s in scores]
    assert metrics.auc(scores, bad) == pytest.approx(1 - sk.roc_auc_score(bad, scores))


def test_metrics_refuse_a_sample_without_both_labels() -> None:
    with pytest.raises(ValueError, match="one good and one bad"):
        metrics.auc([1, 2], [0, 0])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        metrics.ks([1, 2], [0, 2])
    with pytest.raises(ValueError, match="length"):
        metrics.auc([1, 2], [0])


def test_psi_of_known_distributions() -> None:
    # 0.1 ln 1.2 + 0.1 ln 1.25
    assert metrics.psi([50, 50], [60, 40]) == pytest.approx(0.0405465, abs=1e-6)
    # a textbook shift: 25% in each of 4 buckets to 10/20/30/40%
    assert metrics.psi([0.25] * 4, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.2282, abs=1e-4)
    assert metrics.psi([10, 20, 30], [1, 2, 3]) == 0.0  # counts or shares alike


def test_psi_of_a_distribution_against_itself_is_zero_and_stays_finite_when_empty() -> None:
    assert metrics.psi([3, 0, 5], [3, 0, 5]) == 0.0
    value = metrics.psi([1, 1], [2, 0])
    assert 0 < value < 10


def test_score_psi_buckets_by_expected_deciles() -> None:
    rng = random.Random(5)
    expected = [rng.gauss(600, 30) for _ in range(2000)]
    assert metrics.score_psi(expected, expected) == 0.0
    shifted = [s + 30 for s in expected]
    assert metrics.score_psi(expected, shifted) > 0.25
    assert len(metrics.quantile_edges(expected, 10)) == 9
    assert metrics.bucket_counts([1, 2, 3, 4], [2, 4]) == [1, 2, 1]
