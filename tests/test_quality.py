"""The code's own rules, checked by the same test command as everything else:
lint (ruff), strict typing (mypy) and the architecture's import contracts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{tool} is not installed in the test environment ({exe})")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)


def test_ruff_finds_no_lint_errors() -> None:
    proc = run("ruff", "check", "src", "tests", "tools")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_passes_on_the_package() -> None:
    proc = run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_card_terminal_and_host_never_import_each_other() -> None:
    proc = run("lint-imports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
