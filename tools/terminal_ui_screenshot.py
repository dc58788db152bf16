#!/usr/bin/env python3
"""Render the cashier's screen (`tallypurse terminal ui`) after a split purchase, at
80x24, to docs/terminal-ui.svg.

Everything runs in a temporary directory: a lab issuer, a terminal enrolled against
the operator's keystore (as `tallypurse terminal enrol --keystore` does), a card with
5.00 on it and a credit record; the screen keys 9.00, canteen, F2.

    .venv/bin/python tools/terminal_ui_screenshot.py [OUT.svg]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from tallypurse.cli.terminal import KeystoreHost
from tallypurse.lab import Lab
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.reader import InProcessReader
from tallypurse.terminal.ui import CashierApp

NOW = 1_767_225_600  # 2026-01-01 00:00 UTC


async def shoot(app: CashierApp, out: Path) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*"9.00", "f2")
        await app.workers.wait_for_complete()
        await pilot.pause()
        app.save_screenshot(out.name, str(out.parent))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/terminal-ui.svg").resolve()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lab = Lab.create(tmp / "lab", now=NOW)

        def clock() -> float:
            return NOW + 3600

        host = KeystoreHost(lab.keystore, clock=clock)
        terminal = Terminal.enrol(tmp / "till", passphrase="till", host=host, token="screenshot",
                                  terminal_id=bytes.fromhex("00000000000000c1"),
                                  merchant_name="Campus Canteen", clock=clock)
        serial = bytes.fromhex("00000000000000a1")
        card, _ = lab.new_card(serial, credit=lab.credit_record(serial))
        lab.load(card, 500)
        app = CashierApp(terminal, lambda: InProcessReader(card), tx_type="canteen",
                         reader_label="alice.card")
        try:
            asyncio.run(shoot(app, out))
        finally:
            terminal.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
