"""The cashier's screen against a real host: an embedded host service on loopback HTTP,
a terminal enrolled with it, a card file issued by it and tapped as `tallypurse terminal
ui --card FILE` taps it. Load, purchase, split, sync and close the day from the
keyboard; then the link goes down and the screen says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from tallypurse.cli.terminal import _reader_factory
from tallypurse.system import EmbeddedHost, enrol_till, issue_card
from tallypurse.terminal.ui import APPROVED, ERROR, REFUSED, CashierApp


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def shown(app: CashierApp, widget: str) -> str:
    return str(app.query_one(f"#{widget}", Static).content)


async def key_in(app: CashierApp, pilot: Pilot[None], amount: str, *keys: str) -> None:
    await pilot.press("escape", *amount, *keys)
    await app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.anyio
async def test_the_cashier_loads_sells_splits_syncs_and_closes_the_day_against_the_host(
    tmp_path: Path,
) -> None:
    with EmbeddedHost(tmp_path / "hostdata") as eh:
        reg = eh.host.registry
        canteen = reg.create_merchant("Campus Canteen", iban="DE89370400440532013000",
                                      bic="COBADEFFXXX", merchant_id="canteen")
        till = enrol_till(eh, tmp_path / "till", name="Campus Canteen", merchant_id=canteen,
                          terminal_id=bytes.fromhex("00000000000000c1"))
        alice = reg.create_cardholder("Alice", "EUR")
        reg.fund_online_account(alice, 5_000, "fund-alice")
        card_file = tmp_path / "alice.card"
        issue_card(eh, bytes.fromhex("00000000000000a1"), cardholder_id=alice, path=card_file)
        factory, label = _reader_factory(card_file, False, None)
        app = CashierApp(till.terminal, factory, tx_type="canteen", reader_label=label)
        try:
            async with app.run_test(size=(80, 24)) as pilot:
                assert "host      not contacted yet" in shown(app, "status")
                await key_in(app, pilot, "20.00", "f3")
                assert shown(app, "headline").strip() == "LOADED 20.00 EUR", app.last
                await key_in(app, pilot, "12.50", "f2")
                assert "balance after           7.50 EUR" in shown(app, "receipt")
                await key_in(app, pilot, "12.00", "f2")
                assert "online account          4.50 EUR" in shown(app, "receipt")
                assert "SPLIT PURCHASE" in shown(app, "receipt")

                await pilot.press("f5")
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert app.last is not None and app.last.kind == APPROVED, app.last
                assert shown(app, "headline").strip() == "SYNCED"
                assert "outbox    0 waiting" in shown(app, "status")  # the agent debit went
                assert "host      online" in shown(app, "status")
                assert "sync      0 s ago" in shown(app, "status")

                await pilot.press("f9")
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert shown(app, "headline").strip() == "DAY CLOSED", app.last
                assert "host took 3 (+0 already known)" in shown(app, "details")
                assert "journal   0 unacked" in shown(app, "status")
                assert "close     balanced" in shown(app, "status")

                # the link goes down: a sale still works offline; sync and close wait
                till.network.online = False
                await key_in(app, pilot, "1.00", "f2")
                assert app.last is not None and app.last.kind == APPROVED
                # the host settled the split's debt: the card learns it at this tap
                assert "write-back" in shown(app, "details")
                await pilot.press("f5")
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert app.last is not None and app.last.kind == ERROR
                assert shown(app, "headline").strip() == "SYNC FAILED"
                assert "host      offline" in shown(app, "status")
                await pilot.press("f9")
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert app.last is not None and app.last.kind == REFUSED
                assert "BATCH WAITING" in shown(app, "headline")
                assert "journal   2 unacked" in shown(app, "status")  # write-back, sale

                till.network.online = True
                await pilot.press("f9")
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert shown(app, "headline").strip() == "DAY CLOSED", app.last
                assert "journal   0 unacked" in shown(app, "status")
                assert "host      online" in shown(app, "status")
        finally:
            till.close()
