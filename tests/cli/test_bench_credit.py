"""`tallypurse bench credit` prints the keys the credit issue names, with real counts."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tallypurse.cli.main import app


def test_bench_credit_scores_every_cardholder_and_reports_time_and_memory() -> None:
    result = CliRunner().invoke(app, ["bench", "credit", "--cardholders", "500",
                                      "--distinct", "100", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cardholders"] == 500 and sum(data["grades"].values()) == 500
    assert data["seconds"] > 0 and data["peak_mb"] > 0


def test_bench_credit_refuses_zero_cardholders() -> None:
    result = CliRunner().invoke(app, ["bench", "credit", "--cardholders", "0"])
    assert result.exit_code == 2
