"""SYNTHETIC credit history: made-up cardholders, for tests and demonstrations only.

No row here describes a real person, and nothing here was estimated from real
data. Each synthetic cardholder has a hidden ("latent") reliability drawn from
a standard normal distribution; its behaviour (activity, top-ups, balances,
split debts and how they ended, blacklisting, the card's evaluation) is drawn
with probabilities that depend on that reliability, plus noise; and whether it
defaults in the following period is drawn from a logistic function of the
same reliability and of its debts in collection. That planted relationship is
what a fit should recover: the fitted scorecard should rank defaulters low on
held-out rows. The shapes and sizes of the effects are invented.

The generator uses Python's own seeded ``random.Random``, so a seed gives the
same rows on every platform and Python version that keeps its algorithm.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from tallypurse.credit.history import HistoryRow
from tallypurse.credit.indicators import Indicators

DEFAULT_INTERCEPT = -3.1  # a base default rate of a few percent
RELIABILITY_EFFECT = 1.3  # how strongly the hidden reliability drives default
COLLECTION_EFFECT = 0.9  # the extra log-odds of default with a debt in collection


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; fine for the small rates used here."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


@dataclass(frozen=True, slots=True)
class SyntheticCardholder:
    """A synthetic row with its hidden reliability (kept for checking fits)."""

    reliability: float
    row: HistoryRow


def cardholders(n: int, seed: int) -> Iterator[SyntheticCardholder]:
    """``n`` synthetic cardholders, the same ones for the same seed."""
    if n < 0:
        raise ValueError("n must not be negative")
    rng = random.Random(seed)
    for _ in range(n):
        yield _one(rng)


def generate(n: int, seed: int) -> list[HistoryRow]:
    """``n`` synthetic history rows (indicators and default label)."""
    return [c.row for c in cardholders(n, seed)]


def _one(rng: random.Random) -> SyntheticCardholder:
    r = rng.gauss(0.0, 1.0)
    g = rng.gauss

    tenure = min(3650, int(math.exp(g(5.4 + 0.15 * r, 1.0))))
    years = max(tenure / 365, 0.05)
    taps_per_week = round(math.exp(g(1.1 + 0.15 * r, 0.7)), 2)
    activity = round(_sigmoid(0.8 + 0.7 * r + g(0, 0.8)), 3)
    topups_per_month = round(math.exp(g(0.4 + 0.25 * r, 0.6)), 2)
    topup_regularity = round(_sigmoid(0.3 + 0.9 * r + g(0, 0.8)), 3)
    avg_topup = int(math.exp(g(7.8 + 0.1 * r, 0.6)))
    avg_purse = int(math.exp(g(7.0 + 0.3 * r, 0.8)))
    has_online = rng.random() < _sigmoid(1.0 + 0.5 * r)
    avg_online = int(math.exp(g(7.5 + 0.5 * r, 1.2))) if has_online else 0
    bank_verified = rng.random() < _sigmoid(0.4 + 0.6 * r)

    splits = _poisson(rng, min(20.0, 2.5 * years * math.exp(-0.3 * r)))
    online = bank = failed = in_collection = 0
    p_fail = _sigmoid(-3.0 - 1.3 * r)
    for _ in range(splits):
        if rng.random() < p_fail:
            failed += 1
            if rng.random() < _sigmoid(-0.5 - r):
                in_collection += 1
        elif has_online and rng.random() < _sigmoid(1.2 + 0.8 * r):
            online += 1
        else:
            bank += 1
    since_failure = int(rng.random() * tenure) if failed else None
    blacklisted = _poisson(rng, 0.03 * math.exp(-0.8 * r))
    evaluation = (
        None if rng.random() < 0.1
        else max(0, min(100, round(60 + 12 * r + g(0, 10))))
    )

    logit = (DEFAULT_INTERCEPT - RELIABILITY_EFFECT * r
             + (COLLECTION_EFFECT if in_collection else 0.0))
    defaulted = rng.random() < _sigmoid(logit)
    indicators = Indicators(
        tenure_days=tenure,
        taps_per_week=taps_per_week,
        activity_regularity=activity,
        topups_per_month=topups_per_month,
        topup_regularity=topup_regularity,
        avg_topup_minor=avg_topup,
        avg_purse_balance_minor=avg_purse,
        avg_online_balance_minor=avg_online,
        splits_taken=splits,
        splits_settled_online=online,
        splits_settled_bank=bank,
        splits_failed=failed,
        splits_in_collection=in_collection,
        days_since_last_failure=since_failure,
        bank_account_verified=bank_verified,
        blacklist_history=blacklisted,
        card_evaluation=evaluation,
    )
    return SyntheticCardholder(r, HistoryRow(indicators, defaulted))
