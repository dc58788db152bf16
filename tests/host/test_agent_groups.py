"""Agent debits written in groups (host/agent_groups.py): the debits waiting together go in
one transaction; every debit that is not the common case goes back and is taken the
one-debit way; a group that fails writes nothing and gives every debit back. On SQLite and
PostgreSQL (the ``world`` fixture)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import sqlalchemy as sa

from tallypurse.core.hostapi import AgentDebitAck, AgentDebitRequest
from tallypurse.core.messages import DebtOutcome
from tallypurse.core.protocol import TxType
from tallypurse.host.agent import SignedBy, TerminalChanged
from tallypurse.host.agent_groups import AgentGroups, OneByOne, TerminalChangedResult, Waiting
from tallypurse.host.common import payload_hash
from tallypurse.host.db.models import (
    Account,
    CreditEvent,
    Debt,
    LedgerTransaction,
    ListEntry,
    Posting,
    RequestNonce,
)
from tallypurse.host.db.models import WriteBackAction as ActionRow
from tallypurse.host.errors import RECORD_INVALID, REPLAY, HostError

from .world import World


def split_request(world: World, holder: str, *, total: int = 1_500,
                  purse: int = 1_000) -> AgentDebitRequest:
    card = world.card(holder)
    world.load(card, purse)
    split = world.purchase(card, purse, split=total - purse, tx_type=TxType.CANTEEN)
    return world.agent_request(split)


def cardholder(world: World, funds: int) -> str:
    """A cardholder whose online account, like the merchant's payable account, has been
    used once (the group writes to accounts that exist; a first use goes one by one)."""
    holder = world.cardholder(funds=funds + 500)
    first = world.host.agent.submit(world.tid, split_request(world, holder))
    assert first.status == "accepted"
    return holder


def signed_by(world: World, nonce: str | None = None) -> SignedBy:
    with world.host.uow() as uow:
        key = world.host.tms.signing_key(uow.session, world.tid)
    return SignedBy(world.tid, key, nonce or secrets.token_hex(16))


def waiting(world: World, req: AgentDebitRequest, signed: SignedBy | None = None) -> Waiting:
    agent = world.host.agent
    prepared = agent.prepare(world.tid, req, payload_hash(req), signed,
                             agent.cached_card(req.card_id))
    assert isinstance(prepared, Waiting)
    return prepared


def finish(world: World, item: Waiting, result: Any) -> AgentDebitAck:
    return world.host.agent.finish(item.terminal_id, item.req, item.digest, item.signed, result)


def rows_of(world: World, debt_id: str) -> dict[str, Any]:
    """What a debt wrote, without ids, keys and times: the shape both ways must share."""
    with world.host.uow() as uow:
        s = uow.session
        debt = s.get(Debt, debt_id)
        assert debt is not None
        txns = s.scalars(sa.select(LedgerTransaction).where(
            LedgerTransaction.reference == debt_id).order_by(LedgerTransaction.kind)).all()
        legs = {t.kind: sorted((a.kind, a.owner == debt.merchant_id,
                                a.owner == debt.cardholder_id, p.amount, p.currency)
                               for p, a in s.execute(
                                   sa.select(Posting, Account).join(
                                       Account, Account.id == Posting.account_id).where(
                                       Posting.transaction_id == t.id)).all())
                for t in txns}
        events = [(e.kind, e.amount, e.card_id == debt.card_id) for e in s.scalars(
            sa.select(CreditEvent).where(CreditEvent.reference == debt_id))]
        actions = s.scalars(sa.select(ActionRow).where(ActionRow.debt_id == debt_id)).all()
        entries = [(e.list_name, e.op, e.kind, e.seq, e.sealed == a.sealed)
                   for a in actions for e in s.scalars(
                       sa.select(ListEntry).where(ListEntry.action_id == a.action_id))]
        return {
            "debt": (debt.amount, debt.currency, debt.status, debt.origin, debt.tx_type,
                     debt.terminal_id, debt.merchant_id, debt.repaid, debt.collection_since,
                     debt.payload_hash is not None, debt.idempotency_key is not None),
            "ledger": [(t.kind, t.merchant_id, t.card_id == debt.card_id, t.memo.replace(
                str(debt.atc), "<atc>"), t.value_time == (debt.event_time if t.kind ==
                                                           "debt_open" else t.created))
                       for t in txns],
            "postings": legs,
            "credit_events": events,
            "actions": [(a.kind, a.status, a.payload == DebtOutcome(
                debt.atc, debt.amount).to_bytes().hex()) for a in actions],
            "list_entries": entries,
        }


def test_a_group_writes_the_rows_the_one_debit_way_writes(world: World) -> None:
    holder = cardholder(world, 5_000)
    grouped = waiting(world, split_request(world, holder))
    by_one = waiting(world, split_request(world, holder))
    (taken,) = world.host.agent.groups.write([grouped])
    assert isinstance(taken, AgentDebitAck)
    alone = finish(world, by_one, OneByOne(False))  # the ORM way, as for a given-back debit
    assert alone.status == "accepted"
    assert rows_of(world, taken.debt_id) == rows_of(world, alone.debt_id)
    assert rows_of(world, taken.debt_id)["debt"][2] == "settled"
    assert world.host.registry.online_balance(holder) == 4_000
    assert world.host.reports.audit()["balanced"] is True


def test_debits_waiting_together_are_written_in_one_transaction(world: World) -> None:
    holder = cardholder(world, 10_000)
    items = [waiting(world, split_request(world, holder), signed_by(world)) for _ in range(5)]
    # A writer of its own, not started yet (the process's writer, started by the
    # cardholder's first debit, would take each item as it is queued): the items are
    # queued before it starts, and it drains them all.
    groups = AgentGroups(world.host.agent)
    for item in items[:-1]:
        groups._queue.put(item)
    groups.take(items[-1])
    answers = [item.future.result(timeout=30) for item in items]
    assert all(isinstance(a, AgentDebitAck) and a.status == "accepted" for a in answers)
    assert groups.groups == 1
    with world.host.uow() as uow:
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt).where(
            Debt.status == "settled")) == 1 + 5  # the cardholder's first debit, then the group
        nonces = {n for n in uow.session.scalars(sa.select(RequestNonce.nonce))}
    assert {i.signed.nonce for i in items if i.signed} <= nonces
    assert world.host.registry.online_balance(holder) == 10_000 - 5 * 500
    assert world.host.reports.audit()["balanced"] is True


def test_twins_in_one_group_take_effect_once(world: World) -> None:
    holder = cardholder(world, 10_000)
    req = split_request(world, holder)
    first = waiting(world, req, signed_by(world))
    again = waiting(world, req, signed_by(world))  # the same debit, retried: another nonce
    replay = waiting(world, split_request(world, holder), first.signed)  # a nonce reused
    results = world.host.agent.groups.write([first, again, replay])
    assert isinstance(results[0], AgentDebitAck) and results[0].status == "accepted"
    assert results[1] == OneByOne(False) and results[2] == OneByOne(False)
    twin = finish(world, again, results[1])
    assert (twin.status, twin.debt_id) == ("duplicate", results[0].debt_id)
    with pytest.raises(HostError) as refused:
        finish(world, replay, results[2])
    assert refused.value.what is REPLAY
    assert world.host.registry.online_balance(holder) == 10_000 - 500
    with world.host.uow() as uow:  # the cardholder's first debit, and this one
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt)) == 2


def test_each_debit_of_a_mixed_group_gets_its_own_answer(world: World) -> None:
    rich = cardholder(world, 10_000)
    poor = cardholder(world, 100)  # holds less than the 500 owed
    fast = waiting(world, split_request(world, rich), signed_by(world))
    short = waiting(world, split_request(world, poor), signed_by(world))
    seen = signed_by(world)
    with world.host.uow() as uow:  # a nonce the host already recorded
        uow.session.add(RequestNonce(key_id=world.tid, nonce=seen.nonce,
                                     created=world.host.now()))
        uow.commit()
    replayed = waiting(world, split_request(world, rich), seen)
    retried_req = split_request(world, rich)
    earlier = world.host.agent.submit(world.tid, retried_req)
    retried = waiting(world, retried_req, signed_by(world))
    results = world.host.agent.groups.write([fast, short, replayed, retried])
    assert isinstance(results[0], AgentDebitAck) and results[0].status == "accepted"
    assert results[1] == OneByOne(True)  # its nonce is recorded with the group
    assert isinstance(results[2], HostError) and results[2].what is REPLAY
    assert results[3] == OneByOne(False)
    collected = finish(world, short, results[1])
    assert collected.status == "accepted"
    assert (finish(world, retried, results[3]).debt_id) == earlier.debt_id
    with world.host.uow() as uow:
        debt = uow.session.get(Debt, collected.debt_id)
        assert debt is not None and debt.status == "collection"  # no bank account linked
        # the two cardholders' first debits, the earlier one, then fast and short
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt)) == 5
    assert world.host.registry.online_balance(poor) == 100
    assert world.host.reports.audit()["balanced"] is True


def test_a_terminal_revoked_meanwhile_is_not_taken_by_the_group(world: World) -> None:
    holder = cardholder(world, 10_000)
    item = waiting(world, split_request(world, holder), signed_by(world))
    world.host.tms.revoke(world.tid, "stolen")
    (result,) = world.host.agent.groups.write([item])
    assert isinstance(result, TerminalChangedResult)
    with pytest.raises(TerminalChanged):
        finish(world, item, result)
    assert world.host.registry.online_balance(holder) == 10_000
    with world.host.uow() as uow:  # only the cardholder's first debit
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt)) == 1


def test_a_failed_group_writes_nothing_and_each_debit_is_then_taken_once(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = cardholder(world, 10_000)
    items = [waiting(world, split_request(world, holder), signed_by(world)) for _ in range(3)]
    groups = world.host.agent.groups

    def refuse(*_: Any) -> Any:
        raise sa.exc.OperationalError("INSERT", {}, Exception("the database refused"))

    monkeypatch.setattr(groups, "_book", refuse)
    groups._write(items)  # what the writer thread does with a group
    results = [item.future.result(timeout=5) for item in items]
    assert results == [OneByOne(False)] * 3
    with world.host.uow() as uow:  # nothing of the group: no nonce, no debt but the first
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt)) == 1
        recorded = set(uow.session.scalars(sa.select(RequestNonce.nonce)))
    assert not recorded & {item.signed.nonce for item in items if item.signed}
    monkeypatch.undo()
    answers = [finish(world, item, result) for item, result in zip(items, results, strict=True)]
    assert [a.status for a in answers] == ["accepted"] * 3
    again = [finish(world, item, OneByOne(True)) for item in items]  # a retry of each
    assert [a.status for a in again] == ["duplicate"] * 3
    assert world.host.registry.online_balance(holder) == 10_000 - 3 * 500
    assert world.host.reports.audit()["balanced"] is True


def test_a_forged_record_is_refused_whether_or_not_the_card_was_met_before(
        world: World) -> None:
    holder = cardholder(world, 10_000)
    agent = world.host.agent
    card = world.card(holder)
    for met_before in (False, True):  # first the card is new to the process, then kept
        world.load(card, 1_000)
        req = world.agent_request(world.purchase(card, 1_000, split=500,
                                                 tx_type=TxType.CANTEEN))
        assert (agent.cached_card(req.card_id) is not None) is met_before
        raw = bytearray.fromhex(req.record)
        raw[-1] ^= 1  # the TAC no longer verifies
        forged = req.model_copy(update={"record": raw.hex()})
        with pytest.raises(HostError) as refused:
            agent.submit(world.tid, forged)
        assert refused.value.what is RECORD_INVALID
        assert agent.submit(world.tid, req).status == "accepted"
        assert agent.cached_card(req.card_id) is not None
    assert world.host.registry.online_balance(holder) == 10_000 - 2 * 500
    with world.host.uow() as uow:  # the cardholder's first debit and the two genuine ones
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt)) == 3


def test_a_request_cancelled_before_its_group_is_dropped_and_the_writer_goes_on(
        world: World) -> None:
    holder = cardholder(world, 10_000)
    gone, kept, last = (waiting(world, split_request(world, holder), signed_by(world))
                        for _ in range(3))
    groups = AgentGroups(world.host.agent)  # not started yet: nothing takes ``gone`` early
    groups._queue.put(gone)
    assert gone.future.cancel()  # its client went away while it waited
    groups._queue.put(kept)
    groups.take(last)
    assert isinstance(kept.future.result(timeout=30), AgentDebitAck)
    assert isinstance(last.future.result(timeout=30), AgentDebitAck)
    later = world.host.agent.submit(world.tid, split_request(world, holder))
    assert later.status == "accepted"  # the writer still takes debits
    with world.host.uow() as uow:
        keys = set(uow.session.scalars(sa.select(Debt.idempotency_key)))
    assert gone.req.idempotency_key not in keys
    assert {kept.req.idempotency_key, last.req.idempotency_key} <= keys
    assert world.host.registry.online_balance(holder) == 10_000 - 3 * 500


def test_a_failing_report_after_commit_does_not_undo_the_answers(world: World) -> None:
    holder = cardholder(world, 10_000)
    item = waiting(world, split_request(world, holder), signed_by(world))
    groups = world.host.agent.groups

    def broken(debits: int, taken: int) -> None:
        raise RuntimeError("the metrics are down")

    groups.listeners.append(broken)
    (result,) = groups.write([item])
    assert isinstance(result, AgentDebitAck) and result.status == "accepted"
    again = finish(world, item, OneByOne(True))  # the terminal's retry: the same debt
    assert (again.status, again.debt_id) == ("duplicate", result.debt_id)
    assert world.host.registry.online_balance(holder) == 10_000 - 500
