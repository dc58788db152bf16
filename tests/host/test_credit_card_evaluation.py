"""Indicator R17 end to end: the card signs its findings in every event, clearing keeps
the signed records, the credit run averages each cardholder's evaluations of the last
90 days, and the explanation shows the value and its points."""

from __future__ import annotations

import json
import time
import types
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.core.protocol import CVR_DEBT_OUTSTANDING, CVR_LOW_BALANCE, CVR_SPLIT, TxType
from tallypurse.credit import evaluate_cvr
from tallypurse.host import common
from tallypurse.host.api.auth import create_token
from tallypurse.host.credit_data import record_cvr
from tallypurse.host.db.models import CardEventRow, CreditDecision

from .test_agent import GOOD_IBAN, apply_actions
from .test_cli import db_url
from .world import World

DAY = 86_400
runner = CliRunner()


def r17(indicators: list[dict[str, object]]) -> dict[str, object]:
    (row,) = [d for d in indicators if d["code"] == "R17"]
    assert row["name"] == "card_evaluation"
    return row


def test_taps_clear_and_the_explanation_shows_the_cards_own_evaluation(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, clock = world.host, world.clock
    thrifty = world.cardholder(funds=5_000, iban=GOOD_IBAN)
    thrifty_card = world.card(thrifty)
    borrower = world.cardholder(funds=5_000, iban=GOOD_IBAN)
    borrower_card = world.card(borrower)

    world.load(thrifty_card, 5_000)
    splits = []
    for _ in range(3):
        clock.advance(DAY)
        world.upload(world.purchase(thrifty_card, 500))
        world.load(borrower_card, 1_000)
        split = world.purchase(borrower_card, 1_000, split=500, tx_type=TxType.CANTEEN)
        assert split.event.cvr == CVR_SPLIT | CVR_DEBT_OUTSTANDING | CVR_LOW_BALANCE
        assert host.agent.submit(world.tid, world.agent_request(split)).status == "accepted"
        apply_actions(world, borrower_card)  # the settled debt reaches the card
        world.upload(split)
        splits.append(split)

    # clearing kept each signed record; the card's findings are read from it
    with host.uow() as uow:
        records = dict(uow.session.execute(sa.select(CardEventRow.record, CardEventRow.card_id)
                                           .where(CardEventRow.kind == 1)).all())
    assert sorted(record_cvr(r) or 0 for r, c in records.items()
                  if c == borrower_card.serial.hex()) == [splits[0].event.cvr] * 3
    assert {record_cvr(r) for r, c in records.items() if c == thrifty_card.serial.hex()} == {0}

    operator = {"Authorization": "Bearer " + create_token(host, "operator", name="olga")}
    auditor = {"Authorization": "Bearer " + create_token(host, "auditor", name="audrey")}
    ran = world.http.post("/v1/ops/credit/run", json={}, headers=operator)
    assert ran.status_code == 200 and ran.json()["scored"] == 2

    # the stored decisions carry the evaluation: 100 for purchases with no finding, 60
    # for a purchase on credit that leaves a debt and an empty purse
    with host.uow() as uow:
        stored = {d.cardholder_id: d.indicators for d in uow.session.scalars(
            sa.select(CreditDecision))}
    assert json.loads(stored[thrifty])["card_evaluation"] == 100
    assert json.loads(stored[borrower])["card_evaluation"] == 60

    explained = {}
    for holder in (thrifty, borrower):
        got = world.http.get(f"/v1/ops/credit/{holder}", headers=auditor)
        assert got.status_code == 200
        explained[holder] = r17(got.json()["indicators"])
    assert explained[thrifty]["value"] == 100
    assert explained[borrower]["value"] == evaluate_cvr(splits[0].event.cvr) == 60
    assert isinstance(explained[borrower]["points"], int)
    assert explained[borrower]["points"] < explained[thrifty]["points"]
    assert explained[thrifty]["points"] == explained[thrifty]["best_points"]

    # the command line shows the same row (its clock set to the world's)
    fake_time = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time)
                                        if not n.startswith("_")})
    fake_time.time = lambda: float(clock())
    monkeypatch.setattr(common, "time", fake_time)
    base = ["--db", db_url(host.db), "--data-dir", str(tmp_path / "ops")]
    env = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "another passphrase"}
    shown = runner.invoke(app, ["host", "credit", "explain", borrower_card.serial.hex(), *base],
                          env=env)
    assert shown.exit_code == 0, shown.output
    (line,) = [ln for ln in shown.output.splitlines() if ln.strip().startswith("R17 ")]
    fields = line.split()
    assert fields[1:3] == ["card_evaluation", "60"]
    assert f"{explained[borrower]['points']} / {explained[borrower]['best_points']}" in line

    # 90 days on without a purchase: nothing recent to evaluate, R17 is missing again
    clock.advance(91 * DAY)
    later = world.http.get(f"/v1/ops/credit/{borrower}", headers=auditor).json()
    assert r17(later["indicators"])["value"] is None


def test_a_record_of_another_layout_has_no_card_verification_results() -> None:
    assert record_cvr("") is None
    assert record_cvr("00" * 133) is None  # the 69-byte event of earlier cards
    assert record_cvr("zz" * 135) is None
    raw = bytearray(135)
    raw[69:71] = (CVR_SPLIT | CVR_LOW_BALANCE).to_bytes(2, "big")
    assert record_cvr(bytes(raw).hex()) == CVR_SPLIT | CVR_LOW_BALANCE
