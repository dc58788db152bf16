"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import current_revision, downgrade, head_revision, upgrade
from tallypurse.host.db.models import Base


def test_the_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    assert diff == []


def test_migrating_again_is_a_no_op(database: Database) -> None:
    assert current_revision(database) == head_revision()
    assert upgrade(database) == head_revision()



def test_0007_links_the_events_cleared_before_it_to_their_own_transactions(
        at_0004: Database) -> None:
    event = ("INSERT INTO card_events (card_id, seqno, kind, atc, load_counter, amount, split, "
             "currency, tx_type, balance_before, balance_after, terminal_id, terminal_seq, "
             "time, record, cleared_at) VALUES (:c, :n, :k, :atc, 1, :a, 0, 'EUR', 0, :b, :after, "
             "'00', 0, 0, 'r', 0)")
    txn = ("INSERT INTO ledger_transactions (kind, reference, created, value_time, value_day, "
           "memo) VALUES (:k, :r, 0, 0, :d, '')")
    with at_0004.engine.begin() as conn:
        for n, kind, amount, before in ((1, 3, 500, 0), (2, 1, 0, 500), (3, 1, 20, 500)):
            conn.execute(sa.text(event), {"c": "00000000000000c1", "n": n, "k": kind,
                                          "atc": n - 1, "a": amount, "b": before,
                                          "after": before - amount if kind == 1 else amount})
        conn.execute(sa.text(event), {"c": "00000000000000c2", "n": 1, "k": 3, "atc": 0,
                                      "a": 9, "b": 0, "after": 9})
        for booked, ref in (("clear_load", "00000000000000c1:1"),
                          ("clear_debit", "00000000000000c1:3"),
                          ("debt_open", "00000000000000c2:1")):  # not a clearing transaction
            conn.execute(sa.text(txn), {"k": booked, "r": ref, "d": dt.date(2026, 1, 2)})
    assert upgrade(at_0004) == head_revision()
    with at_0004.engine.connect() as conn:
        ids: dict[str, int] = dict(conn.execute(sa.text(
            "SELECT reference, id FROM ledger_transactions")).all())
        linked = {(c[-2:], n): t for c, n, t in conn.execute(sa.text(
            "SELECT card_id, seqno, transaction_id FROM card_events")).all()}
    assert linked == {("c1", 1): ids["00000000000000c1:1"], ("c1", 2): None,
                      ("c1", 3): ids["00000000000000c1:3"], ("c2", 1): None}
    assert downgrade(at_0004, "0004") == "0004"
    assert upgrade(at_0004) == head_revision()


def test_0008_moves_open_gaps_to_their_table_and_back(at_0007: Database) -> None:
    card = ("INSERT INTO cards (card_id, status, currency, certificate, public_key, issued, "
            "expiry, cap, app_key_version, writeback_seq, online_counter, credit_version, "
            "contiguous_seqno, max_seqno, gap_since, blacklisted) VALUES (:c, 'active', 'EUR', "
            "'', '', 0, 0, 1000, 1, 0, 0, 0, :low, :high, :since, false)")
    event = ("INSERT INTO card_events (card_id, seqno, kind, atc, load_counter, amount, split, "
             "currency, tx_type, balance_before, balance_after, terminal_id, terminal_seq, "
             "time, record, cleared_at) VALUES (:c, :n, 1, :n, 0, 1, 0, 'EUR', 0, 0, 0, "
             "'00', 0, 0, 'r', 0)")
    # another table's row refers to a card: the columns must go without copying `cards`
    action = ("INSERT INTO writeback_actions (action_id, card_id, kind, seq, payload, sealed, "
              "status, created) VALUES ('a1', '00000000000000a1', 'credit', 1, '', '', "
              "'pending', 0)")
    # gapped: events 1, 2 and 5 (a gap open since 77); whole: events 1 to 3; fresh: none
    shapes = {"00000000000000a1": (2, 5, 77, (1, 2, 5)),
              "00000000000000a2": (3, 3, None, (1, 2, 3)),
              "00000000000000a3": (0, 0, None, ())}
    with at_0007.engine.begin() as conn:
        for cid, (low, high, since, seqnos) in shapes.items():
            conn.execute(sa.text(card), {"c": cid, "low": low, "high": high, "since": since})
            for n in seqnos:
                conn.execute(sa.text(event), {"c": cid, "n": n})
        conn.execute(sa.text(action))
    assert upgrade(at_0007) == head_revision()
    with at_0007.engine.connect() as conn:
        gaps = conn.execute(sa.text(
            "SELECT card_id, contiguous_seqno, since FROM card_gaps")).all()
    assert [tuple(g) for g in gaps] == [("00000000000000a1", 2, 77)]
    assert downgrade(at_0007, "0007") == "0007"
    with at_0007.engine.connect() as conn:
        back = {cid: (int(low), int(high), since) for cid, low, high, since in conn.execute(
            sa.text("SELECT card_id, contiguous_seqno, max_seqno, gap_since FROM cards"))}
    assert back == {cid: shape[:3] for cid, shape in shapes.items()}
