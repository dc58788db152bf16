"""``tallypurse credit``: score cardholders, fit and promote scorecards, make synthetic history.

See docs/credit.md. Scoring and the registry need nothing beyond tallypurse;
``fit`` needs the ``credit-fit`` extra (scikit-learn).
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tallypurse.core.errors import TallypurseError
from tallypurse.core.money import format_minor
from tallypurse.credit import synthetic
from tallypurse.credit.history import read_history, write_history
from tallypurse.credit.indicators import Indicators
from tallypurse.credit.policy import CreditPolicy, default_policy, load_policy
from tallypurse.credit.registry import ModelRegistry
from tallypurse.credit.scorecard import Scorecard, builtin_scorecard, load_scorecard

from .keys import fail

app = typer.Typer(
    help="Credit scoring: score cardholders, fit and promote scorecards, synthetic history.",
    no_args_is_help=True,
)

ModelOption = Annotated[
    Path | None,
    typer.Option("--model", help="A scorecard file to use instead of the registry's current one.",
                 dir_okay=False),
]
RegistryOption = Annotated[
    Path | None,
    typer.Option("--registry", help="Model registry directory (default model: built-in "
                                    "expert-v1).", file_okay=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _scorecard(model: Path | None, registry: Path | None) -> Scorecard:
    if model is not None and registry is not None:
        fail("give --model or --registry, not both")
    if model is not None:
        return load_scorecard(model)
    if registry is not None:
        return ModelRegistry(registry).current()
    return builtin_scorecard()


def _read_json_arg(text: str) -> Any:
    """A JSON object given inline, as @FILE or a file path, or '-' for stdin."""
    stripped = text.lstrip()
    if text == "-":
        raw = sys.stdin.read()
    elif stripped.startswith(("{", "[")):
        raw = text
    else:
        path = Path(text.removeprefix("@"))
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"{path}: cannot read indicators: {exc.strerror}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"indicators are not valid JSON: {exc.msg} (line {exc.lineno})")


@app.command("score")
def score(
    indicators: Annotated[str, typer.Option(
        "--indicators", help="Indicators as a JSON object, @FILE (or a file path), or - for "
                             "stdin.")],
    model: ModelOption = None,
    registry: RegistryOption = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Credit policy file: also show the grade's credit terms "
                         "(use --default-policy for the built-in example).", dir_okay=False)
    ] = None,
    show_default_policy: Annotated[bool, typer.Option(
        "--default-policy", help="Show the terms of the built-in example policy.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Score one cardholder: score, grade, model version, reason codes, points per indicator."""
    data = _read_json_arg(indicators)
    if not isinstance(data, dict):
        fail("indicators must be a JSON object")
    try:
        ind = Indicators.from_mapping(data)
        card = _scorecard(model, registry)
        decision = card.score(ind)
        pol: CreditPolicy | None = None
        if policy is not None:
            pol = load_policy(policy)
        elif show_default_policy:
            pol = default_policy()
    except TallypurseError as exc:
        fail(exc.message)
    out = decision.to_dict()
    if pol is not None:
        terms = pol.terms_for(decision.grade)
        out["terms"] = {
            "currency": pol.currency.code,
            "per_tap_overdraft": terms.per_tap_overdraft,
            "max_outstanding": terms.max_outstanding,
            "max_slots": terms.max_slots,
            "allowed_types": sorted(t.name.lower() for t in terms.allowed_types),
        }
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    nxt = ""
    if decision.next_grade_at is not None:
        nxt = (f" ({decision.next_grade_at - decision.score} points short of "
               f"{_better(decision.grade)})")
    typer.echo(f"score {decision.score}  grade {decision.grade.name}{nxt}  "
               f"model {decision.model_version}")
    if decision.reasons:
        typer.echo("reasons (what lowered the score most):")
        for r in decision.reasons:
            typer.echo(f"  {r.code}  {r.text}: {r.indicator} = {_show(r.value)} "
                       f"({r.points} of {r.best_points} points)")
    else:
        typer.echo("reasons: none (every indicator is in its best bin)")
    typer.echo("points:")
    for d in decision.details:
        typer.echo(f"  {d.code}  {d.name:<26} {_show(d.value):>10}  {d.bin:<20} {d.points:>4}")
    if pol is not None:
        typer.echo("credit terms: " + pol.describe()[decision.grade - 1])


