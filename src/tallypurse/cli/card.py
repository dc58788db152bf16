"""`tallypurse card`: personalise card files and look inside them."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tallypurse.card.card import Card
from tallypurse.card.os import CardOS
from tallypurse.card.vpcd import VPCD_PORT, VpcdCardServer
from tallypurse.core.errors import TallypurseError
from tallypurse.core.money import Money, currency, currency_by_numeric, format_minor
from tallypurse.core.protocol import ISD_AID, PRIV_SECURITY_DOMAIN, AppLifeCycle, CardLifeCycle
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.personalise import PursePolicy, personalise
from tallypurse.keystore.software import SoftwareKeyStore

from .keys import fail, passphrase_from_env_or_prompt

app = typer.Typer(help="Personalise card files and show what is on them.", no_args_is_help=True)


def parse_serial(text: str) -> bytes:
    """A card serial: 16 hexadecimal digits (8 bytes)."""
    cleaned = text.replace(":", "").replace(" ", "")
    if len(cleaned) != 16:
        raise typer.BadParameter("a serial is 16 hexadecimal digits, e.g. 0000000000000001")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise typer.BadParameter("a serial is 16 hexadecimal digits") from None


@app.command("new")
def new(
    keystore: Annotated[Path, typer.Option(help="Keystore directory (tallypurse keys init).")],
    serial: Annotated[str, typer.Option(help="Card serial: 16 hex digits; also the card id.")],
    out: Annotated[Path, typer.Option(help="Card file to write.")],
    currency_code: Annotated[str, typer.Option("--currency", help="ISO 4217 code.")] = "EUR",
    cap: Annotated[str, typer.Option(help="Purse cap, e.g. 1000.00.")] = "1000.00",
    offline_limit: Annotated[str, typer.Option(help="Per-tap offline limit.")] = "100.00",
) -> None:
    """Personalise a new card into CARD_FILE, through the card's own commands."""
    card_serial = parse_serial(serial)
    if out.exists():
        fail(f"{out} already exists; choose another card file")
    try:
        cur = currency(currency_code)
        policy = PursePolicy(
            cur,
            cap=Money.parse(cap, cur.code).minor,
            offline_limit=Money.parse(offline_limit, cur.code).minor,
        )
        ks = SoftwareKeyStore.open(keystore, passphrase_from_env_or_prompt(confirm=False))
        card = Card.manufacture(card_serial, path=out)
        try:
            issued = personalise(card, ks, serial=card_serial, policy=policy, now=int(time.time()))
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    except TallypurseError as exc:
        fail(exc.message)
    typer.echo(f"personalised card {issued.card_id.hex()} into {out}")


def describe(card: Card) -> dict[str, Any]:
    """Everything `card info` shows. The registry is read from the emulator's memory
    (an emulator-only view); the purse is read through its own APDUs."""
    assert card.os is not None
    os_: CardOS = card.os
    domains: list[dict[str, Any]] = []
    applets: list[dict[str, Any]] = []
    for rec in os_.records():
        entry = {
            "aid": rec.aid,
            "life_cycle": AppLifeCycle(rec.life).name
            if rec.life in AppLifeCycle._value2member_map_
            else rec.life,
            "security_domain": rec.sd,
        }
        (domains if rec.privileges & PRIV_SECURITY_DOMAIN else applets).append(entry)
    info: dict[str, Any] = {
        "serial": card.serial.hex(),
        "life_cycle": CardLifeCycle(os_.life).name,
        "isd": ISD_AID.hex(),
        "security_domains": domains,
        "applets": applets,
    }
    purse = PurseClient(ApduClient(card))
    try:
        selected = purse.select()
    except TallypurseError:
        return info
    if not selected.card_id:
        return info
    data = purse.card_data()
    ctr = purse.counters()
    cur = currency_by_numeric(data.currency)
    info.update(
        card_id=data.card_id.hex(),
        balance=ctr.balance,
        balance_text=format_minor(ctr.balance, cur),
        currency=cur.code,
        cap=data.cap,
        offline_limit=data.offline_limit,
        expiry=data.expiry,
        atc=ctr.atc,
        load_counter=ctr.load_counter,
        online_counter=ctr.online_counter,
        writeback_seq=ctr.writeback_seq,
        blocked=bool(data.flags & 0x01),
        app_key_version=data.app_key_version,
        debts=[{"state": s.state, "ref": s.ref, "amount": s.amount} for s in purse.debts()],
    )
    try:
        credit = purse.credit_record().record
        info["credit_record"] = {
            "version": credit.version,
            "grade": credit.grade_letter,
            "per_tap_overdraft": credit.per_tap_overdraft,
            "max_outstanding": credit.max_outstanding,
            "max_slots": credit.max_slots,
            "allowed_types": credit.allowed_types,
            "expires": credit.expires,
        }
    except TallypurseError:
        info["credit_record"] = None
    info["log"] = [
        {
            "kind": e.event.kind,
            "atc": e.event.atc,
            "load_counter": e.event.load_counter,
            "amount": e.event.amount,
            "split": e.event.split,
            "balance_after": e.event.balance_after,
            "terminal_id": e.event.terminal_id.hex(),
            "time": e.event.time,
        }
        for e in purse.log()
    ]
    return info


