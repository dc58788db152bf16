"""Credit history files: one row per cardholder and date, its indicators then and
whether it defaulted afterwards (``default``: 1 or true = defaulted).

Two formats, chosen by the file name: CSV (``.csv``; an empty cell is a missing
value) and JSON lines (``.jsonl`` or ``.ndjson``; ``null`` is missing). Other
columns (a cardholder id, a date) are allowed and ignored.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallypurse.core.errors import BadInput
from tallypurse.credit.indicators import INDICATOR_NAMES, Indicators

LABEL = "default"


@dataclass(frozen=True, slots=True)
class HistoryRow:
    indicators: Indicators
    default: bool


def _label(raw: object, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("0", "1", "true", "false"):
        return raw.strip().lower() in ("1", "true")
    raise BadInput(f"{where}: {LABEL} must be 0 or 1 (or true/false), not {raw!r}")


def _row(data: Mapping[str, Any], where: str) -> HistoryRow:
    if LABEL not in data:
        raise BadInput(f"{where}: no {LABEL!r} column")
    values = {k: data[k] for k in INDICATOR_NAMES if k in data}
    try:
        indicators = Indicators.from_mapping(values)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc.message}") from None
    return HistoryRow(indicators, _label(data[LABEL], where))


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise BadInput(f"{path}: history files are .csv or .jsonl")


def read_history(path: Path) -> list[HistoryRow]:
    kind = _kind(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror}") from None
    rows: list[HistoryRow] = []
    if kind == "csv":
        for n, rec in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            rows.append(_row(rec, f"{path}:{n}"))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{n}: not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise BadInput(f"{path}:{n}: each line must be a JSON object")
            rows.append(_row(obj, f"{path}:{n}"))
    if not rows:
        raise BadInput(f"{path}: no rows")
    return rows


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_history(path: Path, rows: Iterable[HistoryRow]) -> int:
    """Write rows (CSV or JSON lines, by the file name); returns how many."""
    kind = _kind(path)
    count = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        if kind == "csv":
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([*INDICATOR_NAMES, LABEL])
            for row in rows:
                d = row.indicators.to_dict()
                writer.writerow([*(_cell(d[k]) for k in INDICATOR_NAMES), int(row.default)])
                count += 1
        else:
            for row in rows:
                obj: dict[str, Any] = {**row.indicators.to_dict(), LABEL: int(row.default)}
                f.write(json.dumps(obj, separators=(",", ":")) + "\n")
                count += 1
    return count
