"""`tallypurse demo`: the story of a card, told step by step."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from tallypurse.core.money import currency, format_minor
from tallypurse.core.protocol import TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient


def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Issue a card, load it, pay offline, pay with a split, write back, and check."""
    from tallypurse.lab import Lab

    eur = currency("EUR")
    steps: list[dict[str, Any]] = []

    def say(step: str, text: str, **facts: Any) -> None:
        steps.append({"step": step, "text": text, **facts})
        if not as_json:
            typer.echo(f"[{len(steps):2d}] {text}")

    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab.create(Path(tmp))
        say(
            "keys",
            "Created an issuer keystore: root CA, host list and load keys, ISD/SD/APP master keys.",
        )
        serial = bytes.fromhex("0000000000000001")
        card, _ = lab.new_card(serial, credit=lab.credit_record(serial))
        say(
            "issue",
            f"Personalised card {serial.hex()} through its own APDUs: ISD keys, "
            "operator domain, purse, on-card key pair, certificate, credit record grade B.",
            card_id=serial.hex(),
        )
        sam = lab.new_sam(Path(tmp) / "sam.json", b"CANTEEN1")
        say(
            "enrol",
            "Enrolled terminal CANTEEN1: SAM key generated inside, certified by the issuer.",
        )
        ev = lab.load(card, 2_000)
        say(
            "load",
            f"Loaded {format_minor(2_000, eur)}: balance "
            f"{format_minor(ev.event.balance_after, eur)}.",
            balance=ev.event.balance_after,
        )
        tap = lab.purchase(card, sam, 1_250, tx_type=TxType.CANTEEN)
        say(
            "purchase",
            f"Offline purchase of {format_minor(1_250, eur)}: TAC verified, "
            f"ATC {tap.result.atc}, balance {format_minor(tap.result.balance_after, eur)}.",
            balance=tap.result.balance_after,
        )
        split = lab.purchase(card, sam, tap.result.balance_after, split=450, tx_type=TxType.CANTEEN)
        say(
            "split",
            f"Split purchase of {format_minor(1_200, eur)}: purse paid "
            f"{format_minor(750, eur)}, {format_minor(450, eur)} recorded as a debt in slot "
            f"{split.result.debt_slot}.",
            debt_slot=split.result.debt_slot,
        )
        receipt = lab.settle_debt(card, split.result.atc, 450)
        say(
            "write-back",
            f"Host settled the debt; write-back #{receipt.seq} applied, receipt MAC verified.",
        )
        purse = PurseClient(ApduClient(card))
        purse.select()
        counters = purse.counters()
        debts = [d for d in purse.debts() if d.state]
        ok_balance = counters.balance == 0
        ok_debts = not debts
        ok_log = len(purse.log()) == 3
        sam.close()
    checks = {"balance_chain": ok_balance, "debts_settled": ok_debts, "log_complete": ok_log}
    if as_json:
        typer.echo(json.dumps({"steps": steps, "invariants": checks}, indent=2))
    else:
        for name, good in checks.items():
            typer.echo(f"  {'ok ' if good else 'FAIL'} {name}")
    if not all(checks.values()):
        raise typer.Exit(1)