def _better(grade: Any) -> str:
    return "ABCDE"[int(grade) - 2]


def _show(value: object) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@app.command("show")
def show(model: ModelOption = None, registry: RegistryOption = None,
         as_json: JsonOption = False) -> None:
    """Print a scorecard's points per bin, its scaling and its grade bands."""
    try:
        card = _scorecard(model, registry)
    except TallypurseError as exc:
        fail(exc.message)
    spec = card.spec
    if as_json:
        typer.echo(json.dumps({
            "version": spec.version, "kind": spec.kind,
            "scaling": {"base_score": spec.scaling.base_score,
                        "base_odds": spec.scaling.base_odds, "pdo": spec.scaling.pdo},
            "grades": dict(zip("ABCD", spec.grade_floors, strict=True)),
            "min_score": card.min_score, "max_score": card.max_score,
            "points": [{"indicator": n, "bin": b, "points": p} for n, b, p in card.points_table()],
        }, indent=2))
        return
    typer.echo(f"scorecard {spec.version} ({spec.kind}): {spec.description}")
    typer.echo(f"scaling: {spec.scaling.base_score:g} points at {spec.scaling.base_odds:g}:1 "
               f"good:bad odds, {spec.scaling.pdo:g} points to double the odds")
    a, b, c, d = spec.grade_floors
    typer.echo(f"grades: A >= {a}, B >= {b}, C >= {c}, D >= {d}, E below {d}; "
               f"scores run {card.min_score}..{card.max_score}")
    last = ""
    for name, label, points in card.points_table():
        typer.echo(f"  {name if name != last else '':<26} {label:<22} {points:>4}")
        last = name


@app.command("policy")
def policy_cmd(policy: Annotated[Path | None, typer.Option(
        "--policy", help="Credit policy file (default: the built-in example).",
        dir_okay=False)] = None) -> None:
    """Print a credit policy's terms for each grade, after the operator's caps."""
    try:
        pol = load_policy(policy) if policy is not None else default_policy()
    except TallypurseError as exc:
        fail(exc.message)
    typer.echo(f"currency {pol.currency.code}; records valid {pol.validity_days} days")
    for line in pol.describe():
        typer.echo(f"  {line}")
    bands = ", ".join(format_minor(t, pol.currency) for t in pol.band_thresholds)
    typer.echo(f"balance bands from: {bands or '(none: always band 0)'}")


@app.command("synth")
def synth(
    n: Annotated[int, typer.Option("--n", min=1, max=10_000_000,
                                   help="How many synthetic cardholders.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same file.")
                    ] = 1,
    out: Annotated[Path, typer.Option(help="File to write: .csv or .jsonl.",
                                      dir_okay=False)] = Path("synthetic-history.csv"),
) -> None:
    """Write SYNTHETIC credit history (made-up cardholders) for trying out `credit fit`."""
    try:
        count = write_history(out, synthetic.generate(n, seed))
    except TallypurseError as exc:
        fail(exc.message)
    typer.echo(f"wrote {count} synthetic cardholders (seed {seed}) to {out}")