@app.command("info")
def info(
    card_file: Annotated[Path, typer.Argument(help="Card file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show life cycle, domains, applets, balance, counters, credit record and debts."""
    try:
        card = Card.open(card_file)
        data = describe(card)
    except TallypurseError as exc:
        fail(exc.message)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"card {data['serial']}  life cycle {data['life_cycle']}")
    for d in data["security_domains"]:
        typer.echo(f"  domain {d['aid']}  {d['life_cycle']}")
    for a in data["applets"]:
        typer.echo(f"  applet {a['aid']}  {a['life_cycle']}  in {a['security_domain']}")
    if "balance" in data:
        typer.echo(
            f"  balance {data['balance_text']}  ATC {data['atc']}  loads "
            f"{data['load_counter']}  online {data['online_counter']}"
            + ("  BLOCKED" if data["blocked"] else "")
        )
        cr = data["credit_record"]
        if cr:
            typer.echo(
                f"  credit grade {cr['grade']} v{cr['version']}: per tap "
                f"{cr['per_tap_overdraft']}, max outstanding {cr['max_outstanding']}"
            )
        for i, d in enumerate(data["debts"]):
            if d["state"]:
                typer.echo(
                    f"  debt slot {i}: ref {d['ref']} amount {d['amount']} "
                    f"{'PENDING' if d['state'] == 1 else 'FAILED'}"
                )
        typer.echo(f"  log: {len(data['log'])} records")


@app.command("serve")
def serve(
    card_file: Annotated[Path, typer.Argument(help="Card file.")],
    host: Annotated[str, typer.Option(help="Where vpcd listens.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="vpcd's port (reader.conf.d/vpcd).")
    ] = VPCD_PORT,
) -> None:
    """Put CARD_FILE in the field of the vsmartcard virtual reader (pcscd + vpcd).

    Connects to vpcd, answers its APDUs with the card and saves the card file after
    every change; reconnects whenever vpcd goes away and comes back; stops cleanly on
    Ctrl-C or SIGTERM.
    """
    try:
        card = Card.open(card_file)
    except TallypurseError as exc:
        fail(exc.message)
    logger = logging.getLogger("tallypurse.card.vpcd")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    server = VpcdCardServer(card, host, port)

    def on_signal(signum: int, frame: object) -> None:
        server.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    typer.echo(
        f"serving card {card.serial.hex()} from {card_file} to vpcd at {host}:{port} "
        "(Ctrl-C to stop)",
        err=True,
    )
    try:
        server.serve_forever()
    finally:
        for sig, handler_ in previous.items():
            signal.signal(sig, handler_)
        card.save()
    typer.echo(f"stopped after {server.apdus} APDUs; {card_file} saved", err=True)
