"""Settlement per merchant per day (gross, fees, net) and the ISO 20022 files: pain.001
payouts and pain.008 collections, checked for structure and sums."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest

from tallypurse.core.errors import BadInput
from tallypurse.core.protocol import TxType
from tallypurse.host.iso20022 import PAIN_001, PAIN_008, decimal_amount
from tallypurse.host.settlement import fee_of

from .world import World

IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")
BIC = re.compile(r"^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$")


def day_of(world: World) -> dt.date:
    return dt.datetime.fromtimestamp(world.clock(), dt.UTC).date()


def parse(xml: bytes, namespace: str, body: str) -> tuple[ET.Element, dict[str, str]]:
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(xml)
    assert root.tag == f"{{{namespace}}}Document"
    ns = {"p": namespace}
    msg = root.find(f"p:{body}", ns)
    assert msg is not None
    return msg, ns


def text(el: ET.Element, path: str, ns: dict[str, str]) -> str:
    found = el.find(path, ns)
    assert found is not None and found.text, path
    return found.text


def check_group(msg: ET.Element, ns: dict[str, str], tx_tag: str, amount_path: str) -> list[
        ET.Element]:
    """Group header and payment information agree with the transactions they carry."""
    txs = msg.findall(f"p:PmtInf/p:{tx_tag}", ns)
    amounts = [Decimal(text(t, amount_path, ns)) for t in txs]
    assert int(text(msg, "p:GrpHdr/p:NbOfTxs", ns)) == len(txs)
    assert Decimal(text(msg, "p:GrpHdr/p:CtrlSum", ns)) == sum(amounts)
    assert int(text(msg, "p:PmtInf/p:NbOfTxs", ns)) == len(txs)
    assert Decimal(text(msg, "p:PmtInf/p:CtrlSum", ns)) == sum(amounts)
    dt.datetime.strptime(text(msg, "p:GrpHdr/p:CreDtTm", ns), "%Y-%m-%dT%H:%M:%SZ")
    assert 1 <= len(text(msg, "p:GrpHdr/p:MsgId", ns)) <= 35
    for t in txs:
        assert 1 <= len(text(t, "p:PmtId/p:EndToEndId", ns)) <= 35
    return txs


def test_fees_round_half_up_in_minor_units() -> None:
    assert fee_of(1_000, 150) == 15
    assert fee_of(1_033, 150) == 15  # 15.495 -> 15
    assert fee_of(1_034, 150) == 16  # 15.51 -> 16
    assert decimal_amount(1_234, "EUR") == "12.34" and decimal_amount(5, "EUR") == "0.05"
    assert decimal_amount(500, "JPY") == "500"
    with pytest.raises(BadInput):
        decimal_amount(0, "EUR")


def test_a_merchants_day_is_settled_once_with_gross_fees_and_net(world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    world.load(card, 5_000)
    world.upload(world.purchase(card, 1_000), world.purchase(card, 2_000))
    split = world.purchase(card, 2_000, split=500, tx_type=TxType.CANTEEN)
    world.host.agent.submit(world.tid, world.agent_request(split))
    world.upload(split)
    (settled,) = world.host.settlement.run(day_of(world))
    assert (settled.gross, settled.fees, settled.count) == (5_500, 83, 4)
    assert settled.net == 5_500 - 83
    assert world.host.settlement.run(day_of(world)) == []
    assert world.host.settlement.merchant_balance(world.merchant_id) == 0
    recon = world.host.reports.reconciliation()["EUR"]
    assert recon["paid_out"] == {"merchant_payouts": 5_417, "fees_earned": 83}
    assert world.host.reports.audit()["balanced"] is True
    csv = world.host.settlement.report_csv(world.host.settlement.settlements())
    assert csv.splitlines()[1].endswith(",EUR,4,5500,83,5417,open")


def test_a_late_event_is_settled_with_the_next_day(world: World) -> None:
    card = world.card()
    world.load(card, 5_000)
    world.upload(world.purchase(card, 1_000))
    late = world.purchase(card, 300)
    first_day = day_of(world)
    world.host.settlement.run(first_day)
    world.clock.advance(86_400)
    world.upload(late)  # cleared a day late, with its original time
    (second,) = world.host.settlement.run(day_of(world))
    assert second.gross == 300


def test_the_payout_file_is_a_well_formed_pain_001(world: World) -> None:
    card = world.card()
    world.load(card, 5_000)
    world.upload(world.purchase(card, 1_234))
    day = day_of(world)
    world.host.settlement.run(day)
    xml = world.host.settlement.payout_file(day)
    assert xml is not None and world.host.settlement.payout_file(day) is None
    msg, ns = parse(xml, PAIN_001, "CstmrCdtTrfInitn")
    (tx,) = check_group(msg, ns, "CdtTrfTxInf", "p:Amt/p:InstdAmt")
    assert text(msg, "p:PmtInf/p:PmtMtd", ns) == "TRF"
    assert IBAN.match(text(msg, "p:PmtInf/p:DbtrAcct/p:Id/p:IBAN", ns))
    assert BIC.match(text(msg, "p:PmtInf/p:DbtrAgt/p:FinInstnId/p:BICFI", ns))
    instd = tx.find("p:Amt/p:InstdAmt", ns)
    assert instd is not None and instd.get("Ccy") == "EUR"
    assert instd.text == "12.15"  # 12.34 less 1.5 % (0.19)
    assert IBAN.match(text(tx, "p:CdtrAcct/p:Id/p:IBAN", ns))
    assert text(tx, "p:Cdtr/p:Nm", ns) == "Canteen"
    dt.date.fromisoformat(text(msg, "p:PmtInf/p:ReqdExctnDt/p:Dt", ns))


def test_debts_in_collection_go_into_a_well_formed_pain_008(world: World) -> None:
    world.host.bank.failing_ibans = frozenset({"GB82WEST12345698765432"})  # type: ignore[attr-defined]
    holder = world.cardholder(iban="GB82WEST12345698765432")
    card = world.card(holder)
    world.load(card, 1_000)
    split = world.purchase(card, 1_000, split=450, tx_type=TxType.CANTEEN)
    world.host.agent.submit(world.tid, world.agent_request(split))
    xml = world.host.settlement.collections_file(day_of(world))
    assert xml is not None
    assert world.host.settlement.collections_file(day_of(world)) is None  # already sent
    msg, ns = parse(xml, PAIN_008, "CstmrDrctDbtInitn")
    (tx,) = check_group(msg, ns, "DrctDbtTxInf", "p:InstdAmt")
    assert text(msg, "p:PmtInf/p:PmtMtd", ns) == "DD"
    assert text(msg, "p:PmtInf/p:PmtTpInf/p:LclInstrm/p:Cd", ns) == "CORE"
    assert text(msg, "p:PmtInf/p:CdtrSchmeId/p:Id/p:PrvtId/p:Othr/p:Id", ns)
    assert text(tx, "p:InstdAmt", ns) == "4.50"
    assert text(tx, "p:DrctDbtTx/p:MndtRltdInf/p:MndtId", ns)
    dt.date.fromisoformat(text(tx, "p:DrctDbtTx/p:MndtRltdInf/p:DtOfSgntr", ns))
    assert text(tx, "p:DbtrAcct/p:Id/p:IBAN", ns) == "GB82WEST12345698765432"
    # the bank later reports that the file's direct debit was paid
    instruction = text(tx, "p:PmtId/p:EndToEndId", ns)
    assert world.host.agent.record_bank_outcome(instruction, settled=True) == "settled"
    assert world.host.reports.reconciliation()["EUR"]["in_collection"] == 0
    assert world.host.reports.audit()["balanced"] is True
