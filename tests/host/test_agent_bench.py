"""`tallypurse bench agent` compares the host with the same statements issued directly: those
statements must write what the host writes for one agent debit, table by table."""

from __future__ import annotations

import secrets

import sqlalchemy as sa

from tallypurse.cli.bench_host import _direct_floor

from .test_agent import split_purchase
from .world import World

TABLES = ("debts", "ledger_transactions", "postings", "credit_events", "writeback_actions",
          "list_entries", "request_nonces")


def counts(world: World) -> dict[str, int]:
    with world.host.uow() as uow:
        return {t: int(uow.session.scalar(sa.text(f"SELECT count(*) FROM {t}")) or 0)
                for t in TABLES}


def test_the_floor_issues_what_the_host_writes_for_an_agent_debit(world: World) -> None:
    assert world.client is not None
    holder = world.cardholder(funds=5_000)
    card = world.card(holder)
    first, second, third = (split_purchase(world, card) for _ in range(3))
    before = counts(world)
    assert world.client.agent_debit(world.agent_request(first)).status == "accepted"
    by_host = counts(world)
    work = [{"terminal_id": world.tid, "merchant_id": world.merchant_id,
             "card_id": card.serial.hex(), "holder": holder,
             "atc": split.event.atc + 1_000_000, "amount": split.event.split,
             "key": f"direct-{n}", "record": split.to_bytes().hex(),
             "nonce": secrets.token_hex(16), "time": world.clock() - 60,
             "key_id": world.tid, "created": world.clock()}
            for n, split in enumerate((second, third))]
    floor = _direct_floor(world.host, work, 1, group=2)  # both in one group
    if not world.host.db.postgres:
        assert floor is None  # the floor's statements are PostgreSQL's
        return
    assert floor is not None and floor > 0
    directly = counts(world)
    assert {t: directly[t] - by_host[t] for t in TABLES} == {
        t: 2 * (by_host[t] - before[t]) for t in TABLES}
    # The direct statements keep the books as the host does: the ledger still balances,
    # and the online account paid both debts.
    assert world.host.reports.audit()["balanced"] is True
    assert world.host.registry.online_balance(holder) == 5_000 - 3 * 500
