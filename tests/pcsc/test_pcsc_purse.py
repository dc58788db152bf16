"""Purchases, splits, loads and tears through pcscd and the virtual reader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tallypurse.card.card import Card
from tallypurse.cli.bench_pcsc import PcscTransport, release
from tallypurse.core.messages import DebtSlot
from tallypurse.core.protocol import DebtState, Ins, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab
from tallypurse.sam import Sam

from .conftest import Served
from .harness import Pending, resolve, writes_per_command


def connection_lost() -> type[Exception]:
    """What pyscard raises when the card leaves mid-command (imported late: without
    pyscard the fixtures skip, or fail in CI, before any test body runs)."""
    from smartcard.Exceptions import CardConnectionException

    return CardConnectionException  # type: ignore[no-any-return]


def counters(transport: Any) -> Any:
    purse = PurseClient(ApduClient(transport))
    purse.select()
    return purse.counters()


def test_a_full_purchase_through_pcsc(
    lab: Lab, sam: Sam, served_card: Served, transport: PcscTransport
) -> None:
    lab.load(transport, 5_000)  # type: ignore[arg-type]
    tap = lab.purchase(transport, sam, 1_234)  # type: ignore[arg-type]  # verifies the TAC
    assert (tap.result.atc, tap.result.balance_after) == (1, 3_766)
    assert counters(transport).balance == 3_766
    # The card file followed: a restart of the card server finds the same purse.
    on_disk = Card.open(served_card.path)
    assert on_disk.eeprom.snapshot() == served_card.card.eeprom.snapshot()


def test_a_split_purchase_through_pcsc(
    lab: Lab, sam: Sam, served_card: Served, transport: PcscTransport
) -> None:
    lab.load(transport, 1_000)  # type: ignore[arg-type]
    tap = lab.purchase(  # type: ignore[arg-type]
        transport, sam, 1_000, split=1_500, tx_type=TxType.CANTEEN
    )
    assert (tap.result.balance_after, tap.result.debt_slot) == (0, 0)
    purse = PurseClient(ApduClient(transport))
    purse.select()
    assert purse.debts()[0] == DebtSlot(DebtState.PENDING, tap.result.atc, 1_500)
    assert purse.transaction_proof(tap.result.atc).tac == tap.result.tac


def test_a_load_through_pcsc(lab: Lab, served_card: Served, transport: PcscTransport) -> None:
    first = lab.load(transport, 2_500)  # type: ignore[arg-type]
    second = lab.load(transport, 500)  # type: ignore[arg-type]
    assert (first.event.balance_after, second.event.balance_after) == (2_500, 3_000)
    ctr = counters(transport)
    assert (ctr.balance, ctr.load_counter) == (3_000, 2)


class PullAfter:
    """A terminal-side transport that pulls the card once ``ins`` has been answered."""

    def __init__(self, inner: PcscTransport, served: Served, ins: int) -> None:
        self.inner = inner
        self.served = served
        self.ins = ins

    def transmit(self, apdu: bytes) -> bytes:
        out = self.inner.transmit(apdu)
        if apdu[1] == self.ins:
            self.served.pull()
        return out


def test_a_card_pulled_between_initialize_purchase_and_debit_is_retried_at_the_next_tap(
    lab: Lab, sam: Sam, served_card: Served, connect: Callable[[], Any]
) -> None:
    conn = connect()
    transport = PcscTransport(conn)
    lab.load(transport, 3_000)  # type: ignore[arg-type]
    with pytest.raises(connection_lost()):
        lab.purchase(  # type: ignore[arg-type]
            PullAfter(transport, served_card, Ins.INITIALIZE_PURCHASE), sam, 800
        )
    release(conn)
    served_card.insert()
    again = PcscTransport(connect())
    assert resolve(again, lab, sam, Pending(atc=1, amount=800), tx_type=TxType.GENERAL) == "retried"
    ctr = counters(again)
    assert (ctr.balance, ctr.atc) == (2_200, 1)


def _torn_purchase(
    lab: Lab, sam: Sam, served_card: Served, connect: Callable[[], Any], cut: int | None,
    *, amount: int, split: int, tx_type: int,
) -> str:
    conn = connect()
    transport = PcscTransport(conn)
    lab.load(transport, 3_000)  # type: ignore[arg-type]
    served_card.tearing.arm(Ins.DEBIT, cut)
    served_card.mark()
    with pytest.raises(connection_lost()):
        lab.purchase(  # type: ignore[arg-type]
            transport, sam, amount, split=split, tx_type=tx_type
        )
    assert served_card.tearing.tore
    release(conn)
    served_card.wait_out()
    # The card left the field with its torn memory saved; powered up again it is
    # exactly before or exactly after the DEBIT, never in between.
    recovered = Card.open(served_card.path)
    purse = PurseClient(ApduClient(recovered))
    purse.select()
    assert purse.counters().balance in (3_000, 3_000 - amount)
    served_card.insert()
    again = PcscTransport(connect())
    outcome = resolve(again, lab, sam, Pending(atc=1, amount=amount, split=split),
                      tx_type=tx_type)
    ctr = counters(again)
    assert (ctr.balance, ctr.atc) == (3_000 - amount, 1)
    if split:
        debts = PurseClient(ApduClient(again))
        debts.select()
        assert debts.debts()[0] == DebtSlot(DebtState.PENDING, 1, split)
    return outcome


@pytest.mark.parametrize("where", ["first write", "commit flag", "after commit flag",
                                   "last write"])
def test_a_card_torn_inside_debit_is_resolved_at_the_next_tap(
    lab: Lab, sam: Sam, served_card: Served, connect: Callable[[], Any], where: str
) -> None:
    # How many persistent writes this DEBIT makes: n = 2 * changed objects + 2
    # (log entries, commit flag, main-area writes, log clear).
    def dry_run(t: Any) -> None:
        lab.load(t, 3_000)
        lab.purchase(t, sam, 900)

    n = writes_per_command(served_card.card, dry_run, Ins.DEBIT)
    flag = (n - 2) // 2
    cut = {"first write": 0, "commit flag": flag, "after commit flag": flag + 1,
           "last write": n - 1}[where]
    outcome = _torn_purchase(lab, sam, served_card, connect, cut, amount=900, split=0,
                             tx_type=TxType.GENERAL)
    assert outcome == ("retried" if cut <= flag else "completed")


def test_a_debit_whose_answer_is_lost_is_completed_by_its_proof_at_the_next_tap(
    lab: Lab, sam: Sam, served_card: Served, connect: Callable[[], Any]
) -> None:
    outcome = _torn_purchase(lab, sam, served_card, connect, None, amount=900, split=0,
                             tx_type=TxType.GENERAL)
    assert outcome == "completed"


def test_a_split_debit_torn_after_its_commit_keeps_exactly_one_debt(
    lab: Lab, sam: Sam, served_card: Served, connect: Callable[[], Any]
) -> None:
    outcome = _torn_purchase(lab, sam, served_card, connect, None, amount=3_000, split=1_000,
                             tx_type=TxType.CANTEEN)
    assert outcome == "completed"
