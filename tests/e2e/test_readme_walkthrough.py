"""The README's "terminal against a host" walkthrough, command by command, as a newcomer
runs it: `tallypurse host serve` in one process, the operator's and the terminal's
commands in others, over loopback HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TP = [sys.executable, "-m", "tallypurse.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TALLYPURSE_KEYSTORE_PASSPHRASE": "a long passphrase",
            "TALLYPURSE_SAM_PASSPHRASE": "till secret", "COLUMNS": "200"}


@pytest.fixture
def served(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([*TP, "host", "serve", "--data-dir", str(tmp_path / "hostdata"),
                             "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"host did not start: {err!r}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    if proc.stderr is not None:
        proc.stderr.close()


def tp(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([*TP, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout


def test_the_readme_walkthrough_takes_a_load_a_purchase_and_a_split_and_balances(
    tmp_path: Path, env: dict[str, str], served: str
) -> None:
    hd = ["--data-dir", "hostdata"]
    tp(env, tmp_path, "host", "merchant-add", *hd, "--name", "Campus Canteen", "--iban",
       "DE89370400440532013000", "--bic", "COBADEFFXXX", "--id", "canteen")
    term = json.loads(tp(env, tmp_path, "host", "terminal-add", *hd, "--merchant", "canteen",
                         "--id", "00000000000000c1", "--json"))
    holder = tp(env, tmp_path, "host", "cardholder-add", *hd, "--name", "Alice",
                "--funds", "50.00").strip().split()[-1]
    tp(env, tmp_path, "host", "card-issue", *hd, "--card-file", "alice.card", "--serial",
       "00000000000000a1", "--cardholder", holder)
    tp(env, tmp_path, "terminal", "enrol", "--data-dir", "till", "--terminal-id",
       "00000000000000c1", "--host", served, "--token", term["enrolment_token"],
       "--merchant", "Campus Canteen")
    tp(env, tmp_path, "terminal", "load", "--data-dir", "till", "--card", "alice.card",
       "--amount", "20.00")
    out = tp(env, tmp_path, "terminal", "purchase", "--data-dir", "till", "--card",
             "alice.card", "--amount", "12.50", "--type", "canteen")
    assert "balance after           7.50 EUR" in out
    out = tp(env, tmp_path, "terminal", "purchase", "--data-dir", "till", "--card",
             "alice.card", "--amount", "12.00", "--type", "canteen")
    assert "SPLIT PURCHASE" in out and "online account          4.50 EUR" in out
    out = tp(env, tmp_path, "terminal", "close-day", "--data-dir", "till")
    assert "host took 3" in out
    status = json.loads(tp(env, tmp_path, "terminal", "status", "--data-dir", "till", "--json"))
    assert status["journal"]["unacknowledged"] == 0
    assert status["outbox"]["depth"] == 0  # the agent debit was delivered
    audit = json.loads(tp(env, tmp_path, "host", "audit", *hd, "--json"))
    assert audit["balanced"] is True
