"""Credit indicators from the host's own rows: taps and loads that cleared, bank
transfers into the online account, balances rebuilt from the ledger, split debts and
how they ended, blacklist history, the linked bank account; as of any moment."""

from __future__ import annotations

import pytest

from tallypurse.core.protocol import TxType
from tallypurse.credit import SplitDebt, SplitOutcome
from tallypurse.host.credit_data import load_inputs, split_debt
from tallypurse.host.db.models import Debt

from .test_agent import GOOD_IBAN
from .world import World

DAY = 86_400


def test_indicators_come_from_cleared_events_the_ledger_and_the_debts(world: World) -> None:
    host, clock = world.host, world.clock
    holder = world.cardholder(funds=5_000, iban=GOOD_IBAN)
    card = world.card(holder)
    lost = world.card(holder)
    opened = clock()
    clock.advance(DAY)
    world.load(card, 2_000)  # cash: a top-up; its LOAD event clears at confirmation
    world.upload(world.purchase(card, 500, tx_type=TxType.CANTEEN))
    day1 = clock()
    clock.advance(DAY)
    split = world.purchase(card, 1_500, split=300, tx_type=TxType.CANTEEN)
    host.agent.submit(world.tid, world.agent_request(split))  # settled from the online account
    world.upload(split)
    host.registry.set_card_status(lost.serial.hex(), "lost")
    now = clock()

    with host.uow() as uow:
        got = load_inputs(uow.session, [holder], now)[holder]
        before = load_inputs(uow.session, [holder], day1)[holder]

    assert got.card_ids == sorted([card.serial.hex(), lost.serial.hex()])
    assert sorted((t.amount_minor, t.split_minor) for t in got.taps) == [(500, 0), (1_800, 300)]
    assert sorted(t.amount_minor for t in got.topups) == [2_000, 5_000]  # load, bank transfer
    assert got.debts == [SplitDebt(now, 300, SplitOutcome.SETTLED_ONLINE, resolved_at=now)]
    assert [b.reason for b in got.blacklist] == ["lost"]
    assert got.bank_account_verified is True
    assert (got.online_balance, got.outstanding) == (4_700, 0)
    # one balance snapshot per day of tenure, rebuilt from the ledger (host's view)
    assert [(b.at, b.purse_minor, b.online_minor) for b in got.balances] == [
        (now, 0, 4_700), (day1, 1_500, 5_000), (opened, 0, 5_000)]

    # the card's own evaluation of each cleared purchase: the first found nothing; the
    # split took credit, left a debt and an empty purse (100 - 25 - 10 - 5)
    assert sorted((e.at, e.value) for e in got.evaluations) == [(day1, 100), (now, 60)]
    ind = got.indicators(now)
    assert (ind.tenure_days, ind.splits_taken, ind.splits_settled_online) == (2, 1, 1)
    assert (ind.splits_failed, ind.blacklist_history, ind.card_evaluation) == (0, 1, 80)
    assert ind.avg_online_balance_minor == (4_700 + 5_000 + 5_000) // 3
    assert ind.bank_account_verified is True

    # as of day 1: the split, the transfer-only balance change and the blacklisting were
    # still in the future
    assert [t.amount_minor for t in before.taps] == [500]
    assert (before.debts, before.blacklist) == ([], [])
    assert before.indicators(day1).card_evaluation == 100
    assert [(b.purse_minor, b.online_minor) for b in before.balances] == [(1_500, 5_000),
                                                                            (0, 5_000)]


def test_a_failed_debt_counts_as_failed_and_in_collection(world: World) -> None:
    holder = world.cardholder()
    card = world.card(holder)
    world.load(card, 1_000)
    split = world.purchase(card, 1_000, split=500, tx_type=TxType.CANTEEN)
    world.host.agent.submit(world.tid, world.agent_request(split))  # no money anywhere
    with world.host.uow() as uow:
        got = load_inputs(uow.session, [holder], world.clock())[holder]
    assert got.outstanding == 500
    ind = got.indicators(world.clock())
    assert (ind.splits_failed, ind.splits_in_collection, ind.days_since_last_failure) == (1, 1, 0)
    assert ind.bank_account_verified is False


def _debt(status: str, collection_since: int | None = None) -> Debt:
    return Debt(id="d", card_id="c", atc=1, amount=100, currency="EUR", terminal_id="t",
                merchant_id="m", status=status, origin="agent", event_time=10, created=10,
                updated=50, collection_since=collection_since, repaid=0)


@pytest.mark.parametrize("status,since,expected", [
    ("open", None, SplitDebt(10, 100, SplitOutcome.PENDING)),
    ("bank_pending", None, SplitDebt(10, 100, SplitOutcome.PENDING)),
    ("settled", None, SplitDebt(10, 100, SplitOutcome.SETTLED_ONLINE, resolved_at=50)),
    ("settled_bank", None, SplitDebt(10, 100, SplitOutcome.SETTLED_BANK, resolved_at=50)),
    ("settled_bank", 20, SplitDebt(10, 100, SplitOutcome.REPAID_LATE, failed_at=20,
                                   resolved_at=50)),
    ("repaid", 20, SplitDebt(10, 100, SplitOutcome.REPAID_LATE, failed_at=20, resolved_at=50)),
    ("collection", 20, SplitDebt(10, 100, SplitOutcome.IN_COLLECTION, failed_at=20)),
    ("written_off", 20, SplitDebt(10, 100, SplitOutcome.IN_COLLECTION, failed_at=20)),
    ("cancelled", None, None),
])
def test_each_debt_state_maps_to_a_split_outcome(status: str, since: int | None,
                                                 expected: SplitDebt | None) -> None:
    assert split_debt(_debt(status, since)) == expected
