"""Settlement: per merchant per business day, gross, fees and net, and the files
that move the money (pain.001 payouts, pain.008 collections).

A settlement for day D takes every ledger transaction of the merchant whose
value day is D or earlier and that no settlement has taken yet (late batches
keep their original times and are taken by the next run). Each transaction
is taken once: its ``settlement_id`` is set once, and the database refuses
to change it again. The fee and the payout are booked on the ledger
(merchant payable -> fees, merchant payable -> bank clearing); a merchant
whose refunds exceed its sales waits for a later day.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, case, func, select, update

from tallypurse.host.db.models import (
    Account,
    BankAccount,
    BankInstruction,
    CardEventRow,
    Cardholder,
    Debt,
    LedgerTransaction,
    Merchant,
    PaymentFile,
    Posting,
    Settlement,
)
from tallypurse.host.errors import NOT_FOUND, HostError
from tallypurse.host.iso20022 import Collection, Party, Transfer, pain001, pain008
from tallypurse.host.ledger import Acct, Entry, Kind, Ledger

from .common import log_event, new_id

if TYPE_CHECKING:
    from tallypurse.host.service import Host

# Ledger kinds that are a sale (counted in a settlement's number of transactions).
SALES = ("clear_debit", "debt_open", "online_purchase", "clone_debit")


def sales_in() -> ColumnElement[int]:
    """How many sales a ledger transaction is: a ``clear_debit`` books a batch's debits
    of one day together and counts its card events; any other sale counts once."""
    events = (select(func.count()).where(CardEventRow.transaction_id == LedgerTransaction.id)
              .scalar_subquery())
    return case((LedgerTransaction.kind == "clear_debit", events),
                (LedgerTransaction.kind.in_(SALES), 1), else_=0)


@dataclass(frozen=True, slots=True)
class SettlementView:
    id: int
    merchant_id: str
    business_day: str
    currency: str
    count: int
    gross: int
    fees: int
    net: int
    status: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _view(row: Settlement) -> SettlementView:
    return SettlementView(row.id, row.merchant_id, row.business_day.isoformat(), row.currency,
                          row.count, row.gross, row.fees, row.net, row.status)


def fee_of(gross: int, basis_points: int) -> int:
    """Fee in minor units, rounded half up."""
    return (gross * basis_points + 5_000) // 10_000 if gross > 0 else 0


class Settlements:
    def __init__(self, host: Host) -> None:
        self.host = host

    def run(self, day: dt.date) -> list[SettlementView]:
        """Settle every merchant for ``day`` (idempotent: a settled day is not redone)."""
        now = self.host.now()
        out: list[SettlementView] = []
        with self.host.uow() as uow:
            merchant_ids = list(uow.session.scalars(select(Merchant.id).order_by(Merchant.id)))
        for mid in merchant_ids:
            with self.host.uow() as uow:
                s = uow.session
                merchant = s.get(Merchant, mid)
                assert merchant is not None
                if s.scalar(select(Settlement.id).where(Settlement.merchant_id == mid,
                                                        Settlement.business_day == day,
                                                        Settlement.currency == merchant.currency)):
                    continue
                txns = s.execute(uow.lock(
                    select(LedgerTransaction.id, LedgerTransaction.kind).where(
                        LedgerTransaction.merchant_id == mid,
                        LedgerTransaction.settlement_id.is_(None),
                        LedgerTransaction.value_day <= day))).all()
                if not txns:
                    continue
                ids = [t.id for t in txns]
                payable = Ledger(s, now).account_ids(
                    [Acct(Kind.MERCHANT_PAYABLE, mid, merchant.currency)])
                total = s.scalar(select(func.coalesce(func.sum(Posting.amount), 0)).where(
                    Posting.transaction_id.in_(ids),
                    Posting.account_id == next(iter(payable.values())))) or 0
                gross = -int(total)
                if gross <= 0:
                    continue
                fees = fee_of(gross, merchant.fee_basis_points)
                count = int(s.scalar(select(func.coalesce(func.sum(sales_in()), 0)).where(
                    LedgerTransaction.id.in_(ids))) or 0)
                row = Settlement(merchant_id=mid, business_day=day, currency=merchant.currency,
                                 count=count, gross=gross,
                                 fees=fees, net=gross - fees, status="open", created=now)
                s.add(row)
                s.flush()
                acct = Acct(Kind.MERCHANT_PAYABLE, mid, merchant.currency)
                entries = [Entry("settlement_payout", str(row.id), [
                    (acct, row.net), (Acct.system(Kind.BANK_CLEARING, merchant.currency), -row.net),
                ], value_time=now, merchant_id=mid, memo=f"payout {day.isoformat()}")]
                if fees:
                    entries.append(Entry("settlement_fee", str(row.id), [
                        (acct, fees), (Acct.system(Kind.FEES, merchant.currency), -fees),
                    ], value_time=now, merchant_id=mid, memo=f"fees {day.isoformat()}"))
                ids += Ledger(s, now).post_many(entries)
                s.execute(update(LedgerTransaction).where(LedgerTransaction.id.in_(ids))
                          .values(settlement_id=row.id))
                uow.commit()
                out.append(_view(row))
                log_event("settled", merchant=mid, day=day.isoformat(), gross=gross, fees=fees)
        return out

    def settlements(self, *, day: dt.date | None = None,
                    merchant_id: str | None = None) -> list[SettlementView]:
        with self.host.uow() as uow:
            stmt = select(Settlement).order_by(Settlement.business_day, Settlement.merchant_id)
            if day is not None:
                stmt = stmt.where(Settlement.business_day == day)
            if merchant_id is not None:
                stmt = stmt.where(Settlement.merchant_id == merchant_id)
            return [_view(r) for r in uow.session.scalars(stmt)]

    def report_csv(self, views: list[SettlementView]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["merchant_id", "business_day", "currency", "count", "gross", "fees",
                         "net", "status"])
        for v in views:
            writer.writerow([v.merchant_id, v.business_day, v.currency, v.count, v.gross, v.fees,
                             v.net, v.status])
        return buf.getvalue()

    # --- files ------------------------------------------------------------------------------------
    def payout_file(self, day: dt.date, currency_code: str = "EUR") -> bytes | None:
        """The pain.001 for the day's settlements not yet in a file (None if there are none)."""
        now = self.host.now()
        op = self.host.settings.operator
        with self.host.uow() as uow:
            s = uow.session
            rows = s.execute(uow.lock(
                select(Settlement, Merchant).join(Merchant, Merchant.id == Settlement.merchant_id)
                .where(Settlement.business_day == day, Settlement.currency == currency_code,
                       Settlement.payment_file_id.is_(None), Settlement.net > 0)
                .order_by(Settlement.id))).all()
            if not rows:
                return None
            message_id = new_id("PAY", 12)[:35]
            xml = pain001(
                message_id=message_id, created=dt.datetime.fromtimestamp(now, dt.UTC),
                execution_date=day + dt.timedelta(days=1), debtor=Party(op.name, op.iban, op.bic),
                currency_code=currency_code,
                transfers=[Transfer(f"SETTLE-{st.id}", st.net, Party(m.name, m.iban, m.bic),
                                    f"tallypurse settlement {day.isoformat()} {m.id}")
                           for st, m in rows])
            pf = PaymentFile(kind="pain.001", message_id=message_id, business_day=day,
                             count=len(rows), total=sum(st.net for st, _ in rows),
                             currency=currency_code, xml=xml.decode(), created=now)
            s.add(pf)
            s.flush()
            for st, _ in rows:
                st.payment_file_id, st.status = pf.id, "paid"
            uow.commit()
        return xml

    def collections_file(self, day: dt.date, currency_code: str = "EUR") -> bytes | None:
        """A pain.008 for debts in collection whose cardholder has a mandate and that
        no direct debit is already trying to collect (outcomes: record_bank_outcome)."""
        now = self.host.now()
        op = self.host.settings.operator
        with self.host.uow() as uow:
            s = uow.session
            busy = select(BankInstruction.debt_id).where(
                BankInstruction.status.in_(("new", "submitted")),
                BankInstruction.debt_id.is_not(None))
            rows = s.execute(uow.lock(
                select(Debt, BankAccount, Cardholder)
                .join(BankAccount, and_(BankAccount.cardholder_id == Debt.cardholder_id,
                                        BankAccount.status == "active"))
                .join(Cardholder, Cardholder.id == Debt.cardholder_id)
                .where(Debt.status == "collection", Debt.currency == currency_code,
                       Debt.id.not_in(busy))
                .order_by(Debt.created))).all()
            if not rows:
                return None
            message_id = new_id("COL", 12)[:35]
            collections = []
            for debt, account, holder in rows:
                ins = BankInstruction(id=new_id("DF", 12)[:35], kind="dd_file", debt_id=debt.id,
                                      amount=debt.amount - debt.repaid, currency=debt.currency,
                                      iban=account.iban, status="submitted", created=now,
                                      updated=now)
                s.add(ins)
                collections.append(Collection(ins.id, ins.amount,
                                              Party(account.holder_name or holder.name,
                                                    account.iban, account.bic),
                                              account.mandate_id, account.mandate_signed,
                                              f"tallypurse card {debt.card_id} ATC {debt.atc}"))
            xml = pain008(message_id=message_id, created=dt.datetime.fromtimestamp(now, dt.UTC),
                          collection_date=day + dt.timedelta(days=2),
                          creditor=Party(op.name, op.iban, op.bic), creditor_id=op.creditor_id,
                          currency_code=currency_code, collections=collections)
            s.add(PaymentFile(kind="pain.008", message_id=message_id, business_day=day,
                              count=len(collections), total=sum(c.amount for c in collections),
                              currency=currency_code, xml=xml.decode(), created=now))
            uow.commit()
        return xml

    def payment_file(self, file_id: int) -> PaymentFile:
        with self.host.uow() as uow:
            pf = uow.session.get(PaymentFile, file_id)
            if pf is None:
                raise HostError(NOT_FOUND, f"no payment file {file_id}")
            return pf

    def merchant_balance(self, merchant_id: str) -> int:
        """What the operator owes the merchant now (minor units)."""
        with self.host.uow() as uow:
            bal = uow.session.scalar(select(Account.balance).where(
                Account.kind == Kind.MERCHANT_PAYABLE.value, Account.owner == merchant_id))
            return -int(bal or 0)
