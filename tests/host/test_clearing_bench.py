"""`tallypurse bench clearing` runs end to end (tiny, on SQLite): real card-signed debits
cleared, the floor measured in the same run, the JSON keys the host issue names."""

from __future__ import annotations

from tallypurse.cli.bench_host import run_clearing_bench


def test_the_clearing_bench_clears_every_debit_and_prints_its_floor() -> None:
    result = run_clearing_bench(events=200, processes=1, db_url=None, batch_size=50)
    assert result["cleared_per_s"] > 0 and result["verify_per_s"] > 0
    assert result["ratio"] == round(result["cleared_per_s"] / result["verify_per_s"], 3)
    checks = result["checks"]
    assert checks == {"accepted": 200, "rejected": 0, "card_events_stored": 200,
                      "ledger_balanced": True, "alerts": 0}