@app.command("fit")
def fit(
    history: Annotated[Path, typer.Option(help="History file (.csv or .jsonl): indicators and "
                                               "a 'default' label.", dir_okay=False)],
    out: Annotated[Path | None, typer.Option(
        help="Write the candidate scorecard here.", dir_okay=False)] = None,
    current: Annotated[Path | None, typer.Option(
        help="The current scorecard to compare with (default: the registry's current one, "
             "or the built-in expert-v1).", dir_okay=False)] = None,
    registry: Annotated[Path | None, typer.Option(
        help="Also file the candidate in this registry's candidates/.", file_okay=False)
    ] = None,
    version: Annotated[str | None, typer.Option(
        help="model.version of the candidate (default: fitted-DATE-HASH).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the train/held-out split.")] = 1,
    test_share: Annotated[float, typer.Option(help="Share of rows held out, 0.05..0.5.")] = 0.3,
    as_json: JsonOption = False,
) -> None:
    """Fit a candidate scorecard from history and report how well it does on held-out rows.

    The candidate is NOT used until an operator runs `tallypurse credit promote`."""
    from tallypurse.credit.fit import fit_scorecard

    if out is None and registry is None:
        fail("say where the candidate goes: --out FILE and/or --registry DIR")
    try:
        rows = read_history(history)
        if current is not None:
            cur = load_scorecard(current)
        elif registry is not None:
            cur = ModelRegistry(registry).current()
        else:
            cur = builtin_scorecard()
        result = fit_scorecard(rows, current=cur, version=version, source=history.name,
                               seed=seed, test_share=test_share)
        written = []
        if out is not None:
            out.write_text(result.scorecard.spec.to_toml(), encoding="utf-8")
            written.append(str(out))
        if registry is not None:
            written.append(str(ModelRegistry(registry).add_candidate(result.scorecard)))
    except TallypurseError as exc:
        fail(exc.message)
    report = result.to_dict()
    report["written"] = written
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    t, c, st = result.test, result.current_test, result.stability
    typer.echo(f"candidate {result.scorecard.version}: {result.train_rows} rows to fit, "
               f"{result.test_rows} held out; bad rate {result.bad_rate:.2%}")
    typer.echo(f"held out   candidate: AUC {t.auc:.3f}  Gini {t.gini:.3f}  KS {t.ks:.3f}")
    typer.echo(f"held out   current {result.current_version}: AUC {c.auc:.3f}  "
               f"Gini {c.gini:.3f}  KS {c.ks:.3f}")
    typer.echo(f"stability vs current: score PSI {st.score_psi:.3f}, grade PSI "
               f"{st.grade_psi:.3f} ({_psi_word(st.score_psi)})")
    typer.echo("grades  current " + " ".join(f"{g}:{n}" for g, n in st.grades_current.items()))
    typer.echo("      candidate " + " ".join(f"{g}:{n}" for g, n in st.grades_candidate.items()))
    for name, why in result.dropped.items():
        typer.echo(f"left out {name}: {why}")
    typer.echo("wrote " + ", ".join(written) + "; not in use until promoted "
               "(tallypurse credit promote)")


def _psi_word(value: float) -> str:
    if value < 0.1:
        return "stable"
    if value < 0.25:
        return "a shift worth a look"
    return "a large shift"


@app.command("promote")
def promote(
    model: Annotated[str, typer.Argument(help="Scorecard file, or the version of a candidate "
                                              "or earlier model in the registry.")],
    registry: Annotated[Path, typer.Option(help="Model registry directory.", file_okay=False)],
    by: Annotated[str | None, typer.Option(help="Who promotes (default: the login name).")
                  ] = None,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit trail.")] = "",
) -> None:
    """Make a scorecard the one in use (recorded with who, when and why)."""
    try:
        who = by or getpass.getuser()
    except (KeyError, OSError):
        fail("cannot tell who you are: give --by")
    try:
        p = ModelRegistry(registry).promote(model, by=who, reason=reason)
    except TallypurseError as exc:
        fail(exc.message)
    typer.echo(f"promoted {p.version} (was {p.previous}) by {p.by} at {p.at}")


@app.command("status")
def status(
    registry: Annotated[Path, typer.Option(help="Model registry directory.", file_okay=False)],
    as_json: JsonOption = False,
) -> None:
    """The scorecard in use, the candidates waiting, and the promotions so far."""
    try:
        st = ModelRegistry(registry).status()
    except TallypurseError as exc:
        fail(exc.message)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    cur = st["current"]
    typer.echo(f"current: {cur['version']} ({cur['kind']}"
               f"{', built in: nothing promoted yet' if cur['built_in'] else ''})")
    if st["candidates"]:
        typer.echo("candidates:")
        for c in st["candidates"]:
            typer.echo(f"  {c['version']}  held-out AUC {c['test_auc']} (current "
                       f"{c['current_test_auc']}), score PSI {c['score_psi_vs_current']}, "
                       f"fitted {c['created']}")
    else:
        typer.echo("candidates: none")
    for p in st["promotions"][-5:]:
        typer.echo(f"  {p['at']}  {p['previous']} -> {p['version']}  by {p['by']}"
                   f"{': ' + p['reason'] if p['reason'] else ''}")
