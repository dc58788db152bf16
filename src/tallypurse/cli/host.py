"""``tallypurse host``: run and operate the host (the operator's back office)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from string import hexdigits
from typing import Annotated, Any

import typer

from tallypurse.core.errors import BadInput, TallypurseError
from tallypurse.core.money import Money
from tallypurse.host.config import (
    ENV_DATA_DIR,
    ENV_DB,
    ENV_KEYSTORE,
    ENV_PUBLIC_URL,
    HostSettings,
)
from tallypurse.host.db.migrate import head_revision, upgrade
from tallypurse.host.keyring import ReloadingKeyStore
from tallypurse.host.service import Host
from tallypurse.keystore.base import ManagedKeyStore

from .keys import fail

app = typer.Typer(help="Run and operate the host: database, API server, audit, settlement.",
                  no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option(
    "--db", help="Database URL (default: SQLite in the data directory); "
                 "e.g. postgresql://user@127.0.0.1:5432/tallypurse", show_default=False)]
DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help="Data directory (SQLite file, keystore) [default: ./tallypurse-host]",
    file_okay=False, show_default=False)]
KeystoreOption = Annotated[str | None, typer.Option(
    "--keystore", help="The host's keys: a keystore directory, or a PKCS#11 token "
    "'pkcs11:module=PATH;token=LABEL;pin-source=env:VAR' (the PIN in that variable) "
    f"[default: ${ENV_KEYSTORE}, else the software keystore in the data directory]",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")]
ByOption = Annotated[str | None, typer.Option(
    "--by", help="Who does it (kept in the audit log) [login name].", show_default=False)]


def settings(db: str | None, data_dir: Path | None, keystore: str | None = None,
             **extra: Any) -> HostSettings:
    try:
        return HostSettings.from_env(db_url=db, data_dir=data_dir, keystore=keystore, **extra)
    except TallypurseError as exc:
        fail(exc.message)


@contextmanager
def opened(db: str | None, data_dir: Path | None, keystore: str | None = None, *,
           migrate: bool = False) -> Iterator[Host]:
    """A host for one command; errors become one line on stderr and exit status 2."""
    from tallypurse.host.bootstrap import open_host

    config = settings(db, data_dir, keystore)
    try:
        host = open_host(config)
    except TallypurseError as exc:
        fail(exc.message)
    try:
        if migrate:
            upgrade(host.db)
        yield host
    except TallypurseError as exc:
        fail(exc.message)
    finally:
        host.db.dispose()
        if isinstance(host.keys, ManagedKeyStore | ReloadingKeyStore):
            host.keys.close()


@contextmanager
def audited(host: Host, action: str, target: str = "", *, reason: str = "",
            by: str | None = None, done: bool = True) -> Iterator[list[str]]:
    """Run an operator action and append it to the audit log, done or failed (with
    who, why and what); lines added to the yielded list become its detail. ``done``
    False: the service writes the entry of a success itself, in the action's own
    transaction (grades set by hand), and only a failure is written here."""
    import socket

    detail: list[str] = []
    entry = {"actor": _who(by), "role": "operator", "action": action, "target": target,
             "reason": reason.strip(), "source": f"cli {socket.gethostname()}"}
    try:
        yield detail
    except Exception as exc:
        message = exc.message if isinstance(exc, TallypurseError) else exc.__class__.__name__
        host.audit.record(**entry, outcome="failed", detail=message)
        raise
    if done:
        host.audit.record(**entry, outcome="done", detail="; ".join(detail))


def need_reason(reason: str) -> str:
    if len(reason.strip()) < 3:
        raise typer.BadParameter("say why, in a few words (--reason): it goes in the audit log")
    return reason.strip()


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
def migrate(db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Create or upgrade the database schema (Alembic) and the keystore if missing."""
    with opened(db, data_dir, keystore, migrate=True) as host:
        url = host.db.engine.url.render_as_string()
        typer.echo(f"database at revision {head_revision()} ({url})")


