"""`tallypurse bench credit`: score a city's cardholders with the current scorecard."""

from __future__ import annotations

import json
import resource
import time
from typing import Annotated, Any

import typer


def bench_credit(
    cardholders: Annotated[int, typer.Option(help="Cardholders to score.")] = 1_000_000,
    distinct: Annotated[int, typer.Option(
        help="Distinct synthetic indicator rows, reused round-robin (generating a million "
        "synthetic histories would measure the generator, not the scorecard).")] = 20_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Time and peak memory to score N cardholders (score, grade and reasons)."""
    from tallypurse.credit import builtin_scorecard
    from tallypurse.credit.synthetic import generate

    if cardholders < 1 or distinct < 1:
        raise typer.BadParameter("need at least one cardholder")
    card = builtin_scorecard()
    rows = [r.indicators for r in generate(min(distinct, cardholders), seed=1)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grades: dict[str, int] = {}
    t0 = time.perf_counter()
    n = len(rows)
    for i in range(cardholders):
        decision = card.score(rows[i % n])
        grades[decision.grade.name] = grades.get(decision.grade.name, 0) + 1
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result: dict[str, Any] = {
        "cardholders": cardholders,
        "seconds": round(seconds, 3),
        "per_s": round(cardholders / seconds, 1),
        "peak_mb": round(peak_mb, 1),
        "peak_growth_mb": round((peak_mb * 1024 - rss_before) / 1024, 1),
        "model_version": card.version,
        "grades": dict(sorted(grades.items())),
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"scored {cardholders:,} cardholders in {result['seconds']} s "
               f"({result['per_s']:,.0f}/s, one process), peak memory {result['peak_mb']} MB; "
               f"model {card.version}; grades {result['grades']}")
