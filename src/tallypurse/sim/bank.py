"""The simulator's bank: the host's :class:`BankConnector` with seeded outcomes.

Like the host's :class:`~tallypurse.host.bank.SandboxBank`, an outcome is a
function of the direct debit and of time only, so a restarted host sees the
same answers; unlike it, the draw is keyed on the debit's reference (card and
ATC) rather than on the host's random instruction id, so that one seed gives
one run. The bank counts what it was asked and what it settled, which the
checks compare with the host's books.
"""

from __future__ import annotations

from tallypurse.core import crypto
from tallypurse.host.bank import BankAnswer, BankUnavailable, DirectDebit, Outcome


class SimBank:
    def __init__(self, seed: int, *, failure_rate: float = 0.0,
                 latency_s: tuple[int, int] = (0, 0)) -> None:
        self.seed = seed.to_bytes(8, "big", signed=True)
        self.failure_rate = failure_rate
        self.latency_s = latency_s
        self.failing_ibans: set[str] = set()
        self.down_until = 0  # unix time: unavailable before it
        self.now = 0  # the simulation's clock, set by the simulator
        # instruction id -> (reference, amount, outcome once final)
        self.settled: dict[str, tuple[str, int]] = {}
        self.failed: dict[str, tuple[str, int]] = {}
        self.asked = 0

    def _draw(self, debit: DirectDebit, what: bytes) -> float:
        digest = crypto.sha256(self.seed + what + debit.reference.encode()
                               + debit.amount.to_bytes(8, "big"))
        return int.from_bytes(digest[:8], "big") / 2**64

    def _latency(self, debit: DirectDebit) -> int:
        lo, hi = self.latency_s
        return lo + int(self._draw(debit, b"latency") * (hi - lo + 1)) if hi > lo else lo

    def _decide(self, debit: DirectDebit) -> BankAnswer:
        if debit.iban in self.failing_ibans:
            answer = BankAnswer(Outcome.FAILED, "AM04 insufficient funds")
        elif self._draw(debit, b"fail") < self.failure_rate:
            answer = BankAnswer(Outcome.FAILED, "MS03 reason not specified")
        else:
            answer = BankAnswer(Outcome.SETTLED)
        book = self.settled if answer.outcome == Outcome.SETTLED else self.failed
        book[debit.instruction_id] = (debit.reference, debit.amount)
        return answer

    def submit_direct_debit(self, debit: DirectDebit, *, now: int) -> BankAnswer:
        if now < self.down_until:
            raise BankUnavailable("the simulated bank is down")
        self.asked += 1
        return self.status(debit, submitted=now, now=now)

    def status(self, debit: DirectDebit, *, submitted: int, now: int) -> BankAnswer:
        if now < self.down_until:
            raise BankUnavailable("the simulated bank is down")
        if now < submitted + self._latency(debit):
            return BankAnswer(Outcome.PENDING)
        return self._decide(debit)
