"""Indicators: computed from plain event lists as of a date, and validated."""

from __future__ import annotations

import pytest

from tallypurse.core.errors import BadInput
from tallypurse.core.protocol import (
    CVR_DEBT_NEAR_LIMIT,
    CVR_DEBT_OUTSTANDING,
    CVR_DEFINED,
    CVR_FAILED_DEBT,
    CVR_LOW_BALANCE,
    CVR_OFFLINE_AMOUNT,
    CVR_OFFLINE_COUNT,
    CVR_RECORD_AGED,
    CVR_SPLIT,
)
from tallypurse.credit.indicators import (
    DAY,
    WEEK,
    BalanceSnapshot,
    BlacklistEntry,
    CardEvaluation,
    Indicators,
    SplitDebt,
    SplitOutcome,
    Tap,
    TopUp,
    compute_indicators,
    evaluate_cvr,
)

T0 = 1_767_225_600  # 2026-01-01
AS_OF = T0 + 28 * WEEK  # 196 days after opening: the 182-day window is full


def debts() -> list[SplitDebt]:
    return [
        SplitDebt(T0 + 10 * DAY, 500, SplitOutcome.SETTLED_ONLINE, resolved_at=T0 + 11 * DAY),
        SplitDebt(T0 + 20 * DAY, 800, SplitOutcome.SETTLED_BANK, resolved_at=T0 + 25 * DAY),
        SplitDebt(T0 + 30 * DAY, 300, SplitOutcome.REPAID_LATE, failed_at=T0 + 35 * DAY,
                  resolved_at=T0 + 60 * DAY),
        SplitDebt(T0 + 150 * DAY, 900, SplitOutcome.IN_COLLECTION, failed_at=T0 + 160 * DAY),
        SplitDebt(T0 + 190 * DAY, 200, SplitOutcome.PENDING),
        SplitDebt(AS_OF + DAY, 999, SplitOutcome.PENDING),  # after as_of: not seen
    ]