@app.command()
def serve(
    db: DbOption = None,
    data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    public_url: Annotated[str | None, typer.Option(
        help="Base URL terminals sign, when behind a proxy.")] = None,
    access_log: Annotated[bool, typer.Option(
        help="Also log a line per HTTP request (uvicorn's access log); the structured "
             "event log and /metrics are written either way.")] = False,
) -> None:
    """Serve the host API (uvicorn). Migrates the database first; keeps no state in
    its processes, so any number of workers or hosts can share one PostgreSQL.
    With --keystore pkcs11:... every signature and key diversification is made on
    the token (see docs/security.md)."""
    import uvicorn

    config = settings(db, data_dir, keystore, public_url=public_url)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with opened(db, data_dir, keystore, migrate=True):
        pass  # creates the data directory, keystore and schema on a fresh machine
    os.environ[ENV_DATA_DIR] = str(config.data_dir.resolve())
    if config.keystore:
        # The workers open the same keystore; a token's PIN stays in its pin-source.
        os.environ[ENV_KEYSTORE] = config.keystore
    if config.db_url:
        os.environ[ENV_DB] = config.db_url
    if config.public_url:
        os.environ[ENV_PUBLIC_URL] = config.public_url
    from tallypurse.host.api import server

    uvicorn.run("tallypurse.host.bootstrap:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", proxy_headers=False,
                access_log=access_log,
                # httptools and uvloop, and no 40 ms Nagle wait per answer (see the module)
                http=server.protocol(), loop=server.loop(),
                # A worker imports the whole CLI before it answers the supervisor's health
                # check: on a loaded 2-core machine that takes longer than uvicorn's 5 s.
                timeout_worker_healthcheck=60)


@app.command()
def audit(db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None, as_json: JsonOption = False
          ) -> None:
    """Prove that the ledger sums to zero and every balance equals its postings, and
    that the operator audit log's hash chain is whole. Exit status 1 when either fails."""
    with opened(db, data_dir, keystore) as host:
        report = host.reports.audit()
        chain = host.audit.verify()
    report["audit_log"] = chain.to_json()
    if as_json:
        echo_json(report)
    else:
        if chain.ok:
            typer.echo(f"audit log: chain whole ({chain.records} records, head {chain.head})")
        else:
            typer.echo(f"audit log: chain BROKEN at id {chain.first_broken}: {chain.problem} "
                       f"({chain.records} records read)")
        counts = report["counts"]
        typer.echo(f"balanced: {'yes' if report['balanced'] else 'NO'}  "
                   f"({counts['transactions']} transactions, {counts['postings']} postings, "
                   f"{counts['accounts']} accounts)")
        for cur, total in sorted(report["totals"].items()):
            typer.echo(f"  {cur}: postings sum to {total}")
        for kind, rows in report["differences"].items():
            for row in rows:
                typer.echo(f"  {kind}: {row}")
    if not report["balanced"] or not chain.ok:
        raise typer.Exit(1)


