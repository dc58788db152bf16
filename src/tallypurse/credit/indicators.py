"""Per-cardholder credit indicators, computed from the operator's own data.

Nothing here asks how much money a cardholder has elsewhere: every indicator
comes from what the operator sees (taps, top-ups, split debts and how they
ended, blacklist entries, the card's own transaction evaluation).

The host feeds plain event records read from its database to
:func:`compute_indicators`, which returns an :class:`Indicators` record as of a
given moment. Times are Unix seconds (UTC), as on the card; money is integer
minor units of the operator's currency, never floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

from tallypurse.core.errors import BadInput
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

DAY = 86_400
WEEK = 7 * DAY
MONTH = 30 * DAY  # a "month" of the indicators: 30 days
DEFAULT_WINDOW_DAYS = 182  # behaviour indicators look back 26 weeks (or the tenure, if shorter)
EVALUATION_DAYS = 90  # the card's evaluation: mean over the last 90 days of purchases

# What each adverse finding of the card (its card verification results, signed in
# every event; docs/protocol.md 11.11) costs a purchase's evaluation, out of 100.
CVR_WEIGHTS: dict[int, int] = {
    CVR_SPLIT: 25,  # paid partly on credit
    CVR_DEBT_OUTSTANDING: 10,  # a split debt not yet settled
    CVR_DEBT_NEAR_LIMIT: 15,  # outstanding debt near the record's maximum, or no free slot
    CVR_FAILED_DEBT: 30,  # a debt whose collection failed, not yet repaid
    CVR_OFFLINE_COUNT: 5,  # many purchases since the host last reached the card
    CVR_OFFLINE_AMOUNT: 5,  # more than a full purse spent since then
    CVR_RECORD_AGED: 5,  # the card's credit record was not renewed in time
    CVR_LOW_BALANCE: 5,  # the purse could not pay the same purchase again
}


def evaluate_cvr(cvr: int) -> int:
    """One event's evaluation, 0..100: 100 minus the weights of the adverse findings
    the card signed in it (bits it does not define count nothing)."""
    return max(0, 100 - sum(w for bit, w in CVR_WEIGHTS.items() if cvr & bit))


class SplitOutcome(Enum):
    """How a split debt ended, or where it stands.

    A debt whose collection failed (online account and bank both short) carries
    ``failed_at``; it is then either repaid later (``REPAID_LATE``, for example
    by the next load, which repays failed debts first) or still unpaid and in
    collection (``IN_COLLECTION``)."""

    PENDING = "pending"
    SETTLED_ONLINE = "settled_online"
    SETTLED_BANK = "settled_bank"
    REPAID_LATE = "repaid_late"
    IN_COLLECTION = "in_collection"


@dataclass(frozen=True, slots=True)
class Tap:
    """A purchase from the purse (offline, online or split)."""

    at: int
    amount_minor: int
    split_minor: int = 0


@dataclass(frozen=True, slots=True)
class TopUp:
    """A load of the purse or of the online account."""

    at: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    """The purse and online-account balances at one moment (the host's daily batch)."""

    at: int
    purse_minor: int
    online_minor: int


@dataclass(frozen=True, slots=True)
class SplitDebt:
    """A split debt: the part of a purchase the purse could not pay.

    ``resolved_at`` is when it was repaid (settled or repaid late), ``failed_at``
    when its collection first failed; both let the indicators be computed as of
    any past date without seeing the future."""

    taken_at: int
    amount_minor: int
    outcome: SplitOutcome
    failed_at: int | None = None
    resolved_at: int | None = None

    def __post_init__(self) -> None:
        failing = self.outcome in (SplitOutcome.REPAID_LATE, SplitOutcome.IN_COLLECTION)
        repaid = self.outcome in (
            SplitOutcome.SETTLED_ONLINE, SplitOutcome.SETTLED_BANK, SplitOutcome.REPAID_LATE
        )
        if failing and self.failed_at is None:
            raise BadInput(f"a {self.outcome.value} split debt needs failed_at")
        if not failing and self.failed_at is not None:
            raise BadInput(f"a {self.outcome.value} split debt has no failed_at")
        if repaid and self.resolved_at is None:
            raise BadInput(f"a {self.outcome.value} split debt needs resolved_at")
        if not repaid and self.resolved_at is not None:
            raise BadInput(f"a {self.outcome.value} split debt has no resolved_at")

    def as_of(self, when: int) -> tuple[SplitOutcome, int | None]:
        """(outcome, failed_at) as they stood at ``when``; the debt was taken by then."""
        failed = self.failed_at if self.failed_at is not None and self.failed_at <= when else None
        if self.resolved_at is not None and self.resolved_at <= when:
            return self.outcome, failed
        if failed is not None:
            return SplitOutcome.IN_COLLECTION, failed
        return SplitOutcome.PENDING, None


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    """The card was put on the blacklist (lost, stolen, cloned, defaulted)."""

    at: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CardEvaluation:
    """The card's own evaluation (0..100) of one purchase, read back at clearing
    (:func:`evaluate_cvr` of the event's card verification results)."""

    at: int
    value: int

    @classmethod
    def of_event(cls, at: int, cvr: int) -> CardEvaluation:
        return cls(at, evaluate_cvr(cvr))


@dataclass(frozen=True, slots=True)
class Indicators:
    """One cardholder's indicators as of one moment. Money in integer minor units."""

    tenure_days: int
    taps_per_week: float
    activity_regularity: float  # share of weeks in the window with at least one tap, 0..1
    topups_per_month: float
    topup_regularity: float  # share of 30-day periods in the window with a top-up, 0..1
    avg_topup_minor: int
    avg_purse_balance_minor: int
    avg_online_balance_minor: int
    splits_taken: int
    splits_settled_online: int
    splits_settled_bank: int
    splits_failed: int  # debts whose collection failed at least once
    splits_in_collection: int  # of those, the ones still unpaid in collection
    days_since_last_failure: int | None  # None: never failed
    bank_account_verified: bool
    blacklist_history: int
    card_evaluation: int | None  # 0..100, mean of the last 90 days; None: no purchase read back

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name))
        if self.splits_in_collection > self.splits_failed:
            raise BadInput("splits_in_collection cannot exceed splits_failed")

    def to_dict(self) -> dict[str, int | float | bool | None]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Indicators:
        """Build from a JSON object or a CSV row (strings are parsed; extra keys are an
        error, so that a misspelt indicator is never silently scored as missing)."""
        unknown = sorted(set(data) - set(INDICATOR_NAMES))
        if unknown:
            raise BadInput(f"unknown indicator(s): {', '.join(unknown)}")
        missing = [n for n in INDICATOR_NAMES if n not in data]
        if missing:
            raise BadInput(f"missing indicator(s): {', '.join(missing)}")
        values = {name: _coerce(name, data[name]) for name in INDICATOR_NAMES}
        return cls(**values)


