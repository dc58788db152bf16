"""The terminal transaction counter: strictly increasing, never reused, across crashes."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tallypurse.core.errors import KeystoreError
from tallypurse.sam import Sam

from .conftest import PASSPHRASE, TERMINAL_ID


def _high_water(path: Path) -> int:
    return int(json.loads(path.read_text())["sequence_high_water"])


def test_sequence_starts_at_one_and_increases_by_one(sam: Sam) -> None:
    assert [sam.next_sequence() for _ in range(5)] == [1, 2, 3, 4, 5]


def test_sequence_strictly_increases_across_a_clean_reopen(sam_path: Path) -> None:
    with Sam.create(sam_path, PASSPHRASE, terminal_id=TERMINAL_ID) as sam:
        first = [sam.next_sequence() for _ in range(10)]
    with Sam.open(sam_path, PASSPHRASE) as sam:
        second = [sam.next_sequence() for _ in range(10)]
    assert second[0] > first[-1]
    assert second[0] == first[-1] + 1  # a clean close skips nothing


def test_sequence_reserves_blocks_on_disk_before_handing_them_out(sam_path: Path) -> None:
    with Sam.create(sam_path, PASSPHRASE, terminal_id=TERMINAL_ID, sequence_block=100) as sam:
        assert _high_water(sam_path) == 1
        assert sam.next_sequence() == 1
        assert _high_water(sam_path) == 101
        for _ in range(99):
            sam.next_sequence()
        assert _high_water(sam_path) == 101  # one write per block, not per number
        assert sam.next_sequence() == 101
        assert _high_water(sam_path) == 201


def test_sequence_is_never_reused_after_a_crash_without_close(sam_path: Path) -> None:
    sam = Sam.create(sam_path, PASSPHRASE, terminal_id=TERMINAL_ID, sequence_block=50)
    issued = [sam.next_sequence() for _ in range(70)]
    del sam  # dropped without close: the lock goes, the counter position is not recorded
    gc.collect()
    with Sam.open(sam_path, PASSPHRASE, sequence_block=50) as reopened:
        after = [reopened.next_sequence() for _ in range(70)]
    assert min(after) > max(issued)
    assert after[0] == 101  # the rest of the reserved block is skipped
    assert len(set(issued + after)) == 140


CHILD = """
import os, sys
from tallypurse.sam import Sam
sam = Sam.open(sys.argv[1], sys.argv[2])
for _ in range(int(sys.argv[3])):
    print(sam.next_sequence(), flush=True)
os._exit(9)  # the process dies: no close, no finalizer, no atexit
"""


def test_sequence_is_never_reused_after_a_killed_process(sam_path: Path) -> None:
    Sam.create(sam_path, PASSPHRASE, terminal_id=TERMINAL_ID).close()
    seen: list[int] = []
    for count in (3, 1500, 1, 0, 7):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(sam_path), PASSPHRASE, str(count)],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 9, proc.stderr
        seen.extend(int(line) for line in proc.stdout.split())
    with Sam.open(sam_path, PASSPHRASE) as sam:
        seen.append(sam.next_sequence())
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == 3 + 1500 + 1 + 7 + 1


def test_sequence_is_unique_across_threads(sam: Sam) -> None:
    out: list[list[int]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        out[i].extend(sam.next_sequence() for _ in range(2500))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = [n for chunk in out for n in chunk]
    assert len(set(numbers)) == 10_000
    assert all(chunk == sorted(chunk) for chunk in out)


def test_sequence_refuses_to_wrap_around_when_exhausted(sam: Sam, sam_path: Path) -> None:
    sam._next_seq = sam._reserved = (1 << 32) - 2
    assert sam.next_sequence() == (1 << 32) - 2
    assert sam.next_sequence() == (1 << 32) - 1
    with pytest.raises(KeystoreError, match="exhausted"):
        sam.next_sequence()
