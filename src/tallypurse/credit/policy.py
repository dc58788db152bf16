"""From a grade to the credit record a card carries: the operator's policy table.

The policy (TOML) gives, per grade A..D, the per-tap overdraft, the maximum
outstanding debt, the number of debt slots and the transaction types allowed
on credit; operator caps bound every grade's terms; grade E never has credit,
whatever the table says. Amounts are written as decimal strings ("20.00") in
the policy's currency and held as integer minor units.

:func:`credit_record` adds what the host knows at issue time (the online
account's balance band 0..15 and the outstanding debt) and returns the
:class:`tallypurse.core.messages.CreditRecord` to sign and write back.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tallypurse.core.errors import BadInput
from tallypurse.core.messages import CreditRecord
from tallypurse.core.money import MAX_MINOR, Currency, Money, currency, format_minor
from tallypurse.core.protocol import TxType
from tallypurse.credit.scorecard import Grade

FORMAT_VERSION = 1
MAX_BAND = 15
MAX_SLOTS = 255  # the record's field is one byte; the card uses no more slots than it has
DAY = 86_400


class PolicyError(BadInput):
    """A policy file that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class CreditTerms:
    """What a card may owe offline. All zero and no types: no credit."""

    per_tap_overdraft: int
    max_outstanding: int
    max_slots: int
    allowed_types: frozenset[TxType]

    @property
    def allowed_mask(self) -> int:
        mask = 0
        for t in self.allowed_types:
            mask |= t.bit
        return mask

    @property
    def has_credit(self) -> bool:
        return (self.per_tap_overdraft > 0 and self.max_outstanding > 0 and self.max_slots > 0
                and bool(self.allowed_types))

    def capped(self, caps: CreditTerms) -> CreditTerms:
        terms = CreditTerms(
            min(self.per_tap_overdraft, caps.per_tap_overdraft),
            min(self.max_outstanding, caps.max_outstanding),
            min(self.max_slots, caps.max_slots),
            self.allowed_types & caps.allowed_types,
        )
        return terms if terms.has_credit else NO_CREDIT


NO_CREDIT = CreditTerms(0, 0, 0, frozenset())


@dataclass(frozen=True, slots=True)
class CreditPolicy:
    currency: Currency
    validity_days: int
    caps: CreditTerms
    grades: dict[Grade, CreditTerms]  # as written; terms_for() applies the caps
    band_thresholds: tuple[int, ...]  # online balance reaching k thresholds is band k

    def terms_for(self, grade: Grade) -> CreditTerms:
        """The grade's terms, capped by the operator's caps; E and unlisted grades: none."""
        if grade is Grade.E:
            return NO_CREDIT
        terms = self.grades.get(grade)
        return NO_CREDIT if terms is None else terms.capped(self.caps)

    def balance_band(self, online_balance_minor: int) -> int:
        """0..15: how many band thresholds the online balance reaches."""
        return sum(1 for t in self.band_thresholds if online_balance_minor >= t)

    def describe(self) -> list[str]:
        def money(m: int) -> str:
            return format_minor(m, self.currency)

        lines = []
        for grade in Grade:
            t = self.terms_for(grade)
            if not t.has_credit:
                lines.append(f"{grade.name}: no credit")
                continue
            types = ", ".join(x.name.lower() for x in sorted(t.allowed_types))
            lines.append(f"{grade.name}: {money(t.per_tap_overdraft)} per tap, "
                         f"{money(t.max_outstanding)} outstanding, {t.max_slots} slot(s); "
                         f"{types}")
        return lines


def credit_record(
    card_id: bytes,
    grade: Grade,
    policy: CreditPolicy,
    *,
    version: int,
    online_balance_minor: int,
    outstanding_minor: int,
    issued: int,
) -> CreditRecord:
    """The credit record for a card: the grade's capped terms, the online-account
    balance band and the outstanding debt the host knows of, valid from ``issued``
    (Unix seconds) for the policy's ``validity_days``. Grade E gives a record with
    grade E and no credit (zero limits, no types), which the card refuses to use."""
    if len(card_id) != 8:
        raise BadInput("card_id must be 8 bytes")
    if not 0 < version <= 0xFFFFFFFF:
        raise BadInput("credit record version must be 1..2^32-1")
    if not 0 <= outstanding_minor <= MAX_MINOR:
        raise BadInput("outstanding debt must be 0..4294967295 minor units")
    expires = issued + policy.validity_days * DAY
    if not 0 <= issued or expires > 0xFFFFFFFF:
        raise BadInput("issued time out of range")
    terms = policy.terms_for(grade)
    record = CreditRecord(
        card_id=card_id,
        version=version,
        grade=int(grade),
        per_tap_overdraft=terms.per_tap_overdraft,
        max_outstanding=terms.max_outstanding,
        max_slots=terms.max_slots,
        allowed_types=terms.allowed_mask,
        balance_band=policy.balance_band(online_balance_minor),
        outstanding_known=outstanding_minor,
        issued=issued,
        expires=expires,
        currency=policy.currency.numeric,
    )
    record.check()
    return record


# --- loading ---------------------------------------------------------------------------------


