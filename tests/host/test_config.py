"""Host settings from the environment: rate limits an operator sets without code."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.core.errors import BadInput
from tallypurse.host.config import HostSettings, rate_limits_from_env


def test_rate_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLYPURSE_HOST_RATE_TERMINAL", "40/400")
    monkeypatch.setenv("TALLYPURSE_HOST_RATE_ADDRESS", "0")
    monkeypatch.setenv("TALLYPURSE_HOST_RATE_TOKEN", "2.5")
    s = HostSettings.from_env()
    assert (s.rate_terminal_per_s, s.rate_terminal_burst) == (40.0, 400)
    assert s.rate_address_per_s == 0.0  # off
    assert (s.rate_token_per_s, s.rate_token_burst) == (2.5, HostSettings().rate_token_burst)
    assert (s.rate_console_per_s, s.rate_console_burst) == (
        HostSettings().rate_console_per_s, HostSettings().rate_console_burst)


@pytest.mark.parametrize("value", ["fast", "10/x", "-1/10", "10/0", "nan/5", "10/-3"])
def test_a_malformed_rate_limit_is_refused_by_name(value: str) -> None:
    with pytest.raises(BadInput, match="TALLYPURSE_HOST_RATE_CONSOLE"):
        rate_limits_from_env({"TALLYPURSE_HOST_RATE_CONSOLE": value})


def test_a_host_command_with_a_malformed_rate_limit_says_so_and_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLYPURSE_HOST_RATE_TERMINAL", "lots")
    result = CliRunner().invoke(app, ["host", "migrate", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "TALLYPURSE_HOST_RATE_TERMINAL" in result.output
    assert not (tmp_path / "d").exists()
