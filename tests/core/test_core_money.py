"""Money: exact decimal parsing into integer minor units, formatting, arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallypurse.core.errors import BadInput
from tallypurse.core.money import (
    CURRENCIES,
    Currency,
    Money,
    currency,
    currency_by_numeric,
    format_minor,
)


@pytest.mark.parametrize(
    ("text", "minor"),
    [
        ("12.50", 1250),
        ("12.5", 1250),
        ("0.05", 5),
        ("12", 1200),
        ("0", 0),
        ("0.00", 0),
        ("007.10", 710),
        (" 3.99 ", 399),
        ("4294967.29", 429496729),
        ("123456789012.34", 12345678901234),
    ],
)
def test_money_parses_an_exact_decimal_into_minor_units(text: str, minor: int) -> None:
    m = Money.parse(text, "EUR")
    assert m.minor == minor
    assert type(m.minor) is int
    assert m.currency.code == "EUR"


def test_money_parse_never_goes_through_floats() -> None:
    # 0.29 * 100 == 28.999999999999996 in binary floating point
    assert Money.parse("0.29", "EUR").minor == 29
    assert Money.parse("1.15", "USD").minor == 115
    assert Money.parse("9007199254740993.01", "EUR").minor == 900719925474099301


def test_money_parse_accepts_a_lowercase_currency_code() -> None:
    assert Money.parse("1.00", "eur").currency is CURRENCIES["EUR"]


@pytest.mark.parametrize(
    "text",
    ["12.505", "0.001", "1.000", "0.1000000000000000055511151231257827", "12.50000001"],
)
def test_money_parse_rejects_more_decimals_than_the_currency_has(text: str) -> None:
    with pytest.raises(BadInput, match="decimal places"):
        Money.parse(text, "EUR")


@pytest.mark.parametrize("text", ["-1", "-0.05", "-0", "- 1", "+1", "+0.50"])
def test_money_parse_rejects_signed_amounts(text: str) -> None:
    with pytest.raises(BadInput, match="not an amount"):
        Money.parse(text, "EUR")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "abc",
        "12.",
        ".50",
        "12..5",
        "1.2.3",
        "1,00",
        "1 000",
        "12 .50",
        "1e3",
        "1E2",
        "0x10",
        "NaN",
        "inf",
        "12.50 EUR",
        "EUR 12.50",
        "12_000",
        "\u0661\u0662.\u0665\u0660",  # Arabic-Indic digits
        "\uff11\uff12",  # full-width digits
        "\u00b2",  # superscript two
        "1\n2",
    ],
)
def test_money_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(BadInput, match="not an amount"):
        Money.parse(text, "EUR")


@pytest.mark.parametrize("code", ["XXX", "", "EURO", "eu", "978"])
def test_money_parse_rejects_an_unknown_currency(code: str) -> None:
    with pytest.raises(BadInput, match="unknown currency"):
        Money.parse("1.00", code)


def test_unknown_currency_is_checked_before_the_amount() -> None:
    with pytest.raises(BadInput, match="unknown currency"):
        Money.parse("garbage", "XXX")


def test_jpy_has_exponent_zero_and_parses_whole_yen() -> None:
    jpy = currency("JPY")
    assert jpy.exponent == 0
    assert jpy.numeric == 392
    assert Money.parse("1500", "JPY").minor == 1500


@pytest.mark.parametrize("text", ["1500.0", "1500.5", "0.1"])
def test_jpy_rejects_any_decimal_places(text: str) -> None:
    with pytest.raises(BadInput, match="more than 0 decimal places"):
        Money.parse(text, "JPY")


def test_jpy_formats_without_a_decimal_point() -> None:
    assert str(Money.of(1500, "JPY")) == "1500 JPY"
    assert str(Money.of(-7, "JPY")) == "-7 JPY"


@pytest.mark.parametrize(
    ("minor", "text"),
    [
        (1250, "12.50 EUR"),
        (5, "0.05 EUR"),
        (0, "0.00 EUR"),
        (100, "1.00 EUR"),
        (-5, "-0.05 EUR"),
        (-1250, "-12.50 EUR"),
        (0xFFFFFFFF, "42949672.95 EUR"),
    ],
)
def test_money_formats_minor_units_as_a_fixed_point_decimal(minor: int, text: str) -> None:
    assert str(Money.of(minor, "EUR")) == text
    assert format_minor(minor, currency("EUR")) == text


def test_format_minor_pads_to_the_currency_exponent() -> None:
    three = Currency("TST", 999, 3)
    assert format_minor(5, three) == "0.005 TST"
    assert format_minor(12345, three) == "12.345 TST"


@given(
    minor=st.integers(min_value=0, max_value=10**15),
    code=st.sampled_from(sorted(CURRENCIES)),
)
def test_money_formatting_then_parsing_gives_back_the_same_amount(minor: int, code: str) -> None:
    m = Money.of(minor, code)
    amount, shown_code = str(m).split(" ")
    assert shown_code == code
    assert Money.parse(amount, code) == m


def test_money_adds_and_subtracts_in_one_currency() -> None:
    a = Money.parse("12.50", "EUR")
    b = Money.parse("0.75", "EUR")
    assert (a + b).minor == 1325
    assert (a - b).minor == 1175
    assert (b - a).minor == -1175
    assert (a + b).currency is a.currency


@pytest.mark.parametrize("op", ["add", "sub"])
def test_money_arithmetic_refuses_a_currency_mismatch(op: str) -> None:
    eur = Money.of(100, "EUR")
    usd = Money.of(100, "USD")
    with pytest.raises(BadInput, match="currency mismatch"):
        _ = eur + usd if op == "add" else eur - usd


def test_money_arithmetic_refuses_a_mismatch_even_for_the_same_exponent_zero_currencies() -> None:
    with pytest.raises(BadInput, match="currency mismatch"):
        _ = Money.of(1, "JPY") + Money.of(1, "KRW")


@pytest.mark.parametrize("minor", [1.0, 12.5, "12", True, False, None])
def test_money_refuses_anything_but_an_integer_amount(minor: object) -> None:
    with pytest.raises(BadInput, match="integer"):
        Money(minor, currency("EUR"))  # type: ignore[arg-type]


def test_money_is_immutable_and_compares_by_value() -> None:
    a = Money.of(5, "EUR")
    assert a == Money.parse("0.05", "EUR")
    assert a != Money.of(5, "USD")
    with pytest.raises(AttributeError):
        a.minor = 6  # type: ignore[misc]


def test_currency_lookup_by_code_and_by_number_agree() -> None:
    for code, cur in CURRENCIES.items():
        assert currency(code) is cur
        assert currency(code.lower()) is cur
        assert currency_by_numeric(cur.numeric) is cur
    assert currency_by_numeric(978).code == "EUR"
    assert currency_by_numeric(156).code == "CNY"


def test_currency_by_numeric_rejects_an_unknown_number() -> None:
    with pytest.raises(BadInput, match="unknown currency number"):
        currency_by_numeric(999)
