"""Clearing with real card-signed records: each (card, event) once, duplicates as no-ops,
clones and broken chains blacklisted in the same run, gaps tracked, totals reconciled."""

from __future__ import annotations

import copy
import threading

import pytest
import sqlalchemy as sa

from tallypurse.card.card import Card
from tallypurse.core.hostapi import Totals
from tallypurse.core.messages import SignedEvent
from tallypurse.core.protocol import TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.clearing import EventFields, parse_record
from tallypurse.host.db.models import CardEventRow, Debt, LedgerTransaction
from tallypurse.host.errors import (
    BATCH_SIGNATURE,
    IDEMPOTENCY_CONFLICT,
    RECORD_INVALID,
    RECORD_MISMATCH,
    UNKNOWN_CARD,
    HostError,
)
from tallypurse.host.service import Host

from .world import World


def clone(card: Card) -> Card:
    """A second card with the same memory: what a cloner would make."""
    return Card(copy.deepcopy(card.eeprom))


def ledger_size(host: Host) -> int:
    with host.uow() as uow:
        return uow.session.scalar(sa.select(sa.func.count()).select_from(LedgerTransaction)) or 0


def events(host: Host, card_id: str) -> int:
    with host.uow() as uow:
        return uow.session.scalar(sa.select(sa.func.count()).select_from(CardEventRow).where(
            CardEventRow.card_id == card_id)) or 0


def test_debits_are_cleared_into_the_merchant_payable_and_the_ledger_balances(
        world: World) -> None:
    card = world.card(world.cardholder())
    world.load(card, 5_000)
    taps = [world.purchase(card, amount) for amount in (1_200, 300, 50)]
    ack = world.upload(*taps)
    assert ack.accepted == [1, 2, 3] and not ack.rejected and not ack.mismatch
    assert ack.host_totals == {"debit": Totals(count=3, amount=1_550)}
    assert world.host.settlement.merchant_balance(world.merchant_id) == 1_550
    info = world.host.registry.card_info(card.serial.hex())
    assert info.purse_host_view == 5_000 - 1_550 == PurseClient(ApduClient(card)).counters().balance
    assert info.contiguous_seqno == info.max_seqno == 4  # one load, three debits
    assert world.host.reports.audit()["balanced"] is True


