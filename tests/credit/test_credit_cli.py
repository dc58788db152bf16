"""`tallypurse credit`: synthetic history, fit, promote, status and score from the command line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.cli.credit import app
from tallypurse.credit.registry import ModelRegistry

from .conftest import BASE

runner = CliRunner()
needs_extra = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                 reason="the credit-fit extra (scikit-learn) is not installed")


def test_score_prints_score_grade_model_and_reasons() -> None:
    data = {**BASE, "tenure_days": 5, "bank_account_verified": False}
    result = runner.invoke(app, ["score", "--indicators", json.dumps(data), "--default-policy"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("score ") and "grade " in first and "model expert-v1" in first
    assert "R01  short time as a cardholder" in result.output
    assert "credit terms: " in result.output


def test_score_json_reads_a_file_and_gives_terms(tmp_path: Path) -> None:
    path = tmp_path / "ind.json"
    path.write_text(json.dumps(BASE))
    result = runner.invoke(app, ["score", "--indicators", f"@{path}", "--json",
                                 "--default-policy"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["model_version"] == "expert-v1" and out["grade"] in "ABCDE"
    assert len(out["indicators"]) == 17
    assert out["terms"]["currency"] == "EUR"


@pytest.mark.parametrize(("arg", "message"), [
    ("{", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    ('{"tenure_days": 1}', "missing indicator"),
    ("no-such-file.json", "cannot read indicators"),
])
def test_score_refuses_bad_indicators_with_one_line_and_status_2(arg: str, message: str) -> None:
    result = runner.invoke(app, ["score", "--indicators", arg])
    assert result.exit_code == 2
    assert message in result.output


def test_show_and_policy_print_the_points_and_the_terms() -> None:
    shown = runner.invoke(app, ["show"])
    assert shown.exit_code == 0 and "expert-v1" in shown.output and "tenure_days" in shown.output
    pol = runner.invoke(app, ["policy"])
    assert pol.exit_code == 0 and "E: no credit" in pol.output


@needs_extra
def test_synth_fit_promote_and_status_work_end_to_end(tmp_path: Path) -> None:
    history = tmp_path / "h.csv"
    reg = tmp_path / "reg"
    made = runner.invoke(app, ["synth", "--n", "2000", "--seed", "3", "--out", str(history)])
    assert made.exit_code == 0, made.output
    fit = runner.invoke(app, ["fit", "--history", str(history), "--registry", str(reg),
                              "--version", "fitted-cli-1", "--json"])
    assert fit.exit_code == 0, fit.output
    report = json.loads(fit.output)
    assert report["version"] == "fitted-cli-1" and report["test"]["auc"] > 0.65
    assert ModelRegistry(reg).current_version() == "expert-v1"

    status = runner.invoke(app, ["status", "--registry", str(reg)])
    assert "current: expert-v1" in status.output and "fitted-cli-1" in status.output

    promoted = runner.invoke(app, ["promote", "fitted-cli-1", "--registry", str(reg),
                                   "--by", "ops", "--reason", "test"])
    assert promoted.exit_code == 0, promoted.output
    status = runner.invoke(app, ["status", "--registry", str(reg), "--json"])
    st = json.loads(status.output)
    assert st["current"]["version"] == "fitted-cli-1" and st["candidates"] == []
    scored = runner.invoke(app, ["score", "--indicators", json.dumps(BASE), "--registry",
                                 str(reg), "--json"])
    assert json.loads(scored.output)["model_version"] == "fitted-cli-1"


def test_fit_without_the_extra_says_how_to_install_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    history = tmp_path / "h.jsonl"
    runner.invoke(app, ["synth", "--n", "300", "--out", str(history)])
    for mod in ("sklearn", "sklearn.tree", "sklearn.linear_model"):
        monkeypatch.setitem(sys.modules, mod, None)
    result = runner.invoke(app, ["fit", "--history", str(history), "--out",
                                 str(tmp_path / "m.toml")])
    assert result.exit_code == 2
    assert "credit-fit" in result.output
    assert not (tmp_path / "m.toml").exists()


def test_fit_needs_somewhere_to_write(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fit", "--history", str(tmp_path / "h.csv")])
    assert result.exit_code == 2 and "--out FILE" in result.output
