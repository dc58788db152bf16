"""A receipt the cashier never saw: the terminal lost power after the card committed a
load (or purchase) and before its receipt was handed over. The cashier's retry gets that
receipt, marked RECOVERED, instead of a second load; anything else on that card is refused
until it is printed; a delivered receipt blocks nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.card.card import Card
from tallypurse.cli.main import app
from tallypurse.core.messages import LoadAuthorisation
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.terminal import receipts
from tallypurse.terminal.engine import TapResult, Terminal
from tallypurse.terminal.errors import DeclineCode, Declined
from tallypurse.terminal.journal import CrashAt, SimulatedCrash
from tallypurse.terminal.outbox import Kind

from .conftest import Clock, Purse, make_terminal, reopen
from .fakehost import FakeHost

BALANCE = 500
LOAD = 1_000


def cashier(t: Terminal, act: Callable[[Terminal], TapResult]) -> TapResult:
    """What the CLI and the cashier screen do: the tap, the receipt printed, then marked."""
    result = act(t)
    assert result.receipt is not None
    receipts.text(result.receipt)  # "printed"
    t.receipt_delivered(result.receipt)
    return result


def load_of(purse: Purse, amount: int = LOAD) -> Callable[[Terminal], TapResult]:
    return lambda t: t.load(purse.reader, amount)


def load_entries(t: Terminal, purse: Purse) -> list[int]:
    return [e.seq for e in t.journal.entries(None)
            if e.kind == "load" and e.card_id == purse.card_id.hex()]


def host_loads(host: FakeHost, purse: Purse) -> int:
    return sum(LoadAuthorisation.parse(bytes.fromhex(resp.authorisation)).card_id
               == purse.card_id for _, resp in host.loads.values())


def writes_of_one_load(tmp_path: Path, host: FakeHost, clock: Clock,
                       new_purse: Callable[..., Purse]) -> list[str]:
    hook = CrashAt()
    t = make_terminal(tmp_path / "count", host, clock, write_hook=hook)
    purse = new_purse(BALANCE)
    start = hook.count
    cashier(t, load_of(purse))
    t.close()
    return hook.labels[start:]


def test_a_power_cut_at_every_write_between_credit_and_delivery_loads_the_card_once(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    labels = writes_of_one_load(tmp_path, host, clock, new_purse)
    # the attempt before CREDIT, its outcome after it, the load confirmation, the mark
    after_credit = labels.index("commit") + 1
    assert labels.count("commit") >= 4, labels
    cut_points = range(after_credit, len(labels))
    assert len(cut_points) >= 6, labels
    for n in cut_points:
        hook = CrashAt()
        directory = tmp_path / f"cut-{n}"
        # a terminal id of its own: load keys are the terminal id and the SAM's sequence
        t = make_terminal(directory, host, clock, write_hook=hook,
                          terminal_id=bytes.fromhex("5445524d0000a0") + bytes([n]))
        purse = new_purse(BALANCE)
        hook.n = hook.count + n
        with pytest.raises(SimulatedCrash):
            cashier(t, load_of(purse))
        t.close()  # the power cut
        assert purse.balance == BALANCE + LOAD, (n, labels[n])  # the card had loaded it

        t2 = reopen(directory, host, clock)
        retry = cashier(t2, load_of(purse))  # the cashier tries again: same card and amount
        assert retry.recovered and retry.receipt is not None, (n, labels[n])
        assert retry.receipt.recovered and retry.receipt.purse_amount == LOAD
        assert "RECOVERED" in receipts.text(retry.receipt)
        assert purse.balance == BALANCE + LOAD, (n, labels[n])  # loaded once
        assert len(load_entries(t2, purse)) == 1
        assert t2.undelivered() is None
        assert host_loads(host, purse) == 1  # the host authorised one load, not two
        t2.flush()
        assert t2.outbox.due(kinds=(Kind.CONFIRM_LOAD,), include_waiting=True) == []
        t2.journal.verify(all_signatures=True)
        # the receipt was handed over: the next load is a real one
        nxt = cashier(t2, load_of(purse))
        assert not nxt.recovered and purse.balance == BALANCE + 2 * LOAD
        assert len(load_entries(t2, purse)) == 2
        t2.close()


def test_a_power_cut_at_every_write_between_debit_and_delivery_charges_the_card_once(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    def pay(purse: Purse) -> Callable[[Terminal], TapResult]:
        return lambda t: t.purchase(purse.reader, 200, tx_type="canteen")

    hook = CrashAt()
    t = make_terminal(tmp_path / "count", host, clock, write_hook=hook)
    start = hook.count
    cashier(t, pay(new_purse(BALANCE)))
    t.close()
    labels = hook.labels[start:]
    after_debit = labels.index("commit") + 1
    assert labels[after_debit:].count("commit") == 2, labels  # the outcome, the mark
    for n in range(after_debit, len(labels)):
        hook = CrashAt()
        directory = tmp_path / f"cut-{n}"
        t = make_terminal(directory, host, clock, write_hook=hook)
        purse = new_purse(BALANCE)
        hook.n = hook.count + n
        with pytest.raises(SimulatedCrash):
            cashier(t, pay(purse))
        t.close()
        t2 = reopen(directory, host, clock)
        retry = cashier(t2, pay(purse))
        assert retry.recovered and retry.receipt is not None, (n, labels[n])
        assert purse.balance == BALANCE - 200 and purse.atc == 1, (n, labels[n])
        nxt = cashier(t2, pay(purse))
        assert not nxt.recovered and purse.balance == BALANCE - 400
        t2.close()


def test_a_different_amount_is_not_swallowed_but_refused_naming_the_lost_receipt(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    t = make_terminal(tmp_path / "t", host, clock)
    purse = new_purse(BALANCE)
    t.load(purse.reader, LOAD)  # went through; the terminal stops before the receipt is shown
    t.close()
    t2 = reopen(tmp_path / "t", host, clock)
    status = t2.status()["undelivered_receipt"]
    assert status is not None and status["kind"] == "load" and status["amount"] == LOAD
    acts: list[Callable[[], TapResult]] = [
        lambda: t2.load(purse.reader, 2 * LOAD),
        lambda: t2.purchase(purse.reader, LOAD, tx_type="canteen"),
    ]
    for act in acts:
        with pytest.raises(Declined) as exc:
            act()
        assert exc.value.reason == DeclineCode.RECEIPT_NOT_DELIVERED
        assert "load of 10.00 EUR" in exc.value.detail and "reprint" in exc.value.detail
        assert purse.balance == BALANCE + LOAD  # nothing was done
    copy = t2.last_receipt()
    assert copy is not None and copy.copy and copy.purse_amount == LOAD
    assert "COPY" in receipts.text(copy)
    assert t2.receipt_delivered(copy) and not t2.receipt_delivered(copy)
    assert t2.status()["undelivered_receipt"] is None
    bigger = t2.load(purse.reader, 2 * LOAD)
    assert not bigger.recovered and purse.balance == BALANCE + 3 * LOAD
    t2.close()


def test_another_card_is_served_and_the_lost_receipt_is_still_shown(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    t = make_terminal(tmp_path / "t", host, clock)
    first, other = new_purse(BALANCE), new_purse(BALANCE)
    t.purchase(first.reader, 200, tx_type="canteen")
    t.close()
    t2 = reopen(tmp_path / "t", host, clock)
    assert t2.undelivered() is not None
    paid = t2.purchase(other.reader, 200, tx_type="canteen")
    assert not paid.recovered and other.balance == BALANCE - 200
    assert paid.receipt is not None and t2.receipt_delivered(paid.receipt)
    # the terminal's last receipt is now the other card's; the lost one can be reprinted
    lost = t2.journal.entries(None)[0].seq
    copy = t2.last_receipt(lost)
    assert copy is not None and copy.card_id == first.card_id and copy.purse_amount == 200
    t2.close()


def test_a_purchase_retried_after_the_receipt_was_lost_is_not_charged_again(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    t = make_terminal(tmp_path / "t", host, clock)
    purse = new_purse(BALANCE)
    t.purchase(purse.reader, 200, tx_type="canteen")
    t.close()
    t2 = reopen(tmp_path / "t", host, clock)
    with pytest.raises(Declined, match="receipt not delivered"):  # another type: not the same
        t2.purchase(purse.reader, 200, tx_type="general")
    again = t2.purchase(purse.reader, 200, tx_type="canteen")
    assert again.recovered and purse.balance == BALANCE - 200 and purse.atc == 1
    assert again.receipt is not None and t2.receipt_delivered(again.receipt)
    nxt = t2.purchase(purse.reader, 200, tx_type="canteen")
    assert not nxt.recovered and purse.balance == BALANCE - 400
    t2.close()


def test_a_delivered_receipt_does_not_block_the_same_load_again(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(BALANCE)
    for i in (1, 2):
        result = cashier(terminal, load_of(purse))
        assert not result.recovered and purse.balance == BALANCE + i * LOAD
    assert terminal.undelivered() is None


def test_an_older_journal_is_migrated_and_its_receipts_count_as_delivered(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    t = make_terminal(tmp_path / "t", host, clock)
    purse = new_purse(BALANCE)
    t.load(purse.reader, LOAD)
    head = t.journal.head
    t.close()
    conn = sqlite3.connect(tmp_path / "t" / "journal.db")  # as schema 1 left it
    conn.execute("ALTER TABLE attempts DROP COLUMN receipt")
    conn.execute("ALTER TABLE attempts DROP COLUMN receipt_delivered")
    conn.execute("DELETE FROM schema_migrations WHERE version > 1")
    conn.commit()
    conn.close()
    t2 = reopen(tmp_path / "t", host, clock)
    assert t2.db.schema_version == 2 and t2.journal.head == head
    assert t2.journal.verify(all_signatures=True) == 1  # the chain is untouched
    assert t2.undelivered() is None
    again = t2.load(purse.reader, LOAD)  # a new load, not taken for the old one
    assert not again.recovered and purse.balance == BALANCE + 2 * LOAD
    t2.close()


# --- the command line --------------------------------------------------------------------------
runner = CliRunner()
ENV = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long test passphrase",
       "TALLYPURSE_SAM_PASSPHRASE": "sam passphrase"}


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


def test_the_command_line_hands_a_lost_load_receipt_over_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, card, data = tmp_path / "keys", tmp_path / "c.card", tmp_path / "terminal"
    for args in (
        ["keys", "init", "--keystore", str(keys)],
        ["card", "new", "--keystore", str(keys), "--serial", "00000000000000e1",
         "--out", str(card)],
        ["terminal", "enrol", "--data-dir", str(data), "--keystore", str(keys),
         "--terminal-id", "5445524d000000e1", "--merchant", "Cafe Test"],
    ):
        code, out = run(*args)
        assert code == 0, out
    load = ("terminal", "load", "--data-dir", str(data), "--card", str(card),
            "--amount", "20.00")

    def power_cut(*_a: object, **_k: object) -> str:
        raise RuntimeError("power cut before the receipt was printed")

    def balance() -> int:
        purse = PurseClient(ApduClient(Card.open(card)))
        purse.select()
        return purse.counters().balance

    with monkeypatch.context() as m:  # the card loads, the terminal dies before printing
        m.setattr(receipts, "text", power_cut)
        code, _ = run(*load)
        assert code != 0
    assert balance() == 2000  # the card has the load
    code, out = run("terminal", "status", "--data-dir", str(data))
    assert code == 0 and "RECEIPT NOT HANDED OVER: load of 20.00 EUR" in out, out
    code, out = run(*load)  # the retry
    assert code == 0, out
    assert "nothing new was charged" in out and "RECOVERED" in out and "20.00 EUR" in out
    assert balance() == 2000  # not loaded again
    code, out = run("terminal", "status", "--data-dir", str(data))
    assert "NOT HANDED OVER" not in out
    code, out = run("terminal", "reprint", "--data-dir", str(data))
    assert code == 0 and "COPY" in out and "20.00 EUR" in out, out
    code, out = run("terminal", "reprint", "--data-dir", str(data), "--seq", "99")
    assert code != 0 and "no receipt for journal entry 99" in out
    code, out = run(*load)  # a real second load
    assert code == 0 and "RECOVERED" not in out and balance() == 4000
    code, out = run("terminal", "journal", "--data-dir", str(data), "--json")
    entries = [e for e in json.loads(out)["entries"] if e["kind"] == "load"]
    assert [e["amount"] for e in entries] == [2000, 2000]
