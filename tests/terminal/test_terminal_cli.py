"""`tallypurse terminal` end to end: keystore, card file, enrol, load, purchase, cancel,
journal, status, close-day; declines and bad input as one-line messages with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.cli.main import app

runner = CliRunner()
ENV = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long test passphrase",
       "TALLYPURSE_SAM_PASSPHRASE": "sam passphrase"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("terminal-cli")
    keys, card, data = root / "keys", root / "card1.card", root / "terminal"
    for args in (
        ["keys", "init", "--keystore", str(keys)],
        ["card", "new", "--keystore", str(keys), "--serial", "00000000000000d1",
         "--out", str(card)],
        ["terminal", "enrol", "--data-dir", str(data), "--keystore", str(keys),
         "--terminal-id", "5445524d000000d1", "--merchant", "Cafe Test"],
    ):
        result = runner.invoke(app, args, env=ENV)
        assert result.exit_code == 0, result.output
    return keys, card, data


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["terminal", *args], env=ENV)
    return result.exit_code, result.output


def test_a_newcomer_loads_buys_and_cancels_from_the_command_line(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, card, data = setup
    code, out = run("load", "--data-dir", str(data), "--card", str(card), "--amount", "20.00")
    assert code == 0, out
    assert "LOAD" in out and "20.00 EUR" in out
    escpos = tmp_path / "receipt.bin"
    code, out = run("purchase", "--data-dir", str(data), "--card", str(card),
                    "--amount", "12.50", "--type", "canteen", "--escpos", str(escpos))
    assert code == 0, out
    assert "Cafe Test" in out and "12.50 EUR" in out and "7.50 EUR" in out
    assert escpos.read_bytes().startswith(b"\x1b") and b"12.50 EUR" in escpos.read_bytes()
    code, out = run("cancel", "--data-dir", str(data), "--card", str(card))
    assert code == 0, out
    assert "CANCEL" in out and "20.00 EUR" in out
    code, out = run("journal", "--data-dir", str(data), "--verify")
    assert code == 0, out
    assert "every signature checked" in out and "cancel" in out
    code, out = run("status", "--data-dir", str(data), "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["journal"]["unacknowledged"] == 3
    assert status["outbox"]["by_kind"]["confirm_load"] == 1  # the keystore has no books
    assert status["lists"]["parameters"]["version"] == 1


@pytest.mark.parametrize(
    ("amount", "code", "message"),
    [("0", 3, "declined D10"), ("12.505", 2, "decimal places"), ("abc", 2, "not an amount"),
     ("500.00", 3, "declined D50")],  # above the offline limit: online, and no host
)
def test_bad_amounts_get_one_line_and_change_nothing(
    setup: tuple[Path, Path, Path], amount: str, code: int, message: str
) -> None:
    _, card, data = setup
    before = card.read_bytes()
    status = books(data)
    got, out = run("purchase", "--data-dir", str(data), "--card", str(card), "--amount", amount)
    assert got == code and message in out
    assert card.read_bytes() == before
    assert books(data) == status


def books(data: Path) -> tuple[object, ...]:
    s = json.loads(run("status", "--data-dir", str(data), "--json")[1])
    return s["journal"], s["outbox"]["states"], s["open_attempts"]


def test_an_unknown_type_and_a_short_purse_are_declined(setup: tuple[Path, Path, Path]) -> None:
    _, card, data = setup
    code, out = run("purchase", "--data-dir", str(data), "--card", str(card), "--amount", "1",
                    "--type", "bananas")
    assert code == 3 and "D11" in out and "canteen" in out
    code, out = run("purchase", "--data-dir", str(data), "--card", str(card), "--amount",
                    "90.00", "--type", "canteen")
    assert code == 3 and "D42" in out  # no credit record: no online account


def test_close_day_without_a_host_service_keeps_the_batch(setup: tuple[Path, Path, Path]) -> None:
    _, _, data = setup
    code, out = run("close-day", "--data-dir", str(data))
    assert code == 0, out
    assert "waiting for the host" in out
    code, out = run("sync", "--data-dir", str(data))
    assert code == 0 and "synced" in out


def test_status_text_and_a_missing_terminal(setup: tuple[Path, Path, Path],
                                            tmp_path: Path) -> None:
    _, _, data = setup
    code, out = run("status", "--data-dir", str(data))
    assert code == 0 and "outbox:" in out and "blacklist: v0" in out
    code, out = run("status", "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "enrol" in out


def test_bench_tap_reports_the_figures_beside_the_floor() -> None:
    result = runner.invoke(app, ["bench", "tap", "--taps", "12", "--blacklist", "1000",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("offline_p50_ms", "offline_p99_ms", "split_p50_ms", "split_p99_ms",
                "floor_p50_ms"):
        assert data[key] > 0
    assert set(data["offline_share"]) == {"card", "sam", "journal", "other"}
