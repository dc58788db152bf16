"""Operating the credit loop: overrides (applied at once, audited, expiring),
explanations, the command line, the API, the promoted model and the operator's policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.core.errors import BadInput
from tallypurse.credit import Grade, ModelRegistry
from tallypurse.credit.policy import default_policy
from tallypurse.credit.scorecard import builtin_scorecard_text
from tallypurse.host.api.auth import create_token
from tallypurse.host.db.models import AuditRecord, CreditOverride
from tallypurse.host.errors import NOT_FOUND, HostError

from .test_agent import apply_actions, open_actions
from .test_cli import db_url
from .test_credit_loop import on_card
from .world import World

DAY = 86_400
runner = CliRunner()


def test_an_override_applies_at_once_is_audited_and_expires(world: World) -> None:
    host = world.host
    holder = world.cardholder()
    card = world.card(holder)
    with pytest.raises(BadInput):
        host.credit.override(holder, Grade.A, reason=" ", actor="alice")
    with pytest.raises(BadInput):
        host.credit.override(holder, Grade.A, reason="pilot", actor="alice",
                             expires=world.clock() - 1)

    out = host.credit.override(card.serial.hex(), Grade.A, reason="pilot for staff",
                               actor="alice", expires=world.clock() + 2 * DAY)
    assert (out.cardholder_id, out.previous_grade, out.grade, out.basis) == (
        holder, "B", "A", "override")
    assert [(p.card_id, p.version, p.grade) for p in out.published] == [
        (card.serial.hex(), 2, "A")]
    with host.uow() as uow:
        audit = uow.session.scalars(sa.select(AuditRecord)).all()
        assert [(a.actor, a.action, a.target, a.reason) for a in audit] == [
            ("alice", "credit_override", holder, "pilot for staff")]
    assert [o["grade"] for o in host.credit.overrides()] == ["A"]
    explained = host.credit.explain(card.serial.hex())
    assert explained["override"]["active"] is True and explained["grade"] == "A"
    assert explained["cards"][0]["record_pending_on_action_list"] is True
    apply_actions(world, card)
    assert on_card(card) == (2, 1, host.credit.terms(1, "EUR").per_tap_overdraft)

    # the override ends by itself; the next scoring goes back to the starting grade
    world.clock.advance(3 * DAY)
    assert host.credit.overrides() == []
    back = host.credit.rescore(holder)
    assert (back.grade, back.basis, [p.version for p in back.published]) == ("B", "starting", [3])

    again = host.credit.override(holder, Grade.E, reason="fraud check", actor="bob")
    assert again.grade == "E" and again.published[0].grade == "E"
    cleared = host.credit.clear_override(holder, reason="cleared by fraud team", actor="carol")
    assert (cleared.grade, cleared.basis) == ("B", "starting")
    assert [g["action"] for g in host.credit.history(holder)["grades_set"]] == [
        "clear", "override", "override", "start"]

    # the grades set by hand cannot be changed afterwards
    with pytest.raises(sa.exc.DBAPIError), host.db.engine.begin() as conn:
        conn.execute(sa.update(CreditOverride).values(reason="nothing happened"))


def test_explain_gives_score_points_reasons_and_what_would_raise_the_grade(
        world: World) -> None:
    holder = world.cardholder(funds=3_000)
    card = world.card(holder)
    x = world.host.credit.explain(holder)
    assert x["card_id"] is None and x["cardholder_id"] == holder
    assert x["score"] == sum(d["points"] for d in x["indicators"])
    assert x["model_version"] == "expert-v1" and x["model_grade"] in "ABCDE"
    assert (x["grade"], x["basis"], x["starting_grade"]) == ("B", "starting", "B")
    assert len(x["indicators"]) == 17 and x["reasons"][0]["code"] == "R01"
    up = x["to_raise_the_grade"]
    assert up["points_needed"] == up["at_score"] - x["score"] > 0
    gains = [lever["gain"] for lever in up["levers"]]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0
    assert x["online_balance"] == 3_000
    assert x["cards"][0]["credit_record"]["version"] == 1
    assert world.host.credit.explain(card.serial.hex())["card_id"] == card.serial.hex()
    with pytest.raises(HostError) as exc:
        world.host.credit.explain("nobody")
    assert exc.value.what is NOT_FOUND


def test_the_command_line_runs_explains_overrides_and_shows_history(
        world: World, tmp_path: Path) -> None:
    holder = world.cardholder()
    card = world.card(holder)
    base = ["--db", db_url(world.host.db), "--data-dir", str(tmp_path / "ops")]
    env = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "another passphrase"}

    ran = runner.invoke(app, ["host", "credit", "run", "--json", *base], env=env)
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)["scored"] >= 1  # the command's clock is the wall clock
    future = runner.invoke(app, ["host", "credit", "run", "--as-of", "2999-01-01", *base],
                           env=env)
    assert future.exit_code == 2 and "in the future" in future.output

    shown = runner.invoke(app, ["host", "credit", "explain", card.serial.hex(), *base], env=env)
    assert shown.exit_code == 0, shown.output
    assert "model expert-v1" in shown.output and f"card {card.serial.hex()}" in shown.output
    as_json = runner.invoke(app, ["host", "credit", "explain", holder, "--json", *base], env=env)
    assert json.loads(as_json.output)["cardholder_id"] == holder

    set_ = runner.invoke(app, ["host", "credit", "override", holder, "--grade", "C",
                               "--reason", "hardship plan", "--days", "30", "--by", "dana",
                               "--json", *base], env=env)
    assert set_.exit_code == 0, set_.output
    assert json.loads(set_.output)["grade"] == "C"
    history = runner.invoke(app, ["host", "credit", "history", holder, *base], env=env)
    assert "override C" in history.output and "by dana: hardship plan" in history.output

    bad = runner.invoke(app, ["host", "credit", "override", holder, "--grade", "Z",
                              "--reason", "x", *base], env=env)
    assert bad.exit_code == 2 and "unknown grade" in bad.output
    missing = runner.invoke(app, ["host", "credit", "explain", "nobody", *base], env=env)
    assert missing.exit_code == 2 and "no card or cardholder" in missing.output


def test_the_api_explains_to_auditors_and_lets_operators_override(world: World) -> None:
    holder = world.cardholder()
    card = world.card(holder)
    operator = {"Authorization": "Bearer " + create_token(world.host, "operator", name="olga")}
    auditor = {"Authorization": "Bearer " + create_token(world.host, "auditor", name="audrey")}

    got = world.http.get(f"/v1/ops/credit/{card.serial.hex()}", headers=auditor)
    assert got.status_code == 200 and got.json()["cardholder_id"] == holder
    assert world.http.get(f"/v1/ops/credit/{holder}").status_code == 401
    assert world.http.get("/v1/ops/credit/nobody", headers=auditor).status_code == 404

    body = {"grade": "D", "reason": "two chargebacks", "days": 7}
    refused = world.http.post(f"/v1/ops/credit/{holder}/override", json=body, headers=auditor)
    assert refused.status_code == 403
    done = world.http.post(f"/v1/ops/credit/{holder}/override", json=body, headers=operator)
    assert done.status_code == 200 and done.json()["grade"] == "D"
    assert done.json()["published"][0]["version"] == 2
    with world.host.uow() as uow:
        rows = uow.session.execute(sa.select(AuditRecord.actor, AuditRecord.outcome).where(
            AuditRecord.action == "credit_override").order_by(AuditRecord.id)).all()
    assert [tuple(r) for r in rows] == [("audrey", "refused"), ("olga", "done")]
    assert [a.kind for a in open_actions(world, card)] == ["credit_record"]

    ran = world.http.post("/v1/ops/credit/run", json={}, headers=operator)
    assert ran.status_code == 200 and ran.json()["scored"] == 1
    history = world.http.get(f"/v1/ops/credit/{holder}/history", headers=auditor).json()
    assert [d["trigger"] for d in history["decisions"]] == ["batch", "override"]
    cleared = world.http.post(f"/v1/ops/credit/{holder}/override/clear",
                              json={"reason": "resolved"}, headers=operator)
    assert cleared.status_code == 200 and cleared.json()["grade"] == "B"


def test_the_host_uses_its_promoted_model_and_its_own_policy(world: World) -> None:
    host = world.host
    policy = default_policy()
    text = (Path(__file__).parents[2] / "src/tallypurse/credit/policies/default.toml").read_text()
    (host.settings.data_dir / "credit-policy.toml").write_text(
        text.replace('per_tap_overdraft = "15.00"', 'per_tap_overdraft = "12.00"'))
    holder = world.cardholder()
    card = world.card(holder)
    assert on_card(card) == (1, 2, 1_200)  # issuance uses the host's policy
    assert host.credit.terms(1, "EUR") == policy.terms_for(Grade.A)

    lenient = builtin_scorecard_text().replace('version = "expert-v1"', 'version = "easy-v2"')
    for floor in ("A = 640", "B = 615", "C = 590", "D = 560"):
        lenient = lenient.replace(floor, floor.split(" = ")[0] + " = " +
                                  str(int(floor.split(" = ")[1]) - 300))
    model = host.settings.data_dir / "easy-v2.toml"
    model.write_text(lenient)
    ModelRegistry(host.credit.registry_dir).promote(str(model), by="erin", reason="test")

    world.clock.advance(host.credit.settings.min_history_days * DAY)
    out = host.credit.rescore(holder)
    assert (out.grade, out.basis) == ("A", "model")
    assert host.credit.history(holder)["decisions"][0]["model_version"] == "easy-v2"
    apply_actions(world, card)
    assert on_card(card) == (2, 1, policy.terms_for(Grade.A).per_tap_overdraft)
