"""The credit system's core: indicators, scorecards, grades, credit terms, fitting.

Pure domain logic: no database, no HTTP, no card access. The host reads its
rows, turns them into the event records of :mod:`.indicators`, and calls::

    ind = compute_indicators(as_of=now, opened_at=..., taps=..., topups=..., balances=...,
                             debts=..., blacklist=..., evaluations=...,
                             bank_account_verified=...)
    scorecard = ModelRegistry(registry_dir).current()   # or builtin_scorecard()
    decision = scorecard.score(ind)                      # score, grade, reasons, version
    record = credit_record(card_id, decision.grade, policy, version=...,
                           online_balance_minor=..., outstanding_minor=..., issued=now)

``fit`` (scikit-learn, the ``credit-fit`` extra) is imported only when fitting.
See docs/credit.md.
"""

from tallypurse.credit.history import HistoryRow, read_history, write_history
from tallypurse.credit.indicators import (
    INDICATOR_NAMES,
    INDICATORS,
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
from tallypurse.credit.policy import (
    NO_CREDIT,
    CreditPolicy,
    CreditTerms,
    PolicyError,
    credit_record,
    default_policy,
    load_policy,
    loads_policy,
)
from tallypurse.credit.registry import ModelRegistry, RegistryError
from tallypurse.credit.scorecard import (
    Decision,
    Grade,
    Reason,
    Scorecard,
    ScorecardError,
    builtin_scorecard,
    load_scorecard,
    loads_scorecard,
)

__all__ = [
    "INDICATORS",
    "INDICATOR_NAMES",
    "NO_CREDIT",
    "BalanceSnapshot",
    "BlacklistEntry",
    "CardEvaluation",
    "CreditPolicy",
    "CreditTerms",
    "Decision",
    "Grade",
    "HistoryRow",
    "Indicators",
    "ModelRegistry",
    "PolicyError",
    "Reason",
    "RegistryError",
    "Scorecard",
    "ScorecardError",
    "SplitDebt",
    "SplitOutcome",
    "Tap",
    "TopUp",
    "builtin_scorecard",
    "compute_indicators",
    "credit_record",
    "default_policy",
    "evaluate_cvr",
    "load_policy",
    "load_scorecard",
    "loads_policy",
    "loads_scorecard",
    "read_history",
    "write_history",
]
