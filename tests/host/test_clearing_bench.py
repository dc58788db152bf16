"""`tallypurse bench clearing` runs end to end (tiny): real card-signed debits cleared,
the floor measured in the same run, the JSON keys the host issue names, and where the
CPU went."""

from __future__ import annotations

from typing import Any

import pytest

from tallypurse.cli.bench_host import run_clearing_bench

from .conftest import PG_URL


def _check(result: dict[str, Any], *, database: str, events: int) -> None:
    assert result["database"] == database
    assert result["cleared_per_s"] > 0 and result["verify_per_s"] > 0
    assert result["ratio"] == round(result["cleared_per_s"] / result["verify_per_s"], 3)
    checks = result["checks"]
    assert checks == {"accepted": events, "rejected": 0, "card_events_stored": events,
                      "ledger_balanced": True, "alerts": 0}
    cpu = result["cpu_us_per_debit"]
    # The uploaders verified every TAC and wrote every debit: more than verifying alone.
    assert cpu["clearing"] > cpu["verify_alone"] > 0
    assert 0 < result["busy"]


def test_the_clearing_bench_clears_every_debit_and_prints_its_floor() -> None:
    result = run_clearing_bench(events=200, processes=1, db_url=None, batch_size=50)
    _check(result, database="sqlite", events=200)
    assert result["cpu_us_per_debit"]["database"] is None  # SQLite runs in the uploaders


@pytest.mark.usefixtures("pg_schema")  # skips, saying why, where no server answers
def test_the_clearing_bench_on_postgresql_reports_the_servers_cpu_too() -> None:
    # 600 debits: the server's CPU is read in clock ticks (10 ms), and needs a few of them.
    result = run_clearing_bench(events=600, processes=2, db_url=PG_URL, batch_size=100)
    _check(result, database="postgresql", events=600)
    assert result["cpu_us_per_debit"]["database"] > 0  # the server's own processes
