"""`tallypurse card serve`: a card file behind the virtual reader, as a process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.card.card import Card
from tallypurse.cli.bench_pcsc import PcscdProcess, PcscTransport, connect_reader, release
from tallypurse.cli.main import app
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab

from .conftest import next_serial
from .harness import READER, card_present, wait_card


def test_card_serve_refuses_a_missing_card_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["card", "serve", str(tmp_path / "none.card")])
    assert result.exit_code == 2
    assert "no card file" in result.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_card_serve_answers_through_pcsc_and_stops_cleanly_on_a_signal(
    lab: Lab, pcscd: PcscdProcess, tmp_path: Path, sig: signal.Signals
) -> None:
    path = tmp_path / "served.card"
    card, _ = lab.new_card(next_serial(), path=path)
    lab.load(card, 900)
    if card_present(READER):
        wait_card(False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tallypurse.cli.main", "card", "serve", str(path),
         "--port", str(pcscd.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_card(True)
        conn = connect_reader(READER)
        try:
            lab.load(PcscTransport(conn), 100)  # type: ignore[arg-type]
        finally:
            release(conn)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "serving card" in err and "stopped after" in err and "Traceback" not in err
    wait_card(False)
    purse = PurseClient(ApduClient(Card.open(path)))  # type: ignore[arg-type]
    purse.select()
    assert purse.counters().balance == 1_000
