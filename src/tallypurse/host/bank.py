"""The bank connector: direct debits from cardholders' linked accounts.

The real connector would send an ISO 20022 pain.008 direct debit (or call a
bank's API) and read its status reports; :class:`SandboxBank` stands in for
it with asynchronous outcomes, a configurable latency and failure rate, and
accounts that always fail. It keeps no memory of its own: an outcome is a
function of the instruction and the time since it was submitted, so every
host process, and a restarted one, sees the same answer.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput


class Outcome(StrEnum):
    PENDING = "pending"
    SETTLED = "settled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DirectDebit:
    instruction_id: str  # end-to-end id: the bank recognises a resubmission by it
    iban: str
    bic: str
    holder_name: str
    mandate_id: str
    mandate_signed: dt.date
    amount: int
    currency: str
    reference: str


@dataclass(frozen=True, slots=True)
class BankAnswer:
    outcome: Outcome
    reason: str = ""


class BankUnavailable(Exception):
    """The bank could not be reached; try again later."""


class BankConnector(Protocol):
    def submit_direct_debit(self, debit: DirectDebit, *, now: int) -> BankAnswer:
        """Ask for a direct debit. Idempotent on ``debit.instruction_id``."""
        ...

    def status(self, debit: DirectDebit, *, submitted: int, now: int) -> BankAnswer:
        """The outcome of a direct debit submitted at ``submitted``."""
        ...


class SandboxBank:
    """A deterministic stand-in for a bank.

    ``latency_s``: outcomes stay pending this long after submission (0: at once).
    ``failure_rate``: share of direct debits refused (decided by a hash of the
    instruction id and ``seed``, so retries get the same answer).
    ``failing_ibans``: accounts whose debits always fail (insufficient funds).
    ``unavailable``: every call raises :class:`BankUnavailable`.
    """

    def __init__(
        self,
        *,
        latency_s: int = 0,
        failure_rate: float = 0.0,
        failing_ibans: frozenset[str] = frozenset(),
        seed: bytes = b"tallypurse-sandbox",
        unavailable: bool = False,
    ) -> None:
        if latency_s < 0 or not 0.0 <= failure_rate <= 1.0:
            raise BadInput("latency must be >= 0 and failure rate within 0..1")
        self.latency_s = latency_s
        self.failure_rate = failure_rate
        self.failing_ibans = failing_ibans
        self.seed = seed
        self.unavailable = unavailable
        # The latest instruction ids asked for (for tests and the simulator); bounded.
        self.submitted: deque[str] = deque(maxlen=10_000)

    def _decide(self, debit: DirectDebit) -> BankAnswer:
        if debit.iban in self.failing_ibans:
            return BankAnswer(Outcome.FAILED, "AM04 insufficient funds")
        draw = int.from_bytes(crypto.sha256(self.seed + debit.instruction_id.encode())[:8], "big")
        if draw < self.failure_rate * 2**64:
            return BankAnswer(Outcome.FAILED, "MS03 reason not specified")
        return BankAnswer(Outcome.SETTLED)

    def submit_direct_debit(self, debit: DirectDebit, *, now: int) -> BankAnswer:
        if self.unavailable:
            raise BankUnavailable("sandbox bank is down")
        self.submitted.append(debit.instruction_id)
        return self.status(debit, submitted=now, now=now)

    def status(self, debit: DirectDebit, *, submitted: int, now: int) -> BankAnswer:
        if self.unavailable:
            raise BankUnavailable("sandbox bank is down")
        if now < submitted + self.latency_s:
            return BankAnswer(Outcome.PENDING)
        return self._decide(debit)
