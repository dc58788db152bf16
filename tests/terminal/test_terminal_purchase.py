"""Offline, split and online purchases, loads, cancels and write-backs at a terminal."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tallypurse.core.hostapi import AgentDebitRequest
from tallypurse.core.messages import SignedEvent
from tallypurse.core.protocol import DebtState, WriteBackAction
from tallypurse.lab import YEAR, Lab
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.errors import DeclineCode, Declined
from tallypurse.terminal.outbox import Kind
from tallypurse.terminal.receipts import escpos_bytes, text

from .conftest import Clock, Purse
from .fakehost import FakeHost


def test_an_offline_purchase_debits_the_purse_journals_it_and_prints_a_receipt(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(5_000)
    result = terminal.purchase(purse.reader, 1_250, tx_type="canteen")
    r = result.receipt
    assert r is not None and not result.recovered
    assert (r.kind, r.purse_amount, r.online_amount, r.balance_after) == (
        "purchase", 1_250, 0, 3_750)
    assert purse.balance == 3_750 and r.atc == purse.atc == 1
    entry = terminal.journal.entry(r.journal_seq)
    assert entry is not None and (entry.kind, entry.amount, entry.split) == ("debit", 1_250, 0)
    record = SignedEvent.parse(bytes.fromhex(entry.record))
    assert record.tac == r.tac and record.verify(purse.issued.public_key)
    assert terminal.journal.verify(all_signatures=True) == 1
    assert terminal.journal.counts()["attempts"]["committed"] == 1
    assert sum(terminal.outbox.depth().values()) == 0  # nothing owed to the host
    printed = text(r)
    assert "12.50 EUR" in printed and "37.50 EUR" in printed and "**** **** **** " in printed
    assert r.tac_code in printed and purse.card_id.hex().upper()[-4:] in printed
    raw = escpos_bytes(r)
    assert raw.startswith(b"\x1b") and b"12.50 EUR" in raw and raw.endswith(b"\x1dV\x00")


def test_a_split_purchase_takes_the_whole_purse_records_a_debt_and_queues_an_agent_debit(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(300)
    result = terminal.purchase(purse.reader, 1_000, tx_type="canteen")
    r = result.receipt
    assert r is not None
    assert (r.kind, r.purse_amount, r.online_amount, r.online_pending) == (
        "split purchase", 300, 700, True)
    assert purse.balance == 0
    assert purse.debts() == [(DebtState.PENDING, 1, 700)]
    assert "(pending)" in text(r)
    queued = terminal.outbox.due(kinds=(Kind.AGENT_DEBIT,))
    assert len(queued) == 1
    body = AgentDebitRequest.model_validate_json(queued[0].payload)
    assert (body.amount, body.atc, body.card_id) == (700, 1, purse.card_id.hex())
    terminal.flush()
    assert host.agent_effects[(purse.card_id.hex(), 1)] == 1
    assert terminal.outbox.depth()["agent_debit"] == 0


@pytest.mark.parametrize(
    ("tx_type", "code"),
    [("retail", DeclineCode.CREDIT_TYPE_NOT_ALLOWED)],
)
def test_a_short_purse_is_declined_for_a_type_not_allowed_on_credit(
    terminal: Terminal, new_purse: Callable[..., Purse], tx_type: str, code: DeclineCode
) -> None:
    purse = new_purse(300)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 1_000, tx_type=tx_type)
    assert exc.value.reason == code
    assert purse.balance == 300


def test_an_online_purchase_debits_the_online_account_and_leaves_the_purse(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(300, online_balance=50_000)
    result = terminal.purchase(purse.reader, 20_000, tx_type="retail")
    r = result.receipt
    assert r is not None and r.kind == "online purchase" and r.online_amount == 20_000
    assert purse.balance == 300
    assert host.accounts[purse.card_id].online_balance == 30_000


def test_a_load_credits_the_purse_with_a_host_authorisation(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(0)
    result = terminal.load(purse.reader, 2_000)
    assert result.receipt is not None and result.receipt.balance_after == 2_000
    assert purse.balance == 2_000
    assert len(host.load_confirms) == 1


def test_cancel_last_purchase_refunds_the_purse(
    terminal: Terminal, new_purse: Callable[..., Purse], clock: Clock
) -> None:
    purse = new_purse(5_000)
    terminal.purchase(purse.reader, 1_000)
    clock.advance(30)
    result = terminal.cancel_last(purse.reader)
    assert result.receipt is not None and result.receipt.kind == "cancel"
    assert purse.balance == 5_000


# --- split purchase rules ---------------------------------------------------------------------
def test_a_short_purse_without_a_credit_record_is_declined_as_no_online_account(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(300, credit=False)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 1_000, tx_type="canteen")
    assert exc.value.reason == DeclineCode.NO_ONLINE_ACCOUNT


def test_a_split_above_the_per_tap_overdraft_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(300)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 300 + 2_001, tx_type="canteen")
    assert exc.value.reason == DeclineCode.OVERDRAFT_LIMIT
    terminal.purchase(purse.reader, 300 + 2_000, tx_type="canteen")  # exactly the limit


def test_splits_stop_at_the_maximum_outstanding_debt(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(0)
    terminal.purchase(purse.reader, 2_000, tx_type="canteen")
    terminal.purchase(purse.reader, 2_000, tx_type="transit")
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 1_001, tx_type="canteen")
    assert exc.value.reason == DeclineCode.MAX_OUTSTANDING
    assert len(purse.debts()) == 2


def test_splits_stop_when_no_debt_slot_is_free(
    terminal: Terminal, lab: Lab, host: FakeHost, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(0)
    lab.new_credit_record(purse.card, lab.credit_record(purse.card_id, version=2, max_slots=1))
    terminal.purchase(purse.reader, 100, tx_type="canteen")
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 100, tx_type="canteen")
    assert exc.value.reason == DeclineCode.NO_FREE_DEBT_SLOT


def test_a_credit_record_that_does_not_verify_with_the_host_list_key_is_refused(
    terminal: Terminal, lab: Lab, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(0)
    forged = lab.credit_record(purse.card_id, version=2, per_tap_overdraft=90_000)
    lab.write_back(purse.card, WriteBackAction.CREDIT_RECORD, forged.to_bytes() + bytes(64))
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 100, tx_type="canteen")
    assert exc.value.reason == DeclineCode.CREDIT_RECORD_INVALID


def test_a_split_needs_lists_younger_than_the_maximum_age(
    terminal: Terminal, new_purse: Callable[..., Purse], clock: Clock
) -> None:
    purse = new_purse(100)
    clock.advance(24 * 3600 + 1)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 500, tx_type="canteen")
    assert exc.value.reason == DeclineCode.LISTS_TOO_OLD
    assert terminal.purchase(purse.reader, 50, tx_type="canteen").receipt is not None  # offline
    terminal.sync()
    assert terminal.purchase(purse.reader, 500, tx_type="canteen").receipt is not None


def test_an_expired_credit_record_allows_no_split(
    terminal: Terminal, new_purse: Callable[..., Purse], clock: Clock
) -> None:
    purse = new_purse(100)
    clock.advance(YEAR + 3600)
    terminal.sync()
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 500, tx_type="canteen")
    assert exc.value.reason == DeclineCode.CREDIT_RECORD_EXPIRED


# --- write-back ----------------------------------------------------------------------------------
def test_a_settled_debt_is_written_back_at_the_next_tap_and_reported_to_the_host(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(0)
    terminal.purchase(purse.reader, 700, tx_type="canteen")
    action = host.settle(purse.card_id, 1, 700)
    terminal.sync()
    result = terminal.purchase(purse.reader, 300, tx_type="canteen")
    assert result.writebacks == [action.action_id]
    assert purse.debts() == [(DebtState.PENDING, 2, 300)]  # the first debt is gone
    assert host.writeback_reports == {}  # an offline tap talks to no host
    terminal.sync()  # the report goes out; the host withdraws the done action
    assert action.action_id in host.writeback_reports
    assert terminal.lists.actions_for(purse.card_id) == []
    entry = [e for e in terminal.journal.entries(None) if e.kind == "writeback"]
    assert [e.reference for e in entry] == [action.action_id]


def test_a_failed_debt_blocks_splits_until_a_load_repays_it(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(0)
    terminal.purchase(purse.reader, 700, tx_type="canteen")
    host.fail(purse.card_id, 1, 700)
    terminal.sync()
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 100, tx_type="canteen")
    assert exc.value.reason == DeclineCode.FAILED_DEBT_OUTSTANDING
    assert purse.debts() == [(DebtState.FAILED, 1, 700)]
    loaded = terminal.load(purse.reader, 1_000)
    assert loaded.receipt is not None and loaded.receipt.balance_after == 300
    assert purse.debts() == []


def test_a_write_back_is_applied_once_even_when_the_card_comes_back(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(1_000)
    record = host.lab.credit_record(purse.card_id, version=5, per_tap_overdraft=3_000)
    from tallypurse.host.tsm.personalise import signed_credit_record

    host.add_action(purse.card_id, "credit_record", signed_credit_record(host.ks, record))
    host.faults = ["down"]
    host.fault_on = {"report_writeback"}
    terminal.sync()
    first = terminal.purchase(purse.reader, 100)
    second = terminal.purchase(purse.reader, 100)
    assert len(first.writebacks) == 1 and second.writebacks == []
    assert purse.client().credit_record().record.version == 5
    assert terminal.flush(force=True).retry == 1  # the host is down: kept for later
    terminal.flush(force=True)
    assert len(host.writeback_reports) == 1


# --- online --------------------------------------------------------------------------------------
def test_an_online_purchase_declined_by_the_host_charges_nothing(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(300, online_balance=100)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 20_000)
    assert exc.value.reason == DeclineCode.HOST_DECLINED
    assert purse.balance == 300 and host.accounts[purse.card_id].online_balance == 100
    assert terminal.journal.entries(None) == []


def test_an_online_answer_lost_leads_to_a_reversal_that_the_outbox_delivers(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(300, online_balance=50_000)
    host.faults = ["lost", "down"]
    host.fault_on = {"online_authorise", "reverse"}
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 20_000, online=True)
    assert exc.value.reason == DeclineCode.ONLINE_TIMEOUT_REVERSED
    assert host.accounts[purse.card_id].online_balance == 30_000  # taken, not yet given back
    assert terminal.outbox.depth()["reverse"] == 1
    terminal.flush(force=True)
    assert host.accounts[purse.card_id].online_balance == 50_000
    assert terminal.outbox.depth()["reverse"] == 0
    kinds = [e.kind for e in terminal.journal.entries(None)]
    assert kinds == ["reversal"]


def test_the_cashier_can_choose_online_for_a_small_amount(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(300, online_balance=1_000)
    result = terminal.purchase(purse.reader, 250, online=True)
    assert result.receipt is not None and result.receipt.kind == "online purchase"
    assert purse.balance == 300 and host.accounts[purse.card_id].online_balance == 750


# --- load and cancel -----------------------------------------------------------------------------
def test_a_load_above_the_cap_is_declined_before_asking_the_host(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(99_000)
    with pytest.raises(Declined) as exc:
        terminal.load(purse.reader, 2_000)
    assert exc.value.reason == DeclineCode.CAP_EXCEEDED
    assert "load_authorisation" not in host.calls


def test_a_load_without_the_host_is_declined_and_changes_nothing(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(0)
    host.faults = ["down"]
    with pytest.raises(Declined) as exc:
        terminal.load(purse.reader, 2_000)
    assert exc.value.reason == DeclineCode.HOST_UNAVAILABLE
    assert purse.balance == 0 and terminal.journal.counts()["attempts"]["pending"] == 0


def test_cancel_after_the_window_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], clock: Clock
) -> None:
    purse = new_purse(5_000)
    terminal.purchase(purse.reader, 1_000)
    clock.advance(121)
    with pytest.raises(Declined) as exc:
        terminal.cancel_last(purse.reader)
    assert exc.value.reason == DeclineCode.CANCEL_WINDOW_PASSED


def test_cancel_with_nothing_of_this_terminal_to_cancel_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], clock: Clock
) -> None:
    purse = new_purse(5_000)
    with pytest.raises(Declined) as exc:
        terminal.cancel_last(purse.reader)
    assert exc.value.reason == DeclineCode.NOTHING_TO_CANCEL
    terminal.purchase(purse.reader, 1_000)
    terminal.cancel_last(purse.reader)
    with pytest.raises(Declined) as again:
        terminal.cancel_last(purse.reader)  # already cancelled
    assert again.value.reason == DeclineCode.NOTHING_TO_CANCEL


def test_cancelling_a_split_purchase_frees_the_debt_and_withdraws_the_unsent_agent_debit(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(300)
    terminal.purchase(purse.reader, 1_000, tx_type="canteen")
    result = terminal.cancel_last(purse.reader)
    assert result.receipt is not None and result.receipt.online_amount == 700
    assert purse.balance == 300 and purse.debts() == []
    assert terminal.outbox.depth()["agent_debit"] == 0
    terminal.flush(force=True)
    assert not host.agent_effects
