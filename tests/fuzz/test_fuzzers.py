"""The atheris harnesses in fuzz/: their seed corpus replays clean in-process, and each
harness runs coverage-guided for a bounded number of inputs (in CI too).

Each subprocess run stops at ``RUNS[target]`` inputs or ``MAX_SECONDS`` seconds,
whichever comes first, so that all of them together stay under a minute. New
inputs go to a scratch corpus; the checked-in seeds are only read. A crash
leaves the input in the test's temporary directory and fails with libFuzzer's
report. Without atheris the subprocess runs skip, except when $CI is set.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
CORPUS = FUZZ / "corpus"
RUNS = {
    "apdu": 50_000,
    "tlv": 30_000,
    "cert": 30_000,
    "messages": 30_000,
    "hostapi": 20_000,
    "card": 5_000,
}
MAX_SECONDS = 8
TARGETS = sorted(RUNS)


def _harness(target: str) -> ModuleType:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    name = f"fuzz_{target}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_every_target_has_a_harness_and_a_seed_corpus() -> None:
    harnesses = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
    assert harnesses == TARGETS
    for target in TARGETS:
        assert len(list((CORPUS / target).iterdir())) >= 3, target


@pytest.mark.parametrize("target", TARGETS)
def test_the_seed_corpus_passes_the_harness(target: str) -> None:
    harness = _harness(target)
    for seed in sorted((CORPUS / target).iterdir()):
        harness.TestOneInput(seed.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_the_fuzzer_finds_nothing_in_a_bounded_run(target: str, tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("atheris is not installed; CI is set, so the fuzzers must run")
        pytest.skip("atheris is not installed (dev dependency)")
    scratch = tmp_path / "corpus"
    scratch.mkdir()
    command = [
        sys.executable,
        str(FUZZ / f"fuzz_{target}.py"),
        f"-runs={RUNS[target]}",
        f"-max_total_time={MAX_SECONDS}",
        "-keep_seed=1",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
        str(scratch),
        str(CORPUS / target),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    assert result.returncode == 0 and not crashes, (
        f"fuzz_{target} failed (exit {result.returncode}, artifacts {crashes}):\n"
        + result.stderr[-4000:]
    )
    assert "Done" in result.stderr
