"""Receipts: plain text for screens and logs, ESC/POS bytes for receipt printers.

ESC/POS is produced with python-escpos: :func:`escpos_bytes` renders into a
``Dummy`` printer and returns its bytes; :func:`print_escpos` sends them to a
device or file (``File`` printer: ``/dev/usb/lp0``, a serial port, a plain file).
A receipt exists only for an outcome the card has certainly committed.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from tallypurse.core.money import Currency, format_minor

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
    recovered: bool = False  # completed at a later tap after an interruption

    @property
    def total(self) -> int:
        return self.purse_amount + self.online_amount

    @property
    def masked_card(self) -> str:
        return mask_card(self.card_id)

    @property
    def tac_code(self) -> str:
        return short_tac(self.tac)


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
        out.append("completed after an interrupted tap")
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
