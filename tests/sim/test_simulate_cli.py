"""`tallypurse simulate` and `tallypurse bench simulate` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tallypurse.cli.simulate import bench_simulate, simulate
from tallypurse.core.errors import BadInput
from tallypurse.host.registry import check_iban
from tallypurse.sim import FAULTS, Faults
from tallypurse.sim.city import iban_de

app = typer.Typer()
app.command("simulate")(simulate)
app.command("bench-simulate")(bench_simulate)
runner = CliRunner()


def test_simulate_prints_json_with_every_rule_and_exits_zero() -> None:
    result = runner.invoke(app, ["simulate", "--cards", "12", "--terminals", "2", "--days", "1",
                                 "--seed", "4", "--faults", "lost_response,card_pull", "--json",
                                 "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("violations", "taps", "splits", "clones_detected", "clones_injected",
                "invariants", "latency_ms", "flows", "faults_injected", "seed", "replay"):
        assert key in data
    assert data["violations"] == [] and all(data["invariants"].values())
    assert data["faults"] == ["lost_response", "card_pull"] and data["taps"] > 0


def test_simulate_prints_a_readable_report(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--cards", "8", "--terminals", "2", "--days", "1",
                                 "--faults", "none", "--workdir", str(tmp_path / "city"), "-q"])
    assert result.exit_code == 0, result.output
    assert "rules (docs/architecture.md)" in result.stdout and "FAIL" not in result.stdout
    assert (tmp_path / "city" / "host.sqlite3").exists()  # --workdir keeps the city


def test_bad_input_exits_2() -> None:
    result = runner.invoke(app, ["simulate", "--faults", "meteor"])
    assert result.exit_code == 2 and "unknown fault meteor" in result.stderr
    result = runner.invoke(app, ["simulate", "--cards", "0"])
    assert result.exit_code == 2


def test_bench_simulate_prints_a_rate_beside_its_floor() -> None:
    result = runner.invoke(app, ["bench-simulate", "--cards", "8", "--terminals", "2", "--days",
                                 "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["taps_per_s"] > 0 and data["floor_taps_per_s"] > data["taps_per_s"]
    assert data["ratio_floor_to_rate"] > 1 and data["ok"]


def test_faults_parse() -> None:
    assert Faults.parse("all").names() == list(FAULTS)
    assert Faults.parse("none").names() == [] and Faults.parse("").names() == []
    assert Faults.parse("card-pull, clone").names() == ["card_pull", "clone"]
    with pytest.raises(BadInput, match="unknown fault"):
        Faults.parse("all,meteor")


def test_the_city_s_ibans_are_valid() -> None:
    for n in (1, 42, 999_999, 10**11 + 7):
        assert check_iban(iban_de(n)) == iban_de(n)