# name -> (kind, nullable); kinds: "int", "float", "bool", "share" (0..1 float), "score" (0..100)
_KINDS: dict[str, tuple[str, bool]] = {
    "tenure_days": ("int", False),
    "taps_per_week": ("float", False),
    "activity_regularity": ("share", False),
    "topups_per_month": ("float", False),
    "topup_regularity": ("share", False),
    "avg_topup_minor": ("int", False),
    "avg_purse_balance_minor": ("int", False),
    "avg_online_balance_minor": ("signed", False),
    "splits_taken": ("int", False),
    "splits_settled_online": ("int", False),
    "splits_settled_bank": ("int", False),
    "splits_failed": ("int", False),
    "splits_in_collection": ("int", False),
    "days_since_last_failure": ("int", True),
    "bank_account_verified": ("bool", False),
    "blacklist_history": ("int", False),
    "card_evaluation": ("score", True),
}

INDICATOR_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Indicators))


@dataclass(frozen=True, slots=True)
class IndicatorInfo:
    """What an indicator is, its stable reason code, and which way is better."""

    name: str
    code: str  # stable reason code: R01.. in field order; never renumbered
    reason: str  # what a low score on this indicator means, for a cardholder or operator
    higher_is_better: bool | None  # None: no prior; a fit lets the data decide
    missing_means: str  # what a missing value (None) means, for the docs


INDICATORS: dict[str, IndicatorInfo] = {
    i.name: i
    for i in (
        IndicatorInfo("tenure_days", "R01", "short time as a cardholder", True, "-"),
        IndicatorInfo("taps_per_week", "R02", "few purchases per week", True, "-"),
        IndicatorInfo("activity_regularity", "R03", "irregular use of the card", True, "-"),
        IndicatorInfo("topups_per_month", "R04", "few top-ups per month", True, "-"),
        IndicatorInfo("topup_regularity", "R05", "irregular top-ups", True, "-"),
        IndicatorInfo("avg_topup_minor", "R06", "small top-ups", True, "-"),
        IndicatorInfo("avg_purse_balance_minor", "R07", "low average purse balance", True, "-"),
        IndicatorInfo(
            "avg_online_balance_minor", "R08", "low average online-account balance", True, "-"
        ),
        IndicatorInfo("splits_taken", "R09", "short history of split debts", None, "-"),
        IndicatorInfo(
            "splits_settled_online", "R10", "few split debts repaid from the online account",
            True, "-",
        ),
        IndicatorInfo(
            "splits_settled_bank", "R11", "split debts repaid from the bank account", None, "-"
        ),
        IndicatorInfo("splits_failed", "R12", "split debts whose collection failed", False, "-"),
        IndicatorInfo("splits_in_collection", "R13", "split debts in collection", False, "-"),
        IndicatorInfo(
            "days_since_last_failure", "R14", "a recent failed collection", True, "never failed"
        ),
        IndicatorInfo("bank_account_verified", "R15", "no verified linked bank account", True, "-"),
        IndicatorInfo("blacklist_history", "R16", "card blacklisted before", False, "-"),
        IndicatorInfo(
            "card_evaluation", "R17", "low transaction evaluation by the card", True,
            "no purchase read back from the card in 90 days",
        ),
    )
}
assert tuple(INDICATORS) == INDICATOR_NAMES


