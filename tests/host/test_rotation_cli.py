"""The ceremonies that reach the host's cards and terminals: ``tallypurse keys rekey-card``
and ``tallypurse keys revoke-terminal`` (dry runs change nothing; bad input changes
nothing and exits non-zero; each ceremony is in the keystore's ceremony log); and every
ceremony command has ``--dry-run``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from tallypurse.card.card import Card
from tallypurse.cli import keys as keys_cli
from tallypurse.cli.main import app
from tallypurse.core.cert import KeyRef
from tallypurse.core.hostapi import ROUTES, SyncRequest
from tallypurse.host.db.engine import Database
from tallypurse.host.db.models import Card as CardRow
from tallypurse.host.db.models import WriteBackAction as ActionRow
from tallypurse.host.tsm.rekey import read_card_keys
from tallypurse.keystore.base import ISSUER_ROOT, MASTER_APP, MASTER_ISD
from tallypurse.system import EmbeddedHost, Till, enrol_till, issue_card
from tallypurse.terminal.errors import TerminalError

PASSPHRASE = "ceremony passphrase"
TID = "00000000000000e1"
runner = CliRunner()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def db_args(database: Database, request: pytest.FixtureRequest) -> list[str]:
    """The command line's ``--db`` for the test database (PostgreSQL: its own schema)."""
    url = database.engine.url
    if url.get_backend_name() == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        url = url.set(query={"options": f"-csearch_path={schema}"})
    return ["--db", url.render_as_string(hide_password=False)]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         database: Database) -> Iterator[tuple[EmbeddedHost, Till]]:
    monkeypatch.setenv("TALLYPURSE_KEYSTORE_PASSPHRASE", PASSPHRASE)
    eh = EmbeddedHost(tmp_path / "host", db=database)
    merchant = eh.host.registry.create_merchant("Kiosk", iban="DE89370400440532013000",
                                                bic="COBADEFFXXX", merchant_id="kiosk")
    till = enrol_till(eh, tmp_path / "till", name="Kiosk", merchant_id=merchant,
                      terminal_id=bytes.fromhex(TID))
    yield eh, till
    till.close()
    eh.stop()


def log_records(data: Path) -> list[dict[str, object]]:
    path = data / "keystore" / "ceremony.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def host_state(eh: EmbeddedHost) -> object:
    """What the ceremonies could change in the host's database (read through the host)."""
    with eh.host.uow() as uow:
        s = uow.session
        cards = s.execute(sa.select(CardRow.card_id, CardRow.app_key_version,
                                    CardRow.certificate, CardRow.writeback_seq)).all()
        actions = s.execute(sa.select(ActionRow.action_id, ActionRow.status)).all()
    return ([(t.terminal_id, t.status, t.cert_not_after) for t in eh.host.tms.terminals()],
            sorted(cards), sorted(actions))


def test_revoke_terminal_dry_run_changes_nothing_then_revokes_and_logs(
        site: tuple[EmbeddedHost, Till], db_args: list[str]) -> None:
    eh, till = site
    data = eh.host.settings.data_dir
    before = host_state(eh)
    args = ["keys", "revoke-terminal", TID, "--data-dir", str(data), *db_args,
            "--operator", "ops", "--reason", "stolen from the kiosk"]
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and "nothing changed" in result.output
    assert host_state(eh) == before and log_records(data) == []
    assert till.terminal.sync()["host_time"] > 0  # still served

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"revoked terminal {TID}" in result.output
    [record] = log_records(data)
    assert record["ceremony"] == "revoke-terminal" and record["operator"] == "ops"
    assert record["details"] == {"terminal": TID, "merchant": "kiosk",
                                 "previous_status": "active"}
    # its signed requests are refused with a problem document
    with pytest.raises(TerminalError, match="revoked"):
        till.terminal.sync()
    url = eh.url + ROUTES["sync"]
    body = SyncRequest(blacklist_version=0, actions_version=0, parameters_version=0)
    content = body.model_dump_json().encode()
    headers = till.terminal.request_signer()("POST", url, content)
    resp = httpx.post(url, content=content,
                      headers={**headers, "content-type": "application/json"})
    assert resp.status_code == 403
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == 2106


