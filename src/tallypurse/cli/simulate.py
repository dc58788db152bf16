"""`tallypurse simulate` and `tallypurse bench simulate`: the city simulator.

Exit status of ``simulate``: 0 every rule held; 1 a rule was broken (the seed
and the step to replay are printed); 2 bad input.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tallypurse.core.errors import BadInput

from .benchutil import ms, percentile

FAULT_HELP = ("Faults to inject: 'all', 'none' or a comma-separated list of lost_request, "
              "lost_response, duplicate, reorder, partition, late_batch, clock_skew, card_pull, "
              "terminal_crash, host_restart, clone, bank_failure.")


def _run(cards: int, terminals: int, days: int, seed: int, faults: str, db: str | None,
         stop_at: int | None, workdir: Path | None, keep: bool,
         quiet: bool) -> Any:
    from tallypurse.sim import Faults, SimConfig, simulate
    from tallypurse.sim.workspace import workspace

    if cards < 1 or terminals < 1 or days < 1:
        raise BadInput("cards, terminals and days must be at least 1")
    parsed = Faults.parse(faults)

    def progress(message: str) -> None:
        if not quiet:
            typer.echo(f"  .. {message}", err=True)

    with workspace(db, workdir=workdir, keep=keep) as ws:
        config = SimConfig(cards=cards, terminals=terminals, days=days, seed=seed,
                           faults=parsed, db_url=ws.db_url, db_schema=ws.db_schema,
                           stop_at=stop_at)
        report = simulate(config, ws.workdir, progress)
        if keep:
            progress(f"kept the city in {ws.workdir}"
                     + (f" and PostgreSQL schema {ws.db_schema}" if ws.db_schema else ""))
    return report


def simulate(
    cards: Annotated[int, typer.Option(help="Cards (one per cardholder).")] = 200,
    terminals: Annotated[int, typer.Option(help="Terminals (two per merchant).")] = 10,
    days: Annotated[int, typer.Option(help="Simulated days.")] = 3,
    seed: Annotated[int, typer.Option(help="The run's seed: the same seed, the same run.")] = 1,
    faults: Annotated[str, typer.Option(help=FAULT_HELP)] = "all",
    db: Annotated[str | None, typer.Option(
        help="Host database URL (default: SQLite in a scratch directory). PostgreSQL runs in "
             "a fresh schema of its own, dropped at the end.")] = None,
    stop_at: Annotated[int | None, typer.Option(
        "--stop-at", "--replay-step",
        help="Replay the run up to this step and stop there.")] = None,
    workdir: Annotated[Path | None, typer.Option(
        help="Build the city in this (empty) directory and keep it.")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory and schema.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Simulate a city (cardholders, merchants, terminals, the host, a bank) on the real code
    with simulated time and network, inject faults, and check every rule of the system
    section 8. Exits 1 if a rule breaks, printing the seed and step to replay it."""
    try:
        report = _run(cards, terminals, days, seed, faults, db, stop_at, workdir,
                      keep or workdir is not None, quiet)
    except BadInput as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(report.text())
    if report.violations:
        typer.echo(f"seed {seed}: first violation at step {report.violations[0].step}; "
                   f"replay with: {report.replay}", err=True)
        raise typer.Exit(1)


def _floor(samples: int) -> dict[str, float]:
    """What one simulated tap costs at least on this machine: the tap's own crypto (the
    card's certificate check of the terminal, the order and TAC verifications, the SAM's
    order and journal signatures and the card's TAC), the host's TAC check at clearing,
    and the terminal's two durable commits, done alone."""
    from tallypurse.core import crypto
    from tallypurse.core.messages import EVENT_RECORD_LEN

    key = crypto.generate_private_key()
    pub = crypto.encode_public_key(key.public_key())
    msg = os.urandom(EVENT_RECORD_LEN)
    signature = crypto.sign(key, msg)
    from tallypurse.sim.workspace import scratch_root

    floors = []
    with tempfile.TemporaryDirectory(dir=scratch_root()) as tmp:  # where the city's files are
        conn = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE x (id INTEGER PRIMARY KEY, v BLOB)")
        row = os.urandom(400)
        for _ in range(samples):
            t0 = time.perf_counter()
            for _verify in range(4):  # certificate, order, TAC at the terminal, TAC at the host
                crypto.verify(pub, signature, msg)
            for _sign in range(3):  # order, TAC, journal entry
                crypto.sign(key, msg)
            for _commit in range(2):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO x(v) VALUES (?)", (row,))
                conn.execute("COMMIT")
            floors.append(time.perf_counter() - t0)
        conn.close()
    return {"floor_tap_ms": ms(percentile(floors, 0.5))}


def bench_simulate(
    cards: Annotated[int, typer.Option(help="Cards.")] = 1_000,
    terminals: Annotated[int, typer.Option(help="Terminals.")] = 50,
    days: Annotated[int, typer.Option(help="Simulated days.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed.")] = 1,
    faults: Annotated[str, typer.Option(help=FAULT_HELP)] = "none",
    db: Annotated[str | None, typer.Option(help="Host database URL (default SQLite).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Simulated taps per second of wall time (city set-up excluded), beside the floor: the
    rate this machine allows for the taps' own crypto and durable commits alone."""
    try:
        report = _run(cards, terminals, days, seed, faults, db, None, None, False, as_json)
    except BadInput as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    floor = _floor(200)
    run_s = report.wall_s - report.setup_s
    rate = report.taps / run_s if run_s > 0 else 0.0
    ceiling = 1000 / floor["floor_tap_ms"] if floor["floor_tap_ms"] else 0.0
    j = report.to_json()
    result = {
        "cards": cards, "terminals": terminals, "days": days, "seed": seed,
        "faults": report.faults, "database": report.database,
        "taps": report.taps, "steps": report.steps,
        "setup_s": round(report.setup_s, 2), "run_s": round(run_s, 2),
        "taps_per_s": round(rate, 1),
        "events_per_s": round(report.steps / run_s, 1) if run_s > 0 else 0.0,
        "tap_p50_ms": j["latency_ms"]["tap_p50"], "tap_p99_ms": j["latency_ms"]["tap_p99"],
        "floor_tap_ms": floor["floor_tap_ms"], "floor_taps_per_s": round(ceiling, 1),
        "ratio_floor_to_rate": round(ceiling / rate, 1) if rate else None,
        "ok": report.ok, "violations": len(report.violations),
        "splits": j["splits"], "clones_injected": j["clones_injected"],
        "clones_detected": j["clones_detected"], "invariants": j["invariants"],
        "flows": j["flows"], "faults_injected": j["faults_injected"],
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"simulated city: {cards} cards, {terminals} terminals, {days} days, seed "
                   f"{seed}, faults {', '.join(report.faults) or 'none'}, {report.database}")
        typer.echo(f"  {report.taps} taps ({report.steps} events) in {result['run_s']} s after "
                   f"{result['setup_s']} s of set-up: {result['taps_per_s']} taps/s "
                   f"(tap p50 {result['tap_p50_ms']} ms, p99 {result['tap_p99_ms']} ms)")
        typer.echo(f"  floor: {result['floor_tap_ms']} ms per tap (its crypto and two durable "
                   f"commits alone) = {result['floor_taps_per_s']} taps/s; ratio "
                   f"{result['ratio_floor_to_rate']}x")
        typer.echo(f"  rules: {'all hold' if report.ok else f'{len(report.violations)} broken'}")
    if report.violations:
        raise typer.Exit(1)
