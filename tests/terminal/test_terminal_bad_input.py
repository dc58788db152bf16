"""Bad input gets a clear decline (or error) and changes nothing: not the card, not the
journal, not the outbox, not the lists."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tallypurse.card.card import Card
from tallypurse.core.money import currency
from tallypurse.host.tsm.personalise import PursePolicy
from tallypurse.lab import YEAR, Lab
from tallypurse.terminal.engine import JOURNAL_FILE, Terminal
from tallypurse.terminal.errors import (
    DeclineCode,
    Declined,
    JournalCorrupt,
    JournalFull,
    ListRejected,
)
from tallypurse.terminal.reader import InProcessReader

from .conftest import NOW, Clock, Purse, reopen
from .fakehost import FakeHost


@pytest.fixture(scope="module")
def other_issuer(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """A second operator with its own issuer root."""
    return Lab.create(tmp_path_factory.mktemp("other-issuer"), now=NOW)


def state(t: Terminal, purse: Purse | None = None) -> tuple[Any, ...]:
    rows = t.db.query("SELECT * FROM journal ORDER BY seq")
    attempts = t.db.query("SELECT * FROM attempts ORDER BY id")
    outbox = t.db.query("SELECT id, state, attempts FROM outbox ORDER BY id")
    lists = t.db.query("SELECT kind, version FROM lists ORDER BY kind")
    card = purse.card.eeprom.snapshot() if purse else None
    return (rows, attempts, outbox, lists, sorted(t.lists.blacklist), card)


@pytest.fixture
def unchanged(terminal: Terminal) -> Iterator[Callable[..., None]]:
    """Call with the purse before the bad input; the state is compared at the end."""
    saved: list[tuple[Purse | None, tuple[Any, ...]]] = []

    def remember(purse: Purse | None = None) -> None:
        saved.append((purse, state(terminal, purse)))

    yield remember
    for purse, before in saved:
        assert state(terminal, purse) == before


@pytest.mark.parametrize("amount", [0, -1, -1_000, 2**32, True],
                         ids=["zero", "minus-one", "negative", "too-large", "bool"])
def test_an_amount_that_is_not_a_positive_amount_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
    amount: int,
) -> None:
    purse = new_purse(5_000)
    unchanged(purse)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, amount)
    assert exc.value.reason == DeclineCode.AMOUNT_INVALID


def test_an_amount_over_the_offline_limit_is_declined_offline(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
) -> None:
    purse = new_purse(50_000)
    unchanged(purse)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 10_001, online=False)
    assert exc.value.reason == DeclineCode.OVER_OFFLINE_LIMIT
    assert "offline limit" in str(exc.value)


def test_an_amount_over_the_offline_limit_without_a_host_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
    host: FakeHost,
) -> None:
    purse = new_purse(50_000)
    unchanged(purse)
    host.faults = ["down"] * 5
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 10_001)  # above the offline limit: online
    assert exc.value.reason == DeclineCode.HOST_UNAVAILABLE


def test_an_unknown_transaction_type_is_declined_with_the_known_ones_named(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
) -> None:
    purse = new_purse(5_000)
    unchanged(purse)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 100, tx_type="bananas")
    assert exc.value.reason == DeclineCode.UNKNOWN_TX_TYPE
    assert "canteen" in str(exc.value)


def test_a_card_of_another_issuer_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
    other_issuer: Lab,
) -> None:
    purse = new_purse(5_000, issuer=other_issuer)
    unchanged(purse)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 100)
    assert exc.value.reason == DeclineCode.CARD_UNKNOWN_ISSUER


def test_an_expired_card_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
    clock: Clock,
) -> None:
    purse = new_purse(5_000, policy=PursePolicy(currency("EUR"), validity_years=1))
    clock.advance(YEAR + 7 * 24 * 3600)
    unchanged(purse)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 100)
    assert exc.value.reason == DeclineCode.CARD_EXPIRED


def test_a_card_blocked_by_a_write_back_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
    host: FakeHost,
) -> None:
    purse = new_purse(5_000)
    host.add_action(purse.card_id, "block")
    terminal.sync()
    with pytest.raises(Declined) as first:
        terminal.purchase(purse.reader, 100)  # applies the block, then declines
    assert first.value.reason == DeclineCode.CARD_BLOCKED
    assert purse.balance == 5_000 and purse.atc == 0
    unchanged(purse)
    with pytest.raises(Declined) as again:
        terminal.purchase(purse.reader, 100)
    assert again.value.reason == DeclineCode.CARD_BLOCKED


def test_a_blacklisted_card_is_declined(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
    host: FakeHost,
) -> None:
    purse = new_purse(5_000)
    host.blacklist_add(purse.card_id, reason="stolen")
    terminal.sync()
    assert terminal.lists.is_blacklisted(purse.card_id)
    unchanged(purse)
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 100)
    assert exc.value.reason == DeclineCode.CARD_BLACKLISTED


def test_a_blank_card_is_declined_as_not_personalised(
    terminal: Terminal, unchanged: Callable[..., None],
) -> None:
    unchanged()
    blank = Card.manufacture(bytes.fromhex("30000000000000aa"))
    with pytest.raises(Declined) as exc:
        terminal.purchase(InProcessReader(blank), 100)
    assert exc.value.reason == DeclineCode.CARD_NOT_PERSONALISED


@pytest.mark.parametrize("kind", ["blacklist", "actions", "parameters"])
def test_a_list_with_a_bad_signature_is_refused_and_nothing_is_applied(
    terminal: Terminal, new_purse: Callable[..., Purse], unchanged: Callable[..., None],
    host: FakeHost, kind: str,
) -> None:
    purse = new_purse(5_000)
    host.blacklist_add(purse.card_id)
    host.add_action(purse.card_id, "block")
    host.set_parameters(offline_limit=1)
    host.tamper = {kind}
    unchanged(purse)
    params = terminal.lists.parameters
    with pytest.raises(ListRejected) as exc:
        terminal.sync()
    assert "bad signature" in str(exc.value)
    assert terminal.lists.parameters == params
    assert not terminal.lists.is_blacklisted(purse.card_id)
    assert terminal.lists.actions_for(purse.card_id) == []


def test_a_delta_that_does_not_follow_the_local_version_is_refused(
    terminal: Terminal, host: FakeHost, unchanged: Callable[..., None],
) -> None:
    host.blacklist_add(bytes(8))
    response = host.sync(terminal_sync_request(terminal))
    assert response.blacklist is not None
    terminal.sync()
    unchanged()
    with terminal.db.write() as tx, pytest.raises(ListRejected, match="does not follow"):
        terminal.lists.apply(tx, now=0, blacklist=response.blacklist, actions=None,
                             parameters=None)


def terminal_sync_request(t: Terminal) -> Any:
    from tallypurse.core.hostapi import SyncRequest

    return SyncRequest(blacklist_version=t.lists.version("blacklist"),
                       actions_version=t.lists.version("actions"),
                       parameters_version=1)


def corrupt(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE journal SET amount = amount + 1 WHERE seq = 1", "altered"),
        ("UPDATE journal SET sam_signature = zeroblob(64) WHERE seq = 3", "bad SAM signature"),
        ("DELETE FROM journal WHERE seq = 2", "gap"),
        ("UPDATE journal SET prev_hash = zeroblob(32) WHERE seq = 2", "not chained"),
    ],
    ids=["amount", "signature", "gap", "chain"],
)
def test_a_corrupt_journal_is_detected_when_the_terminal_opens(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost, clock: Clock,
    sql: str, message: str,
) -> None:
    purse = new_purse(5_000)
    for _ in range(3):
        terminal.purchase(purse.reader, 100)
    directory = terminal.data_dir
    terminal.close()
    corrupt(directory / JOURNAL_FILE, sql)
    before = (directory / JOURNAL_FILE).read_bytes()
    with pytest.raises(JournalCorrupt, match=message):
        reopen(directory, host, clock)
    assert (directory / JOURNAL_FILE).read_bytes() == before
    assert purse.balance == 4_700


def test_a_journal_file_that_is_not_a_database_is_reported(
    terminal: Terminal, host: FakeHost, clock: Clock
) -> None:
    directory = terminal.data_dir
    terminal.close()
    for name in ("journal.db-wal", "journal.db-shm"):
        (directory / name).unlink(missing_ok=True)
    (directory / JOURNAL_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalCorrupt, match="not a usable terminal journal"):
        reopen(directory, host, clock)


def test_a_journal_near_full_refuses_new_offline_work_with_a_clear_message(
    terminal: Terminal, new_purse: Callable[..., Purse], host: FakeHost,
) -> None:
    host.set_parameters(journal_limit=100)
    terminal.sync()
    purse = new_purse(50_000)
    for _ in range(90):
        terminal.purchase(purse.reader, 1)
    before = state(terminal, purse)
    with pytest.raises(JournalFull) as exc:
        terminal.purchase(purse.reader, 1)
    assert exc.value.reason == DeclineCode.JOURNAL_FULL and "close-day" in str(exc.value)
    assert state(terminal, purse) == before
    terminal.close_day()  # the host acknowledges: room again
    assert terminal.purchase(purse.reader, 1).receipt is not None


def test_a_terminal_without_parameters_declines(
    tmp_path: Path, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    from .conftest import make_terminal

    t = make_terminal(tmp_path / "t", host, clock, sync=False)
    purse = new_purse(1_000)
    with pytest.raises(Declined) as exc:
        t.purchase(purse.reader, 100)
    assert exc.value.reason == DeclineCode.NO_PARAMETERS
    t.close()