@pytest.mark.parametrize("terminal, message", [
    ("0000000000000bad", "no terminal 0000000000000bad"),
    (TID, "already revoked"),
])
def test_revoke_terminal_refuses_an_unknown_or_revoked_terminal_and_changes_nothing(
        site: tuple[EmbeddedHost, Till], db_args: list[str], terminal: str,
        message: str) -> None:
    eh, _ = site
    data = eh.host.settings.data_dir
    if terminal == TID:
        eh.host.tms.revoke(TID)
    before = host_state(eh)
    result = runner.invoke(app, ["keys", "revoke-terminal", terminal, "--data-dir", str(data),
                                 *db_args, "--operator", "ops", "--reason", "test"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert host_state(eh) == before and log_records(data) == []


def test_rekey_card_dry_run_changes_nothing_then_rekeys_and_logs(
        site: tuple[EmbeddedHost, Till], db_args: list[str], tmp_path: Path) -> None:
    eh, _ = site
    data = eh.host.settings.data_dir
    path = tmp_path / "card"
    issue_card(eh, bytes.fromhex("00000000000000f1"), cardholder_id=None, path=path)
    for name in (ISSUER_ROOT, MASTER_ISD, MASTER_APP):
        result = runner.invoke(app, ["keys", "rotate", name, "--keystore",
                                     str(data / "keystore"), "--operator", "ops",
                                     "--reason", "rotation"])
        assert result.exit_code == 0, result.output
    rotations = len(log_records(data))
    card_before, db_before = digest(path), host_state(eh)
    args = ["keys", "rekey-card", "--card-file", str(path), "--data-dir", str(data), *db_args,
            "--operator", "ops", "--reason", "re-key after rotation"]
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "PUT KEY issuer domain keys 1 -> 2" in result.output
    assert "STORE DATA purse APP key 1 -> 2" in result.output
    assert "issuer-root/1 -> issuer-root/2" in result.output
    assert "operator domain" not in result.output  # not rotated: not touched
    assert digest(path) == card_before and host_state(eh) == db_before
    assert len(log_records(data)) == rotations

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    card = Card.open(path)
    card.power_up()
    held = read_card_keys(card)
    assert (held.isd_version, held.sd_version, held.app_version, held.root) == (
        2, 1, 2, KeyRef(ISSUER_ROOT, 2))
    record = log_records(data)[-1]
    assert record["ceremony"] == "rekey-card"
    details = record["details"]
    assert isinstance(details, dict) and details["card_id"] == "00000000000000f1"
    # the host recorded what the card holds now
    with eh.host.uow() as uow:
        row = eh.host.registry.card(uow.session, "00000000000000f1")
        assert row.app_key_version == 2 and row.certificate == held.certificate.hex()
    # a second run has nothing to do and logs nothing
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert log_records(data)[-1] == record


def test_rekey_card_refuses_a_card_this_host_did_not_issue(
        site: tuple[EmbeddedHost, Till], db_args: list[str], tmp_path: Path) -> None:
    eh, _ = site
    data = eh.host.settings.data_dir
    other = EmbeddedHost(tmp_path / "other-host")
    try:
        path = tmp_path / "foreign.card"
        issue_card(other, bytes.fromhex("00000000000000f2"), cardholder_id=None, path=path)
    finally:
        other.stop()
    before = digest(path)
    result = runner.invoke(app, ["keys", "rekey-card", "--card-file", str(path), "--data-dir",
                                 str(data), *db_args, "--operator", "ops", "--reason", "test"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:")
    assert digest(path) == before and log_records(data) == []


def test_rekey_card_refuses_a_certificate_for_another_key_and_changes_nothing(
        site: tuple[EmbeddedHost, Till], db_args: list[str], tmp_path: Path) -> None:
    """The certificate under the new root is issued for the key the host registered at
    issuance, never for one the card (or a reader in between) presents."""
    eh, _ = site
    data = eh.host.settings.data_dir
    path, other = tmp_path / "card", tmp_path / "other.card"
    issue_card(eh, bytes.fromhex("00000000000000f3"), cardholder_id=None, path=path)
    issue_card(eh, bytes.fromhex("00000000000000f4"), cardholder_id=None, path=other)
    with eh.host.uow() as uow:  # the host's record of f3 now names f4's key: a mismatch
        f4 = eh.host.registry.card(uow.session, "00000000000000f4").public_key
        eh.host.registry.card(uow.session, "00000000000000f3", lock=True).public_key = f4
        uow.commit()
    result = runner.invoke(app, ["keys", "rotate", ISSUER_ROOT, "--keystore",
                                 str(data / "keystore"), "--operator", "ops",
                                 "--reason", "rotation"])
    assert result.exit_code == 0, result.output
    rotations = len(log_records(data))
    card_before, db_before = digest(path), host_state(eh)
    result = runner.invoke(app, ["keys", "rekey-card", "--card-file", str(path), "--data-dir",
                                 str(data), *db_args, "--operator", "ops", "--reason", "test"])
    assert result.exit_code == 2, result.output
    assert "another key" in result.stderr or "does not name the key" in result.stderr
    assert digest(path) == card_before and host_state(eh) == db_before
    assert len(log_records(data)) == rotations


def test_every_ceremony_has_a_dry_run() -> None:
    not_ceremonies = {"list", "check-share", "verify-log"}
    group = typer.main.get_group(keys_cli.app)
    ceremonies = sorted(set(group.commands) - not_ceremonies)
    assert {"rotate", "revoke", "rekey-card", "revoke-terminal"} <= set(ceremonies)
    for name in ceremonies:
        options = {o for p in group.commands[name].params for o in p.opts}
        assert "--dry-run" in options, name
        assert "--operator" in options, name
