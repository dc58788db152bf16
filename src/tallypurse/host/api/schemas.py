"""Bodies of the operator, auditor and merchant API (the terminal API's bodies are
the shared contract in :mod:`tallypurse.core.hostapi`)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tallypurse.core.hostapi import CardId, CurrencyCode, TerminalId

Name = Annotated[str, StringConstraints(min_length=1, max_length=140)]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
MandateId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+?/:().,' -]{1,35}$")]
Positive = Annotated[int, Field(gt=0, le=10**12)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardholderCreate(Body):
    name: Name
    currency: CurrencyCode = "EUR"
    grade: Annotated[int, Field(ge=0, le=5)] = 2


class CardholderPublic(Body):
    id: str
    name: str
    currency: str
    grade: int
    online_balance: int
    bank_account: bool


class BankAccountLink(Body):
    iban: Annotated[str, StringConstraints(min_length=15, max_length=42)]
    bic: Annotated[str, StringConstraints(min_length=8, max_length=11)]
    holder_name: Name
    mandate_id: MandateId | None = None


class Funding(Body):
    amount: Positive
    reference: Annotated[str, StringConstraints(min_length=1, max_length=120)]


class MerchantCreate(Body):
    name: Name
    iban: Annotated[str, StringConstraints(min_length=15, max_length=42)]
    bic: Annotated[str, StringConstraints(min_length=8, max_length=11)]
    currency: CurrencyCode = "EUR"
    fee_basis_points: Annotated[int, Field(ge=0, le=10_000)] = 0
    merchant_id: Ident | None = None


class TerminalCreate(Body):
    merchant_id: Ident
    terminal_id: TerminalId | None = None


class TerminalCreated(Body):
    terminal_id: str
    enrolment_token: str


class CardStatusChange(Body):
    status: Literal["lost", "stolen", "blocked", "active"]
    reason: Annotated[str, StringConstraints(max_length=64)] = ""


class CardPublic(Body):
    card_id: CardId
    status: str
    blacklisted: bool
    cardholder_id: str | None
    currency: str
    purse_host_view: int
    contiguous_seqno: int
    max_seqno: int
    gap_since: int | None


class ParameterChange(Body):
    offline_limit: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] | None = None
    online_threshold: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] | None = None
    credit_types: list[Annotated[str, StringConstraints(max_length=16)]] | None = None
    max_list_age_s: Annotated[int, Field(ge=60)] | None = None
    cancel_window_s: Annotated[int, Field(ge=0, le=3600)] | None = None
    fee_basis_points: dict[str, Annotated[int, Field(ge=0, le=10_000)]] | None = None

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class DayRequest(Body):
    day: dt.date
    currency: CurrencyCode = "EUR"


class TokenCreate(Body):
    role: Literal["operator", "auditor", "merchant"]
    merchant_id: Ident | None = None
    name: Annotated[str, StringConstraints(max_length=100)] = ""


class TokenCreated(Body):
    token: str
    role: str


class Done(Body):
    ok: bool = True
    detail: str = ""


class Created(Body):
    id: str


# --- credit (tallypurse.host.credit) ---------------------------------------------------------
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class CreditRun(Body):
    day: dt.date | None = None  # score as of the end of this day (default: now)


class CreditOverrideSet(Body):
    grade: Literal["A", "B", "C", "D", "E"]
    reason: Reason
    expires: Annotated[int, Field(gt=0, le=0xFFFFFFFF)] | None = None  # Unix seconds
    days: Annotated[int, Field(ge=1, le=3660)] | None = None  # or: expires after N days


class CreditOverrideClear(Body):
    reason: Reason


class LoadVoid(Body):
    reason: Reason


class ModelPromotion(Body):
    reason: Reason
