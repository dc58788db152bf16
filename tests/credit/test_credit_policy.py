"""Policy: grade to credit record terms, capped by the operator; grade E gets no credit."""

from __future__ import annotations

import pytest

from tallypurse.core.errors import BadInput
from tallypurse.core.messages import CreditRecord
from tallypurse.core.protocol import TxType
from tallypurse.credit.policy import (
    NO_CREDIT,
    PolicyError,
    credit_record,
    default_policy,
    loads_policy,
)
from tallypurse.credit.scorecard import Grade

CARD = bytes.fromhex("1000000000000042")
NOW = 1_767_225_600

POLICY = """
format = 1
currency = "EUR"
validity_days = 30

[caps]
per_tap_overdraft = "10.00"
max_outstanding = "40.00"
max_slots = 3
allowed_types = ["canteen", "transit", "vending"]

[grades.A]
per_tap_overdraft = "25.00"   # above the cap: 10.00
max_outstanding = "30.00"
max_slots = 4                 # above the cap: 3
allowed_types = ["canteen", "transit", "retail"]  # retail is not allowed by the caps

[grades.B]
per_tap_overdraft = "5.00"
max_outstanding = "15.00"
max_slots = 2
allowed_types = ["canteen"]

[grades.C]
per_tap_overdraft = "2.00"
max_outstanding = "5.00"
max_slots = 1
allowed_types = ["retail"]    # nothing left after the caps: no credit

[balance_bands]
thresholds = ["1.00", "10.00", "100.00"]
"""


def test_a_grades_terms_are_capped_by_the_operator_caps() -> None:
    a = loads_policy(POLICY).terms_for(Grade.A)
    assert (a.per_tap_overdraft, a.max_outstanding, a.max_slots) == (1000, 3000, 3)
    assert a.allowed_types == {TxType.CANTEEN, TxType.TRANSIT}
    assert a.allowed_mask == TxType.CANTEEN.bit | TxType.TRANSIT.bit


def test_terms_under_the_caps_are_kept() -> None:
    b = loads_policy(POLICY).terms_for(Grade.B)
    assert (b.per_tap_overdraft, b.max_outstanding, b.max_slots) == (500, 1500, 2)
    assert b.allowed_types == {TxType.CANTEEN}


def test_grade_e_an_unlisted_grade_and_terms_capped_to_nothing_give_no_credit() -> None:
    policy = loads_policy(POLICY)
    assert policy.terms_for(Grade.E) is NO_CREDIT
    assert policy.terms_for(Grade.D) is NO_CREDIT  # not in the table
    assert policy.terms_for(Grade.C) is NO_CREDIT  # its only type is capped away
    assert not NO_CREDIT.has_credit and NO_CREDIT.allowed_mask == 0


def test_a_credit_record_carries_the_grade_terms_band_and_outstanding_debt() -> None:
    rec = credit_record(CARD, Grade.A, loads_policy(POLICY), version=7,
                        online_balance_minor=1500, outstanding_minor=250, issued=NOW)
    assert rec == CreditRecord(
        card_id=CARD, version=7, grade=1, per_tap_overdraft=1000, max_outstanding=3000,
        max_slots=3, allowed_types=TxType.CANTEEN.bit | TxType.TRANSIT.bit, balance_band=2,
        outstanding_known=250, issued=NOW, expires=NOW + 30 * 86_400, currency=978)
    assert CreditRecord.parse(rec.to_bytes()) == rec
    assert rec.grade_letter == "A"


def test_a_grade_e_record_says_e_and_allows_nothing() -> None:
    rec = credit_record(CARD, Grade.E, loads_policy(POLICY), version=8,
                        online_balance_minor=0, outstanding_minor=900, issued=NOW)
    assert rec.grade == 5 and rec.grade_letter == "E"
    assert (rec.per_tap_overdraft, rec.max_outstanding, rec.max_slots, rec.allowed_types) == (
        0, 0, 0, 0)
    assert rec.outstanding_known == 900


@pytest.mark.parametrize(("balance", "band"), [
    (-500, 0), (0, 0), (99, 0), (100, 1), (999, 1), (1000, 2), (10_000, 3), (10**9, 3)])
def test_the_online_balance_band_counts_the_thresholds_reached(balance: int, band: int) -> None:
    assert loads_policy(POLICY).balance_band(balance) == band


def test_the_default_policy_bands_reach_fifteen_and_e_has_no_credit() -> None:
    policy = default_policy()
    assert policy.balance_band(10**8) == 15
    assert policy.terms_for(Grade.E) is NO_CREDIT
    limits = [policy.terms_for(g).per_tap_overdraft for g in Grade]
    assert limits == sorted(limits, reverse=True) and limits[0] > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"card_id": b"short"}, "8 bytes"),
    ({"version": 0}, "version"),
    ({"outstanding_minor": -1}, "outstanding"),
    ({"outstanding_minor": 2**32}, "outstanding"),
    ({"issued": 2**32 - 10}, "issued"),
])
def test_a_credit_record_refuses_out_of_range_fields(kwargs: dict[str, object],
                                                    message: str) -> None:
    args: dict[str, object] = {"card_id": CARD, "version": 1, "online_balance_minor": 0,
                               "outstanding_minor": 0, "issued": NOW}
    args.update(kwargs)
    card_id = args.pop("card_id")
    with pytest.raises(BadInput, match=message):
        credit_record(card_id, Grade.A, loads_policy(POLICY), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("old", "new", "message"), [
    ('currency = "EUR"', 'currency = "XXX"', r"currency: unknown currency"),
    ("validity_days = 30", "validity_days = 0", r"validity_days: must be a whole number"),
    ('per_tap_overdraft = "10.00"', "per_tap_overdraft = 1000",
     r"caps\.per_tap_overdraft: must be a decimal string"),
    ('max_outstanding = "40.00"', 'max_outstanding = "40.001"',
     r"caps\.max_outstanding: .*decimal places"),
    ("max_slots = 3", "max_slots = 300", r"caps\.max_slots: must be a whole number 0..255"),
    ('allowed_types = ["canteen"]', 'allowed_types = ["canteens"]',
     r"grades\.B\.allowed_types: unknown transaction type"),
    ("[grades.C]", "[grades.E]", r"grades\.E: grade E never has credit"),
    ("[grades.C]", "[grades.F]", r"grades\.F: unknown grade"),
    ('thresholds = ["1.00", "10.00", "100.00"]', 'thresholds = ["10.00", "1.00"]',
     r"balance_bands\.thresholds\[1\]: thresholds must be above 0 and increasing"),
    ("[caps]", "[caps]\ncolour = 1", r"caps\.colour: unknown field"),
])
def test_policy_errors_name_the_field(old: str, new: str, message: str) -> None:
    assert old in POLICY
    with pytest.raises(PolicyError, match=message):
        loads_policy(POLICY.replace(old, new, 1), "p.toml")


def test_a_policy_without_caps_is_refused() -> None:
    head, rest = POLICY.split("[caps]")
    rest = rest.split("[grades.A]")[1]
    with pytest.raises(PolicyError, match="caps: missing table"):
        loads_policy(head + "[grades.A]" + rest)
