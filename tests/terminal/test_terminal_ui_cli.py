"""`tallypurse terminal ui` from the command line: it opens the terminal in --data-dir
and taps the --card file, as the other terminal commands do; bad options are refused
before anything opens."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.terminal.ui import CashierApp

runner = CliRunner()
ENV = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long test passphrase",
       "TALLYPURSE_SAM_PASSPHRASE": "sam passphrase"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("terminal-ui-cli")
    keys, card, data = root / "keys", root / "card1.card", root / "terminal"
    for args in (
        ["keys", "init", "--keystore", str(keys)],
        ["card", "new", "--keystore", str(keys), "--serial", "00000000000000e1",
         "--out", str(card)],
        ["terminal", "enrol", "--data-dir", str(data), "--keystore", str(keys),
         "--terminal-id", "5445524d000000e1", "--merchant", "Cafe UI"],
        ["terminal", "load", "--data-dir", str(data), "--card", str(card), "--amount", "20.00"],
    ):
        result = runner.invoke(app, args, env=ENV)
        assert result.exit_code == 0, result.output
    return card, data


def status(data: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["terminal", "status", "--data-dir", str(data), "--json"],
                           env=ENV)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.output)
    return out


def scripted(monkeypatch: pytest.MonkeyPatch,
             script: Callable[[CashierApp, Pilot[None]], Awaitable[None]]) -> list[CashierApp]:
    """Make `CashierApp.run` run headless at 80x24 with the keys of ``script``."""
    ran: list[CashierApp] = []
    original = CashierApp.run

    def run(self: CashierApp, **_: Any) -> None:
        async def pilot(p: Pilot[None]) -> None:
            await p.pause()
            await script(self, p)
            await p.press("ctrl+q")

        ran.append(self)
        original(self, headless=True, size=(80, 24), auto_pilot=pilot)  # type: ignore[arg-type]

    monkeypatch.setattr(CashierApp, "run", run)
    return ran


def test_the_ui_command_opens_the_terminal_and_taps_the_card_file(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    card, data = setup

    async def sale(a: CashierApp, p: Pilot[None]) -> None:
        await p.press(*"12.50", "f2")
        await a.workers.wait_for_complete()
        await p.pause()

    ran = scripted(monkeypatch, sale)
    head = status(data)["journal"]["head_seq"]
    result = runner.invoke(app, ["terminal", "ui", "--data-dir", str(data), "--card", str(card),
                                 "--type", "canteen"], env=ENV)
    assert result.exit_code == 0, result.output
    assert len(ran) == 1 and ran[0].last is not None
    assert ran[0].last.headline == "APPROVED 12.50 EUR", ran[0].last
    assert "balance after           7.50 EUR" in ran[0].last.receipt
    assert ran[0].reader_label == str(card)
    assert status(data)["journal"]["head_seq"] == head + 1
    # the card file itself was debited: the command line sees the new balance
    out = runner.invoke(app, ["card", "info", str(card), "--json"], env=ENV)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["balance"] == 750


@pytest.mark.parametrize(("args", "message"), [
    (["--type", "coffee"], "unknown transaction type 'coffee'"),
    (["--mode", "sometimes"], "unknown mode 'sometimes'"),
    ([], "give --card FILE"),
])
def test_bad_ui_options_are_refused_with_a_message_and_change_nothing(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    card, data = setup
    ran = scripted(monkeypatch, lambda a, p: p.pause())
    before = status(data)
    card_args = [] if not args else ["--card", str(card)]
    result = runner.invoke(app, ["terminal", "ui", "--data-dir", str(data), *card_args, *args],
                           env=ENV)
    assert result.exit_code == 2
    assert message in result.output
    assert ran == []
    after = status(data)
    assert after["journal"] == before["journal"]
    assert after["outbox"]["states"] == before["outbox"]["states"]
