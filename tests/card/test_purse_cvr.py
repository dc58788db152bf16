"""Card verification results: the purse's own evaluation of each event, signed in the TAC."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert
from tallypurse.core.money import currency
from tallypurse.core.protocol import (
    CVR_DEBT_NEAR_LIMIT,
    CVR_DEBT_OUTSTANDING,
    CVR_DEFINED,
    CVR_FAILED_DEBT,
    CVR_LOW_BALANCE,
    CVR_OFFLINE_AMOUNT,
    CVR_OFFLINE_COUNT,
    CVR_OFFLINE_COUNT_LIMIT,
    CVR_RECORD_AGE_LIMIT,
    CVR_RECORD_AGED,
    CVR_SPLIT,
    EventKind,
    TxType,
    WriteBackAction,
)
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.personalise import PursePolicy, signed_credit_record
from tallypurse.lab import Lab
from tallypurse.sam import Sam

CANTEEN = TxType.CANTEEN


_serials = itertools.count(1)


def next_serial() -> bytes:
    return (0x1C00_0000_0000_0000 + next(_serials)).to_bytes(8, "big")


def logged(card: Card, atc_or_load: int = 1) -> int:
    """The cvr of log record n (1 = most recent), after checking its TAC."""
    purse = PurseClient(ApduClient(card))
    purse.select()
    record = purse.read_record(atc_or_load)
    assert record.verify(cert.parse(purse.certificate()).public_key)
    assert record.event.cvr & ~CVR_DEFINED == 0
    return record.event.cvr


def test_a_plain_debit_from_a_healthy_purse_has_no_finding(lab: Lab, card: Card,
                                                          sam: Sam) -> None:
    assert lab.load(card, 5_000).event.cvr == 0
    tap = lab.purchase(card, sam, 1_250)
    assert tap.result.cvr == 0
    assert tap.event is not None and tap.event.event.cvr == 0  # the TAC verified over it
    assert logged(card) == 0


def test_a_split_debit_is_flagged_split_with_a_debt_outstanding_and_an_empty_purse(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 1_000)
    tap = lab.purchase(card, sam, 1_000, split=500, tx_type=CANTEEN)
    assert tap.result.cvr == CVR_SPLIT | CVR_DEBT_OUTSTANDING | CVR_LOW_BALANCE
    assert logged(card) == tap.result.cvr
    # a later load and purchase: no credit taken, but the debt is still outstanding
    assert lab.load(card, 3_000).event.cvr == CVR_DEBT_OUTSTANDING
    assert lab.purchase(card, sam, 100).result.cvr == CVR_DEBT_OUTSTANDING
    # once the host settles the debt, nothing is outstanding
    lab.settle_debt(card, tap.result.atc, 500)
    assert lab.purchase(card, sam, 100).result.cvr == 0


def test_debt_near_the_maximum_outstanding_is_flagged_from_80_percent(
    lab: Lab, card: Card, sam: Sam
) -> None:
    # the credit record allows 50.00 outstanding and 20.00 per tap
    first = lab.purchase(card, sam, 0, split=2_000, tx_type=CANTEEN).result.cvr
    assert first & CVR_DEBT_NEAR_LIMIT == 0  # 40 %
    second = lab.purchase(card, sam, 0, split=1_999, tx_type=CANTEEN).result.cvr
    assert second & CVR_DEBT_NEAR_LIMIT == 0  # 79.98 %
    third = lab.purchase(card, sam, 0, split=1, tx_type=CANTEEN).result.cvr
    assert third == CVR_SPLIT | CVR_DEBT_OUTSTANDING | CVR_DEBT_NEAR_LIMIT | CVR_LOW_BALANCE


def test_every_usable_debt_slot_taken_is_flagged_near_the_limit(lab: Lab, sam: Sam) -> None:
    serial = next_serial()
    card, _ = lab.new_card(serial, credit=lab.credit_record(serial, max_slots=2))
    assert lab.purchase(card, sam, 0, split=100, tx_type=CANTEEN).result.cvr \
        & CVR_DEBT_NEAR_LIMIT == 0
    assert lab.purchase(card, sam, 0, split=100, tx_type=CANTEEN).result.cvr \
        & CVR_DEBT_NEAR_LIMIT


def test_a_failed_debt_is_flagged_until_a_load_repays_it(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 1_000)
    split = lab.purchase(card, sam, 1_000, split=500, tx_type=CANTEEN).result
    lab.load(card, 300)
    lab.fail_debt(card, split.atc, 500)
    assert lab.purchase(card, sam, 100).result.cvr == CVR_DEBT_OUTSTANDING | CVR_FAILED_DEBT
    partly = lab.load(card, 400)  # repays 400 of the failed 500: 100 still failed
    assert partly.event.split == 400
    assert partly.event.cvr == CVR_DEBT_OUTSTANDING | CVR_FAILED_DEBT
    repaid = lab.load(card, 100)
    assert repaid.event.kind == EventKind.LOAD and repaid.event.cvr == 0


def test_the_offline_count_flag_is_set_from_the_limit_and_reset_by_host_contact(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 10_000)
    cvrs = [lab.purchase(card, sam, 10).result.cvr for _ in range(CVR_OFFLINE_COUNT_LIMIT + 1)]
    assert all(c & CVR_OFFLINE_COUNT == 0 for c in cvrs[:CVR_OFFLINE_COUNT_LIMIT - 1])
    assert all(c == CVR_OFFLINE_COUNT for c in cvrs[CVR_OFFLINE_COUNT_LIMIT - 1:])
    # an applied write-back is a host contact: counting starts again
    lab.new_credit_record(card, lab.credit_record(PurseClient(ApduClient(card)).select().card_id,
                                                  version=2))
    assert lab.purchase(card, sam, 10).result.cvr == 0
    for _ in range(CVR_OFFLINE_COUNT_LIMIT):
        lab.purchase(card, sam, 10)
    assert lab.load(card, 100).event.cvr == 0  # a load is a host contact too
    assert lab.purchase(card, sam, 10).result.cvr == 0


def test_the_offline_amount_flag_is_set_past_the_cap_and_a_cancel_takes_its_debit_back(
    lab: Lab, sam: Sam, make_card: Callable[..., Card]
) -> None:
    policy = PursePolicy(currency("EUR"), cap=5_000, offline_limit=5_000)
    card = make_card(policy=policy)
    lab.load(card, 5_000)
    assert lab.purchase(card, sam, 2_000).result.cvr == 0
    at_cap = lab.purchase(card, sam, 3_000)
    assert at_cap.result.cvr == CVR_LOW_BALANCE  # 50.00 in total: the cap, not past it
    over = lab.purchase(card, sam, 0, split=1, tx_type=CANTEEN)
    assert over.result.cvr & CVR_OFFLINE_AMOUNT
    cancelled = lab.cancel_last(card, sam, over)
    assert cancelled.cvr == 0  # the debt is freed and the amount no longer counts
    purse = PurseClient(ApduClient(card))
    purse.select()
    assert purse.read_record(1).event.kind == EventKind.CANCEL
    assert logged(card) == 0


def test_a_credit_record_older_than_28_days_is_flagged_aged(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 5_000)
    assert lab.purchase(card, sam, 10, time=lab.now + CVR_RECORD_AGE_LIMIT).result.cvr == 0
    aged = lab.purchase(card, sam, 10, time=lab.now + CVR_RECORD_AGE_LIMIT + 1)
    assert aged.result.cvr == CVR_RECORD_AGED


def test_a_card_without_a_credit_record_is_never_aged_nor_near_a_limit(
    lab: Lab, sam: Sam, make_card: Callable[..., Card]
) -> None:
    card = make_card(credit=False)
    lab.load(card, 5_000)
    assert lab.purchase(card, sam, 10, time=lab.now + 400 * 86_400).result.cvr == 0


@pytest.mark.parametrize(("amount", "low"), [(2_500, False), (2_501, True), (5_000, True)])
def test_low_balance_means_the_purse_could_not_pay_the_same_again(
    lab: Lab, card: Card, sam: Sam, amount: int, low: bool
) -> None:
    lab.load(card, 5_000)
    assert lab.purchase(card, sam, amount).result.cvr == (CVR_LOW_BALANCE if low else 0)


def test_the_same_write_back_answered_again_is_no_new_host_contact(
    lab: Lab, card: Card, sam: Sam
) -> None:
    lab.load(card, 10_000)
    card_id = PurseClient(ApduClient(card)).select().card_id
    record = lab.credit_record(card_id, version=2)
    first = lab.new_credit_record(card, record)
    for _ in range(CVR_OFFLINE_COUNT_LIMIT - 1):
        assert lab.purchase(card, sam, 10).result.cvr == 0
    purse = PurseClient(ApduClient(card))
    purse.select()
    # the terminal lost the answer and sends the same write-back: the stored receipt
    resent = lab.seal_writeback(card_id, WriteBackAction.CREDIT_RECORD,
                                signed_credit_record(lab.keystore, record), seq=first.seq)
    assert purse.write_back(resent)[0] == first
    assert lab.purchase(card, sam, 10).result.cvr == CVR_OFFLINE_COUNT
