"""`tallypurse keys init` and `tallypurse keys list` through Typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tallypurse.cli import keys
from tallypurse.keystore import SoftwareKeyStore
from tallypurse.keystore import software as software_module
from tallypurse.keystore.software import KEYSTORE_FILE

from .conftest import CHEAP_KDF, PASSPHRASE, secret_hexes

ENV = {keys.PASSPHRASE_ENV: PASSPHRASE}


@pytest.fixture(autouse=True)
def cheap_default_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(software_module, "DEFAULT_KDF_PARAMS", CHEAP_KDF)
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)


@pytest.fixture
def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(keys.app, name="keys")
    return root


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _init(runner: CliRunner, cli: typer.Typer, directory: Path) -> None:
    result = runner.invoke(cli, ["keys", "init", "--keystore", str(directory)], env=ENV)
    assert result.exit_code == 0, result.output


def test_init_creates_a_keystore_and_prints_refs_and_kcvs_but_no_secret(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path
) -> None:
    directory = tmp_path / "ks"
    result = runner.invoke(cli, ["keys", "init", "--keystore", str(directory)], env=ENV)
    assert result.exit_code == 0, result.output
    with SoftwareKeyStore.open(directory, PASSPHRASE) as store:
        for info in store.infos():
            assert str(info.ref) in result.stdout
            if info.kcv is not None:
                assert f"kcv {info.kcv.hex().upper()}" in result.stdout
            else:
                assert info.fingerprint is not None
                assert f"fingerprint {info.fingerprint.hex()}" in result.stdout
        for secret in secret_hexes(store):
            assert secret not in result.output
    assert PASSPHRASE not in result.output


def test_init_asks_twice_for_a_hidden_passphrase_when_none_is_in_the_environment(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path
) -> None:
    directory = tmp_path / "ks"
    result = runner.invoke(
        cli, ["keys", "init", "--keystore", str(directory)], input="s3cret\ns3cret\n"
    )
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    SoftwareKeyStore.open(directory, "s3cret").close()


def test_init_refuses_an_existing_keystore_with_exit_code_two(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path
) -> None:
    _init(runner, cli, tmp_path)
    before = (tmp_path / KEYSTORE_FILE).read_bytes()
    result = runner.invoke(cli, ["keys", "init", "--keystore", str(tmp_path)], env=ENV)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "already exists" in result.stderr
    assert (tmp_path / KEYSTORE_FILE).read_bytes() == before


def test_list_prints_every_key_and_marks_the_current_versions(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path
) -> None:
    _init(runner, cli, tmp_path)
    with SoftwareKeyStore.open(tmp_path, PASSPHRASE) as store:
        store.rotate("host-list")
    result = runner.invoke(cli, ["keys", "list", "--keystore", str(tmp_path)], env=ENV)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    assert any(line.startswith("  host-list/1 ") for line in lines)
    assert any(line.startswith("* host-list/2 ") for line in lines)


def test_list_json_gives_public_facts_only(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path
) -> None:
    _init(runner, cli, tmp_path)
    result = runner.invoke(
        cli, ["keys", "list", "--keystore", str(tmp_path), "--json"], input=PASSPHRASE + "\n"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{") :])
    by_ref = {k["ref"]: k for k in doc["keys"]}
    assert set(by_ref) == {
        "issuer-root/1",
        "host-list/1",
        "host-load/1",
        "host-api/1",
        "master-isd/1",
        "master-sd-operator/1",
        "master-app/1",
    }
    with SoftwareKeyStore.open(tmp_path, PASSPHRASE) as store:
        assert by_ref["master-app/1"]["kcv"] == store.kcv(store.current("master-app")).hex()
        root = store.current("issuer-root")
        assert by_ref["issuer-root/1"]["public_key"] == store.public_key(root).hex()
        assert by_ref["issuer-root/1"]["certificate"] == store.certificate(root).encode().hex()
        for secret in secret_hexes(store):
            assert secret not in result.output


def test_list_with_a_wrong_passphrase_prints_one_line_and_exits_two(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path
) -> None:
    _init(runner, cli, tmp_path)
    result = runner.invoke(
        cli, ["keys", "list", "--keystore", str(tmp_path)], env={keys.PASSPHRASE_ENV: "nope"}
    )
    assert result.exit_code == 2
    assert result.stderr == "error: wrong passphrase or corrupt keystore\n"
    assert result.stdout == ""


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"format": "tallypurse-keystore"'])
def test_list_of_a_corrupt_keystore_prints_one_line_and_exits_two(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path, content: bytes
) -> None:
    (tmp_path / KEYSTORE_FILE).write_bytes(content)
    result = runner.invoke(cli, ["keys", "list", "--keystore", str(tmp_path)], env=ENV)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: keystore ")
    assert result.stderr.count("\n") == 1


def test_list_of_a_missing_keystore_prints_one_line_and_exits_two(
    runner: CliRunner, cli: typer.Typer, tmp_path: Path
) -> None:
    result = runner.invoke(cli, ["keys", "list", "--keystore", str(tmp_path / "none")], env=ENV)
    assert result.exit_code == 2
    assert "no keystore at" in result.stderr


def test_the_passphrase_comes_from_the_environment_before_any_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "from-env")
    assert keys.passphrase_from_env_or_prompt(confirm=True) == "from-env"


def test_an_empty_environment_passphrase_falls_back_to_the_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "")
    asked: list[tuple[str, bool]] = []

    def fake_prompt(text: str, *, hide_input: bool, confirmation_prompt: bool) -> str:
        assert hide_input
        asked.append((text, confirmation_prompt))
        return "typed"

    monkeypatch.setattr(typer, "prompt", fake_prompt)
    assert keys.passphrase_from_env_or_prompt(confirm=False) == "typed"
    assert asked == [("Keystore passphrase", False)]
