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
    from tallypurse.host.api.server import NoDelayH11Protocol

    uvicorn.run("tallypurse.host.bootstrap:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", proxy_headers=False,
                http=NoDelayH11Protocol,  # no 40 ms Nagle wait per answer (see the module)
                # A worker imports the whole CLI before it answers the supervisor's health
                # check: on a loaded 2-core machine that takes longer than uvicorn's 5 s.
                timeout_worker_healthcheck=60)


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
    """Periodic work: fetch bank outcomes, blacklist long-unpaid debts, re-score
    cardholders whose debts were settled since their last credit decision."""
    with opened(db, data_dir) as host:
        outcomes = host.agent.process_bank()
        swept = host.agent.sweep_collections()
        rescored = host.credit.catch_up()
    typer.echo(f"bank: {outcomes or 'nothing pending'}; blacklisted for unpaid debts: {swept}; "
               f"credit re-scored: {len(rescored)}")


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
    db: DbOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
) -> None:
    """The daily batch: score every active cardholder (once per day), apply the grades,
    write back changed credit records to their cards."""
    day = parse_day(as_of) if as_of is not None else None
    with opened(db, data_dir) as host:
        report = host.credit.run(day).to_json()
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
                   as_json: JsonOption = False) -> None:
    """Score, grade, each indicator's value and points, reason codes, model version,
    what would raise the grade, and each card's credit record (nothing is stored)."""
    with opened(db, data_dir) as host:
        explanation = host.credit.explain(ref)
    if as_json:
        echo_json(explanation)
    else:
        _print_explanation(explanation)


@credit_app.command("rescore")
def credit_rescore(ref: RefArgument, db: DbOption = None, data_dir: DataDirOption = None,
                   as_json: JsonOption = False) -> None:
    """Score one cardholder now, apply the grade and write back changed records."""
    with opened(db, data_dir) as host:
        outcome = host.credit.rescore(ref, trigger="manual").to_json()
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
    db: DbOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
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
    with opened(db, data_dir) as host:
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
    db: DbOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
) -> None:
    """End a cardholder's override: the model's grade applies again at once."""
    with opened(db, data_dir) as host:
        outcome = host.credit.clear_override(ref, reason=reason, actor=_who(by),
                                             source="cli").to_json()
    _print_outcome(outcome, as_json)


@credit_app.command("history")
def credit_history(
    ref: RefArgument,
    limit: Annotated[int, typer.Option(help="How many decisions.", min=1, max=1000)] = 20,
    db: DbOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
) -> None:
    """Stored decisions (newest first) and the grades set by hand."""
    with opened(db, data_dir) as host:
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
