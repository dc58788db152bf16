"""`tallypurse demo`: the whole system's story, told step by step and checked."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer


def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    receipts: Annotated[bool, typer.Option(help="Print every receipt.")] = False,
    serve: Annotated[bool, typer.Option(
        "--serve", help="Afterwards, leave the demo's host running with the operator console "
        "(Ctrl-C stops it).")] = False,
) -> None:
    """Run a small city's day on an embedded host and check every rule of the system."""
    import logging

    from tallypurse.core.money import currency, format_minor
    from tallypurse.system.demo import Story, run

    logging.getLogger("tallypurse").setLevel(logging.ERROR)
    eur = currency("EUR")

    def say(name: str, text: str, facts: dict[str, Any]) -> None:
        if not as_json:
            typer.echo(f"[{name:>10}] {text}")

    def keep_serving(eh: Any, logins: dict[str, str]) -> None:
        import time

        typer.echo(f"\nThe demo's host is running: console at {eh.url}/console/ "
                   f"(API at {eh.url}, OpenAPI at {eh.url}/openapi.json)")
        for user, password in logins.items():
            typer.echo(f"  log in as {user:<9} password {password}")
        typer.echo("Ctrl-C stops it.")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("stopped")

    story = Story(say)
    with tempfile.TemporaryDirectory(prefix="tallypurse-demo-") as tmp:
        result = run(Path(tmp), story, serve=keep_serving if serve else None)
    ok = all(result["invariants"].values())
    if as_json:
        typer.echo(json.dumps({"steps": story.steps, "invariants": result["invariants"],
                               "details": result["details"],
                               "settlement": result["settlement"]}, indent=2))
    else:
        if receipts:
            for r in result["receipts"]:
                typer.echo("\n" + r)
        typer.echo("\nSettlement")
        typer.echo(f"  {'merchant':<16} {'day':<10} {'count':>5} {'gross':>12} {'fees':>10} "
                   f"{'net':>12}")
        for row in result["settlement"]:
            typer.echo(f"  {row['merchant_id']:<16} {row['business_day']:<10} "
                       f"{row['count']:>5} {format_minor(row['gross'], eur):>12} "
                       f"{format_minor(row['fees'], eur):>10} "
                       f"{format_minor(row['net'], eur):>12}")
        typer.echo("\nRules that must always hold (docs/architecture.md)")
        for name, holds in result["invariants"].items():
            typer.echo(f"  {'ok  ' if holds else 'FAIL'} {name}: {result['details'][name]}")
    if not ok:
        failed = [k for k, v in result["invariants"].items() if not v]
        typer.echo(f"rules broken: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
