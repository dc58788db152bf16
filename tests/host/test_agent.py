"""Agent debits: once per key and per (card, ATC), online account first, then the linked
bank, then collection; the merchant is paid either way; every outcome reaches the card."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from tallypurse.card.card import Card
from tallypurse.core.hostapi import ActionEntry, SyncRequest, WriteBackReport
from tallypurse.core.protocol import DebtState, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.bank import SandboxBank
from tallypurse.host.db.models import CreditEvent, Debt, LedgerTransaction
from tallypurse.host.errors import IDEMPOTENCY_CONFLICT, RECORD_INVALID, RECORD_MISMATCH, HostError

from .world import World

FAILING_IBAN = "GB82WEST12345698765432"
GOOD_IBAN = "DE89370400440532013000"


def split_purchase(world: World, card: Card, total: int = 1_500, purse: int = 1_000):
    world.load(card, purse)
    return world.purchase(card, purse, split=total - purse, tx_type=TxType.CANTEEN)


def debt_states(world: World) -> list[tuple[int, str]]:
    with world.host.uow() as uow:
        return [(d.amount, d.status) for d in uow.session.scalars(sa.select(Debt).order_by(
            Debt.created))]


def open_actions(world: World, card: Card) -> list[ActionEntry]:
    assert world.client is not None
    answer = world.client.sync(SyncRequest(blacklist_version=0, actions_version=0,
                                           parameters_version=0))
    assert answer.actions is not None
    current: dict[str, ActionEntry] = {}
    for a in answer.actions.actions:  # a delta: adds and removes in version order
        if a.op == "add":
            current[a.action_id] = a
        else:
            current.pop(a.action_id, None)
    return [a for a in current.values() if a.card_id == card.serial.hex()]


def apply_actions(world: World, card: Card) -> None:
    """What a terminal does at the card's next tap: apply its write-backs, report them."""
    assert world.client is not None
    purse = PurseClient(ApduClient(card))
    purse.select()
    for action in sorted(open_actions(world, card), key=lambda a: a.seq):
        receipt, mac = purse.write_back(bytes.fromhex(action.sealed))
        world.client.report_writeback(WriteBackReport(
            action_id=action.action_id, card_id=action.card_id,
            receipt=receipt.to_bytes().hex(), mac=mac.hex()))


def test_an_online_account_pays_the_debt_and_the_card_learns_it_at_the_next_tap(
        world: World) -> None:
    holder = world.cardholder(funds=2_000)
    card = world.card(holder)
    split = split_purchase(world, card)
    assert [s.state for s in PurseClient(ApduClient(card)).debts() if s.amount] == [
        DebtState.PENDING]
    ack = world.host.agent.submit(world.tid, world.agent_request(split))
    assert ack.status == "accepted"
    assert debt_states(world) == [(500, "settled")]
    assert world.host.registry.online_balance(holder) == 1_500
    # the split part is owed to the merchant at once; the purse part comes with clearing
    assert world.host.settlement.merchant_balance(world.merchant_id) == 500
    assert [a.kind for a in open_actions(world, card)] == ["settle_debt"]
    apply_actions(world, card)
    assert all(s.state == DebtState.FREE for s in PurseClient(ApduClient(card)).debts())
    assert open_actions(world, card) == []
    assert world.host.reports.audit()["balanced"] is True


def test_a_retried_agent_debit_is_a_duplicate_and_takes_effect_once(world: World) -> None:
    holder = world.cardholder(funds=2_000)
    card = world.card(holder)
    request = world.agent_request(split_purchase(world, card))
    first = world.host.agent.submit(world.tid, request)
    again = world.host.agent.submit(world.tid, request)
    assert (again.status, again.debt_id) == ("duplicate", first.debt_id)
    assert world.host.registry.online_balance(holder) == 1_500
    assert debt_states(world) == [(500, "settled")]


def test_the_same_key_with_another_payload_is_refused(world: World) -> None:
    holder = world.cardholder(funds=2_000)
    card = world.card(holder)
    request = world.agent_request(split_purchase(world, card))
    world.host.agent.submit(world.tid, request)
    other = request.model_copy(update={"tx_type": "transit"})
    with pytest.raises(HostError) as exc:
        world.host.agent.submit(world.tid, other)
    assert exc.value.what is IDEMPOTENCY_CONFLICT


def test_an_agent_debit_must_carry_the_cards_own_record(world: World) -> None:
    holder = world.cardholder(funds=2_000)
    card = world.card(holder)
    request = world.agent_request(split_purchase(world, card))
    raw = bytearray.fromhex(request.record)
    raw[-1] ^= 1
    with pytest.raises(HostError) as exc:
        world.host.agent.submit(world.tid, request.model_copy(update={"record": raw.hex()}))
    assert exc.value.what is RECORD_INVALID
    with pytest.raises(HostError) as exc:
        world.host.agent.submit(world.tid, request.model_copy(update={"amount": 499}))
    assert exc.value.what is RECORD_MISMATCH
    assert debt_states(world) == []
    assert world.host.registry.online_balance(holder) == 2_000


