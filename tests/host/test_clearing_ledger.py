"""Clearing's books: a batch's debits are one ledger transaction per value day whose
postings sum each card's debits and the merchant's, and every card event names the
transaction that booked it; settlement counts the debits, not the transactions. Also the
one-dump batch digest and the ledger's cache of account ids."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
import sqlalchemy as sa

from tallypurse.core.hostapi import Totals
from tallypurse.core.httpsig import batch_signed_bytes
from tallypurse.core.protocol import EventKind
from tallypurse.host.clearing import batch_digest
from tallypurse.host.common import payload_hash
from tallypurse.host.db.models import Account, CardEventRow, LedgerTransaction, Posting
from tallypurse.host.ledger import AccountIds, Acct, Entry, Kind, Ledger

from .world import World

DAY = 86_400


def day_of(unix: int) -> dt.date:
    return dt.datetime.fromtimestamp(unix, dt.UTC).date()


def clear_debits(world: World) -> list[LedgerTransaction]:
    with world.host.uow() as uow:
        rows = list(uow.session.scalars(sa.select(LedgerTransaction).where(
            LedgerTransaction.kind == "clear_debit").order_by(LedgerTransaction.id)))
        uow.session.expunge_all()
        return rows


def purse_postings(world: World, txn_id: int) -> dict[str, int]:
    with world.host.uow() as uow:
        return {owner: int(amount) for owner, amount in uow.session.execute(
            sa.select(Account.owner, Posting.amount)
            .join(Account, Account.id == Posting.account_id)
            .where(Posting.transaction_id == txn_id,
                   Account.kind == Kind.PURSE_FLOAT.value)).all()}


def events_of(world: World, txn_id: int) -> list[CardEventRow]:
    with world.host.uow() as uow:
        rows = list(uow.session.scalars(sa.select(CardEventRow).where(
            CardEventRow.transaction_id == txn_id)))
        uow.session.expunge_all()
        return rows


def test_a_batchs_debits_are_one_transaction_per_day_traced_by_their_events(
        world: World) -> None:
    a, b = world.card(), world.card()
    world.load(a, 5_000)
    world.load(b, 5_000)
    start = world.clock()
    first = [world.purchase(a, 100), world.purchase(a, 250), world.purchase(b, 40)]
    world.clock.advance(DAY)  # the terminal stayed offline into the next day
    second = [world.purchase(b, 7)]
    batch = world.batch([world.entry(e) for e in first + second], batch_id="day-end-0001")
    ack = world.host.clearing.upload(world.tid, batch)
    assert ack.accepted == [1, 2, 3, 4] and not ack.mismatch

    txns = clear_debits(world)
    assert [(t.reference, t.value_day, t.merchant_id) for t in txns] == [
        (f"{world.tid}:day-end-0001:{day_of(start).isoformat()}:EUR", day_of(start),
         world.merchant_id),
        (f"{world.tid}:day-end-0001:{day_of(start + DAY).isoformat()}:EUR",
         day_of(start + DAY), world.merchant_id)]
    # each day keeps its own (original) time, and its postings sum the cards' debits
    assert txns[0].value_time == first[0].event.time
    assert txns[1].value_time == second[0].event.time
    a_id, b_id = a.serial.hex(), b.serial.hex()
    assert purse_postings(world, txns[0].id) == {a_id: 350, b_id: 40}
    assert purse_postings(world, txns[1].id) == {b_id: 7}
    # every debit is traced from its event to the transaction and back
    assert sorted((e.card_id, e.amount) for e in events_of(world, txns[0].id)) == sorted(
        [(a_id, 100), (a_id, 250), (b_id, 40)])
    assert [(e.card_id, e.amount) for e in events_of(world, txns[1].id)] == [(b_id, 7)]
    for txn in txns:
        by_card: Counter[str] = Counter()
        for e in events_of(world, txn.id):
            by_card[e.card_id] += e.amount
        assert dict(by_card) == purse_postings(world, txn.id)
    assert world.host.reports.audit()["balanced"] is True
    assert world.host.registry.card_info(a_id).purse_host_view == 5_000 - 350
    assert world.host.registry.card_info(b_id).purse_host_view == 5_000 - 47


def test_settlement_counts_the_debits_of_a_batch_not_its_transactions(world: World) -> None:
    card = world.card()
    world.load(card, 5_000)
    world.upload(*[world.purchase(card, 100 + i) for i in range(5)])
    (settled,) = world.host.settlement.run(day_of(world.clock()))
    assert (settled.count, settled.gross) == (5, sum(100 + i for i in range(5)))
    assert settled.fees + settled.net == settled.gross
    assert len(clear_debits(world)) == 1


def test_a_duplicate_in_a_later_batch_books_nothing_and_loads_keep_their_own_transaction(
        world: World) -> None:
    card = world.card()
    world.load(card, 5_000)
    tap = world.purchase(card, 300)
    world.upload(tap)
    again = world.upload(tap)  # the same card event in another batch (new journal number)
    assert again.accepted == [2] and again.rejected == []
    assert len(clear_debits(world)) == 1
    with world.host.uow() as uow:
        loads = uow.session.scalars(sa.select(CardEventRow).where(
            CardEventRow.kind == EventKind.LOAD)).all()
        assert loads and all(e.transaction_id is not None for e in loads)
        refs = {e.transaction_id: f"{e.card_id}:{e.seqno}" for e in loads}
        for txn_id, ref in refs.items():
            txn = uow.session.get(LedgerTransaction, txn_id)
            assert txn is not None and (txn.kind, txn.reference) == ("clear_load", ref)
    assert world.host.reports.audit()["balanced"] is True


def test_the_batch_digest_is_the_payload_hash_and_the_signed_bytes(world: World) -> None:
    card = world.card()
    world.load(card, 5_000)
    entries = [world.entry(world.purchase(card, 10)),
               world.entry(kind="online", card_id=card.serial.hex(), amount=5,
                           reference="caf\u00e9 \"quoted\" \\ tab\t")]
    batch = world.batch(entries, totals={"debit": Totals(count=1, amount=10),
                                         "online": Totals(count=1, amount=5),
                                         "terminal_id": Totals(count=0, amount=0)})
    assert batch_digest(batch) == (payload_hash(batch), batch_signed_bytes(batch))


def test_the_account_id_cache_keeps_only_committed_accounts(world: World) -> None:
    known = AccountIds()
    fresh = Acct(Kind.MERCHANT_PAYABLE, "cache-test", "EUR")
    float_ = Acct.system(Kind.FEES, "EUR")
    entry = Entry("test_cache", "1", [(fresh, 5), (float_, -5)], value_time=world.clock())
    with world.host.uow() as uow:  # made here and rolled back: never kept
        Ledger(uow.session, world.clock(), known).post(entry)
        assert fresh not in known.ids
    with world.host.uow() as uow:
        Ledger(uow.session, world.clock(), known).post(entry)
        uow.commit()
    assert fresh not in known.ids  # made by that transaction: learnt only when read again
    with world.host.uow() as uow:
        ids = Ledger(uow.session, world.clock(), known).account_ids([fresh])
    assert known.ids[fresh] == ids[fresh]
    with world.host.uow() as uow:  # a kept id is used as it is, and stays right
        Ledger(uow.session, world.clock(), known).post(
            Entry("test_cache", "2", [(fresh, 7), (float_, -7)], value_time=world.clock()))
        uow.commit()
    assert world.host.reports.audit()["balanced"] is True
    with world.host.uow() as uow:
        assert Ledger(uow.session, world.clock()).balance(fresh) == 12


@pytest.mark.parametrize("bad", ["00" * 10, "ff" + "00" * 132])
def test_a_malformed_record_is_refused_with_the_parsers_reason(world: World, bad: str) -> None:
    card = world.card()
    world.load(card, 5_000)
    entry = world.entry(kind="debit", card_id=card.serial.hex(), amount=1)
    entry = entry.model_copy(update={"record": bad})
    ack = world.host.clearing.upload(world.tid, world.batch([entry]))
    assert len(ack.rejected) == 1 and ack.rejected[0].reason.startswith("card record:")
    assert clear_debits(world) == []