def test_indicators_are_computed_from_event_lists_as_of_a_date() -> None:
    start = AS_OF - 182 * DAY
    taps = [Tap(start + w * WEEK + DAY, 250) for w in range(0, 26, 2)]  # every other week
    taps += [Tap(start - DAY, 100), Tap(AS_OF + DAY, 100)]  # outside the window
    topups = [TopUp(start + m * 30 * DAY + DAY, 2000 + m) for m in range(6)]
    balances = [BalanceSnapshot(start + d * DAY, 1000 + d, 5000) for d in range(1, 183)]
    ind = compute_indicators(
        as_of=AS_OF, opened_at=T0, taps=taps, topups=topups, balances=balances,
        debts=debts(),
        blacklist=[BlacklistEntry(T0 + 40 * DAY, "lost"), BlacklistEntry(AS_OF + 1, "later")],
        evaluations=[CardEvaluation(T0 + 50 * DAY, 40), CardEvaluation(T0 + 180 * DAY, 72),
                     CardEvaluation(AS_OF + 5, 10)],
        bank_account_verified=True,
    )
    assert ind.tenure_days == 196
    assert ind.taps_per_week == pytest.approx(13 / 26)
    assert ind.activity_regularity == pytest.approx(0.5)
    assert ind.topups_per_month == pytest.approx(6 / (182 / 30), abs=1e-4)
    assert ind.topup_regularity == pytest.approx(6 / 7, abs=1e-4)  # 182 days: 7 periods
    assert ind.avg_topup_minor == 2002  # floor of the mean, integer minor units
    assert ind.avg_purse_balance_minor == (sum(range(1001, 1183)) // 182)
    assert ind.avg_online_balance_minor == 5000
    assert (ind.splits_taken, ind.splits_settled_online, ind.splits_settled_bank) == (5, 1, 1)
    assert (ind.splits_failed, ind.splits_in_collection) == (2, 1)
    assert ind.days_since_last_failure == 196 - 160
    assert ind.bank_account_verified is True
    assert ind.blacklist_history == 1
    assert ind.card_evaluation == 72


def test_indicators_as_of_an_earlier_date_do_not_see_later_outcomes() -> None:
    ind = compute_indicators(as_of=T0 + 40 * DAY, opened_at=T0, debts=debts())
    # the late-repaid debt had failed by then and was not yet repaid: in collection
    assert (ind.splits_taken, ind.splits_failed, ind.splits_in_collection) == (3, 1, 1)
    assert ind.days_since_last_failure == 5
    early = compute_indicators(as_of=T0 + 15 * DAY, opened_at=T0, debts=debts())
    assert (early.splits_taken, early.splits_settled_online, early.splits_failed) == (1, 1, 0)
    assert early.days_since_last_failure is None


def test_a_new_cardholder_with_no_events_has_neutral_indicators() -> None:
    ind = compute_indicators(as_of=T0 + 3600, opened_at=T0)
    assert ind.tenure_days == 0 and ind.taps_per_week == 0 and ind.activity_regularity == 0
    assert ind.days_since_last_failure is None and ind.card_evaluation is None
    assert ind.avg_topup_minor == 0 and ind.splits_taken == 0


def test_events_on_the_opening_day_count_for_a_short_tenure() -> None:
    ind = compute_indicators(as_of=T0 + 14 * DAY, opened_at=T0, topups=[TopUp(T0, 5000)],
                             taps=[Tap(T0, 100), Tap(T0 + 13 * DAY, 100)])
    assert ind.avg_topup_minor == 5000 and ind.topup_regularity == 1.0
    assert ind.taps_per_week == 1.0 and ind.activity_regularity == 1.0


def test_an_event_evaluation_is_100_minus_the_weights_of_its_adverse_findings() -> None:
    assert evaluate_cvr(0) == 100
    assert evaluate_cvr(CVR_SPLIT) == 75
    assert evaluate_cvr(CVR_SPLIT | CVR_DEBT_OUTSTANDING | CVR_LOW_BALANCE) == 60
    assert evaluate_cvr(CVR_DEBT_OUTSTANDING | CVR_FAILED_DEBT) == 60
    assert evaluate_cvr(CVR_DEBT_NEAR_LIMIT) == 85
    assert evaluate_cvr(CVR_OFFLINE_COUNT | CVR_OFFLINE_AMOUNT | CVR_RECORD_AGED) == 85
    assert evaluate_cvr(CVR_DEFINED) == 0  # every finding at once
    assert evaluate_cvr(0xFF00) == 100  # bits the card does not define cost nothing


def test_the_card_evaluation_is_the_rounded_mean_of_the_last_90_days() -> None:
    evals = [CardEvaluation(AS_OF - 90 * DAY, 0),  # just outside the window
             CardEvaluation(AS_OF - 89 * DAY, 100), CardEvaluation(AS_OF - DAY, 60),
             CardEvaluation(AS_OF, 75), CardEvaluation(AS_OF + 1, 0)]  # after as_of
    assert compute_indicators(as_of=AS_OF, opened_at=T0, evaluations=evals).card_evaluation == 78
    # 235 / 3 = 78.33; half rounds up: (100 + 75) / 2 = 87.5 -> 88
    two = [CardEvaluation(AS_OF - DAY, 100), CardEvaluation(AS_OF, 75)]
    assert compute_indicators(as_of=AS_OF, opened_at=T0, evaluations=two).card_evaluation == 88
    # nothing in the last 90 days: missing, whatever came before
    old = [CardEvaluation(AS_OF - 100 * DAY, 100)]
    assert compute_indicators(as_of=AS_OF, opened_at=T0, evaluations=old).card_evaluation is None


def test_a_card_paying_on_credit_repeatedly_is_evaluated_lower() -> None:
    days = range(1, 60, 2)
    plain = [CardEvaluation.of_event(AS_OF - d * DAY, 0) for d in days]
    on_credit = [CardEvaluation.of_event(AS_OF - d * DAY, CVR_SPLIT | CVR_DEBT_OUTSTANDING
                                         | CVR_LOW_BALANCE if d % 3 else CVR_DEBT_OUTSTANDING)
                 for d in days]
    good = compute_indicators(as_of=AS_OF, opened_at=T0, evaluations=plain).card_evaluation
    worse = compute_indicators(as_of=AS_OF, opened_at=T0, evaluations=on_credit).card_evaluation
    assert good == 100
    assert worse is not None and worse < 75


def test_compute_refuses_an_account_opened_after_as_of() -> None:
    with pytest.raises(BadInput, match="opens after"):
        compute_indicators(as_of=T0, opened_at=T0 + 1)


@pytest.mark.parametrize(("outcome", "failed", "resolved", "message"), [
    (SplitOutcome.IN_COLLECTION, None, None, "needs failed_at"),
    (SplitOutcome.SETTLED_ONLINE, T0, T0, "has no failed_at"),
    (SplitOutcome.SETTLED_BANK, None, None, "needs resolved_at"),
    (SplitOutcome.PENDING, None, T0, "has no resolved_at"),
])
def test_a_split_debt_must_be_consistent_with_its_outcome(outcome: SplitOutcome,
                                                          failed: int | None,
                                                          resolved: int | None,
                                                          message: str) -> None:
    with pytest.raises(BadInput, match=message):
        SplitDebt(T0, 100, outcome, failed_at=failed, resolved_at=resolved)


def test_indicators_read_from_json_or_csv_values_and_round_trip() -> None:
    ind = compute_indicators(as_of=AS_OF, opened_at=T0, debts=debts())
    assert Indicators.from_mapping(ind.to_dict()) == ind
    as_csv = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
              for k, v in ind.to_dict().items()}
    assert Indicators.from_mapping(as_csv) == ind


@pytest.mark.parametrize(("change", "message"), [
    ({"tenure": 3}, "unknown indicator"),
    ({"taps_per_week": -1.0}, "must not be negative"),
    ({"activity_regularity": 1.5}, "share"),
    ({"card_evaluation": 101}, "0..100"),
    ({"splits_taken": 1.5}, "whole number"),
    ({"bank_account_verified": 1}, "true or false"),
    ({"tenure_days": None}, "must have a value"),
    ({"tenure_days": "ten"}, "cannot read"),
    ({"splits_in_collection": 2}, "cannot exceed splits_failed"),
])
def test_bad_indicator_values_are_refused_by_name(change: dict[str, object],
                                                  message: str) -> None:
    data = compute_indicators(as_of=AS_OF, opened_at=T0).to_dict()
    data.update(change)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match=message):
        Indicators.from_mapping(data)


def test_a_missing_indicator_is_refused_by_name() -> None:
    data = compute_indicators(as_of=AS_OF, opened_at=T0).to_dict()
    del data["blacklist_history"]
    with pytest.raises(BadInput, match=r"missing indicator.*blacklist_history"):
        Indicators.from_mapping(data)
