"""Store-and-forward: every agent debit takes effect once at the host, whatever the
network does to requests and answers (lost, duplicated, reordered), across restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tallypurse.core.hostapi import AgentDebitRequest, ReversalRequest
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.errors import IdempotencyConflict
from tallypurse.terminal.outbox import Kind, Outbox

from .conftest import Clock, Purse, reopen
from .fakehost import FakeHost


def split_purchases(t: Terminal, new_purse: Callable[..., Purse], n: int) -> list[Purse]:
    purses = []
    for _ in range(n):
        purse = new_purse(100)
        t.purchase(purse.reader, 600, tx_type="canteen")
        purses.append(purse)
    return purses


def test_lost_duplicated_and_reordered_answers_take_each_agent_debit_once(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost, clock: Clock
) -> None:
    purses = split_purchases(terminal, new_purse, 6)
    host.fault_on = {"agent_debit"}
    host.faults = ["lost", "dup", "down", "lost", "dup", "ok", "lost", "lost", "dup"]
    order: list[str] = []
    for _ in range(40):
        if terminal.outbox.depth()["agent_debit"] == 0:
            break
        report = terminal.flush()  # only what is due: entries overtake ones backing off
        order.extend(str(i) for i in report.responses)
        clock.advance(1)
    assert terminal.outbox.depth()["agent_debit"] == 0
    for p in purses:
        assert host.agent_effects[(p.card_id.hex(), 1)] == 1
    assert len(host.agent_debits) == 6
    assert host.calls.count("agent_debit") > 6  # resent after every lost answer
    acked = [int(i) for i in order]
    assert acked != sorted(acked), "a retried entry was overtaken by later ones"
    # an acknowledged entry is never sent again
    calls = host.calls.count("agent_debit")
    terminal.flush(force=True)
    assert host.calls.count("agent_debit") == calls


def test_an_answer_lost_before_a_restart_is_resent_after_it_and_taken_once(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost, clock: Clock
) -> None:
    [purse] = split_purchases(terminal, new_purse, 1)
    host.faults = ["lost"]
    host.fault_on = {"agent_debit"}
    assert terminal.flush().retry == 1
    assert host.agent_effects[(purse.card_id.hex(), 1)] == 1  # the host has it already
    directory = terminal.data_dir
    terminal.close()
    t2 = reopen(directory, host, clock)
    assert t2.outbox.depth()["agent_debit"] == 1
    clock.advance(3600)
    assert t2.flush().acked == 1
    assert host.agent_effects[(purse.card_id.hex(), 1)] == 1
    [item] = [v for v in host.agent_debits.values()]
    assert item[1].status == "accepted"
    t2.close()


def test_days_offline_then_everything_is_delivered(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost, clock: Clock
) -> None:
    split_purchases(terminal, new_purse, 3)
    host.faults = ["down"] * 30
    for _ in range(30):
        terminal.flush(force=True)
        clock.advance(6 * 3600)
    host.faults = []
    assert terminal.flush(force=True).acked == 3
    assert terminal.outbox.depth()["agent_debit"] == 0


def test_a_definitive_refusal_is_surfaced_and_not_retried(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    [purse] = split_purchases(terminal, new_purse, 1)
    del host.accounts[purse.card_id]  # the host knows no online account for it
    report = terminal.flush()
    assert report.rejected == 1
    status = terminal.status()
    [rejected] = status["outbox"]["rejected"]
    assert rejected["kind"] == "agent_debit" and rejected["problem"]["code"] == 4041
    calls = host.calls.count("agent_debit")
    terminal.flush(force=True)
    assert host.calls.count("agent_debit") == calls
    assert status["outbox"]["depth"] == 0


def test_an_idempotency_key_is_bound_to_its_payload(terminal: Terminal) -> None:
    body = ReversalRequest(idempotency_key="on-test-0001", reason="timeout")
    other = ReversalRequest(idempotency_key="on-test-0001", reason="cashier")
    with terminal.db.write() as tx:
        first = terminal.outbox.enqueue(tx, Kind.REVERSAL, body.idempotency_key, body)
        assert terminal.outbox.enqueue(tx, Kind.REVERSAL, body.idempotency_key, body) == first
    with pytest.raises(IdempotencyConflict), terminal.db.write() as tx:
        terminal.outbox.enqueue(tx, Kind.REVERSAL, body.idempotency_key, other)
    assert terminal.outbox.depth()["reverse"] == 1


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap(tmp_path: Path) -> None:
    from tallypurse.core.hostapi import HostUnavailable
    from tallypurse.terminal.journal import Database

    now = [1000.0]
    jitters = iter([0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    box = Outbox(Database(tmp_path / "o.db"), clock=lambda: now[0],
                 jitter=lambda: next(jitters), base_delay=2.0, max_delay=60.0)
    body = AgentDebitRequest(idempotency_key="ad-x-0001", terminal_id="00" * 8,
                             card_id="11" * 8, atc=1, amount=5, currency="EUR",
                             tx_type="canteen", record="")
    with box.db.write() as tx:
        box.enqueue(tx, Kind.AGENT_DEBIT, body.idempotency_key, body)

    def down(_item: object) -> AgentDebitRequest:
        raise HostUnavailable("down")

    delays = []
    for _ in range(7):
        box.flush(down, force=True)
        delays.append(box.next_attempt() - now[0])  # type: ignore[operator]
    # 2*[0.5..1) jitter factor: 1.0, 4*1.0=4.0, 8*0.75=6.0, then 8, 16, 32, capped 60*0.5
    assert delays == [1.0, 4.0, 6.0, 8.0, 16.0, 30.0, 30.0]
    box.db.close()
