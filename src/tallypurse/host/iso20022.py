"""ISO 20022 payment files: pain.001 (merchant payouts) and pain.008 (direct debits).

Pure functions from plain data to UTF-8 XML bytes, in the SEPA profile of the
messages (pain.001.001.09 and pain.008.001.08). Amounts are written from
integer minor units with the currency's exponent, never through a float.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from tallypurse.core.errors import BadInput
from tallypurse.core.money import currency

PAIN_001 = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
PAIN_008 = "urn:iso:std:iso:20022:tech:xsd:pain.008.001.08"
MAX_TEXT = 140


@dataclass(frozen=True, slots=True)
class Party:
    name: str
    iban: str
    bic: str


@dataclass(frozen=True, slots=True)
class Transfer:
    """One credit transfer (payout to a merchant)."""

    end_to_end_id: str
    amount: int
    creditor: Party
    remittance: str


@dataclass(frozen=True, slots=True)
class Collection:
    """One direct debit from a cardholder's account."""

    end_to_end_id: str
    amount: int
    debtor: Party
    mandate_id: str
    mandate_signed: dt.date
    remittance: str


def decimal_amount(minor: int, code: str) -> str:
    """Minor units as an ISO 20022 decimal amount: ``1234`` EUR -> ``"12.34"``."""
    if minor <= 0:
        raise BadInput("payment amounts are positive")
    exp = currency(code).exponent
    if exp == 0:
        return str(minor)
    unit = 10**exp
    return f"{minor // unit}.{minor % unit:0{exp}d}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text[:MAX_TEXT]
    return el


def _account(parent: ET.Element, tag: str, iban: str) -> None:
    _sub(_sub(_sub(parent, tag), "Id"), "IBAN", iban)


def _agent(parent: ET.Element, tag: str, bic: str) -> None:
    _sub(_sub(parent, tag), "FinInstnId").append(_text("BICFI", bic))


def _text(tag: str, text: str) -> ET.Element:
    el = ET.Element(tag)
    el.text = text
    return el


def _group_header(root: ET.Element, message_id: str, created: dt.datetime, count: int,
                  total: str, initiator: str) -> None:
    hdr = _sub(root, "GrpHdr")
    _sub(hdr, "MsgId", message_id)
    _sub(hdr, "CreDtTm", created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    _sub(hdr, "NbOfTxs", str(count))
    _sub(hdr, "CtrlSum", total)
    _sub(_sub(hdr, "InitgPty"), "Nm", initiator)


def _document(namespace: str, body: str) -> tuple[ET.Element, ET.Element]:
    root = ET.Element("Document", {"xmlns": namespace})
    return root, _sub(root, body)


def _bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _total(amounts: Sequence[int], code: str) -> str:
    return decimal_amount(sum(amounts), code)


def pain001(*, message_id: str, created: dt.datetime, execution_date: dt.date, debtor: Party,
            currency_code: str, transfers: Sequence[Transfer]) -> bytes:
    """A customer credit transfer initiation: the operator pays its merchants."""
    if not transfers:
        raise BadInput("a payout file needs at least one transfer")
    root, msg = _document(PAIN_001, "CstmrCdtTrfInitn")
    total = _total([t.amount for t in transfers], currency_code)
    _group_header(msg, message_id, created, len(transfers), total, debtor.name)
    pmt = _sub(msg, "PmtInf")
    _sub(pmt, "PmtInfId", f"{message_id}-1")
    _sub(pmt, "PmtMtd", "TRF")
    _sub(pmt, "NbOfTxs", str(len(transfers)))
    _sub(pmt, "CtrlSum", total)
    _sub(_sub(_sub(pmt, "PmtTpInf"), "SvcLvl"), "Cd", "SEPA")
    _sub(_sub(pmt, "ReqdExctnDt"), "Dt", execution_date.isoformat())
    _sub(_sub(pmt, "Dbtr"), "Nm", debtor.name)
    _account(pmt, "DbtrAcct", debtor.iban)
    _agent(pmt, "DbtrAgt", debtor.bic)
    _sub(pmt, "ChrgBr", "SLEV")
    for t in transfers:
        tx = _sub(pmt, "CdtTrfTxInf")
        _sub(_sub(tx, "PmtId"), "EndToEndId", t.end_to_end_id)
        _sub(_sub(tx, "Amt"), "InstdAmt", decimal_amount(t.amount, currency_code),
             Ccy=currency_code)
        _agent(tx, "CdtrAgt", t.creditor.bic)
        _sub(_sub(tx, "Cdtr"), "Nm", t.creditor.name)
        _account(tx, "CdtrAcct", t.creditor.iban)
        _sub(_sub(tx, "RmtInf"), "Ustrd", t.remittance)
    return _bytes(root)


def pain008(*, message_id: str, created: dt.datetime, collection_date: dt.date, creditor: Party,
            creditor_id: str, currency_code: str, collections: Sequence[Collection]) -> bytes:
    """A customer direct debit initiation: the operator collects split debts."""
    if not collections:
        raise BadInput("a direct debit file needs at least one collection")
    root, msg = _document(PAIN_008, "CstmrDrctDbtInitn")
    total = _total([c.amount for c in collections], currency_code)
    _group_header(msg, message_id, created, len(collections), total, creditor.name)
    pmt = _sub(msg, "PmtInf")
    _sub(pmt, "PmtInfId", f"{message_id}-1")
    _sub(pmt, "PmtMtd", "DD")
    _sub(pmt, "NbOfTxs", str(len(collections)))
    _sub(pmt, "CtrlSum", total)
    tp = _sub(pmt, "PmtTpInf")
    _sub(_sub(tp, "SvcLvl"), "Cd", "SEPA")
    _sub(_sub(tp, "LclInstrm"), "Cd", "CORE")
    _sub(tp, "SeqTp", "RCUR")
    _sub(pmt, "ReqdColltnDt", collection_date.isoformat())
    _sub(_sub(pmt, "Cdtr"), "Nm", creditor.name)
    _account(pmt, "CdtrAcct", creditor.iban)
    _agent(pmt, "CdtrAgt", creditor.bic)
    _sub(pmt, "ChrgBr", "SLEV")
    othr = _sub(_sub(_sub(_sub(pmt, "CdtrSchmeId"), "Id"), "PrvtId"), "Othr")
    _sub(othr, "Id", creditor_id)
    _sub(_sub(othr, "SchmeNm"), "Prtry", "SEPA")
    for c in collections:
        tx = _sub(pmt, "DrctDbtTxInf")
        _sub(_sub(tx, "PmtId"), "EndToEndId", c.end_to_end_id)
        _sub(tx, "InstdAmt", decimal_amount(c.amount, currency_code), Ccy=currency_code)
        mandate = _sub(_sub(tx, "DrctDbtTx"), "MndtRltdInf")
        _sub(mandate, "MndtId", c.mandate_id)
        _sub(mandate, "DtOfSgntr", c.mandate_signed.isoformat())
        _agent(tx, "DbtrAgt", c.debtor.bic)
        _sub(_sub(tx, "Dbtr"), "Nm", c.debtor.name)
        _account(tx, "DbtrAcct", c.debtor.iban)
        _sub(_sub(tx, "RmtInf"), "Ustrd", c.remittance)
    return _bytes(root)
