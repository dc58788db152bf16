"""The credit loop: the daily batch stores decisions and applies grades; a failed
collection downgrades at once and the new, signed credit record reaches the card
through the action list, after which the card refuses a split its old record allowed."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from tallypurse.card.card import Card
from tallypurse.core import sw as SW
from tallypurse.core.errors import CardError
from tallypurse.core.protocol import TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.credit import INDICATOR_NAMES
from tallypurse.host.bank import SandboxBank
from tallypurse.host.db.models import Cardholder, CreditDecision, CreditRecordRow

from .test_agent import FAILING_IBAN, apply_actions, open_actions, split_purchase
from .world import World

DAY = 86_400


def decisions(world: World, holder: str) -> list[CreditDecision]:
    with world.host.uow() as uow:
        rows = list(uow.session.scalars(sa.select(CreditDecision).where(
            CreditDecision.cardholder_id == holder).order_by(CreditDecision.id)))
        uow.session.expunge_all()
        return rows


def grade_of(world: World, holder: str) -> int:
    with world.host.uow() as uow:
        row = uow.session.get(Cardholder, holder)
        assert row is not None
        return row.credit_grade


def purse(card: Card) -> PurseClient:
    client = PurseClient(ApduClient(card))
    client.select()
    return client


def on_card(card: Card) -> tuple[int, int, int]:
    record = purse(card).credit_record().record
    return record.version, record.grade, record.per_tap_overdraft


def test_the_daily_batch_stores_decisions_once_a_day_and_applies_grades(world: World) -> None:
    host = world.host
    quiet = world.cardholder()
    busy = world.cardholder(funds=2_000)
    card = world.card(busy)
    assert on_card(card)[:2] == (1, 2)  # issued with the starting grade B

    first = host.credit.run()
    assert (first.scored, first.skipped, first.published) == (2, 0, 0)
    rows = decisions(world, busy)
    assert len(rows) == 1 and rows[0].trigger == "batch" and rows[0].batch_day == first.day
    assert rows[0].model_version == "expert-v1" and rows[0].grade == 2
    assert rows[0].basis == "starting"  # too little history: the starting grade holds
    assert set(json.loads(rows[0].indicators)) == set(INDICATOR_NAMES)
    assert json.loads(rows[0].reasons)[0]["code"] == "R01"  # short tenure

    again = host.credit.run()
    assert (again.scored, again.skipped) == (0, 2)

    world.clock.advance(host.credit.settings.min_history_days * DAY)
    later = host.credit.run()
    assert later.scored == 2
    # the model's grade now decides (money in the online account helps), and the card
    # hears of it
    assert {(c["cardholder_id"], c["from"], c["to"]) for c in later.changed} == {
        (quiet, "B", "E"), (busy, "B", "D")}
    assert later.published == 1 and grade_of(world, busy) == 4
    assert [a.kind for a in open_actions(world, card)] == ["credit_record"]
    apply_actions(world, card)
    assert on_card(card) == (2, 4, host.credit.terms(4, "EUR").per_tap_overdraft)

    # replaying a past day fills in history without undoing the newer grade
    replay = host.credit.run(first.day + dt.timedelta(days=1))
    assert (replay.scored, replay.not_applied, replay.published) == (2, 2, 0)
    assert grade_of(world, busy) == 4


def test_a_failed_collection_downgrades_at_once_and_the_card_refuses_the_next_split(
        world: World, bank: SandboxBank) -> None:
    bank.failing_ibans = frozenset({FAILING_IBAN})
    holder = world.cardholder(funds=10, iban=FAILING_IBAN)
    card, other = world.card(holder), world.card(holder)
    old = purse(other).credit_record().record
    assert (old.version, old.grade) == (1, 2)
    # the old record allows a 5.00 split at the canteen with nothing outstanding
    assert old.per_tap_overdraft >= 500 and old.max_outstanding >= 500
    assert old.allowed_types & TxType.CANTEEN.bit and old.max_slots >= 1

    split = split_purchase(world, card)  # 10.00 purse + 5.00 on credit
    world.host.agent.submit(world.tid, world.agent_request(split))  # online short, bank fails

    rows = decisions(world, holder)
    assert [(r.trigger, r.model_grade, r.grade, r.basis) for r in rows] == [
        ("event:debt_collection", 5, 5, "model")]
    assert grade_of(world, holder) == 5
    with world.host.uow() as uow:
        records = {(r.card_id, r.version): r for r in uow.session.scalars(
            sa.select(CreditRecordRow))}
        uow.session.expunge_all()
    new = records[(other.serial.hex(), 2)]
    assert (new.grade, new.per_tap_overdraft, new.max_outstanding, new.max_slots) == (5, 0, 0, 0)
    assert new.outstanding_known == 500 and new.decision_id == rows[0].id
    assert [a.kind for a in open_actions(world, other)] == ["credit_record"]
    assert [a.kind for a in open_actions(world, card)] == ["fail_debt", "credit_record"]

    # one sync and one tap: the terminal applies the write-back and reports it
    apply_actions(world, other)
    signed = purse(other).credit_record()
    assert signed.verify(world.host.keys.public_key(world.host.list_key()))
    assert (signed.record.version, signed.record.grade) == (2, 5)
    assert open_actions(world, other) == []
    world.load(other, 1_000)
    with pytest.raises(CardError) as refused:
        world.purchase(other, 1_000, split=500, tx_type=TxType.CANTEEN)
    assert refused.value.sw == SW.CREDIT_NOT_ALLOWED

    apply_actions(world, card)
    assert on_card(card) == (2, 5, 0)
    world.load(card, 2_000)  # repays the failed debt first: re-scored at once
    assert [r.trigger for r in decisions(world, holder)][-1] == "event:debt_repaid_load"
    assert grade_of(world, holder) == 5  # a failure this recent still weighs
    assert world.host.reports.audit()["balanced"] is True


def test_a_settled_debt_is_rescored_by_the_catch_up_without_downgrading_a_new_cardholder(
        world: World) -> None:
    holder = world.cardholder(funds=2_000)
    card = world.card(holder)
    world.host.agent.submit(world.tid, world.agent_request(split_purchase(world, card)))
    assert decisions(world, holder) == []  # a routine settlement: off the agent-debit path
    assert [o.cardholder_id for o in world.host.credit.catch_up()] == [holder]
    assert world.host.credit.catch_up() == []  # nothing newer than the last decision
    rows = decisions(world, holder)
    assert [(r.trigger, r.grade, r.basis) for r in rows] == [("event:catch-up", 2, "starting")]
    assert rows[0].model_grade > 2  # the model alone would grade a day-old cardholder lower
    assert [a.kind for a in open_actions(world, card)] == ["settle_debt"]  # no new record


def test_a_broken_model_never_breaks_an_agent_debit(world: World) -> None:
    holder = world.cardholder()
    card = world.card(holder)
    registry = world.host.credit.registry_dir
    registry.mkdir(parents=True)
    (registry / "CURRENT").write_text("garbage\n")  # damaged: the registry refuses it
    ack = world.host.agent.submit(world.tid, world.agent_request(split_purchase(world, card)))
    assert ack.status == "accepted"
    assert world.host.agent.debt(ack.debt_id).status == "collection"
    assert decisions(world, holder) == []  # logged; the catch-up (or the batch) retries
    (registry / "CURRENT").unlink()
    assert [o.grade for o in world.host.credit.catch_up()] == ["E"]
    assert grade_of(world, holder) == 5
