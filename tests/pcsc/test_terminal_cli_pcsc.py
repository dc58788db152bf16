"""Pay with a phone from a second shell: `tallypurse terminal purchase --pcsc` takes the
payment from the phone wallet in the virtual reader's field, through pcscd, as the README
shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab

from .conftest import Served
from .test_phone_pcsc import served_phone  # noqa: F401  (the phone in the reader's field)


def tp(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TALLYPURSE_KEYSTORE_PASSPHRASE": "lab",
           "TALLYPURSE_SAM_PASSPHRASE": "till secret", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tallypurse.cli.main", *args], env=env,
                          cwd=tmp, capture_output=True, text=True, timeout=120, check=False)


def test_a_terminal_takes_a_load_and_a_payment_from_a_phone_through_pcsc(
    lab: Lab, served_phone: Served, tmp_path: Path  # noqa: F811
) -> None:
    enrolled = tp(tmp_path, "terminal", "enrol", "--data-dir", "till", "--keystore",
                  str(lab.directory / "keystore"), "--merchant", "Campus Canteen")
    assert enrolled.returncode == 0, enrolled.stderr
    loaded = tp(tmp_path, "terminal", "load", "--data-dir", "till", "--pcsc", "--amount", "5.00")
    assert loaded.returncode == 0, loaded.stderr
    paid = tp(tmp_path, "terminal", "purchase", "--data-dir", "till", "--pcsc", "--amount",
              "1.20", "--type", "canteen")
    assert paid.returncode == 0, paid.stderr
    assert "PURCHASE (canteen)" in paid.stdout
    lines = {line.split()[0]: line.split() for line in paid.stdout.splitlines() if line.strip()}
    assert lines["balance"][-2] == "3.80"  # 5.00 loaded, 1.20 paid
    assert lines["ATC"][-1] == "1"
    # The phone's own memory (the file `card serve` keeps) agrees.
    from tallypurse.card.card import Card

    purse = PurseClient(ApduClient(Card.open(served_phone.path)))
    purse.select()
    assert purse.counters().balance == 380 and purse.counters().atc == 1


def test_card_file_and_pcsc_together_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    card = tmp_path / "x.card"
    card.write_bytes(b"")
    done = tp(tmp_path, "terminal", "purchase", "--data-dir", "till", "--pcsc", "--card",
              str(card), "--amount", "1.00")
    assert done.returncode != 0
    assert "either --card FILE or --pcsc" in done.stderr
