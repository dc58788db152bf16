"""The ledger: balanced transactions only, immutable postings, and an audit that proves it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from tallypurse.host.db.models import Account, LedgerTransaction, Posting
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger, LedgerError, audit
from tallypurse.host.service import Host

BANK = Acct.system(Kind.BANK_CLEARING, "EUR")
FEES = Acct.system(Kind.FEES, "EUR")
ONLINE = Acct(Kind.ONLINE, "ch_1", "EUR")


def book(host: Host, *entries: Entry) -> list[int]:
    with host.uow() as uow:
        ids = Ledger(uow.session, host.now()).post_many(list(entries))
        uow.commit()
    return ids


def counts(host: Host) -> tuple[int, int]:
    with host.uow() as uow:
        s = uow.session
        return (s.scalar(sa.select(sa.func.count()).select_from(LedgerTransaction)) or 0,
                s.scalar(sa.select(sa.func.count()).select_from(Posting)) or 0)


def test_a_balanced_transaction_is_booked_and_the_audit_balances(host: Host) -> None:
    book(host, Entry("fund_online", "ref-1", [(BANK, 2_500), (ONLINE, -2_500)], value_time=1))
    with host.uow() as uow:
        ledger = Ledger(uow.session, 0)
        assert ledger.balance(BANK) == 2_500
        assert ledger.balance(ONLINE) == -2_500
        report = audit(uow.session)
    assert report.balanced and report.totals == {"EUR": 0}
    assert report.to_json()["balanced"] is True


@pytest.mark.parametrize("legs", [
    [(BANK, 100), (ONLINE, -99)],
    [(BANK, 100)],
    [(BANK, 100), (Acct.system(Kind.FEES, "USD"), -100)],
    [(BANK, 1.5), (ONLINE, -1.5)],
    [(BANK, True), (ONLINE, -1)],
])
def test_an_unbalanced_or_malformed_transaction_is_refused_and_writes_nothing(
        host: Host, legs: list[tuple[Acct, object]]) -> None:
    with pytest.raises(LedgerError):
        book(host, Entry("bad", "r", legs, value_time=1))  # type: ignore[arg-type]
    assert counts(host) == (0, 0)


def test_one_unbalanced_entry_refuses_the_whole_batch_of_entries(host: Host) -> None:
    good = Entry("fund_online", "a", [(BANK, 10), (ONLINE, -10)], value_time=1)
    bad = Entry("fund_online", "b", [(BANK, 10), (ONLINE, -11)], value_time=1)
    with pytest.raises(LedgerError):
        book(host, good, bad)
    assert counts(host) == (0, 0)


def test_a_transaction_reference_is_booked_once(host: Host) -> None:
    entry = Entry("fund_online", "same", [(BANK, 10), (ONLINE, -10)], value_time=1)
    book(host, entry)
    with pytest.raises(sa.exc.IntegrityError):
        book(host, entry)
    assert counts(host) == (1, 2)


def test_postings_and_transactions_cannot_be_changed_or_deleted(host: Host) -> None:
    book(host, Entry("fund_online", "x", [(BANK, 10), (ONLINE, -10)], value_time=1))
    for statement in ("UPDATE postings SET amount = amount + 1",
                      "DELETE FROM postings",
                      "UPDATE ledger_transactions SET reference = 'y'",
                      "DELETE FROM ledger_transactions"):
        with pytest.raises(DBAPIError, match="immutable"), host.db.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert counts(host) == (1, 2)


def test_a_settlement_id_is_set_once(host: Host) -> None:
    (txn,) = book(host, Entry("fund_online", "s", [(BANK, 10), (ONLINE, -10)], value_time=1))
    with host.db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO merchants (id, name, iban, bic, currency, "
                             "fee_basis_points, status, created) VALUES "
                             "('m1', 'M', 'DE89370400440532013000', 'COBADEFFXXX', 'EUR', 0, "
                             "'active', 0)"))
        for _ in range(2):
            conn.execute(sa.text("INSERT INTO settlements (merchant_id, business_day, currency, "
                                 "count, gross, fees, net, status, created) VALUES ('m1', "
                                 f"'2026-01-0{_ + 1}', 'EUR', 0, 0, 0, 0, 'open', 0)"))
        conn.execute(sa.text(f"UPDATE ledger_transactions SET settlement_id = 1 WHERE id = {txn}"))
    with pytest.raises(DBAPIError, match=r"settled once|immutable"), host.db.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE ledger_transactions SET settlement_id = 2 WHERE id = {txn}"))


def test_the_audit_reports_a_balance_that_differs_from_its_postings(host: Host) -> None:
    book(host, Entry("fund_online", "t", [(BANK, 10), (ONLINE, -10)], value_time=1))
    with host.db.engine.begin() as conn:  # someone edits a balance behind the ledger's back
        conn.execute(sa.update(Account).where(Account.kind == "bank_clearing")
                     .values(balance=Account.balance + 1))
    report = host.reports.audit()
    assert report["balanced"] is False
    (diff,) = report["differences"]["accounts"]
    assert diff == {"account": "bank_clearing:EUR", "balance": 11, "postings": 10}


def test_an_online_account_cannot_be_overdrawn_even_by_a_balanced_posting(host: Host) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        book(host, Entry("bad", "o", [(ONLINE, 5), (BANK, -5)], value_time=1))
    assert counts(host) == (0, 0)
