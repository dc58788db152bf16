"""Fixtures of the credit tests: indicator records and small scorecards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tallypurse.credit.indicators import Indicators

BASE: dict[str, Any] = {
    "tenure_days": 400,
    "taps_per_week": 5.0,
    "activity_regularity": 0.9,
    "topups_per_month": 2.5,
    "topup_regularity": 0.8,
    "avg_topup_minor": 3000,
    "avg_purse_balance_minor": 2000,
    "avg_online_balance_minor": 5000,
    "splits_taken": 3,
    "splits_settled_online": 3,
    "splits_settled_bank": 0,
    "splits_failed": 0,
    "splits_in_collection": 0,
    "days_since_last_failure": None,
    "bank_account_verified": True,
    "blacklist_history": 0,
    "card_evaluation": 75,
}


@pytest.fixture
def make_indicators() -> Callable[..., Indicators]:
    """Factory: a well-behaved cardholder's indicators, with keyword changes."""

    def make(**changes: Any) -> Indicators:
        return Indicators(**{**BASE, **changes})

    return make


# Two indicators, base 600 at 50:1, 20 points to double the odds, intercept ln(50):
# with every WoE 0 the score is exactly 600 (300 + 300), and a WoE of ln 2
# (twice the odds) is worth exactly 20 points.
SMALL = """
format = 1

[model]
version = "small-1"
kind = "expert"

[scaling]
base_score = 600
base_odds = 50
pdo = 20

[grades]
A = 640
B = 620
C = 600
D = 580

[logit]
intercept = 3.912023005428146  # ln 50

[indicators.tenure_days]
weight = 1.0
bins = [
    { below = 30, woe = -0.6931471805599453 },  # half the odds: -20 points
    { below = 365, woe = 0.0 },
    { woe = 1.3862943611198906 },  # four times the odds: +40 points
]

[indicators.splits_in_collection]
weight = 0.5
bins = [
    { below = 1, woe = 0.0, label = "none" },
    { woe = -2.772588722239781 },  # weight 0.5 * ln(1/16) = ln(1/4): -40 points
]
"""


@pytest.fixture
def small_toml() -> str:
    return SMALL
