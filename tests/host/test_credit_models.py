"""Promoting a credit model through the operator API: the list of models with their
held-out metrics, and a promotion with who and why, as `tallypurse credit promote` does."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tallypurse.credit import ModelRegistry
from tallypurse.credit.scorecard import builtin_scorecard_text, loads_scorecard
from tallypurse.host.api.auth import create_token
from tallypurse.host.db.models import AuditRecord
from tallypurse.host.errors import CONFLICT, FORBIDDEN, NOT_FOUND, VALIDATION, HostError

from .world import World

FIT = """
[fit]
created = "2026-11-01T09:30:00Z"
test_auc = 0.81
test_gini = 0.62
test_ks = 0.47
current_version = "expert-v1"
current_test_auc = 0.74
score_psi_vs_current = 0.04
grade_psi_vs_current = 0.02
"""


def file_candidate(world: World, version: str = "fitted-x") -> ModelRegistry:
    registry = ModelRegistry(world.host.credit.registry_dir)
    text = builtin_scorecard_text().replace('version = "expert-v1"', f'version = "{version}"')
    registry.add_candidate(loads_scorecard(text + FIT, "candidate"))
    return registry


def audited(world: World, outcome: str = "done") -> list[tuple[str, str, str, str]]:
    """The promotions on the operator audit log that ended with ``outcome``."""
    with world.host.uow() as uow:
        return [(a.actor, a.action, a.target, a.reason) for a in uow.session.scalars(
            sa.select(AuditRecord).where(AuditRecord.action == "credit_promote",
                                         AuditRecord.outcome == outcome)
            .order_by(AuditRecord.id))]


def test_operators_list_the_models_with_their_metrics_and_promote_one(world: World) -> None:
    registry = file_candidate(world)
    operator = {"Authorization": "Bearer " + create_token(world.host, "operator", name="olga")}
    auditor = {"Authorization": "Bearer " + create_token(world.host, "auditor", name="audrey")}

    assert world.http.get("/v1/ops/credit/models", headers=auditor).status_code == 403
    listed = world.http.get("/v1/ops/credit/models", headers=operator)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["current"] == "expert-v1"
    models = {m["version"]: m for m in body["models"]}
    assert set(models) == {"expert-v1", "fitted-x"}
    assert models["expert-v1"]["status"] == "current"
    assert models["expert-v1"]["metrics"]["auc"] is None  # the expert model was not fitted
    assert models["fitted-x"]["status"] == "candidate"
    assert {k: models["fitted-x"]["metrics"][k] for k in ("auc", "gini", "ks", "score_psi",
                                                            "compared_with")} == {
        "auc": 0.81, "gini": 0.62, "ks": 0.47, "score_psi": 0.04, "compared_with": "expert-v1"}

    url = "/v1/ops/credit/models/fitted-x/promote"
    refused = world.http.post(url, json={"reason": "better AUC"}, headers=auditor)
    assert refused.status_code == 403 and refused.json()["code"] == FORBIDDEN.code
    done = world.http.post(url, json={"reason": "better held-out AUC"}, headers=operator)
    assert done.status_code == 200, done.text
    assert {k: done.json()[k] for k in ("version", "previous", "by", "reason")} == {
        "version": "fitted-x", "previous": "expert-v1", "by": "olga",
        "reason": "better held-out AUC"}
    assert registry.current_version() == "fitted-x"
    assert world.host.credit.scorecard().version == "fitted-x"  # in use at once
    assert [(p.by, p.reason) for p in registry.history()] == [("olga", "better held-out AUC")]
    assert audited(world) == [("olga", "credit_promote", "fitted-x", "better held-out AUC")]

    models = {m["version"]: m for m in world.http.get(
        "/v1/ops/credit/models", headers=operator).json()["models"]}
    assert (models["fitted-x"]["status"], models["expert-v1"]["status"]) == (
        "current", "built_in")
    assert models["fitted-x"]["last_promoted"]["by"] == "olga"

    back = world.http.post("/v1/ops/credit/models/expert-v1/promote",
                           json={"reason": "roll back"}, headers=operator)
    assert back.status_code == 200 and back.json()["previous"] == "fitted-x"
    models = {m["version"]: m for m in world.http.get(
        "/v1/ops/credit/models", headers=operator).json()["models"]}
    assert (models["fitted-x"]["status"], models["expert-v1"]["status"]) == (
        "promoted", "current")


def test_a_bad_promotion_gets_a_problem_and_changes_nothing(world: World) -> None:
    registry = file_candidate(world)
    operator = {"Authorization": "Bearer " + create_token(world.host, "operator", name="olga")}
    (registry.candidates_dir / "broken-1.toml").write_text("[model]\nversion = ")
    listed = {m["version"]: m for m in world.http.get(
        "/v1/ops/credit/models", headers=operator).json()["models"]}
    assert listed["broken-1"]["status"] == "candidate" and listed["broken-1"]["problem"]
    outside = world.host.settings.data_dir / "outside.toml"
    outside.write_text(builtin_scorecard_text().replace('"expert-v1"', '"outside-1"'))
    cases = [
        ("nope-v9", {"reason": "x"}, 404, NOT_FOUND.code),
        ("broken-1", {"reason": "x"}, 409, CONFLICT.code),  # its file does not load
        ("outside.toml", {"reason": "x"}, 422, VALIDATION.code),  # a version, never a file
        ("-v1", {"reason": "x"}, 422, VALIDATION.code),
        ("fitted-x", {"reason": ""}, 422, VALIDATION.code),
        ("fitted-x", {}, 422, VALIDATION.code),
        ("fitted-x", {"reason": "x", "by": "someone else"}, 422, VALIDATION.code),
    ]
    for version, body, status, code in cases:
        answer = world.http.post(f"/v1/ops/credit/models/{version}/promote", json=body,
                                 headers=operator)
        assert answer.status_code == status, (version, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == code
    for bad in ("..", "../../outside", str(outside)):
        with pytest.raises(HostError) as exc:
            world.host.credit.promote(bad, by="olga", reason="x")
        assert exc.value.what is VALIDATION
    assert registry.current_version() == "expert-v1"
    assert registry.history() == []
    assert sorted(p.stem for p in registry.candidates_dir.glob("*.toml")) == [
        "broken-1", "fitted-x"]
    assert registry.promoted() == []
    assert audited(world) == []
