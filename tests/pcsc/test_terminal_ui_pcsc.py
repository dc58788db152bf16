"""The cashier's screen with `--pcsc`: load and pay from a card in the virtual reader's
field, through pcscd and pyscard, as `tallypurse terminal ui --pcsc` taps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tallypurse.card.card import Card
from tallypurse.cli.terminal import KeystoreHost, _reader_factory
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.ui import APPROVED, CashierApp

from .conftest import Served
from .harness import READER


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_screen_loads_and_takes_a_payment_through_a_pcsc_reader(
    lab: Lab, served_card: Served, tmp_path: Path
) -> None:
    clock = lambda: float(lab.now + 3600)  # noqa: E731
    terminal = Terminal.enrol(tmp_path / "till", passphrase="till", host=KeystoreHost(
        lab.keystore, clock=clock), token="ui-pcsc-token",
        terminal_id=bytes.fromhex("50435343000000c1"), merchant_name="Campus Canteen",
        clock=clock)
    factory, label = _reader_factory(None, True, READER)
    app = CashierApp(terminal, factory, tx_type="canteen", reader_label=label)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            for amount, key in (("5.00", "f3"), ("1.20", "f2")):
                await pilot.press("escape", *amount, key)
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert app.last is not None and app.last.kind == APPROVED, app.last
            assert "balance after           3.80 EUR" in app.last.receipt
    finally:
        terminal.close()
    purse = PurseClient(ApduClient(Card.open(served_card.path)))
    purse.select()
    assert purse.counters().balance == 380
