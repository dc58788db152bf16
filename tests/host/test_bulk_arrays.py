"""Bulk statements send each column as one PostgreSQL array literal (db/bulk.py,
``array_literal``): any text, number, date and NULL comes back exactly as it was."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from tallypurse.host.db import bulk
from tallypurse.host.db.engine import Database
from tallypurse.host.ledger import TXN_COLUMNS

AWKWARD = ['plain', '', 'NULL', 'a "quoted" word', 'back\\slash', '\\"both\\"', '{braces}',
           'comma, and space ', ' leading', 'ünïcödé ✓', "it's", 'tab\there', 'new\nline']


def test_array_literals_quote_and_escape_every_string() -> None:
    assert bulk.array_literal([1, None, "a", 'x"y', "b\\c", dt.date(2026, 11, 25)]) == (
        '{1,NULL,"a","x\\"y","b\\\\c","2026-11-25"}')
    with pytest.raises(TypeError):
        bulk.array_literal([1.5])  # money is never a float, and no float goes unseen


def test_awkward_values_come_back_as_they_were(database: Database) -> None:
    rows = [("kind", f"ref-{n}", n, -n, dt.date(2026, 1, 1) + dt.timedelta(days=n),
             None if n % 3 == 0 else text, None, text)
            for n, text in enumerate(AWKWARD)]
    with database.uow() as uow:
        s = uow.session
        if bulk.is_postgres(s):
            bulk.insert(s, "ledger_transactions", TXN_COLUMNS, rows, returning="id")
        else:
            bulk.insert(s, "ledger_transactions", [("id", "bigint"), *TXN_COLUMNS],
                        [(n + 1, *r[:4], r[4].isoformat(), *r[5:]) for n, r in enumerate(rows)])
        uow.commit()
    with database.uow() as uow:
        got = uow.session.execute(sa.text(
            "SELECT reference, created, value_time, merchant_id, card_id, memo "
            "FROM ledger_transactions ORDER BY created")).all()
    assert [tuple(g) for g in got] == [(r[1], r[2], r[3], r[5], r[6], r[7]) for r in rows]
