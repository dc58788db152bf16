"""The demo end to end: real terminals against a real host over loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.sim import RULES, checks
from tallypurse.system import demo as demo_module

runner = CliRunner()


def test_the_demo_tells_the_whole_story_and_every_rule_holds(tmp_path: Path) -> None:
    steps: list[tuple[str, str]] = []
    story = demo_module.Story(lambda name, text, facts: steps.append((name, text)))
    result = demo_module.run(tmp_path, story)
    assert result["invariants"] and all(result["invariants"].values()), result["details"]
    names = [n for n, _ in steps]
    assert names.index("offline") < names.index("forward") < names.index("write-back")
    facts = {s["step"]: s for s in story.steps}
    assert facts["split"]["purse"] > 0 and facts["split"]["online"] > 0
    assert facts["write-back"]["before"] and not facts["write-back"]["after"]
    # The failed collection dropped Carol's grade; the new record reached her card and
    # the card itself refused credit at her next tap.
    assert facts["downgrade"]["grade_before"] != facts["downgrade"]["grade_after"] == "E"
    assert facts["downgrade"]["declined"].split()[0] in ("D41", "D45", "D48")
    assert facts["clearing"]["clones"] == 1
    assert facts["close"]["mismatches"] == 0
    table = {row["merchant_id"]: row for row in result["settlement"]}
    assert set(table) == {"campus-canteen", "transit-kiosk"}
    for row in table.values():
        assert row["net"] == row["gross"] - row["fees"] and row["gross"] > 0
    assert (tmp_path / "pain001.xml").read_bytes().startswith(b"<?xml")
    assert any("SPLIT PURCHASE" in r for r in result["receipts"])


def test_the_demo_checks_the_rules_with_the_simulators_checks(tmp_path: Path) -> None:
    """One implementation of the rules: the demo runs the simulator's checks, which read
    its cards, its tills and its host."""
    seen: list[str] = []
    final = checks.Checks.final

    def spy(self: checks.Checks) -> None:
        seen.append(type(self.subject).__name__)
        final(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks.Checks, "final", spy)
        result = demo_module.run(tmp_path, demo_module.Story(lambda name, text, facts: None))
    assert seen == ["DemoDay"]
    assert list(result["invariants"]) == [r for r in RULES if r != "no_internal_errors"]
    assert "1 copied card(s)" in result["details"]["clones_caught"]
    assert "3 split debt(s)" in result["details"]["debts_resolved"]


def test_the_demo_exits_non_zero_and_names_the_rule_that_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: checks.Checks, *args: Any, **kwargs: Any) -> None:
        self.fail("no_double_charge", "planted failure")

    monkeypatch.setattr(checks.Checks, "nothing_booked_twice", broken)
    result = runner.invoke(app, ["demo", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["invariants"]["no_double_charge"] is False
    assert data["details"]["no_double_charge"] == "planted failure"
    assert "no_double_charge" in result.stderr


def test_the_demo_can_leave_its_host_running_with_the_console(tmp_path: Path) -> None:
    import httpx

    seen: dict[str, object] = {}

    def serve(eh: object, logins: dict[str, str]) -> None:
        url = eh.url  # type: ignore[attr-defined]
        seen["health"] = httpx.get(f"{url}/health", timeout=10).status_code
        login = httpx.get(f"{url}/console/login", timeout=10)
        seen["login"] = login.status_code
        seen["users"] = sorted(logins)

    story = demo_module.Story(lambda name, text, facts: None)
    result = demo_module.run(tmp_path, story, serve=serve)
    assert all(result["invariants"].values())
    assert seen == {"health": 200, "login": 200, "users": ["auditor", "canteen", "operator"]}
