"""``tallypurse host``: run and operate the host (the operator's back office)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from tallypurse.core.errors import TallypurseError
from tallypurse.core.money import Money
from tallypurse.host.config import ENV_DATA_DIR, ENV_DB, ENV_PUBLIC_URL, HostSettings
from tallypurse.host.db.migrate import head_revision, upgrade
from tallypurse.host.service import Host

from .keys import fail

app = typer.Typer(help="Run and operate the host: database, API server, audit, settlement.",
                  no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option(
    "--db", help="Database URL (default: SQLite in the data directory); "
                 "e.g. postgresql://user@127.0.0.1:5432/tallypurse", show_default=False)]
DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help="Data directory (SQLite file, keystore) [default: ./tallypurse-host]",
    file_okay=False, show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def settings(db: str | None, data_dir: Path | None, **extra: Any) -> HostSettings:
    try:
        return HostSettings.from_env(db_url=db, data_dir=data_dir, **extra)
    except TallypurseError as exc:
        fail(exc.message)


@contextmanager
def opened(db: str | None, data_dir: Path | None, *, migrate: bool = False) -> Iterator[Host]:
    """A host for one command; errors become one line on stderr and exit status 2."""
    from tallypurse.host.bootstrap import open_host

    try:
        host = open_host(settings(db, data_dir))
        if migrate:
            upgrade(host.db)
        yield host
    except TallypurseError as exc:
        fail(exc.message)
    else:
        host.db.dispose()


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def parse_day(text: str | None) -> dt.date:
    if text is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter("a day is YYYY-MM-DD") from None


@app.command()
def migrate(db: DbOption = None, data_dir: DataDirOption = None) -> None:
    """Create or upgrade the database schema (Alembic) and the keystore if missing."""
    with opened(db, data_dir, migrate=True) as host:
        url = host.db.engine.url.render_as_string()
        typer.echo(f"database at revision {head_revision()} ({url})")


@app.command()
def serve(
    db: DbOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    public_url: Annotated[str | None, typer.Option(
        help="Base URL terminals sign, when behind a proxy.")] = None,
) -> None:
    """Serve the host API (uvicorn). Migrates the database first; keeps no state in
    its processes, so any number of workers or hosts can share one PostgreSQL."""
    import uvicorn

    config = settings(db, data_dir, public_url=public_url)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with opened(db, data_dir, migrate=True):
        pass  # creates the data directory, keystore and schema on a fresh machine
    os.environ[ENV_DATA_DIR] = str(config.data_dir.resolve())
    if config.db_url:
        os.environ[ENV_DB] = config.db_url
    if config.public_url:
        os.environ[ENV_PUBLIC_URL] = config.public_url
    uvicorn.run("tallypurse.host.bootstrap:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", proxy_headers=False)


@app.command()
def audit(db: DbOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
          ) -> None:
    """Prove that the ledger sums to zero and every balance equals its postings.
    Exit status 1 when it does not."""
    with opened(db, data_dir) as host:
        report = host.reports.audit()
    if as_json:
        echo_json(report)
    else:
        counts = report["counts"]
        typer.echo(f"balanced: {'yes' if report['balanced'] else 'NO'}  "
                   f"({counts['transactions']} transactions, {counts['postings']} postings, "
                   f"{counts['accounts']} accounts)")
        for cur, total in sorted(report["totals"].items()):
            typer.echo(f"  {cur}: postings sum to {total}")
        for kind, rows in report["differences"].items():
            for row in rows:
                typer.echo(f"  {kind}: {row}")
    if not report["balanced"]:
        raise typer.Exit(1)


token_app = typer.Typer(help="Bearer tokens for operators, auditors and merchants.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="operator, auditor or merchant")],
    merchant: Annotated[str | None, typer.Option(help="The merchant (role merchant).")] = None,
    name: Annotated[str, typer.Option(help="Who holds it.")] = "",
    db: DbOption = None, data_dir: DataDirOption = None,
) -> None:
    """Create a token; it is shown once."""
    from tallypurse.host.api.auth import create_token

    if role not in ("operator", "auditor", "merchant"):
        raise typer.BadParameter("role is operator, auditor or merchant")
    with opened(db, data_dir) as host:
        typer.echo(create_token(host, role, merchant_id=merchant, name=name))


@app.command("merchant-add")
def merchant_add(
    name: Annotated[str, typer.Option(help="Merchant name.")],
    iban: Annotated[str, typer.Option(help="Payout IBAN.")],
    bic: Annotated[str, typer.Option(help="Payout BIC.")],
    fee_bp: Annotated[int, typer.Option(help="Fee in basis points.", min=0, max=10_000)] = 0,
    merchant_id: Annotated[str | None, typer.Option("--id", help="Merchant id.")] = None,
    db: DbOption = None, data_dir: DataDirOption = None,
) -> None:
    """Register a merchant; prints its id."""
    with opened(db, data_dir) as host:
        typer.echo(host.registry.create_merchant(name, iban=iban, bic=bic,
                                                 fee_basis_points=fee_bp,
                                                 merchant_id=merchant_id))


@app.command("terminal-add")
def terminal_add(
    merchant: Annotated[str, typer.Option(help="The merchant the terminal belongs to.")],
    terminal_id: Annotated[str | None, typer.Option("--id", help="16 hex digits.")] = None,
    db: DbOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
) -> None:
    """Register a terminal; prints its id and a one-time enrolment token."""
    with opened(db, data_dir) as host:
        tid, token = host.tms.create_terminal(merchant, terminal_id)
    if as_json:
        echo_json({"terminal_id": tid, "enrolment_token": token})
    else:
        typer.echo(f"terminal {tid}\nenrolment token {token}")


@app.command("terminals")
def terminals(db: DbOption = None, data_dir: DataDirOption = None,
              as_json: JsonOption = False) -> None:
    """Terminals: status, last contact, list versions, journal progress, staleness."""
    with opened(db, data_dir) as host:
        rows = [t.to_json() for t in host.tms.terminals()]
    if as_json:
        echo_json(rows)
        return
    for t in rows:
        flag = " STALE" if t["stale"] else ""
        typer.echo(f"{t['terminal_id']} {t['merchant_id']:<16} {t['status']:<8} "
                   f"journal {t['journal_contiguous']}/{t['journal_max']} "
                   f"{', '.join(t['reasons'])}{flag}")


@app.command("terminal-revoke")
def terminal_revoke(terminal_id: str, db: DbOption = None, data_dir: DataDirOption = None
                    ) -> None:
    """Revoke a terminal: its requests are refused from now on."""
    with opened(db, data_dir) as host:
        host.tms.revoke(terminal_id)
    typer.echo(f"terminal {terminal_id} revoked")


@app.command("cardholder-add")
def cardholder_add(
    name: Annotated[str, typer.Option(help="Cardholder name.")],
    funds: Annotated[str | None, typer.Option(help="Initial online balance, e.g. 50.00")] = None,
    iban: Annotated[str | None, typer.Option(help="Linked bank account IBAN.")] = None,
    bic: Annotated[str | None, typer.Option(help="Linked bank account BIC.")] = None,
    db: DbOption = None, data_dir: DataDirOption = None,
) -> None:
    """Register a cardholder with an online account (and a linked bank account)."""
    with opened(db, data_dir) as host:
        holder = host.registry.create_cardholder(name)
        if funds:
            host.registry.fund_online_account(holder, Money.parse(funds, "EUR").minor,
                                              f"initial-{holder}")
        if iban:
            host.registry.link_bank_account(holder, iban=iban, bic=bic or "", holder_name=name)
    typer.echo(holder)


@app.command("card-issue")
def card_issue(
    card_file: Annotated[Path, typer.Option(help="Card file to create (the card emulator).")],
    serial: Annotated[str, typer.Option(help="Card serial: 16 hex digits.")],
    cardholder: Annotated[str | None, typer.Option(help="Cardholder id.")] = None,
    db: DbOption = None, data_dir: DataDirOption = None,
) -> None:
    """Manufacture a card file, personalise it through its own commands, register it."""
    from tallypurse.card.card import Card

    from .card import parse_serial

    card_serial = parse_serial(serial)
    if card_file.exists():
        fail(f"{card_file} already exists")
    with opened(db, data_dir) as host:
        card = Card.manufacture(card_serial, path=card_file)
        try:
            host.registry.issue_card(card, serial=card_serial, cardholder_id=cardholder)
        except BaseException:
            card_file.unlink(missing_ok=True)
            raise
    typer.echo(f"card {card_serial.hex()} issued into {card_file}")


@app.command()
def settle(
    day: Annotated[str | None, typer.Option(help="Business day YYYY-MM-DD [today].")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory for the report and pain.001.",
                                             file_okay=False)] = None,
    db: DbOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
) -> None:
    """Settle every merchant for a day; write the report (CSV, JSON) and the payout file."""
    when = parse_day(day)
    with opened(db, data_dir) as host:
        views = host.settlement.run(when)
        xml = host.settlement.payout_file(when)
        report = host.settlement.report_csv(host.settlement.settlements(day=when))
        rows = [v.to_json() for v in host.settlement.settlements(day=when)]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"settlement-{when}.csv").write_text(report)
        (out / f"settlement-{when}.json").write_text(json.dumps(rows, indent=2))
        if xml is not None:
            (out / f"payout-{when}.pain.001.xml").write_bytes(xml)
    if as_json:
        echo_json(rows)
    else:
        typer.echo(f"{len(views)} merchants settled for {when}")
        typer.echo(report, nl=False)


@app.command()
def collect(
    day: Annotated[str | None, typer.Option(help="Business day YYYY-MM-DD [today].")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the pain.008.")] = None,
    db: DbOption = None, data_dir: DataDirOption = None,
) -> None:
    """Write a pain.008 direct-debit file for the debts in collection."""
    with opened(db, data_dir) as host:
        xml = host.settlement.collections_file(parse_day(day))
    if xml is None:
        typer.echo("nothing to collect")
    elif out is None:
        typer.echo(xml.decode())
    else:
        out.write_bytes(xml)
        typer.echo(f"wrote {out}")


@app.command()
def tick(db: DbOption = None, data_dir: DataDirOption = None) -> None:
    """Periodic work: fetch bank outcomes, blacklist long-unpaid debts."""
    with opened(db, data_dir) as host:
        outcomes = host.agent.process_bank()
        swept = host.agent.sweep_collections()
    typer.echo(f"bank: {outcomes or 'nothing pending'}; blacklisted for unpaid debts: {swept}")


@app.command()
def report(
    what: Annotated[str, typer.Argument(help="gaps, clones, alerts or reconciliation")],
    db: DbOption = None, data_dir: DataDirOption = None,
) -> None:
    """Operator reports (JSON)."""
    with opened(db, data_dir) as host:
        makers = {"gaps": host.reports.gaps, "clones": host.reports.clones,
                  "alerts": host.reports.alerts,
                  "reconciliation": host.reports.reconciliation}
        if what not in makers:
            raise typer.BadParameter(f"one of {', '.join(makers)}")
        echo_json(makers[what]())