def _fail(source: str, path: str, message: str) -> PolicyError:
    return PolicyError(f"{source}: {path}: {message}")


def _no_extra(source: str, data: Mapping[str, Any], allowed: list[str], path: str) -> None:
    extra = sorted(set(data) - set(allowed))
    if extra:
        raise _fail(source, f"{path}{extra[0]}",
                    f"unknown field (expected one of: {', '.join(allowed)})")


def _amount(source: str, data: Mapping[str, Any], key: str, path: str, cur: Currency) -> int:
    value = data.get(key)
    where = f"{path}{key}"
    if value is None:
        raise _fail(source, where, "missing")
    if not isinstance(value, str):
        raise _fail(source, where, f"must be a decimal string such as \"20.00\" (an amount in "
                                   f"{cur.code}), not {value!r}")
    try:
        minor = Money.parse(value, cur.code).minor
    except BadInput as exc:
        raise _fail(source, where, exc.message) from None
    if minor > MAX_MINOR:
        raise _fail(source, where, "too large for a card")
    return minor


def _terms(source: str, data: Any, path: str, cur: Currency) -> CreditTerms:
    if not isinstance(data, Mapping):
        raise _fail(source, path.rstrip("."), "must be a table")
    _no_extra(source, data,
              ["per_tap_overdraft", "max_outstanding", "max_slots", "allowed_types"], path)
    slots = data.get("max_slots")
    if isinstance(slots, bool) or not isinstance(slots, int) or not 0 <= slots <= MAX_SLOTS:
        raise _fail(source, f"{path}max_slots",
                    "missing" if slots is None else f"must be a whole number 0..{MAX_SLOTS}")
    types = data.get("allowed_types")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise _fail(source, f"{path}allowed_types",
                    "missing" if types is None else "must be a list of names such as "
                                                    "[\"canteen\", \"transit\"]")
    parsed = []
    for t in types:
        try:
            parsed.append(TxType.parse(t))
        except BadInput as exc:
            raise _fail(source, f"{path}allowed_types", exc.message) from None
    return CreditTerms(
        _amount(source, data, "per_tap_overdraft", path, cur),
        _amount(source, data, "max_outstanding", path, cur),
        slots,
        frozenset(parsed),
    )


def parse_policy(data: Mapping[str, Any], source: str = "policy") -> CreditPolicy:
    _no_extra(source, data,
              ["format", "currency", "validity_days", "caps", "grades", "balance_bands"], "")
    if data.get("format") != FORMAT_VERSION:
        raise _fail(source, "format", f"must be {FORMAT_VERSION}, not {data.get('format')!r}")
    code = data.get("currency")
    if not isinstance(code, str):
        raise _fail(source, "currency", "missing" if code is None else "must be a string")
    try:
        cur = currency(code)
    except BadInput as exc:
        raise _fail(source, "currency", exc.message) from None
    days = data.get("validity_days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
        raise _fail(source, "validity_days",
                    "missing" if days is None else "must be a whole number of days, 1..3660")

    caps = _terms(source, data.get("caps"), "caps.", cur) if "caps" in data else None
    if caps is None:
        raise _fail(source, "caps", "missing table")

    grades_raw = data.get("grades")
    if not isinstance(grades_raw, Mapping):
        raise _fail(source, "grades", "missing table" if grades_raw is None else "must be a table")
    grades: dict[Grade, CreditTerms] = {}
    for letter, raw in grades_raw.items():
        if letter == "E":
            raise _fail(source, "grades.E", "grade E never has credit: remove this table")
        if letter not in ("A", "B", "C", "D"):
            raise _fail(source, f"grades.{letter}", "unknown grade (A, B, C or D)")
        grades[Grade[letter]] = _terms(source, raw, f"grades.{letter}.", cur)

    bands = data.get("balance_bands", {})
    if not isinstance(bands, Mapping):
        raise _fail(source, "balance_bands", "must be a table")
    _no_extra(source, bands, ["thresholds"], "balance_bands.")
    raw_thresholds = bands.get("thresholds", [])
    if not isinstance(raw_thresholds, list) or len(raw_thresholds) > MAX_BAND:
        raise _fail(source, "balance_bands.thresholds",
                    f"must be a list of at most {MAX_BAND} amounts")
    thresholds: list[int] = []
    for i, raw in enumerate(raw_thresholds):
        key = f"thresholds[{i}]"
        minor = _amount(source, {key: raw}, key, "balance_bands.", cur)
        if minor <= 0 or (thresholds and minor <= thresholds[-1]):
            raise _fail(source, f"balance_bands.thresholds[{i}]",
                        "thresholds must be above 0 and increasing")
        thresholds.append(minor)
    return CreditPolicy(cur, days, caps, grades, tuple(thresholds))


def loads_policy(text: str, source: str = "policy") -> CreditPolicy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    return parse_policy(data, source)


def load_policy(path: Path) -> CreditPolicy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    return loads_policy(text, str(path))


def default_policy() -> CreditPolicy:
    """The example policy shipped with tallypurse (EUR); operators write their own."""
    res = resources.files("tallypurse.credit").joinpath("policies", "default.toml")
    return loads_policy(res.read_text(encoding="utf-8"), "default.toml (built in)")
