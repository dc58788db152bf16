"""Lists and parameters: signed deltas and snapshots, applied atomically, with their age;
a blacklist of a million cards in memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.errors import DeclineCode, Declined

from .conftest import Clock, Purse, reopen
from .fakehost import FakeHost


def test_a_delta_adds_and_removes_cards_and_survives_a_restart(
    terminal: Terminal, host: FakeHost, clock: Clock
) -> None:
    a, b, c = (bytes([i]) * 8 for i in (1, 2, 3))
    host.blacklist_add(a, b)
    host.blacklist_add(c)
    terminal.sync()
    assert terminal.lists.version("blacklist") == 2
    host.blacklist_remove(b)
    out = terminal.sync()
    assert out["changes"]["blacklist"] == {"to": 3, "add": 0, "remove": 1, "full": False}
    assert terminal.lists.blacklist == {a, c}
    directory = terminal.data_dir
    terminal.close()
    t2 = reopen(directory, host, clock)
    assert t2.lists.blacklist == {a, c} and t2.lists.version("blacklist") == 3
    t2.close()


def test_a_terminal_too_far_behind_gets_a_full_snapshot(
    terminal: Terminal, host: FakeHost
) -> None:
    terminal.sync()
    host.blacklist_add(b"\x01" * 8)
    host.blacklist_add(b"\x02" * 8)
    host.blacklist_remove(b"\x01" * 8)
    host.bl_history.oldest_delta = host.bl_history.version  # older deltas are gone
    out = terminal.sync()
    assert out["changes"]["blacklist"]["full"] is True
    assert terminal.lists.blacklist == {b"\x02" * 8}


def test_the_list_age_shows_in_the_status_and_a_sync_refreshes_it(
    terminal: Terminal, host: FakeHost, clock: Clock
) -> None:
    clock.advance(500)
    lists = terminal.status()["lists"]
    assert lists["blacklist"]["age_s"] == 500 and lists["actions"]["age_s"] == 500
    terminal.sync()
    assert terminal.status()["lists"]["blacklist"]["age_s"] == 0
    assert terminal.status()["last_sync_age_s"] == 0


def test_new_parameters_take_effect_at_the_next_tap(
    terminal: Terminal, host: FakeHost, new_purse: Callable[..., Purse]
) -> None:
    purse = new_purse(5_000)
    host.set_parameters(offline_limit=1_000)
    terminal.sync()
    assert terminal.lists.parameters is not None
    assert terminal.lists.parameters.offline_limit == 1_000
    with pytest.raises(Declined) as exc:
        terminal.purchase(purse.reader, 1_001, online=False)
    assert exc.value.reason == DeclineCode.OVER_OFFLINE_LIMIT


def test_a_blacklist_of_a_million_cards_loads_and_takes_a_delta_of_a_thousand(
    terminal: Terminal, host: FakeHost, clock: Clock, new_purse: Callable[..., Purse]
) -> None:
    with terminal.db.write() as tx:  # a million distinct 8-byte ids, made by SQLite itself
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999999) "
            "INSERT INTO blacklist SELECT CAST(printf('%08d', i) AS BLOB) FROM n"
        )
    ids = [b"%08d" % i for i in range(0, 1_000_000, 100)]
    directory = terminal.data_dir
    terminal.close()
    host.bl_history.version = 1  # as if the host's list had been synced as version 1
    t = reopen(directory, host, clock)
    with t.db.write() as tx:
        tx.execute("UPDATE lists SET version = 1 WHERE kind = 'blacklist'")
    t.lists.state["blacklist"] = t.lists.state["blacklist"].__class__(1, 0, int(clock()))
    assert len(t.lists.blacklist) == 1_000_000
    t0 = time.perf_counter()
    for i in ids:
        assert t.lists.is_blacklisted(i)
    per_lookup = (time.perf_counter() - t0) / len(ids)
    assert per_lookup < 1e-4  # microseconds, with a wide margin for a busy machine
    purse = new_purse(1_000)
    host.blacklist_add(purse.card_id, *[(0x6000_0000_0000_0000 + i).to_bytes(8, "big")
                                        for i in range(999)])
    out = t.sync()
    assert out["changes"]["blacklist"] == {"to": 2, "add": 1_000, "remove": 0, "full": False}
    assert len(t.lists.blacklist) == 1_001_000
    with pytest.raises(Declined) as exc:
        t.purchase(purse.reader, 100)
    assert exc.value.reason == DeclineCode.CARD_BLACKLISTED
    t.close()
