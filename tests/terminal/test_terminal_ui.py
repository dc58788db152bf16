"""The cashier's screen (`tallypurse terminal ui`), driven key by key through Textual's
headless pilot at 80x24, against real in-process cards and an enrolled terminal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from tallypurse.core.protocol import Ins
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.reader import InProcessReader, Reader
from tallypurse.terminal.ui import (
    APPROVED,
    DECLINED,
    INTERRUPTED,
    REFUSED,
    CashierApp,
    parse_amount,
)

from .conftest import Clock, Purse, make_terminal, reopen
from .fakehost import FakeHost
from .test_terminal_tearing import Tearing

SIZE = (80, 24)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Taps:
    """The reader factory: counts the taps, hands out the next reader."""

    def __init__(self, *readers: Reader) -> None:
        self.readers = list(readers)
        self.count = 0

    def __call__(self) -> Reader:
        self.count += 1
        return self.readers.pop(0) if len(self.readers) > 1 else self.readers[0]


async def done(app: CashierApp, pilot: Pilot[None]) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause()


async def key_in(app: CashierApp, pilot: Pilot[None], amount: str, *keys: str) -> None:
    await pilot.press("escape", *amount, *keys)
    await done(app, pilot)


def shown(app: CashierApp, widget: str) -> str:
    return str(app.query_one(f"#{widget}", Static).content)


def journal_state(t: Terminal) -> tuple[Any, ...]:
    s = t.status()
    return (s["journal"]["head_seq"], s["journal"]["attempts"], s["outbox"]["depth"],
            len(s["open_attempts"]))


@pytest.mark.anyio
async def test_a_purchase_keyed_and_tapped_debits_the_card_journals_it_and_shows_the_receipt(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(5_000)
    app = CashierApp(terminal, Taps(purse.reader), reader_label="card1.card")
    async with app.run_test(size=SIZE) as pilot:
        assert app.tx_type == "general" and app.mode == "auto"
        await pilot.press("f7")  # general -> canteen
        assert app.tx_type == "canteen"
        await key_in(app, pilot, "12.50", "f2")
        assert app.last is not None and app.last.kind == APPROVED
        assert shown(app, "headline").strip() == "APPROVED 12.50 EUR"
        receipt = shown(app, "receipt")
        assert "PURCHASE (canteen)" in receipt and "balance after" in receipt
        assert "37.50 EUR" in receipt and "Canteen One" in receipt
        assert app.amount_text == ""  # ready for the next sale
        assert "head 1" in shown(app, "status")
    assert purse.balance == 3_750
    entries = terminal.journal.entries(None)
    assert [(e.kind, e.amount, e.tx_type) for e in entries] == [("debit", 1_250, "canteen")]


@pytest.mark.anyio
async def test_a_split_purchase_shows_both_parts_and_fits_an_80x24_screen(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(500)
    app = CashierApp(terminal, Taps(purse.reader), tx_type="canteen")
    async with app.run_test(size=SIZE) as pilot:
        await key_in(app, pilot, "9.00", "enter")  # Enter in the amount field pays too
        assert app.last is not None and app.last.kind == APPROVED, app.last
        assert shown(app, "headline").strip() == "APPROVED 9.00 EUR"
        assert "split: purse 5.00 EUR + online account 4.00 EUR (pending)" in shown(
            app, "details")
        receipt = shown(app, "receipt")
        assert "SPLIT PURCHASE (canteen)" in receipt
        assert "online account          4.00 EUR" in receipt and "(pending)" in receipt
        assert "purse                   5.00 EUR" in receipt
        box = app.query_one("#outcome-box")
        assert box.max_scroll_y == 0  # the whole receipt is on screen
        screen = app.export_screenshot().replace("&#160;", " ")
        for key in ("f2 Pay", "f3 Load", "f4 Cancel", "f5 Sync", "f6 Tap", "f7 Type",
                    "f8 Mode", "f9 Close", "^q Quit"):  # every key shows in the footer
            assert key.split()[1] in screen and key.split()[0] in screen, key
        assert "outbox    1 waiting" in shown(app, "status")  # the agent debit
    assert purse.balance == 0
    assert [(ref > 0, amount) for _state, ref, amount in purse.debts()] == [(True, 400)]


@pytest.mark.anyio
async def test_a_decline_shows_its_reason_and_changes_nothing(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(500)
    before = journal_state(terminal)
    app = CashierApp(terminal, Taps(purse.reader), tx_type="general")  # not on credit
    async with app.run_test(size=SIZE) as pilot:
        await key_in(app, pilot, "9.00", "f2")
        assert app.last is not None and app.last.kind == DECLINED
        assert shown(app, "headline").strip() == "DECLINED D41 credit type not allowed"
        assert "nothing was charged" in shown(app, "details")
        assert app.amount_text == "9.00"  # kept, to try another way
    assert purse.balance == 500 and purse.debts() == []
    assert journal_state(terminal) == before


@pytest.mark.anyio
@pytest.mark.parametrize("amount", ["", "-5.00", "0", "0.00", "1.234", "12,50", "abc",
                                    "42949672.96"])
async def test_bad_amounts_are_refused_in_the_ui_before_any_tap(
    terminal: Terminal, new_purse: Callable[..., Purse], amount: str
) -> None:
    purse = new_purse(5_000)
    taps = Taps(purse.reader)
    before = journal_state(terminal)
    app = CashierApp(terminal, taps)
    async with app.run_test(size=SIZE) as pilot:
        for key in ("f2", "f3"):  # pay and load alike
            await key_in(app, pilot, amount, key)
            assert app.last is not None and app.last.kind == REFUSED, app.last
            assert shown(app, "headline").strip() == "NOT ACCEPTED"
            assert "nothing was done" in shown(app, "details")
    assert taps.count == 0
    assert purse.balance == 5_000
    assert journal_state(terminal) == before


def test_amounts_are_parsed_exactly_in_minor_units_of_the_terminal_currency() -> None:
    assert parse_amount("12.50", "EUR") == 1_250
    assert parse_amount(" 7 ", "EUR") == 700
    assert parse_amount("42949672.95", "EUR") == 2**32 - 1
    assert parse_amount("1250", "JPY") == 1_250
    with pytest.raises(Exception, match="decimal places"):
        parse_amount("12.5", "JPY")


@pytest.mark.anyio
async def test_an_interrupted_tap_asks_for_the_card_again_and_shows_the_recovered_receipt(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(5_000)
    torn = InProcessReader(Tearing(purse.card, Ins.DEBIT, lose=True))
    taps = Taps(torn, purse.reader)
    app = CashierApp(terminal, taps, tx_type="canteen")
    async with app.run_test(size=SIZE) as pilot:
        await key_in(app, pilot, "3.00", "f2")
        assert app.last is not None and app.last.kind == INTERRUPTED
        assert shown(app, "headline").strip() == "INTERRUPTED - TAP THE SAME CARD AGAIN"
        assert "no receipt until then" in shown(app, "details")
        assert shown(app, "receipt") == ""
        assert app.amount_text == "3.00"  # kept for the next tap
        assert "attempts  1 open - TAP THAT CARD" in shown(app, "status")
        await pilot.press("f2")
        await done(app, pilot)
        assert app.last is not None and app.last.kind == APPROVED
        assert shown(app, "headline").strip() == "APPROVED 3.00 EUR (RECOVERED)"
        assert "nothing new was charged" in shown(app, "details")
        assert "RECOVERED: done before an" in shown(app, "receipt")
        assert "attempts  0 open" in shown(app, "status")
    assert taps.count == 2
    assert purse.balance == 4_700  # charged once
    assert [e.kind for e in terminal.journal.entries(None)] == ["debit"]


@pytest.mark.anyio
async def test_cash_load_cancel_and_online_mode_go_through_the_engine(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(1_000)
    app = CashierApp(terminal, Taps(purse.reader), tx_type="canteen")
    async with app.run_test(size=SIZE) as pilot:
        await key_in(app, pilot, "20.00", "f3")
        assert app.last is not None and app.last.kind == APPROVED, app.last
        assert shown(app, "headline").strip() == "LOADED 20.00 EUR"
        assert purse.balance == 3_000
        await key_in(app, pilot, "4.00", "f2")
        assert purse.balance == 2_600
        await key_in(app, pilot, "", "f4")
        assert shown(app, "headline").strip() == "CANCELLED: 4.00 EUR back on the card"
        assert purse.balance == 3_000
        await pilot.press("f8")  # auto -> offline
        assert app.mode == "offline"
        await pilot.press("f8")  # offline -> online
        assert app.mode == "online"
        await key_in(app, pilot, "2.00", "f2")
        assert shown(app, "headline").strip() == "APPROVED 2.00 EUR"
        assert "ONLINE PURCHASE" in shown(app, "receipt")
        assert "host      online" in shown(app, "status")
    assert purse.balance == 3_000  # the online account paid
    assert [e.kind for e in terminal.journal.entries(None)] == ["load", "debit", "cancel",
                                                               "online"]


def test_an_unknown_transaction_type_or_mode_is_refused(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(100)
    with pytest.raises(Exception, match="unknown transaction type 'coffee'"):
        CashierApp(terminal, Taps(purse.reader), tx_type="coffee")
    with pytest.raises(Exception, match="unknown mode"):
        CashierApp(terminal, Taps(purse.reader), mode="sometimes")


@pytest.mark.anyio
async def test_quit_waits_for_a_running_tap(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    import threading

    purse = new_purse(5_000)
    gate = threading.Event()

    class Slow:
        def transmit(self, apdu: bytes) -> bytes:
            gate.wait(30)
            return purse.card.transmit(apdu)

    app = CashierApp(terminal, Taps(InProcessReader(Slow())))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"1.00", "f2")
        await pilot.pause()
        assert app.busy
        await pilot.press("ctrl+q")  # refused while the card is in the middle of a tap
        await pilot.press("f3")  # so is a second action
        await pilot.pause()
        assert app.is_running and app.busy
        gate.set()
        await done(app, pilot)
        assert app.last is not None and app.last.headline == "APPROVED 1.00 EUR"
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert not app.is_running
    assert purse.balance == 4_900


@pytest.mark.anyio
async def test_a_load_whose_receipt_was_never_shown_is_shown_once_and_f10_prints_a_copy(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    first = make_terminal(tmp_path / "t", host, clock)
    purse = new_purse(1_000)
    first.load(purse.reader, 500)  # the card loads; the till loses power before the screen
    first.close()
    terminal = reopen(tmp_path / "t", host, clock)
    app = CashierApp(terminal, Taps(purse.reader))
    async with app.run_test(size=SIZE) as pilot:
        assert "NOT GIVEN - F10" in shown(app, "status")
        await key_in(app, pilot, "6.00", "f3")  # another amount: refused, naming the lost one
        assert app.last is not None and app.last.kind == DECLINED
        assert "D80" in shown(app, "headline") and "load of 5.00 EUR" in shown(app, "details")
        await key_in(app, pilot, "5.00", "f3")  # the cashier's retry
        assert shown(app, "headline").strip() == "LOADED 5.00 EUR (RECOVERED)"
        assert terminal.undelivered() is None  # shown: handed over
        assert "NOT GIVEN" not in shown(app, "status")
        await pilot.press("f10")
        await done(app, pilot)
        assert "COPY: printed again" in shown(app, "receipt")
        await key_in(app, pilot, "5.00", "f3")  # a new load
        assert shown(app, "headline").strip() == "LOADED 5.00 EUR"
    assert purse.balance == 2_000  # loaded twice, for two loads asked
    terminal.close()
