"""Receipts: plain text for screens and logs, ESC/POS bytes for receipt printers.

ESC/POS is produced with python-escpos: :func:`escpos_bytes` renders into a
``Dummy`` printer and returns its bytes; :func:`print_escpos` sends them to a
device or file (``File`` printer: ``/dev/usb/lp0``, a serial port, a plain file).
A receipt exists only for an outcome the card has certainly committed.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from typing import Any

from tallypurse.core.money import Currency, format_minor
from tallypurse.core.money import currency as currency_of

WIDTH = 32  # characters per line on a 58 mm printer


@dataclass(frozen=True, slots=True)
class Receipt:
    kind: str  # purchase, split purchase, online purchase, load, cancel
    merchant: str
    terminal_id: bytes
    time: int
    card_id: bytes
    currency: Currency
    tx_type: str
    purse_amount: int  # paid from (or, for a load or cancel, added to) the purse
    online_amount: int = 0  # paid from the online account
    online_pending: bool = False  # the online part is queued for the host (split)
    balance_after: int | None = None
    atc: int | None = None
    tac: bytes = b""
    journal_seq: int = 0
    reference: str = ""  # online authorisation code, load reference
    recovered: bool = False  # done before an interruption; handed over now, not charged again
    copy: bool = False  # printed again on request (``tallypurse terminal reprint``)

    @property
    def total(self) -> int:
        return self.purse_amount + self.online_amount

    @property
    def masked_card(self) -> str:
        return mask_card(self.card_id)

    @property
    def tac_code(self) -> str:
        return short_tac(self.tac)


def to_json(r: Receipt) -> str:
    """The receipt as kept in the journal (attempts.receipt), to hand it over again."""
    doc: dict[str, Any] = {
        "kind": r.kind, "merchant": r.merchant, "terminal_id": r.terminal_id.hex(),
        "time": r.time, "card_id": r.card_id.hex(), "currency": r.currency.code,
        "tx_type": r.tx_type, "purse_amount": r.purse_amount, "online_amount": r.online_amount,
        "online_pending": r.online_pending, "balance_after": r.balance_after, "atc": r.atc,
        "tac": r.tac.hex(), "journal_seq": r.journal_seq, "reference": r.reference,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def from_json(text: str) -> Receipt:
    d = json.loads(text)
    return Receipt(
        kind=d["kind"], merchant=d["merchant"], terminal_id=bytes.fromhex(d["terminal_id"]),
        time=d["time"], card_id=bytes.fromhex(d["card_id"]), currency=currency_of(d["currency"]),
        tx_type=d["tx_type"], purse_amount=d["purse_amount"], online_amount=d["online_amount"],
        online_pending=d["online_pending"], balance_after=d["balance_after"], atc=d["atc"],
        tac=bytes.fromhex(d["tac"]), journal_seq=d["journal_seq"], reference=d["reference"],
    )


def mask_card(card_id: bytes) -> str:
    """The card id with all but its last four hex digits hidden: ``**** **** **** 0001``."""
    tail = card_id.hex().upper()[-4:]
    return f"**** **** **** {tail}"


def short_tac(tac: bytes) -> str:
    """The first four bytes of a TAC, for a receipt: ``3FA2-91C0``."""
    if not tac:
        return ""
    h = tac[:4].hex().upper()
    return f"{h[:4]}-{h[4:]}"


def _line(left: str, right: str) -> str:
    space = max(1, WIDTH - len(left) - len(right))
    return left + " " * space + right


def lines(r: Receipt) -> list[str]:
    def money(minor: int) -> str:
        return format_minor(minor, r.currency)

    when = _dt.datetime.fromtimestamp(r.time, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [
        r.merchant[:WIDTH] or "tallypurse",
        _line("terminal", r.terminal_id.hex().upper()),
        when,
        _line("card", r.masked_card),
        "-" * WIDTH,
        r.kind.upper() + (f" ({r.tx_type})" if r.tx_type and r.kind != "load" else ""),
    ]
    if r.kind == "load":
        out.append(_line("loaded", money(r.purse_amount)))
    elif r.kind == "cancel":
        out.append(_line("refunded to purse", money(r.purse_amount)))
        if r.online_amount:
            out.append(_line("online part void", money(r.online_amount)))
    else:
        out.append(_line("total", money(r.total)))
        if r.kind != "online purchase":
            out.append(_line("purse", money(r.purse_amount)))
        if r.online_amount:
            out.append(_line("online account", money(r.online_amount)))
            if r.online_pending:
                out.append(_line("", "(pending)"))
    if r.balance_after is not None:
        out.append(_line("balance after", money(r.balance_after)))
    if r.atc is not None:
        out.append(_line("ATC", str(r.atc)))
    if r.tac:
        out.append(_line("TAC", r.tac_code))
    if r.reference:
        out.append(_line("ref", r.reference[:WIDTH - 4]))
    out.append(_line("journal", str(r.journal_seq)))
    if r.recovered:
        out.append("RECOVERED: done before an")
        out.append("interruption, not charged again")
    if r.copy:
        out.append("COPY: printed again")
    return out


def text(r: Receipt) -> str:
    return "\n".join(lines(r)) + "\n"


def escpos_bytes(r: Receipt) -> bytes:
    """The receipt as ESC/POS commands (what a receipt printer reads)."""
    from escpos.printer import Dummy  # type: ignore[import-untyped]

    p = Dummy()
    body = lines(r)
    p.set(align="center", bold=True, double_height=True)
    p.text(body[0] + "\n")
    p.set(align="left", bold=False, normal_textsize=True)
    for line in body[1:]:
        p.text(line + "\n")
    p.cut()
    out: bytes = p.output
    return out


def print_escpos(r: Receipt, device: str) -> None:
    """Send the receipt to an ESC/POS device or file (e.g. /dev/usb/lp0)."""
    from escpos.printer import File

    printer = File(device)
    try:
        printer._raw(escpos_bytes(r))
    finally:
        printer.close()