def _check_value(name: str, value: object) -> None:
    kind, nullable = _KINDS[name]
    if value is None:
        if not nullable:
            raise BadInput(f"{name} must have a value")
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise BadInput(f"{name} must be true or false")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{name} must be a number")
    if kind in ("int", "signed", "score") and not isinstance(value, int):
        raise BadInput(f"{name} must be a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{name} must be finite")
    if kind != "signed" and value < 0:
        raise BadInput(f"{name} must not be negative")
    if kind == "share" and value > 1:
        raise BadInput(f"{name} is a share: 0..1")
    if kind == "score" and value > 100:
        raise BadInput(f"{name} must be 0..100")


def _coerce(name: str, raw: object) -> Any:
    """A value from JSON (typed) or CSV (strings; empty = missing)."""
    kind, _ = _KINDS[name]
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if kind == "bool":
                lowered = text.lower()
                if lowered in ("true", "1", "yes"):
                    return True
                if lowered in ("false", "0", "no"):
                    return False
                raise ValueError(text)
            if kind in ("int", "signed", "score"):
                return int(text)
            return float(text)
        except ValueError:
            raise BadInput(f"{name}: cannot read {raw!r}") from None
    if kind in ("float", "share") and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    return raw


def _mean_floor(values: Sequence[int]) -> int:
    return sum(values) // len(values) if values else 0


def compute_indicators(
    *,
    as_of: int,
    opened_at: int,
    taps: Iterable[Tap] = (),
    topups: Iterable[TopUp] = (),
    balances: Iterable[BalanceSnapshot] = (),
    debts: Iterable[SplitDebt] = (),
    blacklist: Iterable[BlacklistEntry] = (),
    evaluations: Iterable[CardEvaluation] = (),
    bank_account_verified: bool = False,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> Indicators:
    """One cardholder's indicators as of ``as_of`` (Unix seconds).

    Events after ``as_of`` are ignored, so the same event lists give the
    indicators at any past date (for building a fitting history). Behaviour
    indicators (activity, top-ups, balances) look back ``window_days``, or the
    tenure if shorter; debt and blacklist counts cover the whole history; the
    card's evaluation is the mean (rounded half up) of the evaluations of the
    last :data:`EVALUATION_DAYS` days, missing when there is none.
    """
    if opened_at > as_of:
        raise BadInput("the cardholder's account opens after as_of")
    if window_days < 7:
        raise BadInput("window_days must be at least 7")
    tenure_seconds = as_of - opened_at
    tenure_days = tenure_seconds // DAY
    span = max(min(tenure_seconds, window_days * DAY), DAY)  # at least a day
    start = as_of - span

    weeks = max(1, math.ceil(span / WEEK))
    months = max(1, math.ceil(span / MONTH))

    tap_times = [t.at for t in taps if start <= t.at <= as_of]
    active_weeks = {min((as_of - at) // WEEK, weeks - 1) for at in tap_times}
    top = [t for t in topups if start <= t.at <= as_of]
    topup_months = {min((as_of - t.at) // MONTH, months - 1) for t in top}
    snaps = [b for b in balances if start <= b.at <= as_of]

    past = [d.as_of(as_of) for d in debts if d.taken_at <= as_of]
    outcomes = [outcome for outcome, _ in past]
    failures = [failed for _, failed in past if failed is not None]
    evals = [e.value for e in evaluations if as_of - EVALUATION_DAYS * DAY < e.at <= as_of]

    return Indicators(
        tenure_days=tenure_days,
        taps_per_week=round(len(tap_times) / (span / WEEK), 4),
        activity_regularity=round(min(1.0, len(active_weeks) / weeks), 4),
        topups_per_month=round(len(top) / (span / MONTH), 4),
        topup_regularity=round(min(1.0, len(topup_months) / months), 4),
        avg_topup_minor=_mean_floor([t.amount_minor for t in top]),
        avg_purse_balance_minor=_mean_floor([b.purse_minor for b in snaps]),
        avg_online_balance_minor=_mean_floor([b.online_minor for b in snaps]),
        splits_taken=len(past),
        splits_settled_online=outcomes.count(SplitOutcome.SETTLED_ONLINE),
        splits_settled_bank=outcomes.count(SplitOutcome.SETTLED_BANK),
        splits_failed=len(failures),
        splits_in_collection=outcomes.count(SplitOutcome.IN_COLLECTION),
        days_since_last_failure=(as_of - max(failures)) // DAY if failures else None,
        bank_account_verified=bank_account_verified,
        blacklist_history=sum(1 for b in blacklist if b.at <= as_of),
        card_evaluation=(2 * sum(evals) + len(evals)) // (2 * len(evals)) if evals else None,
    )
