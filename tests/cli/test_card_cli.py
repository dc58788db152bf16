"""The card commands of the command line, end to end through a keystore and card files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.cli.main import app

runner = CliRunner()
ENV = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long test passphrase"}


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ks = tmp_path_factory.mktemp("cli") / "keys"
    result = runner.invoke(app, ["keys", "init", "--keystore", str(ks)], env=ENV)
    assert result.exit_code == 0, result.output
    return ks


def test_card_new_then_info_json_shows_a_personalised_card(keystore: Path, tmp_path: Path) -> None:
    card_file = tmp_path / "c1.card"
    result = runner.invoke(app, ["card", "new", "--keystore", str(keystore), "--serial",
                                 "00000000000000aa", "--out", str(card_file)], env=ENV)
    assert result.exit_code == 0, result.output
    assert card_file.exists()
    info = runner.invoke(app, ["card", "info", str(card_file), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert data["serial"] == "00000000000000aa"
    assert data["life_cycle"] == "SECURED"
    assert data["balance"] == 0 and data["currency"] == "EUR" and data["atc"] == 0
    assert [a["aid"] for a in data["applets"]] == ["f05450010001"]
    assert {d["aid"] for d in data["security_domains"]} == {"a000000151000000",
                                                            "f0545053440001"}
    assert data["cap"] == 100_000 and data["offline_limit"] == 10_000


def test_card_info_text_names_the_balance_and_life_cycle(keystore: Path, tmp_path: Path) -> None:
    card_file = tmp_path / "c2.card"
    runner.invoke(app, ["card", "new", "--keystore", str(keystore), "--serial",
                        "00000000000000ab", "--out", str(card_file), "--cap", "500.00"], env=ENV)
    info = runner.invoke(app, ["card", "info", str(card_file)])
    assert info.exit_code == 0
    assert "SECURED" in info.output and "0.00 EUR" in info.output


@pytest.mark.parametrize("serial", ["12", "zz00000000000000", "000000000000000001"])
def test_card_new_refuses_a_bad_serial_and_writes_no_file(keystore: Path, tmp_path: Path,
                                                          serial: str) -> None:
    card_file = tmp_path / "bad.card"
    result = runner.invoke(app, ["card", "new", "--keystore", str(keystore), "--serial", serial,
                                 "--out", str(card_file)], env=ENV)
    assert result.exit_code == 2
    assert not card_file.exists()


def test_card_new_with_a_wrong_passphrase_gives_a_clear_message(keystore: Path,
                                                                tmp_path: Path) -> None:
    card_file = tmp_path / "c3.card"
    result = runner.invoke(app, ["card", "new", "--keystore", str(keystore), "--serial",
                                 "00000000000000ac", "--out", str(card_file)],
                           env={"TALLYPURSE_KEYSTORE_PASSPHRASE": "wrong"})
    assert result.exit_code == 2
    assert "passphrase" in result.output
    assert not card_file.exists()


def test_card_new_refuses_to_overwrite_a_card_file(keystore: Path, tmp_path: Path) -> None:
    card_file = tmp_path / "c4.card"
    card_file.write_bytes(b"precious")
    result = runner.invoke(app, ["card", "new", "--keystore", str(keystore), "--serial",
                                 "00000000000000ad", "--out", str(card_file)], env=ENV)
    assert result.exit_code == 2
    assert card_file.read_bytes() == b"precious"


def test_card_new_refuses_an_offline_limit_above_the_cap(keystore: Path, tmp_path: Path) -> None:
    card_file = tmp_path / "c5.card"
    result = runner.invoke(app, ["card", "new", "--keystore", str(keystore), "--serial",
                                 "00000000000000ae", "--out", str(card_file), "--cap", "10.00",
                                 "--offline-limit", "20.00"], env=ENV)
    assert result.exit_code == 2
    assert not card_file.exists()


@pytest.mark.parametrize("content", [b"", b"not a card", b"TPCARD\x00\x01" + b"\x00" * 40])
def test_card_info_on_a_corrupt_file_gives_a_clear_message(tmp_path: Path,
                                                           content: bytes) -> None:
    card_file = tmp_path / "corrupt.card"
    card_file.write_bytes(content)
    result = runner.invoke(app, ["card", "info", str(card_file)])
    assert result.exit_code == 2
    assert "card" in result.output.lower()


def test_card_info_on_a_missing_file_gives_a_clear_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["card", "info", str(tmp_path / "none.card")])
    assert result.exit_code == 2
    assert "no card file" in result.output


def _command_paths() -> list[list[str]]:
    import typer.main

    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return out


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "tallypurse")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bench_card_json_reports_figures_beside_the_floor() -> None:
    result = runner.invoke(app, ["bench", "card", "--taps", "20", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["apdus_per_purchase"] == 3
    assert data["floor_ms"] > 0 and data["purchase_p50_ms"] > 0
    assert data["air_time_ms"]["106kbps"] > data["air_time_ms"]["424kbps"]
