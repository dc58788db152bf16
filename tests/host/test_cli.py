"""``tallypurse host``: migrate, audit (JSON, exit status), tokens, and serve on a fresh
machine with no configuration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.core.hostapi import LoadRequest
from tallypurse.core.messages import LoadAuthorisation
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import head_revision
from tallypurse.host.db.models import Account

from .world import World

runner = CliRunner()


def db_url(database: Database) -> str:
    url = database.engine.url
    if database.postgres:
        with database.engine.connect() as conn:
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
        return url.set(query={"options": f"-csearch_path={schema}"}).render_as_string(False)
    return url.render_as_string(False)


def test_migrate_creates_the_schema_and_the_keystore_in_a_fresh_data_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["host", "migrate", "--data-dir", str(tmp_path / "h")],
                           env={"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long passphrase"})
    assert result.exit_code == 0, result.output
    assert f"revision {head_revision()}" in result.output
    assert (tmp_path / "h" / "host.sqlite3").is_file()
    assert (tmp_path / "h" / "keystore" / "keystore.json").is_file()
    audit = runner.invoke(app, ["host", "audit", "--json", "--data-dir", str(tmp_path / "h")],
                          env={"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long passphrase"})
    assert audit.exit_code == 0 and json.loads(audit.output)["balanced"] is True


def test_audit_reports_differences_and_exits_1_when_the_ledger_is_off(
        world: World, tmp_path: Path) -> None:
    card = world.card()
    world.load(card, 1_000)
    args = ["host", "audit", "--json", "--db", db_url(world.host.db),
            "--data-dir", str(tmp_path / "ops")]
    env = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "another passphrase"}
    ok = runner.invoke(app, args, env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["balanced"] is True
    with world.host.db.engine.begin() as conn:
        conn.execute(sa.update(Account).where(Account.kind == "cash").values(balance=1))
    off = runner.invoke(app, args, env=env)
    assert off.exit_code == 1
    report = json.loads(off.output)
    assert report["balanced"] is False
    assert report["differences"]["accounts"][0]["account"] == "cash:EUR"


def test_a_bad_database_url_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["host", "audit", "--db", "mysql://x/y", "--data-dir",
                                 str(tmp_path)])
    assert result.exit_code == 2
    assert "unsupported database" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_starts_with_no_configuration_and_answers_health(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLYPURSE_")}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tallypurse.cli.main", "host", "serve", "--port", str(port),
             "--workers", "2"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.5)
        assert ready.json()["schema"] == head_revision()
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        login = httpx.get(f"http://127.0.0.1:{port}/console/login")  # the operator console
        assert login.status_code == 200 and "Log in" in login.text
        unsigned = httpx.post(f"http://127.0.0.1:{port}/v1/terminal/sync", content=b"{}")
        assert unsigned.status_code == 401 and unsigned.json()["code"] == 2101
        assert (tmp_path / "tallypurse-host" / "host.sqlite3").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_operator_lists_unconfirmed_loads_and_voids_one_from_the_command_line(
        world: World, tmp_path: Path) -> None:
    assert world.client is not None
    card = world.card()
    answer = world.client.load_authorisation(LoadRequest.model_validate({
        "idempotency_key": "load-cli", "card_id": card.serial.hex(), "load_counter": 0,
        "card_challenge": "00" * 8, "amount": 2_500, "currency": "EUR", "funding": "cash"}))
    load_id = LoadAuthorisation.parse(bytes.fromhex(answer.authorisation)).auth_id.hex()
    common = ["--db", db_url(world.host.db), "--data-dir", str(tmp_path / "ops")]
    env = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "another passphrase"}
    listed = runner.invoke(app, ["host", "loads", "--unconfirmed", "--json", *common], env=env)
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert (row["load_id"], row["amount"], row["evidence"]) == (load_id, 2_500, "none")
    bad_card = runner.invoke(app, ["host", "loads", "--card", "xyz", *common], env=env)
    assert bad_card.exit_code == 2 and "16 hex digits" in bad_card.output
    no_reason = runner.invoke(app, ["host", "load-void", load_id, *common], env=env)
    assert no_reason.exit_code == 2  # --reason is required
    unknown = runner.invoke(app, ["host", "load-void", "00" * 8, "--reason", "x", *common],
                            env=env)
    assert unknown.exit_code == 2 and "no load" in unknown.output
    assert world.host.reports.reconciliation()["EUR"]["outstanding"]["loads_in_flight"] == 2_500
    done = runner.invoke(app, ["host", "load-void", load_id, "--reason", "till crashed",
                               "--by", "olga", *common], env=env)
    assert done.exit_code == 0, done.output
    assert f"load {load_id} voided: 25.00" in done.output
    assert world.host.reports.reconciliation()["EUR"]["outstanding"]["loads_in_flight"] == 0
    again = runner.invoke(app, ["host", "load-void", load_id, "--reason", "x", *common], env=env)
    assert again.exit_code == 2 and "voided already" in again.output
    empty = runner.invoke(app, ["host", "loads", "--unconfirmed", *common], env=env)
    assert empty.exit_code == 0 and "no unconfirmed load" in empty.output
