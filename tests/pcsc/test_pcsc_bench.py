"""The PC/SC benchmark (``tallypurse.cli.bench_pcsc.bench_pcsc``) runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys

from tallypurse.cli.bench_pcsc import PcscdProcess

# In a process of its own: it starts its own pcscd, and libpcsclite reads the socket
# path once per process.
SCRIPT = """
import typer
from tallypurse.cli.bench_pcsc import bench_pcsc
app = typer.Typer()
app.command()(bench_pcsc)
app()
"""


def test_bench_pcsc_reports_apdu_and_tap_times(pcscd: PcscdProcess) -> None:
    # A second private pcscd where the session's has one; else the session's own.
    extra = [] if pcscd.private else ["--use-running", "--port", str(pcscd.port)]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--apdus", "50", "--taps", "10", "--json", *extra],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("apdu_p50_ms", "apdu_p99_ms", "tap_p50_ms", "tap_p99_ms"):
        assert 0 < result[key] < 1_000, (key, result)
    # Far from vicc's ~44 ms: no delayed-ACK wait on the card side.
    assert result["apdu_p50_ms"] < 10, result
