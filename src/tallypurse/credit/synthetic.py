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

from tallypurse.core.protocol import (
    CVR_DEBT_NEAR_LIMIT,
    CVR_DEBT_OUTSTANDING,
    CVR_FAILED_DEBT,
    CVR_LOW_BALANCE,
    CVR_OFFLINE_AMOUNT,
    CVR_OFFLINE_COUNT,
    CVR_RECORD_AGED,
    CVR_SPLIT,
)
from tallypurse.credit.history import HistoryRow
from tallypurse.credit.indicators import EVALUATION_DAYS, Indicators, evaluate_cvr

DEFAULT_INTERCEPT = -3.1  # a base default rate of a few percent
EVALUATED_TAPS_MAX = 60  # purchases drawn for the card's evaluation (a sample of the 90 days)
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


def _card_evaluation(rng: random.Random, r: float, *, taps_per_week: float, activity: float,
                     splits: int, years: float, in_collection: int) -> int | None:
    """The card's evaluation as the host derives it: the mean of ``evaluate_cvr`` over
    the purchases of the last 90 days, each with the findings a card of this
    behaviour would sign (credit taken as often as its split history says, debts
    outstanding after one, a failed debt while one is in collection, low balances
    and long offline runs more often for the less reliable). None: no purchase."""
    taps = _poisson(rng, taps_per_week * activity * EVALUATION_DAYS / 7)
    if taps == 0:
        return None
    p_split = min(0.9, splits / max(1.0, taps_per_week * 52 * years) + 0.02 * _sigmoid(-r))
    p_low = _sigmoid(-1.5 - 0.8 * r)
    p_offline = _sigmoid(-2.5 - 0.5 * r)
    p_aged = _sigmoid(-3.0 - 0.5 * r)
    total = 0
    drawn = min(taps, EVALUATED_TAPS_MAX)
    for _ in range(drawn):
        cvr = 0
        if rng.random() < p_split:
            cvr |= CVR_SPLIT | CVR_DEBT_OUTSTANDING | CVR_LOW_BALANCE
            if rng.random() < 0.2:
                cvr |= CVR_DEBT_NEAR_LIMIT
        elif rng.random() < min(0.9, 2 * p_split):
            cvr |= CVR_DEBT_OUTSTANDING
        if in_collection and cvr & CVR_DEBT_OUTSTANDING:
            cvr |= CVR_FAILED_DEBT
        if rng.random() < p_low:
            cvr |= CVR_LOW_BALANCE
        if rng.random() < p_offline:
            cvr |= CVR_OFFLINE_COUNT | (CVR_OFFLINE_AMOUNT if cvr & CVR_SPLIT else 0)
        if rng.random() < p_aged:
            cvr |= CVR_RECORD_AGED
        total += evaluate_cvr(cvr)
    return (2 * total + drawn) // (2 * drawn)


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

    logit = (DEFAULT_INTERCEPT - RELIABILITY_EFFECT * r
             + (COLLECTION_EFFECT if in_collection else 0.0))
    defaulted = rng.random() < _sigmoid(logit)
    evaluation = _card_evaluation(rng, r, taps_per_week=taps_per_week, activity=activity,
                                  splits=splits, years=years, in_collection=in_collection)
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
