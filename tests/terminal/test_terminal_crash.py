"""A terminal that loses power at any journal write loses nothing the card committed:
after a restart and the card's next tap, card and journal agree on exactly one outcome."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tallypurse.core.hostapi import AgentDebitRequest
from tallypurse.core.messages import SignedEvent
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.journal import CrashAt, SimulatedCrash
from tallypurse.terminal.outbox import Kind

from .conftest import Clock, Purse, make_terminal, reopen
from .fakehost import FakeHost

BALANCE = 500


def agree_on_one_outcome(t: Terminal, purse: Purse, amount: int) -> str:
    """Card and journal tell the same story; returns 'charged' or 'not charged'."""
    assert t.journal.open_attempts_for() == []
    t.journal.verify(all_signatures=True)
    debits = [e for e in t.journal.entries(None) if e.kind == "debit"]
    agent = t.outbox.due(kinds=(Kind.AGENT_DEBIT,), include_waiting=True)
    if purse.atc == 0:
        assert purse.balance == BALANCE and purse.debts() == []
        assert debits == [] and agent == []
        return "not charged"
    assert purse.atc == 1 and len(debits) == 1
    record = SignedEvent.parse(bytes.fromhex(debits[0].record))
    assert record == purse.client().read_record(1)  # the very record the card logged
    purse_part = min(amount, BALANCE)
    assert (record.event.amount, record.event.split) == (purse_part, amount - purse_part)
    assert purse.balance == BALANCE - purse_part
    if amount > BALANCE:
        assert len(agent) == 1
        body = AgentDebitRequest.model_validate_json(agent[0].payload)
        assert (body.atc, body.amount) == (1, amount - BALANCE)
    else:
        assert agent == []
    return "charged"


def writes_of_one_purchase(tmp_path: Path, host: FakeHost, clock: Clock,
                           new_purse: Callable[..., Purse], amount: int) -> list[str]:
    hook = CrashAt()
    t = make_terminal(tmp_path / "count", host, clock, write_hook=hook)
    purse = new_purse(BALANCE)
    start = hook.count
    t.purchase(purse.reader, amount, tx_type="canteen")
    t.close()
    return hook.labels[start:]


@pytest.mark.parametrize(("amount", "kind"), [(200, "purchase"), (900, "split purchase")])
def test_a_crash_at_every_journal_write_of_a_purchase_leaves_exactly_one_outcome(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse],
    amount: int, kind: str,
) -> None:
    labels = writes_of_one_purchase(tmp_path, host, clock, new_purse, amount)
    # two transactions: the attempt before DEBIT, the outcome after it
    assert labels.count("commit") == 2, labels
    outcomes = []
    for n, label in enumerate(labels):
        hook = CrashAt()
        directory = tmp_path / f"crash-{n}"
        t = make_terminal(directory, host, clock, write_hook=hook)
        purse = new_purse(BALANCE)
        hook.n = hook.count + n
        with pytest.raises(SimulatedCrash):
            t.purchase(purse.reader, amount, tx_type="canteen")
        t.close()  # the power cut: the open transaction is never committed

        t2 = reopen(directory, host, clock)
        uncertain = [a.id for a in t2.journal.open_attempts_for()]
        resolved = t2.resolve(purse.reader)
        assert sorted(r.attempt for r in resolved.resolutions) == uncertain
        outcome = agree_on_one_outcome(t2, purse, amount)
        outcomes.append((n, label, outcome))
        if outcome == "charged" and uncertain:
            rec = resolved.resolutions[0].receipt
            assert rec is not None and rec.kind == kind and rec.recovered
        t2.close()
    # a crash before the first commit charges nothing; after DEBIT, the charge is kept
    assert outcomes[0][2] == "not charged" and outcomes[-1][2] == "charged", outcomes


def test_after_a_crash_the_next_tap_completes_the_interrupted_sale_instead_of_charging_again(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    labels = writes_of_one_purchase(tmp_path, host, clock, new_purse, 200)
    after_debit = labels.index("commit") + 1  # the first write after DEBIT
    hook = CrashAt()
    t = make_terminal(tmp_path / "t", host, clock, write_hook=hook)
    purse = new_purse(BALANCE)
    hook.n = hook.count + after_debit
    with pytest.raises(SimulatedCrash):
        t.purchase(purse.reader, 200, tx_type="canteen")
    t.close()
    t2 = reopen(tmp_path / "t", host, clock)
    again = t2.purchase(purse.reader, 200, tx_type="canteen")  # the cashier retries
    assert again.recovered and again.receipt is not None and again.receipt.purse_amount == 200
    assert purse.balance == BALANCE - 200 and purse.atc == 1
    assert agree_on_one_outcome(t2, purse, 200) == "charged"
    # the next purchase is a new sale
    nxt = t2.purchase(purse.reader, 100, tx_type="canteen")
    assert not nxt.recovered and purse.balance == BALANCE - 300
    t2.close()


def test_a_journal_that_refuses_the_write_after_debit_keeps_the_payment_to_resolve(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    import sqlite3

    from tallypurse.terminal.errors import TapInterrupted

    refuse = {"at": -1, "count": 0}

    def hook(label: str) -> None:
        refuse["count"] += 1
        if refuse["count"] == refuse["at"]:
            raise sqlite3.OperationalError("database or disk is full")

    t = make_terminal(tmp_path / "t", host, clock, write_hook=hook)
    purse = new_purse(BALANCE)
    refuse["at"] = refuse["count"] + 3  # the first write after DEBIT
    with pytest.raises(TapInterrupted, match="disk is full"):
        t.purchase(purse.reader, 200, tx_type="canteen")
    assert purse.balance == BALANCE - 200
    result = t.purchase(purse.reader, 200, tx_type="canteen")  # the journal works again
    assert result.recovered and result.receipt is not None
    assert agree_on_one_outcome(t, purse, 200) == "charged"
    t.close()
