"""Day-end close: a SAM-signed batch of every unacknowledged entry, totals compared with
the host's, a mismatch reported, entries kept until acknowledged."""

from __future__ import annotations

from collections.abc import Callable

from tallypurse.core.hostapi import Totals
from tallypurse.terminal.engine import Terminal

from .conftest import Clock, Purse, reopen
from .fakehost import FakeHost


def day_of_sales(t: Terminal, new_purse: Callable[..., Purse]) -> None:
    a, b = new_purse(5_000), new_purse(100)
    t.purchase(a.reader, 1_000)
    t.purchase(a.reader, 250, tx_type="canteen")
    t.purchase(b.reader, 600, tx_type="canteen")  # split 100 + 500
    t.load(b.reader, 2_000)


def test_close_day_uploads_a_signed_batch_and_the_totals_agree(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost, clock: Clock
) -> None:
    day_of_sales(terminal, new_purse)
    report = terminal.close_day()
    assert report.delivered and not report.mismatch and report.entries == 4
    assert report.totals == {"debit": Totals(count=3, amount=1_350),
                             "load": Totals(count=1, amount=2_000)}
    assert report.host_totals == report.totals and report.accepted == 4
    assert terminal.journal.open_entries == 0
    assert host.chain_ok(terminal.terminal_id.hex())
    # acknowledged entries are pruned; the chain goes on from its anchor, across a restart
    directory = terminal.data_dir
    terminal.close()
    t2 = reopen(directory, host, clock)
    purse = new_purse(1_000)
    t2.purchase(purse.reader, 100)
    again = t2.close_day()
    assert again.entries == 1 and again.accepted == 1 and not again.mismatch
    assert host.chain_ok(t2.terminal_id.hex())
    assert sorted(s for _, s in host.cleared) == [1, 2, 3, 4, 5]
    t2.close()


def test_a_totals_mismatch_is_reported_not_hidden(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    day_of_sales(terminal, new_purse)
    host.skew_totals = True
    report = terminal.close_day()
    assert report.mismatch
    assert terminal.status()["last_close"]["mismatch"] is True


def test_without_the_host_the_batch_waits_and_the_entries_are_kept(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    day_of_sales(terminal, new_purse)
    host.faults = ["down"] * 10
    report = terminal.close_day()
    assert not report.delivered and "waiting" in report.message
    assert terminal.journal.open_entries == 4
    host.faults = ["lost"]  # taken, answer lost
    host.fault_on = {"upload_batch"}
    assert not terminal.close_day().delivered
    final = terminal.close_day()  # the same batch again: the host answers the same
    assert final.delivered and final.batch_id is None and final.accepted == 4
    assert terminal.journal.open_entries == 0
    assert len(host.batches) == 1 and terminal.status()["last_close"]["accepted"] == 4


def test_an_entry_the_host_refuses_is_reported_and_not_lost(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    day_of_sales(terminal, new_purse)
    entry = terminal.journal.entry(1)
    assert entry is not None
    host.cleared[(terminal.terminal_id.hex(), 1)] = entry.model_copy(update={"amount": 1})
    report = terminal.close_day()
    assert [r["seq"] for r in report.rejected] == [1]
    assert report.accepted == 3
    assert [r["seq"] for r in terminal.status()["rejected_entries"]] == [1]
