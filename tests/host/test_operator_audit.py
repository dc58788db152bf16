"""Every operator action, from the API or the command line, leaves an entry in the
audit log with who, when, why, what and how it ended; and the chain stays whole."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.routing import APIRoute
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.host.api.auth import create_token
from tallypurse.host.audit import AuditEntry

from .test_cli import db_url
from .world import World

runner = CliRunner()


def log(world: World) -> list[AuditEntry]:
    return list(reversed(world.host.audit.entries(limit=1000)))


def test_every_operator_route_of_the_api_is_audited(world: World) -> None:
    holder = world.cardholder(funds=5_000)
    card = world.card(holder).serial.hex()
    operator = {"Authorization": "Bearer " + create_token(world.host, "operator", name="olga")}
    params = {"cardholder_id": holder, "terminal_id": world.tid, "card_id": card,
              "debt_id": "debt_nothing", "ref": holder, "load_id": "00000000000000ff",
              "version": "no-such-model"}
    bodies: dict[str, dict[str, object]] = {
        "card_status": {"status": "blocked", "reason": "reported lost by phone"},
        "parameters": {"offline_limit": 4_000},
        "new_token": {"role": "auditor", "name": "audrey"},
        "credit_override": {"grade": "D", "reason": "hardship plan", "days": 7},
        "credit_clear_override": {"reason": "plan ended"},
        "settle": {"day": "2026-01-05"},
        "fund": {"amount": 100, "reference": "top-up-1"},
        "load_void": {"reason": "till crashed"},  # an unknown load: refused, recorded here
        "credit_promote": {"reason": "fitted on last year"},  # an unknown model: likewise
    }
    routes = [r for r in app_routes(world) if r.path.startswith("/v1/ops/")
              and "POST" in (r.methods or set())]
    assert len(routes) >= 20
    for route in routes:
        path = route.path.format(**params)
        before = len(log(world))
        r = world.http.post(path, json=bodies.get(route.name, {}), headers={
            **operator, "Audit-Reason": f"checking {route.name}"})
        entries = log(world)[before:]
        action = {"credit_clear_override": "credit_clear"}.get(route.name, route.name)
        assert [e.action for e in entries] == [action], (route.path, r.status_code)
        entry = entries[0]
        assert (entry.actor, entry.role) == ("olga", "operator")
        assert entry.outcome == ("done" if r.status_code < 400 else "failed"), r.text
        assert entry.source.startswith("api")
        if r.status_code >= 400:
            assert str(r.json()["code"]) in entry.detail
    done = {e.action: e for e in log(world) if e.outcome == "done"}
    for name in ("card_status", "parameters", "new_token", "credit_override",
                 "credit_clear", "revoke_terminal", "settle", "terminal_token"):
        assert name in done, name
    assert done["card_status"].reason == "reported lost by phone"  # the body's reason
    assert done["card_status"].target == card and '"status":"blocked"' in done[
        "card_status"].detail
    assert done["parameters"].reason == "checking parameters"  # the header's
    assert done["credit_override"].source == "api"  # written by the credit service itself
    assert world.host.audit.verify().ok


def test_a_refused_role_is_audited_and_an_unknown_token_is_not(world: World) -> None:
    auditor = {"Authorization": "Bearer " + create_token(world.host, "auditor", name="audrey")}
    path = f"/v1/ops/terminals/{world.tid}/revoke"
    assert world.http.post(path, headers=auditor).status_code == 403
    assert world.http.post(path, headers={"Authorization": "Bearer tp_nope"}).status_code == 401
    assert world.http.post(path).status_code == 401
    assert [(e.actor, e.action, e.outcome) for e in log(world)] == [
        ("audrey", "revoke_terminal", "refused")]


def test_every_operator_command_is_audited(world: World, tmp_path: Path) -> None:
    holder = world.cardholder()
    old, new = world.card(holder).serial.hex(), world.card(holder).serial.hex()
    base = ["--db", db_url(world.host.db), "--data-dir", str(tmp_path / "ops")]
    env = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "another passphrase"}
    by = ["--by", "dana"]
    commands = [
        (["token", "create", "--role", "auditor", "--name", "audrey", "--reason", "new hire"],
         "token.create"),
        (["card-status", old, "--status", "blocked", "--reason", "fraud suspected"],
         "card.block"),
        (["card-status", old, "--status", "active", "--reason", "cleared"], "card.unblock"),
        (["card-status", old, "--status", "lost", "--reason", "holder called"], "card.block"),
        (["card-replace", old, "--new", new, "--reason", "lost card"], "card.replace"),
        (["parameters", "--offline-limit", "3000", "--reason", "new policy"],
         "parameters.publish"),
        (["credit", "override", holder, "--grade", "C", "--reason", "hardship"],
         "credit_override"),
        (["credit", "clear-override", holder, "--reason", "over"], "credit_clear"),
        (["settle", "--day", "2026-01-05", "--reason", "month end"], "settlement.run"),
        (["terminal-token", world.tid, "--reason", "SAM replaced"], "terminal.token"),
        (["terminal-revoke", world.tid, "--reason", "stolen till"], "terminal.revoke"),
    ]
    for args, action in commands:
        result = runner.invoke(app, ["host", *args, *by, *base], env=env)
        assert result.exit_code == 0, (args, result.output)
        entry = log(world)[-1]
        assert (entry.action, entry.actor, entry.outcome) == (action, "dana", "done"), args
        assert entry.reason == args[args.index("--reason") + 1]
    # a refusal by the service is audited as failed; a missing reason changes nothing
    again = runner.invoke(app, ["host", "card-replace", old, "--new", new, "--reason",
                                "twice", *by, *base], env=env)
    assert again.exit_code == 2 and "error:" in again.output
    assert (log(world)[-1].action, log(world)[-1].outcome) == ("card.replace", "failed")
    count = len(log(world))
    bare = runner.invoke(app, ["host", "terminal-revoke", world.tid, "--reason", "", *base],
                         env=env)
    assert bare.exit_code == 2 and "say why" in bare.output and len(log(world)) == count
    audit = runner.invoke(app, ["host", "audit", "--json", *base], env=env)
    assert audit.exit_code == 0, audit.output
    assert json.loads(audit.output)["audit_log"]["records"] == count


def app_routes(world: World) -> list[APIRoute]:
    return [r for r in world.http.app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
