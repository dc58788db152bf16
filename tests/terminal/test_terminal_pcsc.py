"""The same terminal code through PC/SC: a purchase and a split purchase over pcscd and
the vpcd virtual reader, with PcscReader. Runs in a fresh process, because libpcsclite
reads its socket path once per process (the PC/SC tests may have a pcscd of their own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, sys, tempfile, time
from pathlib import Path
from tallypurse.cli.bench_pcsc import PcscdProcess, served
from tallypurse.cli.terminal import KeystoreHost
from tallypurse.lab import Lab
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.reader import PcscReader

tmp = Path(sys.argv[1])
lab = Lab.create(tmp / "lab")
now = lab.now + 3600
host = KeystoreHost(lab.keystore, clock=lambda: now)
t = Terminal.enrol(tmp / "t", passphrase="pw", host=host, token="pcsc-test",
                   terminal_id=bytes.fromhex("5043534354000001"), clock=lambda: now)
serial = bytes.fromhex("50435343544d0001")
card, _ = lab.new_card(serial, credit=lab.credit_record(serial), path=tmp / "c.card")
lab.load(card, 1_000)
out = {}
with PcscdProcess(tmp / "pcscd") as pcscd, served(card, pcscd.port):
    reader = PcscReader("Virtual PCD 00 00")
    deadline = time.monotonic() + 10
    while not reader.card_present() and time.monotonic() < deadline:
        time.sleep(0.05)
    r1 = t.purchase(reader, 250, tx_type="canteen").receipt
    r2 = t.purchase(reader, 1_000, tx_type="canteen").receipt
    out = {"first": [r1.kind, r1.purse_amount, r1.balance_after],
           "second": [r2.kind, r2.purse_amount, r2.online_amount, r2.balance_after],
           "verified": t.journal.verify(all_signatures=True)}
    reader.disconnect()
t.close()
print(json.dumps(out))
"""


def test_a_purchase_and_a_split_purchase_through_pcsc(tmp_path: Path) -> None:
    from tallypurse.cli.bench_pcsc import missing_parts

    missing = missing_parts()
    if missing:
        pytest.skip("PC/SC stack not installed: " + "; ".join(missing))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    if "PcscUnavailable" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"] == ["purchase", 250, 750]
    assert out["second"] == ["split purchase", 750, 250, 0]
    assert out["verified"] == 2