def test_a_short_online_account_falls_back_to_the_linked_bank(world: World,
                                                              bank: SandboxBank) -> None:
    holder = world.cardholder(funds=100, iban=GOOD_IBAN)
    card = world.card(holder)
    world.host.agent.submit(world.tid, world.agent_request(split_purchase(world, card)))
    assert debt_states(world) == [(500, "settled_bank")]
    assert len(bank.submitted) == 1
    assert world.host.registry.online_balance(holder) == 100
    assert [a.kind for a in open_actions(world, card)] == ["settle_debt"]
    assert world.host.reports.audit()["balanced"] is True


def test_a_slow_bank_settles_the_debt_when_its_outcome_arrives(world: World,
                                                               bank: SandboxBank) -> None:
    bank.latency_s = 3_600
    holder = world.cardholder(iban=GOOD_IBAN)
    card = world.card(holder)
    world.host.agent.submit(world.tid, world.agent_request(split_purchase(world, card)))
    assert debt_states(world) == [(500, "bank_pending")]
    assert world.host.agent.process_bank() == {"submitted": 1}
    world.clock.advance(3_600)
    assert world.host.agent.process_bank() == {"settled": 1}
    assert world.host.agent.process_bank() == {}
    assert debt_states(world) == [(500, "settled_bank")]


def test_when_online_and_bank_both_fail_the_debt_goes_to_collection_and_the_merchant_is_paid(
        world: World, bank: SandboxBank) -> None:
    bank.failing_ibans = frozenset({FAILING_IBAN})
    holder = world.cardholder(funds=10, iban=FAILING_IBAN)
    card = world.card(holder)
    split = split_purchase(world, card)
    world.host.agent.submit(world.tid, world.agent_request(split))
    world.upload(split)
    assert debt_states(world) == [(500, "collection")]
    assert world.host.settlement.merchant_balance(world.merchant_id) == 1_500
    with world.host.uow() as uow:
        kinds = list(uow.session.scalars(sa.select(CreditEvent.kind)))
    assert kinds == ["debt_collection"]
    # the failed collection also downgrades the card's credit record (tallypurse.host.credit)
    assert [a.kind for a in open_actions(world, card)] == ["fail_debt", "credit_record"]
    apply_actions(world, card)
    assert [s.state for s in PurseClient(ApduClient(card)).debts() if s.amount] == [
        DebtState.FAILED]
    recon = world.host.reports.reconciliation()["EUR"]
    assert recon["in_collection"] == 500 and recon["outstanding"]["credit_receivable"] == 500
    assert world.host.reports.audit()["balanced"] is True


def test_a_debt_left_in_collection_blacklists_the_card_after_the_configured_time(
        world: World) -> None:
    card = world.card(world.cardholder())
    world.host.agent.submit(world.tid, world.agent_request(split_purchase(world, card)))
    assert world.host.agent.sweep_collections() == 0
    world.clock.advance(world.host.settings.collection_blacklist_after_s)
    assert world.host.agent.sweep_collections() == 1
    assert world.host.registry.card_info(card.serial.hex()).blacklisted
    assert world.host.agent.sweep_collections() == 0


def test_a_load_first_repays_the_failed_debt(world: World) -> None:
    holder = world.cardholder()
    card = world.card(holder)
    split = split_purchase(world, card)
    world.host.agent.submit(world.tid, world.agent_request(split))
    world.upload(split)
    apply_actions(world, card)  # the card now knows the debt failed
    event = world.load(card, 2_000)
    assert event.event.split == 500  # the card repaid the debt from the load
    assert PurseClient(ApduClient(card)).counters().balance == 1_500
    assert debt_states(world) == [(500, "repaid")]
    recon = world.host.reports.reconciliation()["EUR"]
    assert recon["outstanding"]["credit_receivable"] == 0
    assert recon["outstanding"]["purse_float"] == 1_500
    assert world.host.reports.audit()["balanced"] is True


def test_a_written_off_debt_is_a_loss_on_the_ledger(world: World) -> None:
    card = world.card(world.cardholder())
    ack = world.host.agent.submit(world.tid, world.agent_request(split_purchase(world, card)))
    world.host.agent.write_off(ack.debt_id)
    recon = world.host.reports.reconciliation()["EUR"]
    assert recon["losses"] == 500 and recon["written_off"] == 500
    assert world.host.reports.audit()["balanced"] is True


def test_the_same_agent_debit_from_many_threads_takes_effect_once(world: World) -> None:
    holder = world.cardholder(funds=5_000)
    card = world.card(holder)
    request = world.agent_request(split_purchase(world, card))
    acks: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def submit() -> None:
        start.wait()
        try:
            acks.append(world.host.agent.submit(world.tid, request).status)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(acks) == ["accepted"] + ["duplicate"] * 7
    assert debt_states(world) == [(500, "settled")]
    assert world.host.registry.online_balance(holder) == 4_500
    with world.host.uow() as uow:
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(
            LedgerTransaction).where(LedgerTransaction.kind == "debt_open")) == 1
    assert world.host.reports.audit()["balanced"] is True


def test_concurrent_debts_of_one_cardholder_never_overdraw_the_online_account(
        world: World) -> None:
    holder = world.cardholder(funds=2_000)
    requests = [world.agent_request(split_purchase(world, world.card(holder)))
                for _ in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(requests))

    def submit(i: int) -> None:
        start.wait()
        try:
            world.host.agent.submit(world.tid, requests[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(status for _, status in debt_states(world)) == ["collection"] * 2 + [
        "settled"] * 4
    assert world.host.registry.online_balance(holder) == 0
    assert world.host.reports.audit()["balanced"] is True