def test_a_retried_batch_gets_the_same_answer_and_changes_nothing(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    batch = world.batch([world.entry(world.purchase(card, 700))])
    first = world.host.clearing.upload(world.tid, batch)
    size = ledger_size(world.host)
    assert world.host.clearing.upload(world.tid, batch) == first
    assert ledger_size(world.host) == size


def test_an_identical_event_in_another_batch_is_a_duplicate_no_op(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    debit = world.purchase(card, 700)
    world.upload(debit)
    size = ledger_size(world.host)
    again = world.host.clearing.upload(world.tid, world.batch([world.journal[0]]))
    assert again.duplicates == [1] and again.accepted == []
    ack = world.upload(debit)  # the same card event under a new journal number
    assert ack.accepted == [2]
    assert ledger_size(world.host) == size
    assert world.host.settlement.merchant_balance(world.merchant_id) == 700


def test_a_batch_id_reused_for_other_content_is_refused(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    world.host.clearing.upload(world.tid, world.batch([world.entry(world.purchase(card, 1))],
                                                      batch_id="day-0001"))
    other = world.batch([world.entry(world.purchase(card, 2))], batch_id="day-0001")
    with pytest.raises(HostError) as exc:
        world.host.clearing.upload(world.tid, other)
    assert exc.value.what is IDEMPOTENCY_CONFLICT


def test_a_batch_with_a_bad_sam_signature_is_refused_whole(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    batch = world.batch([world.entry(world.purchase(card, 100))])
    forged = batch.model_copy(update={"signature": "00" * 64})
    size = ledger_size(world.host)
    with pytest.raises(HostError) as exc:
        world.host.clearing.upload(world.tid, forged)
    assert exc.value.what is BATCH_SIGNATURE
    assert ledger_size(world.host) == size


def test_a_record_is_read_into_the_same_fields_as_the_card_event(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    signed = world.purchase(card, 500)
    parsed = parse_record(signed.to_bytes().hex())
    assert not isinstance(parsed, HostError)
    fields, tac, raw = parsed
    assert fields == EventFields.of(signed.event) and fields.card_event() == signed.event
    assert (tac, raw) == (signed.tac, signed.to_bytes())
    short = parse_record(signed.to_bytes()[:-1].hex())
    assert isinstance(short, HostError) and short.what is RECORD_INVALID
    unknown_kind = parse_record("ee" + signed.to_bytes().hex()[2:])
    assert isinstance(unknown_kind, HostError) and "unknown event kind" in unknown_kind.message


def test_a_forged_record_is_rejected_alerted_and_pays_nobody(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    genuine = world.purchase(card, 500)
    raw = bytearray(genuine.to_bytes())
    raw[-1] ^= 1  # the TAC no longer verifies
    ack = world.host.clearing.upload(world.tid, world.batch([world.entry(
        SignedEvent.parse(bytes(raw)))]))
    assert [r.code for r in ack.rejected] == [RECORD_INVALID.code]
    assert ack.mismatch  # the terminal counted it, the host did not take it
    assert world.host.settlement.merchant_balance(world.merchant_id) == 0
    assert [a["kind"] for a in world.host.reports.alerts()][:2] == ["totals_mismatch",
                                                                    "record_invalid"]


def test_a_debit_entry_without_the_cards_record_is_rejected_by_name(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    bare = world.entry(kind="debit", card_id=card.serial.hex(), amount=300)  # no record
    stranger = world.entry(kind="debit", card_id="ff" * 8, amount=300)  # a card never issued
    ack = world.host.clearing.upload(world.tid, world.batch([bare, stranger]))
    assert [(r.seq, r.code) for r in ack.rejected] == [(bare.seq, RECORD_MISMATCH.code),
                                                       (stranger.seq, UNKNOWN_CARD.code)]
    assert "needs the card's record" in ack.rejected[0].reason
    assert ack.accepted == [] and ack.mismatch
    assert world.host.settlement.merchant_balance(world.merchant_id) == 0


def test_a_cloned_card_is_blacklisted_in_the_same_run_and_the_merchant_still_paid(
        world: World) -> None:
    card = world.card()
    world.load(card, 3_000)
    twin = clone(card)
    a = world.purchase(card, 1_000)
    b = world.purchase(twin, 2_000)  # same ATC, another debit
    ack = world.upload(a, b)
    assert ack.accepted == [1, 2]
    card_id = card.serial.hex()
    info = world.host.registry.card_info(card_id)
    assert info.status == "cloned" and info.blacklisted
    with world.host.uow() as uow:
        blacklist = world.host.lists.snapshot(uow.session, "blacklist")
    assert [e.card_id for e in blacklist.blacklist] == [card_id]
    assert world.host.settlement.merchant_balance(world.merchant_id) == 3_000
    assert world.host.reports.clones()[0]["card_id"] == card_id
    report = world.host.reports.audit()
    assert report["balanced"] is True
    with world.host.uow() as uow:
        losses = uow.session.scalar(sa.text(
            "SELECT balance FROM accounts WHERE kind = 'losses'"))
    assert losses == 2_000


def test_a_broken_balance_chain_marks_the_card_cloned(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)
    twin = clone(card)
    mine = world.purchase(card, 1_000)  # seqno 2 on the card
    world.purchase(twin, 200)  # seqno 2 on the clone, never uploaded
    theirs = world.purchase(twin, 300)  # seqno 3: follows the clone's history, not the card's
    ack = world.upload(mine, theirs)
    assert ack.accepted == [1, 2]
    info = world.host.registry.card_info(card.serial.hex())
    assert info.status == "cloned" and info.blacklisted


def test_a_counter_gap_stays_open_until_the_missing_event_arrives(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)
    first, second, third = (world.purchase(card, n) for n in (100, 200, 300))
    world.upload(first, third)
    card_id = card.serial.hex()
    assert [g["card_id"] for g in world.host.reports.gaps(older_than_s=0)] == [card_id]
    assert world.host.reports.gaps() == []  # not old enough to report yet
    world.clock.advance(world.host.settings.gap_report_after_s)
    assert [g["card_id"] for g in world.host.reports.gaps()] == [card_id]
    world.upload(second)
    assert world.host.reports.gaps(older_than_s=0) == []
    info = world.host.registry.card_info(card_id)
    assert info.contiguous_seqno == info.max_seqno == 4 and info.status == "active"


def test_a_gap_that_narrows_keeps_the_time_it_opened(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)  # event 1
    taps = [world.purchase(card, 10 * n) for n in range(1, 6)]  # events 2 to 6
    card_id = card.serial.hex()
    world.upload(taps[0], taps[2], taps[4])  # 2, 4 and 6: missing 3 and 5
    opened = world.host.now()
    assert world.host.reports.gaps(older_than_s=0) == [
        {"card_id": card_id, "contiguous_seqno": 2, "max_seqno": 6, "gap_since": opened}]
    world.clock.advance(60)
    world.upload(taps[1])  # 3 arrives: contiguous up to 4, the gap still open since then
    assert world.host.reports.gaps(older_than_s=0) == [
        {"card_id": card_id, "contiguous_seqno": 4, "max_seqno": 6, "gap_since": opened}]
    info = world.host.registry.card_info(card_id)
    assert (info.contiguous_seqno, info.max_seqno, info.gap_since) == (4, 6, opened)
    world.upload(taps[3])  # 5 arrives: no gap left
    assert world.host.reports.gaps(older_than_s=0) == []
    info = world.host.registry.card_info(card_id)
    assert (info.contiguous_seqno, info.max_seqno, info.gap_since) == (6, 6, None)
    assert world.host.reports.audit()["balanced"] is True


def test_a_gap_filled_whole_while_another_opens_is_as_old_as_the_new_one(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)  # event 1
    taps = [world.purchase(card, 10 * n) for n in range(1, 6)]  # events 2 to 6
    card_id = card.serial.hex()
    world.upload(taps[0], taps[2])  # 2 and 4: missing 3
    world.clock.advance(60)
    world.upload(taps[1], taps[4])  # 3 fills that gap; 6 opens another (missing 5)
    assert world.host.reports.gaps(older_than_s=0) == [
        {"card_id": card_id, "contiguous_seqno": 4, "max_seqno": 6,
         "gap_since": world.host.now()}]


def test_late_batches_keep_their_original_times(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)
    debit = world.purchase(card, 100)
    world.clock.advance(5 * 86400)  # the terminal was offline for five days
    world.upload(debit)
    with world.host.uow() as uow:
        txn = uow.session.scalar(sa.select(LedgerTransaction).where(
            LedgerTransaction.kind == "clear_debit"))
        assert txn is not None and txn.value_time == debit.event.time


def test_different_totals_from_the_terminal_are_reported_as_a_mismatch(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)
    entry = world.entry(world.purchase(card, 100))
    ack = world.host.clearing.upload(world.tid, world.batch(
        [entry], totals={"debit": Totals(count=1, amount=999)}))
    assert ack.accepted == [1] and ack.mismatch
    assert ack.host_totals == {"debit": Totals(count=1, amount=100)}
    assert world.host.reports.alerts()[0]["kind"] == "totals_mismatch"


def test_a_split_debit_in_a_batch_opens_its_debt_once_with_the_agent_debit(
        world: World) -> None:
    holder = world.cardholder(funds=5_000)
    card = world.card(holder)
    world.load(card, 1_000)
    split = world.purchase(card, 1_000, split=400, tx_type=TxType.CANTEEN)
    world.upload(split)  # the batch arrives before the agent debit
    ack = world.host.agent.submit(world.tid, world.agent_request(split))
    assert ack.status == "accepted"
    assert world.host.agent.submit(world.tid, world.agent_request(split)).status == "duplicate"
    with world.host.uow() as uow:
        debts = [(d.amount, d.status) for d in uow.session.scalars(sa.select(Debt))]
    assert debts == [(400, "settled")]
    assert world.host.settlement.merchant_balance(world.merchant_id) == 1_400
    assert world.host.registry.online_balance(holder) == 4_600
    assert world.host.reports.audit()["balanced"] is True


def test_a_cancelled_debit_goes_back_to_the_purse(world: World) -> None:
    card = world.card()
    world.load(card, 2_000)
    assert world.sam is not None
    tap = world.lab.purchase(card, world.sam, 500, time=world.clock())
    assert tap.event is not None
    result = world.lab.cancel_last(card, world.sam, tap, time=world.clock())
    cancel = PurseClient(ApduClient(card)).transaction_proof(result.atc)
    world.upload(tap.event, cancel)
    assert world.host.settlement.merchant_balance(world.merchant_id) == 0
    assert world.host.registry.card_info(card.serial.hex()).purse_host_view == 2_000


def test_the_same_batch_uploaded_twice_at_once_takes_effect_once(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)
    batch = world.batch([world.entry(world.purchase(card, n)) for n in (100, 200, 300)])
    acks: list[object] = []
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            acks.append(world.host.clearing.upload(world.tid, batch))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(acks) == 4 and all(a == acks[0] for a in acks)
    assert events(world.host, card.serial.hex()) == 4
    assert world.host.settlement.merchant_balance(world.merchant_id) == 600
    assert world.host.reports.audit()["balanced"] is True


def test_a_journal_whose_hash_chain_breaks_is_taken_and_alerted(world: World) -> None:
    card = world.card()
    world.load(card, 3_000)
    first = world.entry(world.purchase(card, 100))
    world.host.clearing.upload(world.tid, world.batch([first]))
    world.head = "11" * 32  # the next entry does not follow the one before
    ack = world.host.clearing.upload(world.tid, world.batch([world.entry(
        world.purchase(card, 200))]))
    assert ack.accepted == [2]
    assert world.host.reports.alerts()[0]["kind"] == "journal_chain"
    (status,) = world.host.tms.terminals()
    assert (status.journal_contiguous, status.journal_max) == (2, 2)
