"""The model registry: a fitted model is used only after an operator promotes it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tallypurse.credit.registry import ModelRegistry, RegistryError
from tallypurse.credit.scorecard import builtin_scorecard, loads_scorecard

NOW = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)


def candidate(small_toml: str, version: str = "fitted-a") -> str:
    return small_toml.replace('version = "small-1"', f'version = "{version}"').replace(
        'kind = "expert"', 'kind = "fitted"')


def test_with_nothing_promoted_the_built_in_expert_scorecard_is_current(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.current_version() == "expert-v1"
    assert reg.current().spec == builtin_scorecard().spec
    st = reg.status()
    assert st["current"] == {"version": "expert-v1", "kind": "expert", "built_in": True}
    assert st["candidates"] == [] and st["promotions"] == []


def test_a_candidate_waits_until_promoted_then_becomes_current(tmp_path: Path,
                                                               small_toml: str) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    path = reg.add_candidate(loads_scorecard(candidate(small_toml)))
    assert path == tmp_path / "reg" / "candidates" / "fitted-a.toml"
    assert [c.version for c in reg.candidates()] == ["fitted-a"]
    assert reg.current_version() == "expert-v1"  # filed, not used

    p = reg.promote("fitted-a", by="ops-anna", reason="better AUC", now=NOW)
    assert (p.version, p.previous, p.by, p.reason, p.at) == (
        "fitted-a", "expert-v1", "ops-anna", "better AUC", "2026-11-01T09:30:00Z")
    assert reg.current_version() == "fitted-a"
    assert reg.current().version == "fitted-a"
    assert reg.candidates() == []
    assert reg.promoted() == ["fitted-a"]
    assert [h.to_dict() for h in reg.history()] == [p.to_dict()]


def test_promoting_a_file_and_rolling_back_are_recorded(tmp_path: Path, small_toml: str) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    model = tmp_path / "fitted-b.toml"
    model.write_text(candidate(small_toml, "fitted-b"))
    reg.promote(str(model), by="ops", reason="first fit")
    assert reg.current_version() == "fitted-b"
    reg.promote("expert-v1", by="ops", reason="roll back")
    assert reg.current().spec == builtin_scorecard().spec
    reg.promote("fitted-b", by="ops", reason="again")
    assert [(h.previous, h.version) for h in reg.history()] == [
        ("expert-v1", "fitted-b"), ("fitted-b", "expert-v1"), ("expert-v1", "fitted-b")]


def test_a_promoted_model_edited_afterwards_is_refused(tmp_path: Path, small_toml: str) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.add_candidate(loads_scorecard(candidate(small_toml)))
    reg.promote("fitted-a", by="ops", reason="")
    kept = tmp_path / "reg" / "models" / "fitted-a.toml"
    kept.write_text(kept.read_text().replace("pdo = 20", "pdo = 10"))
    with pytest.raises(RegistryError, match="changed since it was promoted"):
        reg.current()


def test_a_version_cannot_be_reused_for_other_content(tmp_path: Path, small_toml: str) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.add_candidate(loads_scorecard(candidate(small_toml)))
    reg.promote("fitted-a", by="ops", reason="")
    other = tmp_path / "other.toml"
    other.write_text(candidate(small_toml).replace("pdo = 20", "pdo = 25"))
    with pytest.raises(RegistryError, match="promoted before with other content"):
        reg.promote(str(other), by="ops", reason="")
    edited_expert = tmp_path / "expert.toml"
    edited_expert.write_text(builtin_scorecard().spec.to_toml().replace("pdo = 20", "pdo = 30"))
    with pytest.raises(RegistryError, match="differs from the built-in expert-v1"):
        reg.promote(str(edited_expert), by="ops", reason="")
    with pytest.raises(RegistryError, match="version fitted-a exists with other content"):
        reg.add_candidate(loads_scorecard(other.read_text()))


def test_promoting_needs_a_known_model_and_a_name(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="no candidate or promoted model 'nope'"):
        reg.promote("nope", by="ops", reason="")
    with pytest.raises(RegistryError, match="say who"):
        reg.promote("expert-v1", by=" ", reason="")
    assert not (tmp_path / "reg" / "CURRENT").exists()
