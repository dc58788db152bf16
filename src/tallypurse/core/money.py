"""Money as integer minor units with a currency. Never floats.

>>> m = Money.parse("12.50", "EUR")
>>> m.minor, m.currency.code
(1250, 'EUR')
>>> str(m)
'12.50 EUR'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tallypurse.core.errors import BadInput


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency: alphabetic code, numeric code and minor-unit exponent."""

    code: str
    numeric: int
    exponent: int


CURRENCIES: dict[str, Currency] = {
    c.code: c
    for c in (
        Currency("EUR", 978, 2),
        Currency("CNY", 156, 2),
        Currency("USD", 840, 2),
        Currency("GBP", 826, 2),
        Currency("HKD", 344, 2),
        Currency("CHF", 756, 2),
        Currency("JPY", 392, 0),
        Currency("KRW", 410, 0),
    )
}
_BY_NUMERIC = {c.numeric: c for c in CURRENCIES.values()}

MAX_MINOR = 0xFFFFFFFF  # amounts travel as unsigned 32-bit fields on the card


def currency(code: str) -> Currency:
    """Look up a currency by its ISO 4217 alphabetic code."""
    try:
        return CURRENCIES[code.upper()]
    except KeyError:
        raise BadInput(f"unknown currency {code!r}") from None


def currency_by_numeric(numeric: int) -> Currency:
    """Look up a currency by its ISO 4217 numeric code."""
    try:
        return _BY_NUMERIC[numeric]
    except KeyError:
        raise BadInput(f"unknown currency number {numeric}") from None


_AMOUNT = re.compile(r"^(?P<int>\d+)(?:\.(?P<frac>\d+))?$", re.ASCII)


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units of one currency."""

    minor: int
    currency: Currency

    def __post_init__(self) -> None:
        if isinstance(self.minor, bool) or not isinstance(self.minor, int):
            raise BadInput("money must be an integer number of minor units")

    @classmethod
    def parse(cls, text: str, code: str) -> Money:
        """Parse a decimal string such as ``"12.50"`` exactly, without floats."""
        cur = currency(code)
        match = _AMOUNT.match(text.strip())
        if not match:
            raise BadInput(f"not an amount: {text!r} (use digits, e.g. 12.50)")
        frac = match.group("frac") or ""
        if len(frac) > cur.exponent:
            raise BadInput(f"{text!r} has more than {cur.exponent} decimal places for {cur.code}")
        minor = int(match.group("int")) * 10**cur.exponent + int(frac.ljust(cur.exponent, "0") or 0)
        return cls(minor, cur)

    @classmethod
    def of(cls, minor: int, code: str) -> Money:
        return cls(minor, currency(code))

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise BadInput(f"currency mismatch: {self.currency.code} vs {other.currency.code}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __str__(self) -> str:
        return format_minor(self.minor, self.currency)


def format_minor(minor: int, cur: Currency) -> str:
    """Format minor units as a decimal string with the currency code."""
    sign = "-" if minor < 0 else ""
    value = abs(minor)
    if cur.exponent == 0:
        return f"{sign}{value} {cur.code}"
    unit = 10**cur.exponent
    return f"{sign}{value // unit}.{value % unit:0{cur.exponent}d} {cur.code}"