token_app = typer.Typer(help="Bearer tokens for operators, auditors and merchants.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="operator, auditor or merchant")],
    merchant: Annotated[str | None, typer.Option(help="The merchant (role merchant).")] = None,
    name: Annotated[str, typer.Option(help="Who holds it.")] = "",
    reason: ReasonOption = "", by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Create a token; it is shown once (the audit log keeps who got one, not the token)."""
    from tallypurse.host.api.auth import create_token

    if role not in ("operator", "auditor", "merchant"):
        raise typer.BadParameter("role is operator, auditor or merchant")
    with opened(db, data_dir, keystore) as host, audited(
            host, "token.create", role, reason=reason, by=by) as detail:
        detail.append(f"name {name!r}" + (f", merchant {merchant}" if merchant else ""))
        typer.echo(create_token(host, role, merchant_id=merchant, name=name))


@app.command("merchant-add")
def merchant_add(
    name: Annotated[str, typer.Option(help="Merchant name.")],
    iban: Annotated[str, typer.Option(help="Payout IBAN.")],
    bic: Annotated[str, typer.Option(help="Payout BIC.")],
    fee_bp: Annotated[int, typer.Option(help="Fee in basis points.", min=0, max=10_000)] = 0,
    merchant_id: Annotated[str | None, typer.Option("--id", help="Merchant id.")] = None,
    reason: ReasonOption = "", by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Register a merchant; prints its id."""
    with opened(db, data_dir, keystore) as host, audited(
            host, "merchant.add", merchant_id or name, reason=reason, by=by) as detail:
        created = host.registry.create_merchant(name, iban=iban, bic=bic,
                                                fee_basis_points=fee_bp,
                                                merchant_id=merchant_id)
        detail.append(f"merchant {created} {name!r}, IBAN {iban}, BIC {bic}, fee {fee_bp} bp")
        typer.echo(created)


@app.command("terminal-add")
def terminal_add(
    merchant: Annotated[str, typer.Option(help="The merchant the terminal belongs to.")],
    terminal_id: Annotated[str | None, typer.Option("--id", help="16 hex digits.")] = None,
    reason: ReasonOption = "", by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None, as_json: JsonOption = False,
) -> None:
    """Register a terminal; prints its id and a one-time enrolment token."""
    with opened(db, data_dir, keystore) as host, audited(
            host, "terminal.add", terminal_id or merchant, reason=reason, by=by) as detail:
        tid, token = host.tms.create_terminal(merchant, terminal_id)
        detail.append(f"terminal {tid} of merchant {merchant}; enrolment token issued")
    if as_json:
        echo_json({"terminal_id": tid, "enrolment_token": token})
    else:
        typer.echo(f"terminal {tid}\nenrolment token {token}")


@app.command("terminals")
def terminals(db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
              as_json: JsonOption = False) -> None:
    """Terminals: status, last contact, list versions, journal progress, staleness."""
    with opened(db, data_dir, keystore) as host:
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
def terminal_revoke(terminal_id: str, reason: ReasonOption, by: ByOption = None,
                    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Revoke a terminal: its requests are refused from now on."""
    why = need_reason(reason)
    with opened(db, data_dir, keystore) as host, audited(
            host, "terminal.revoke", terminal_id, reason=why, by=by):
        host.tms.revoke(terminal_id, why)
    typer.echo(f"terminal {terminal_id} revoked")


@app.command("terminal-token")
def terminal_token(terminal_id: str, reason: ReasonOption = "", by: ByOption = None,
                   db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """A fresh one-time enrolment token for a terminal (renewal, a replaced SAM)."""
    with opened(db, data_dir, keystore) as host, audited(
            host, "terminal.token", terminal_id, reason=reason, by=by) as detail:
        token = host.tms.new_token(terminal_id)
        detail.append("enrolment token issued")
    typer.echo(f"enrolment token {token}")


CARD_STATUSES = {"blocked": "card.block", "lost": "card.block", "stolen": "card.block",
                 "active": "card.unblock"}


@app.command("card-status")
def card_status(
    card_id: Annotated[str, typer.Argument(help="The card: 16 hex digits.")],
    status: Annotated[str, typer.Option(help="blocked, lost, stolen (all blacklist the "
                                             "card) or active (off the blacklist).")],
    reason: ReasonOption, by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Block a card (blocked, lost, stolen: on the blacklist) or unblock it (active)."""
    if status not in CARD_STATUSES:
        raise typer.BadParameter("status is blocked, lost, stolen or active")
    why = need_reason(reason)
    card = card_id.lower()
    with opened(db, data_dir, keystore) as host, audited(
            host, CARD_STATUSES[status], card, reason=why, by=by) as detail:
        host.registry.set_card_status(card, status, reason=why)
        detail.append(f"status {status}")
    typer.echo(f"card {card} is {status}" + (" and on the blacklist" if status != "active"
                                             else " and off the blacklist"))


@app.command("card-replace")
def card_replace(
    card_id: Annotated[str, typer.Argument(help="The lost, stolen or blocked card.")],
    new_card: Annotated[str, typer.Option("--new", help="The replacement card (issued to "
                                                        "the same cardholder).")],
    reason: ReasonOption, by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Replace a card: what the host holds for it moves to the cardholder's online
    account, from where it loads the new card."""
    why = need_reason(reason)
    old, new = card_id.lower(), new_card.lower()
    with opened(db, data_dir, keystore) as host, audited(
            host, "card.replace", old, reason=why, by=by) as detail:
        moved = host.registry.replace_card(old, new)
        detail.append(f"replaced by {new}; {moved} minor units moved to the online account")
    typer.echo(f"card {old} replaced by {new}; {moved} minor units moved")


@app.command("parameters")
def parameters(
    reason: ReasonOption,
    offline_limit: Annotated[int | None, typer.Option(min=0, help="Offline limit, minor "
                                                                  "units.")] = None,
    online_threshold: Annotated[int | None, typer.Option(min=0, help="Online threshold, "
                                                                     "minor units.")] = None,
    max_list_age: Annotated[int | None, typer.Option(
        "--max-list-age-s", min=60, help="Oldest lists a terminal may work with, s.")] = None,
    cancel_window: Annotated[int | None, typer.Option(
        "--cancel-window-s", min=0, max=3600, help="How long a purchase may be cancelled, "
                                                   "s.")] = None,
    by: ByOption = None, db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish a new signed version of the terminal parameters with these changes."""
    from pydantic import ValidationError

    changes = {k: v for k, v in {"offline_limit": offline_limit,
                                 "online_threshold": online_threshold,
                                 "max_list_age_s": max_list_age,
                                 "cancel_window_s": cancel_window}.items() if v is not None}
    if not changes:
        raise typer.BadParameter("name at least one parameter to change")
    why = need_reason(reason)
    with opened(db, data_dir, keystore) as host, audited(
            host, "parameters.publish", "parameters", reason=why, by=by) as detail:
        try:
            signed = host.tms.publish_parameters(**changes)
        except ValidationError as exc:
            raise BadInput(f"parameters do not validate: {exc.errors()[0]['msg']}"
                                  ) from None
        detail.append(f"version {signed.parameters.version}: "
                      + json.dumps(changes, sort_keys=True))
    if as_json:
        echo_json(signed.model_dump(mode="json"))
    else:
        typer.echo(f"parameters version {signed.parameters.version} published: "
                   + ", ".join(f"{k} {v}" for k, v in sorted(changes.items())))


@app.command("cardholder-add")
def cardholder_add(
    name: Annotated[str, typer.Option(help="Cardholder name.")],
    funds: Annotated[str | None, typer.Option(help="Initial online balance, e.g. 50.00")] = None,
    iban: Annotated[str | None, typer.Option(help="Linked bank account IBAN.")] = None,
    bic: Annotated[str | None, typer.Option(help="Linked bank account BIC.")] = None,
    reason: ReasonOption = "", by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Register a cardholder with an online account (and a linked bank account)."""
    with opened(db, data_dir, keystore) as host, audited(
            host, "cardholder.add", name, reason=reason, by=by) as detail:
        holder = host.registry.create_cardholder(name)
        detail.append(f"cardholder {holder}" + (f", funds {funds}" if funds else "")
                      + (f", bank account {iban}" if iban else ""))
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
    reason: ReasonOption = "", by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Manufacture a card file, personalise it through its own commands, register it."""
    from tallypurse.card.card import Card

    from .card import parse_serial

    card_serial = parse_serial(serial)
    if card_file.exists():
        fail(f"{card_file} already exists")
    with opened(db, data_dir, keystore) as host, audited(
            host, "card.issue", card_serial.hex(), reason=reason, by=by) as detail:
        detail.append(f"cardholder {cardholder}" if cardholder else "no cardholder")
        card = Card.manufacture(card_serial, path=card_file)
        try:
            host.registry.issue_card(card, serial=card_serial, cardholder_id=cardholder)
        except BaseException:
            card_file.unlink(missing_ok=True)
            raise
    typer.echo(f"card {card_serial.hex()} issued into {card_file}")


@app.command("loads")
def loads(
    unconfirmed: Annotated[bool, typer.Option(
        "--unconfirmed", help="Only authorised loads no card event has confirmed (oldest "
                              "first), with what clearing knows of each.")] = False,
    card: Annotated[str | None, typer.Option(help="Only this card's loads (16 hex digits).")
                    ] = None,
    older_than: Annotated[int, typer.Option(help="With --unconfirmed: authorised at least "
                                                 "this many seconds ago.", min=0)] = 0,
    limit: Annotated[int, typer.Option(help="How many.", min=1, max=1000)] = 100,
    db: DbOption = None, data_dir: DataDirOption = None, keystore: KeystoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Loads (newest first), or the unconfirmed ones an operator may have to void."""
    if card is not None and not (len(card) == 16 and all(c in hexdigits for c in card)):
        fail("a card id is 16 hex digits")
    with opened(db, data_dir, keystore) as host:
        rows = (host.loads.unconfirmed(card_id=card, older_than_s=older_than, limit=limit)
                if unconfirmed else host.loads.recent(card_id=card, limit=limit))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        typer.echo("no unconfirmed load" if unconfirmed else "no load")
    for r in rows:
        line = (f"{r['load_id']} card {r['card_id']} {_money(r['amount'], r['currency']):>10} "
                f"{r['funding']:<14} {r['status']:<10} terminal {r['terminal_id']} "
                f"age {r['age_s']} s")
        if "evidence" in r:
            line += f"  [{r['evidence']}] {r['evidence_detail']}"
        typer.echo(line)


@app.command("load-void")
def load_void(
    load_id: Annotated[str, typer.Argument(help="The load's id (16 hex digits, from "
                                                "`host loads --unconfirmed`).",
                                           show_default=False)],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")],
    by: Annotated[str | None, typer.Option(help="Who voids it (default: the login "
                                                "name).")] = None,
    db: DbOption = None, data_dir: DataDirOption = None, keystore: KeystoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give an unconfirmed load's funds back to the cash drawer or the online account.
    Refused for a load that is confirmed, seen by clearing, or voided already."""
    with opened(db, data_dir, keystore) as host:
        out = host.loads.void(load_id, reason=reason, by=_who(by), source="cli")
    if as_json:
        echo_json(out)
        return
    typer.echo(f"load {out['load_id']} voided: {_money(out['amount'], out['currency'])} back "
               f"to {out['refunded_to']} ({out['evidence']}: {out['evidence_detail']})")


@app.command()
def settle(
    day: Annotated[str | None, typer.Option(help="Business day YYYY-MM-DD [today].")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory for the report and pain.001.",
                                             file_okay=False)] = None,
    reason: ReasonOption = "", by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None, as_json: JsonOption = False,
) -> None:
    """Settle every merchant for a day; write the report (CSV, JSON) and the payout file."""
    when = parse_day(day)
    with opened(db, data_dir, keystore) as host, audited(
            host, "settlement.run", str(when), reason=reason, by=by) as detail:
        views = host.settlement.run(when)
        xml = host.settlement.payout_file(when)
        detail.append(f"{len(views)} merchant(s) settled; payout file "
                      f"{'written' if xml is not None else 'not needed'}")
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
    reason: ReasonOption = "", by: ByOption = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Write a pain.008 direct-debit file for the debts in collection."""
    when = parse_day(day)
    with opened(db, data_dir, keystore) as host, audited(
            host, "collection.file", str(when), reason=reason, by=by) as detail:
        xml = host.settlement.collections_file(when)
        detail.append("pain.008 written" if xml is not None else "nothing to collect")
    if xml is None:
        typer.echo("nothing to collect")
    elif out is None:
        typer.echo(xml.decode())
    else:
        out.write_bytes(xml)
        typer.echo(f"wrote {out}")


@app.command()
def tick(db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Periodic work: fetch bank outcomes, blacklist long-unpaid debts, re-score
    cardholders whose debts were settled since their last credit decision."""
    with opened(db, data_dir, keystore) as host:
        outcomes = host.agent.process_bank()
        swept = host.agent.sweep_collections()
        rescored = host.credit.catch_up()
    typer.echo(f"bank: {outcomes or 'nothing pending'}; blacklisted for unpaid debts: {swept}; "
               f"credit re-scored: {len(rescored)}")


@app.command()
def report(
    what: Annotated[str, typer.Argument(help="gaps, clones, alerts or reconciliation")],
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Operator reports (JSON)."""
    with opened(db, data_dir, keystore) as host:
        makers = {"gaps": host.reports.gaps, "clones": host.reports.clones,
                  "alerts": host.reports.alerts,
                  "reconciliation": host.reports.reconciliation}
        if what not in makers:
            raise typer.BadParameter(f"one of {', '.join(makers)}")
        echo_json(makers[what]())


# --- credit (tallypurse.host.credit) ----------------------------------------------------------
credit_app = typer.Typer(help="The credit loop: daily scoring, explanations, overrides.",
                         no_args_is_help=True)
app.add_typer(credit_app, name="credit")
RefArgument = Annotated[str, typer.Argument(help="A card id (16 hex digits) or a cardholder id.",
                                            show_default=False)]


def _who(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


def _money(minor: int, code: str) -> str:
    from tallypurse.core.money import currency, format_minor

    return format_minor(minor, currency(code))


@credit_app.command("run")
def credit_run(
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Score as of the end of this day, YYYY-MM-DD [now].")] = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None, as_json: JsonOption = False,
) -> None:
    """The daily batch: score every active cardholder (once per day), apply the grades,
    write back changed credit records to their cards."""
    day = parse_day(as_of) if as_of is not None else None
    with opened(db, data_dir, keystore) as host, audited(
            host, "credit_run", str(day or "")) as detail:
        report = host.credit.run(day).to_json()
        detail.append(f"{report['scored']} scored, {len(report['grade_changes'])} grade "
                      "change(s)")
    if as_json:
        echo_json(report)
        return
    typer.echo(f"credit batch {report['day']} as of {report['as_of_utc']} "
               f"(model {report['model_version']}): {report['scored']} scored, "
               f"{report['skipped']} already scored, {report['not_applied']} not applied "
               f"(newer decision), {report['records_published']} credit records published")
    typer.echo("grades: " + (", ".join(f"{g} {n}" for g, n in report["grades"].items())
                             or "none"))
    for change in report["grade_changes"]:
        typer.echo(f"  {change['cardholder_id']}: {change['from']} -> {change['to']} "
                   f"(score {change['score']}, {change['basis']})")


def _print_explanation(x: dict[str, Any]) -> None:
    cur = x["terms"]["currency"]
    card = f" (card {x['card_id']})" if x["card_id"] else ""
    typer.echo(f"cardholder {x['cardholder_id']}{card} as of {x['as_of_utc']}")
    why = {"model": "the model's grade", "override": "operator override",
           "starting": f"starting grade; the model decides after "
                       f"{x['starting_grade_until'] and _day(x['starting_grade_until'])}"}
    typer.echo(f"grade in force {x['grade']} ({why.get(x['basis'], x['basis'])}); "
               f"model grade {x['model_grade']}, score {x['score']}, model {x['model_version']}")
    t = x["terms"]
    typer.echo("terms: " + (f"{_money(t['per_tap_overdraft'], cur)} per tap, "
                            f"{_money(t['max_outstanding'], cur)} outstanding, "
                            f"{t['max_slots']} slot(s); {', '.join(t['allowed_types'])}"
                            if t["has_credit"] else "no credit"))
    typer.echo(f"online balance {_money(x['online_balance'], cur)}, outstanding debt "
               f"{_money(x['outstanding'], cur)}")
    typer.echo("reasons:" if x["reasons"] else "reasons: none (every indicator in its best bin)")
    for r in x["reasons"]:
        typer.echo(f"  {r['code']} {r['text']} (value {r['value']}, {r['points']} points, "
                   f"best {r['best_points']})")
    typer.echo("indicators:")
    for d in x["indicators"]:
        typer.echo(f"  {d['code']} {d['name']:<26} {d['value']!s:>10}  {d['bin']:<16} "
                   f"{d['points']:>4} / {d['best_points']}")
    up = x["to_raise_the_grade"]
    if up is not None:
        levers = ", ".join(f"{lv['code']} +{lv['gain']}" for lv in up["levers"][:5])
        typer.echo(f"to reach {up['next_grade']}: {up['points_needed']} more points "
                   f"(score {up['at_score']}); biggest gains: {levers or 'none'}")
    o = x["override"]
    if o is not None:
        until = f" until {o['expires_utc']}" if o["expires_utc"] else ""
        state = "in force" if o["active"] else "expired"
        typer.echo(f"override: {o['grade']}{until} by {o['by']} ({state}): {o['reason']}")
    for c in x["cards"]:
        r = c["credit_record"]
        line = f"card {c['card_id']} {c['status']}{' BLACKLISTED' if c['blacklisted'] else ''}: "
        if r is None:
            line += "no credit record"
        else:
            line += (f"record v{r['version']} grade {r['grade']}, "
                     f"{_money(r['per_tap_overdraft'], cur)} per tap, "
                     f"{_money(r['max_outstanding'], cur)} outstanding, {r['max_slots']} slot(s), "
                     f"expires {r['expires_utc']}")
        if c["record_pending_on_action_list"]:
            line += " (on the action list, not yet on the card)"
        typer.echo(line)


def _day(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


@credit_app.command("explain")
def credit_explain(ref: RefArgument, db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
                   as_json: JsonOption = False) -> None:
    """Score, grade, each indicator's value and points, reason codes, model version,
    what would raise the grade, and each card's credit record (nothing is stored)."""
    with opened(db, data_dir, keystore) as host:
        explanation = host.credit.explain(ref)
    if as_json:
        echo_json(explanation)
    else:
        _print_explanation(explanation)


@credit_app.command("rescore")
def credit_rescore(ref: RefArgument, db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
                   as_json: JsonOption = False) -> None:
    """Score one cardholder now, apply the grade and write back changed records."""
    with opened(db, data_dir, keystore) as host, audited(
            host, "credit_rescore", ref) as detail:
        outcome = host.credit.rescore(ref, trigger="manual").to_json()
        detail.append(f"grade {outcome['previous_grade']} -> {outcome['grade']}")
    _print_outcome(outcome, as_json)


def _print_outcome(outcome: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(outcome)
        return
    typer.echo(f"{outcome['cardholder_id']}: grade {outcome['previous_grade']} -> "
               f"{outcome['grade']} ({outcome['basis']}; model {outcome['model_grade']}, "
               f"score {outcome['score']})")
    for p in outcome["published"]:
        typer.echo(f"  card {p['card_id']}: credit record v{p['version']} grade {p['grade']} "
                   f"queued as write-back {p['action_id']}")


@credit_app.command("override")
def credit_override(
    ref: RefArgument,
    grade: Annotated[str, typer.Option(help="The grade to set: A, B, C, D or E.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")],
    days: Annotated[int | None, typer.Option(help="Expires after this many days.",
                                             min=1, max=3660)] = None,
    until: Annotated[str | None, typer.Option(help="Expires at the end of this day, "
                                                    "YYYY-MM-DD.")] = None,
    by: Annotated[str | None, typer.Option(help="Who sets it [login name].")] = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None, as_json: JsonOption = False,
) -> None:
    """Set a cardholder's grade by hand (with a reason; optionally expiring). It applies
    at once, is written back to the cards, and is audited (who, when, why)."""
    from tallypurse.credit import Grade
    from tallypurse.host.credit import end_of_day

    if days is not None and until is not None:
        raise typer.BadParameter("give --days or --until, not both")
    try:
        chosen = Grade.parse(grade)
    except TallypurseError as exc:
        fail(exc.message)
    with opened(db, data_dir, keystore) as host, audited(
            host, "credit_override", ref, reason=reason, by=by, done=False):
        expires = (host.now() + days * 86_400 if days is not None
                   else end_of_day(parse_day(until)) if until is not None else None)
        outcome = host.credit.override(ref, chosen, reason=reason, actor=_who(by),
                                       expires=expires, source="cli").to_json()
    _print_outcome(outcome, as_json)


@credit_app.command("clear-override")
def credit_clear_override(
    ref: RefArgument,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")],
    by: Annotated[str | None, typer.Option(help="Who clears it [login name].")] = None,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None, as_json: JsonOption = False,
) -> None:
    """End a cardholder's override: the model's grade applies again at once."""
    with opened(db, data_dir, keystore) as host, audited(
            host, "credit_clear", ref, reason=reason, by=by, done=False):
        outcome = host.credit.clear_override(ref, reason=reason, actor=_who(by),
                                             source="cli").to_json()
    _print_outcome(outcome, as_json)


@credit_app.command("history")
def credit_history(
    ref: RefArgument,
    limit: Annotated[int, typer.Option(help="How many decisions.", min=1, max=1000)] = 20,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None, as_json: JsonOption = False,
) -> None:
    """Stored decisions (newest first) and the grades set by hand."""
    with opened(db, data_dir, keystore) as host:
        history = host.credit.history(ref, limit)
    if as_json:
        echo_json(history)
        return
    for d in history["decisions"]:
        codes = " ".join(r["code"] for r in d["reasons"])
        typer.echo(f"{d['as_of_utc']} {d['trigger']:<24} score {d['score']:>4} model "
                   f"{d['model_grade']} in force {d['grade']} ({d['basis']}) "
                   f"{d['model_version']} {codes}")
    for g in history["grades_set"]:
        until = f" until {_day(g['expires'])}" if g["expires"] else ""
        typer.echo(f"{g['at_utc']} {g['action']} {g['grade'] or ''}{until} by {g['by']}: "
                   f"{g['reason']}")
