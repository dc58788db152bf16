"""Clearing in bulk: large batches keep every guarantee of one event at a time. Events
of one card arrive across batches and out of order; two batches that share cards are
taken at once; a forged record among many is refused; balances move at commit."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace

import pytest
import sqlalchemy as sa

from tallypurse.card.card import Card
from tallypurse.core.hostapi import JournalEntry
from tallypurse.core.messages import SignedEvent
from tallypurse.core.protocol import TxType
from tallypurse.host.clearing import PARALLEL_FROM
from tallypurse.host.db import bulk
from tallypurse.host.db.engine import Database
from tallypurse.host.db.models import CardEventConflict, CardEventRow, Debt, ListEntry
from tallypurse.host.errors import RECORD_INVALID
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger

from .world import World


def stored(world: World) -> int:
    with world.host.uow() as uow:
        return uow.session.scalar(sa.select(sa.func.count()).select_from(CardEventRow)) or 0


def test_a_cards_events_across_batches_and_out_of_order_close_their_gap(world: World) -> None:
    cards = [world.card() for _ in range(3)]
    for card in cards:
        world.load(card, 5_000)
    taps = [[world.purchase(card, 10 + i) for i in range(6)] for card in cards]
    # Every card's even events first, then the odd ones: each batch leaves gaps that the
    # next one fills, joining events taken earlier.
    world.upload(*[t for row in taps for t in row[1::2]])
    assert {g["card_id"] for g in world.host.reports.gaps(older_than_s=0)} == {
        c.serial.hex() for c in cards}
    world.upload(*[t for row in taps for t in row[0::2]])
    assert world.host.reports.gaps(older_than_s=0) == []
    for card in cards:
        info = world.host.registry.card_info(card.serial.hex())
        assert info.contiguous_seqno == info.max_seqno == 7 and info.status == "active"
        assert info.purse_host_view == 5_000 - sum(10 + i for i in range(6))
    assert world.host.reports.audit()["balanced"] is True


def test_a_forged_record_in_a_large_batch_is_refused_alone(world: World) -> None:
    card = world.card()
    world.load(card, 50_000)
    taps = [world.purchase(card, 1) for _ in range(PARALLEL_FROM + 6)]  # verified on threads
    raw = bytearray(taps[7].to_bytes())
    raw[-1] ^= 1
    taps[7] = SignedEvent.parse(bytes(raw))
    ack = world.upload(*taps)
    assert [(r.seq, r.code) for r in ack.rejected] == [(8, RECORD_INVALID.code)]
    assert len(ack.accepted) == len(taps) - 1
    # the next event does not follow an event the host has: the chain has a gap, not a clone
    info = world.host.registry.card_info(card.serial.hex())
    assert info.status == "active" and info.contiguous_seqno == 8
    assert world.host.settlement.merchant_balance(world.merchant_id) == len(taps) - 1


def test_batches_that_share_cards_are_taken_at_once_each_event_once(world: World) -> None:
    cards: list[Card] = [world.card() for _ in range(4)]
    for card in cards:
        world.load(card, 10_000)
    entries = [world.entry(world.purchase(card, 100 + n)) for n in range(5) for card in cards]
    halves = [entries[0::2], entries[1::2]]  # both batches hold events of every card
    batches = [world.batch(h) for h in halves] * 2  # and each is sent twice at once
    acks: list[object] = []
    errors: list[BaseException] = []

    def upload(batch: object) -> None:
        try:
            acks.append(world.host.clearing.upload(world.tid, batch))  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(acks) == 4
    assert stored(world) == len(cards) + len(entries)  # the loads and every debit, once
    total = sum(e.amount for e in entries)
    assert world.host.settlement.merchant_balance(world.merchant_id) == total
    for card in cards:
        info = world.host.registry.card_info(card.serial.hex())
        assert info.contiguous_seqno == info.max_seqno == 6 and info.status == "active"
    assert world.host.reports.audit()["balanced"] is True


def test_an_identical_record_under_two_journal_numbers_in_one_batch_is_taken_once(
        world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    debit = world.purchase(card, 300)
    first: JournalEntry = world.entry(debit)
    again: JournalEntry = world.entry(debit)
    ack = world.host.clearing.upload(world.tid, world.batch([first, again]))
    assert ack.accepted == [1, 2]
    assert world.host.settlement.merchant_balance(world.merchant_id) == 300
    assert world.host.registry.card_info(card.serial.hex()).purse_host_view == 1_700


def test_balances_move_at_commit_and_are_read_inside_the_transaction(world: World) -> None:
    holder = world.cardholder(funds=1_000)
    online = Acct(Kind.ONLINE, holder, "EUR")
    bank = Acct.system(Kind.BANK_CLEARING, "EUR")
    with world.host.uow() as uow:
        ledger = Ledger(uow.session, world.clock())
        ledger.post(Entry("fund_online", "more", [(bank, 250), (online, -250)], value_time=1))
        assert ledger.balance(online) == -1_250  # this transaction's posting counts
        # rolled back: neither the posting nor the balance change stays
    assert world.host.registry.online_balance(holder) == 1_000
    with world.host.uow() as uow:
        Ledger(uow.session, world.clock()).post(
            Entry("fund_online", "more", [(bank, 250), (online, -250)], value_time=1))
        uow.commit()
    assert world.host.registry.online_balance(holder) == 1_250
    assert world.host.reports.audit()["balanced"] is True


def test_a_forged_copy_of_a_taken_event_in_a_large_batch_marks_nothing(world: World) -> None:
    """The TACs of a large batch are verified while its write transaction runs, which
    takes the entries as if every TAC verified: a forged record that would be a clone's
    second event (same card and seqno as an event taken, another amount) is rejected, and
    nothing that it would have caused is written: no conflict, no alert, no blacklisting."""
    card = world.card()
    world.load(card, 50_000)
    first = world.purchase(card, 5)
    assert world.upload(first).accepted == [1]
    taps = [world.purchase(card, 1) for _ in range(PARALLEL_FROM + 6)]  # verified on threads
    forged = SignedEvent(replace(first.event, amount=6, balance_after=first.event.balance_before
                                 - 6), first.tac)
    batch = world.batch([world.entry(t) for t in taps[:30]] + [world.entry(forged)]
                        + [world.entry(t) for t in taps[30:]])
    ack = world.host.clearing.upload(world.tid, batch)
    forged_seq = batch.entries[30].seq
    assert [(r.seq, r.code) for r in ack.rejected] == [(forged_seq, RECORD_INVALID.code)]
    assert len(ack.accepted) == len(taps) and not ack.duplicates
    info = world.host.registry.card_info(card.serial.hex())
    assert info.status == "active" and info.contiguous_seqno == info.max_seqno == len(taps) + 2
    with world.host.uow() as uow:
        s = uow.session
        assert s.scalar(sa.select(sa.func.count()).select_from(CardEventConflict)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(ListEntry)) == 0
        record = s.scalar(sa.select(CardEventRow.record).where(
            CardEventRow.card_id == card.serial.hex(), CardEventRow.seqno == 2))
    assert record == first.to_bytes().hex()  # the event taken first is left as it was
    # the terminal counted the forged entry in its totals: they differ from the host's
    assert sorted(a["kind"] for a in world.host.reports.alerts()) == [
        "record_invalid", "totals_mismatch"]
    assert world.host.settlement.merchant_balance(world.merchant_id) == 5 + len(taps)
    assert world.host.reports.audit()["balanced"] is True


def test_arrays_that_need_quoting_reach_the_database_as_they_are(database: Database) -> None:
    """Bulk statements send every column as one array literal, strings quoted and
    escaped: each row comes back as it was sent, awkward strings and NULLs included."""
    rows = [("plain", 1), ("with space", -2), ("com,ma", 3), ('quo"te', 4), ("{brace}", 5),
            ("", 6), ("NULL", 7), ("null", 8), ("back\\slash", 9), (None, None),
            ("0123abcd", 10**15)]
    columns: list[bulk.Column] = [("name", "text"), ("n", "bigint")]
    with database.uow() as uow:
        for part in (rows, rows[:1] + rows[-1:], [r for r in rows if r[0] is not None]):
            got = bulk.select_with(uow.session, columns, part, "SELECT name, n FROM v")
            assert sorted(got, key=repr) == sorted(part, key=repr)


@pytest.mark.parametrize("large", [False, True])
def test_a_forged_split_says_nothing_of_what_it_would_have_caused(
        world: World, caplog: pytest.LogCaptureFixture, large: bool) -> None:
    """A forged split debit (its TAC broken) for a cardholder who could not pay would open
    a debt in collection and publish its write-back; the batch is taken without it, and
    the log names no debt, no write-back and no collection that was never committed (a
    large batch is first taken as if every TAC verified, then rolled back)."""
    holder = world.cardholder()  # no online funds, no bank account: collection
    card = world.card(holder)
    world.load(card, 1_000)
    split = world.purchase(card, 1_000, split=500, tx_type=TxType.CANTEEN)
    forged = SignedEvent(split.event, bytes(64))
    other = world.card()
    world.load(other, 50_000)
    taps = [world.purchase(other, 1) for _ in range(PARALLEL_FROM + 6 if large else 3)]
    caplog.set_level(logging.INFO, logger="tallypurse.host")
    ack = world.host.clearing.upload(world.tid, world.batch(
        [world.entry(forged)] + [world.entry(t) for t in taps]))
    assert [r.code for r in ack.rejected] == [RECORD_INVALID.code]
    assert len(ack.accepted) == len(taps)
    events = [json.loads(r.getMessage()).get("event") for r in caplog.records
              if r.getMessage().startswith("{")]
    assert "batch_cleared" in events
    assert not {"debt_collection", "writeback_published"} & set(events)
    with world.host.uow() as uow:
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt)) == 0
