"""Shared plumbing of the atheris harnesses in this directory.

Each ``fuzz_<target>.py`` defines ``TestOneInput(data: bytes) -> None``, which
raises only on a real defect (an unexpected exception or a broken invariant),
and ends with ``harness.main(TestOneInput)``. Run one with libFuzzer options::

    python fuzz/fuzz_apdu.py -runs=100000 /tmp/new-corpus fuzz/corpus/apdu

libFuzzer writes new inputs into the *first* corpus directory, so give a
scratch directory first and the checked-in seeds (``fuzz/corpus/<target>``)
after it. ``tests/fuzz/test_fuzzers.py`` runs every harness that way, bounded.

Imported by a test (not run as a script), a harness is not instrumented and
needs no atheris: the tests replay the seed corpus through ``TestOneInput``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any


def instrumented(module_name: str) -> contextlib.AbstractContextManager[Any]:
    """Wrap a harness's imports: coverage instrumentation of tallypurse when the
    harness runs as a script under atheris, nothing when a test imports it."""
    if module_name != "__main__":
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["tallypurse"])  # type: ignore[no-any-return]


def main(test_one_input: Callable[[bytes], None]) -> None:
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


class Reader:
    """Takes typed values off the front of a fuzz input (zeros once it runs out)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    @property
    def left(self) -> int:
        return len(self.data) - self.pos
