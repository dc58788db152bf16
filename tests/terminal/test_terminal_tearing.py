"""Tearing: a card pulled (power cut at any of its persistent writes) or an answer lost
during DEBIT, CANCEL, CREDIT or WRITE-BACK leaves the attempt uncertain; the card's next
tap resolves it with its transaction proof, and there is no receipt until then."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tallypurse.card.card import Card
from tallypurse.core.messages import SignedEvent
from tallypurse.core.protocol import DebtState, Ins
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.errors import TapInterrupted
from tallypurse.terminal.journal import COMMITTED, DECLINED, UNCERTAIN
from tallypurse.terminal.reader import InProcessReader

from .conftest import Clock, Purse
from .fakehost import FakeHost


class Tearing:
    """A transport that tears command ``ins``: cuts the card's power at its ``cut``-th
    persistent write inside it, or passes it and loses the answer."""

    def __init__(self, card: Card, ins: int, *, cut: int | None = None,
                 lose: bool = False) -> None:
        self.card, self.ins, self.cut, self.lose = card, ins, cut, lose
        self.fired = False

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[1] != self.ins or self.fired:
            return self.card.transmit(apdu)
        self.fired = True
        if self.cut is not None:
            self.card.eeprom.cut_at = self.card.eeprom.writes + self.cut
        try:
            out = self.card.transmit(apdu)
        finally:
            self.card.eeprom.cut_at = None
        if self.lose:
            raise ConnectionError("the answer was lost")
        return out


def torn(purse: Purse, ins: int, **kw: object) -> InProcessReader:
    return InProcessReader(Tearing(purse.card, ins, **kw))  # type: ignore[arg-type]


def power_up(purse: Purse) -> None:
    if purse.card.os is None:
        purse.card.power_up()


def debit_entries(t: Terminal, purse: Purse) -> list[SignedEvent]:
    return [
        SignedEvent.parse(bytes.fromhex(e.record))
        for e in t.journal.entries(None)
        if e.kind == "debit" and e.card_id == purse.card_id.hex()
    ]


@pytest.mark.parametrize("amount", [200, 900], ids=["purchase", "split"])
def test_a_card_pulled_at_every_write_of_debit_is_charged_once_after_the_next_tap(
    terminal: Terminal, new_purse: Callable[..., Purse], amount: int
) -> None:
    outcomes = set()
    for cut in range(40):
        purse = new_purse(500)
        try:
            result = terminal.purchase(torn(purse, Ins.DEBIT, cut=cut), amount,
                                       tx_type="canteen")
        except TapInterrupted as exc:
            assert exc.attempt is not None
            a = terminal.journal.attempt(exc.attempt)
            assert a is not None and a.state == UNCERTAIN
        else:  # the cut came after the command's last write: no tearing left to try
            assert result.receipt is not None and cut > 0
            break
        power_up(purse)
        again = terminal.purchase(purse.reader, amount, tx_type="canteen")
        assert again.receipt is not None
        [resolution] = again.resolutions
        outcomes.add(resolution.outcome)
        assert again.recovered == (resolution.outcome == COMMITTED)
        assert purse.atc == 1 and purse.balance == 500 - min(amount, 500)
        [record] = debit_entries(terminal, purse)
        assert record == purse.client().read_record(1)
        if amount > 500:
            assert purse.debts() == [(DebtState.PENDING, 1, amount - 500)]
    else:
        pytest.fail("DEBIT never completed")
    assert outcomes == {COMMITTED, DECLINED}  # cuts before and after the card's commit


@pytest.mark.parametrize("ins", [Ins.DEBIT, Ins.CANCEL_LAST_DEBIT, Ins.CREDIT],
                         ids=["debit", "cancel", "credit"])
def test_a_lost_answer_is_resolved_as_committed_at_the_next_tap(
    terminal: Terminal, new_purse: Callable[..., Purse], clock: Clock, ins: int
) -> None:
    purse = new_purse(500)
    if ins == Ins.CANCEL_LAST_DEBIT:
        terminal.purchase(purse.reader, 200)
        clock.advance(10)
    with pytest.raises(TapInterrupted):
        if ins == Ins.DEBIT:
            terminal.purchase(torn(purse, ins, lose=True), 200)
        elif ins == Ins.CANCEL_LAST_DEBIT:
            terminal.cancel_last(torn(purse, ins, lose=True))
        else:
            terminal.load(torn(purse, ins, lose=True), 1_000)
    assert [a.state for a in terminal.journal.open_attempts_for()] == [UNCERTAIN]
    result = terminal.resolve(purse.reader)
    [resolution] = result.resolutions
    assert resolution.outcome == COMMITTED and resolution.receipt is not None
    assert terminal.journal.open_attempts_for() == []
    expected = {Ins.DEBIT: 300, Ins.CANCEL_LAST_DEBIT: 500, Ins.CREDIT: 1_500}[ins]
    assert purse.balance == expected == resolution.receipt.balance_after


def test_an_uncertain_attempt_whose_card_never_got_the_command_is_declined_not_charged(
    terminal: Terminal, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(500)
    with pytest.raises(TapInterrupted):
        terminal.purchase(torn(purse, Ins.DEBIT, cut=0), 200)
    power_up(purse)
    result = terminal.resolve(purse.reader)
    assert [r.outcome for r in result.resolutions] == [DECLINED]
    assert purse.balance == 500 and debit_entries(terminal, purse) == []


def test_a_pulled_card_during_a_write_back_is_resolved_from_its_counter(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost
) -> None:
    purse = new_purse(500)
    host.add_action(purse.card_id, "block")
    terminal.sync()
    with pytest.raises(TapInterrupted):
        terminal.purchase(torn(purse, Ins.WRITE_BACK, lose=True), 100)
    result = terminal.resolve(purse.reader)
    assert [r.outcome for r in result.resolutions] == [COMMITTED]
    assert purse.client().card_data().flags & 0x01  # blocked
    # The card answered its receipt again, so the host still learns what was applied.
    assert "receipt recovered" in result.resolutions[0].detail
    terminal.flush()
    assert len(host.writeback_reports) == 1
