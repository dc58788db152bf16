"""``tallypurse host user``: console users from the command line, every change audited."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.host.bootstrap import open_host
from tallypurse.host.config import HostSettings
from tallypurse.host.console import audit
from tallypurse.host.console.users import authenticate

runner = CliRunner()
ENV = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long passphrase"}


def tp(data: Path, *args: str, stdin: str = "") -> tuple[int, str]:
    result = runner.invoke(app, ["host", *args, "--data-dir", str(data)], input=stdin, env=ENV)
    return result.exit_code, result.output


def test_users_are_added_listed_disabled_and_audited(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "h"
    assert tp(data, "migrate")[0] == 0
    code, out = tp(data, "merchant-add", "--name", "Canteen", "--iban", "DE89370400440532013000",
                   "--bic", "COBADEFFXXX", "--id", "canteen")
    assert code == 0, out
    code, out = tp(data, "user", "add", "mia", "--role", "merchant", "--merchant", "canteen",
                   "--name", "Mia", "--password-stdin", stdin="a long password\n")
    assert code == 0 and "user mia (merchant) added" in out, out
    code, out = tp(data, "user", "add", "olga", "--role", "merchant", "--password-stdin",
                   stdin="a long password\n")
    assert code == 2 and "names its merchant" in out
    assert tp(data, "user", "disable", "mia")[0] == 0
    code, out = tp(data, "user", "list")
    assert code == 0 and "mia" in out and "disabled" in out and "olga" not in out

    for name, value in ENV.items():  # open_host reads the passphrase from the environment
        monkeypatch.setenv(name, value)
    host = open_host(HostSettings(data_dir=data), create_keystore=False)
    assert authenticate(host, "mia", "a long password") is None  # disabled
    assert [e.action for e in audit.entries(host)] == [
        "user.disable", "user.add", "merchant.add"]  # every command that changes something
    host.db.dispose()
