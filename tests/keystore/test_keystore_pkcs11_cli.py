"""`tallypurse keys` on a SoftHSM2 token: the ceremonies with keys that never leave it."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tallypurse.cli import keys
from tallypurse.core.cert import KeyRef
from tallypurse.keystore import SoftwareKeyStore
from tallypurse.keystore import software as software_module
from tallypurse.keystore.ceremony import CeremonyLog

from .conftest import CHEAP_KDF, PASSPHRASE
from .softhsm import SoftHsm, softhsm_fixture, token_uri_fixture  # noqa: F401

WHO = ["--operator", "alice", "--reason", "hsm ceremony"]


@pytest.fixture(autouse=True)
def cheap_default_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(software_module, "DEFAULT_KDF_PARAMS", CHEAP_KDF)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE)
    monkeypatch.delenv(keys.CEREMONY_LOG_ENV, raising=False)


class Cli:
    def __init__(self) -> None:
        self.app = typer.Typer()
        self.app.add_typer(keys.app, name="keys")
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(self.app, ["keys", *args])
        assert result.exit_code == code, result.output
        return result.output


@pytest.fixture
def cli() -> Cli:
    return Cli()


def test_a_token_needs_an_explicit_ceremony_log(cli: Cli, token_uri: str) -> None:
    out = cli("init", "--keystore", token_uri, code=2)
    assert "--ceremony-log" in out


def test_init_on_a_token_generates_every_key_there_and_logs_it(
    cli: Cli, token_uri: str, tmp_path: Path
) -> None:
    log = tmp_path / "ceremony.log"
    out = cli("init", "--keystore", token_uri, "--ceremony-log", str(log), *WHO)
    assert "issuer-root/1" in out and "master-app/1" in out
    listing = cli("list", "--keystore", token_uri)
    assert len(listing.splitlines()) == 7
    records = CeremonyLog(log).records()
    assert records[0]["ceremony"] == "init"
    assert records[0]["details"]["keystore"] == token_uri


def test_keys_are_generated_one_by_one_on_an_empty_token(
    cli: Cli, token_uri: str, tmp_path: Path
) -> None:
    log = ["--ceremony-log", str(tmp_path / "ceremony.log")]
    out = cli("generate", "host-list", "--keystore", token_uri, *log, *WHO, code=2)
    assert "generate issuer-root first" in out
    out = cli("generate", "issuer-root", "--keystore", token_uri, *log, *WHO, "--dry-run")
    assert "nothing changed" in out
    assert (
        not (tmp_path / "ceremony.log").exists()
        or not CeremonyLog(tmp_path / "ceremony.log").records()
    )
    out = cli("generate", "issuer-root", "--keystore", token_uri, *log, *WHO)
    assert "generated issuer-root/1 ec-p256 fingerprint" in out
    out = cli("generate", "master-isd", "--keystore", token_uri, *log, *WHO)
    assert "generated master-isd/1 aes-128 kcv" in out
    out = cli("generate", "master-isd", "--keystore", token_uri, *log, *WHO, code=2)
    assert "use 'rotate master-isd'" in out
    assert [r["ceremony"] for r in CeremonyLog(tmp_path / "ceremony.log").records()] == [
        "generate",
        "generate",
    ]


def test_a_software_master_split_among_custodians_is_restored_into_the_token(
    cli: Cli, token_uri: str, tmp_path: Path
) -> None:
    """The ceremony that brings an existing master into an HSM: split it in software,
    custodians carry shares, any M of them restore it into the token, where it is
    non-extractable and diversifies exactly as before."""
    soft = tmp_path / "soft"
    cli("init", "--keystore", str(soft), *WHO)
    shares_dir = tmp_path / "shares"
    cli(
        "backup",
        "master-app",
        "--keystore",
        str(soft),
        *WHO,
        "--split",
        "2-of-3",
        "--out",
        str(shares_dir),
    )
    files = sorted(shares_dir.glob("*.json"))
    log = ["--ceremony-log", str(tmp_path / "hsm-ceremony.log")]
    out = cli("restore", str(files[2]), str(files[0]), "--keystore", token_uri, *log, *WHO)
    assert "restored master-app/1" in out
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    ref = KeyRef("master-app", 1)
    with SoftwareKeyStore.open(soft, PASSPHRASE) as s, Pkcs11KeyStore.open(token_uri) as h:
        assert h.kcv(ref) == s.kcv(ref)
        serial_aid = bytes.fromhex("1000000000000001A000000951544150")
        assert h.diversify(ref, b"APP", serial_aid) == s.diversify(ref, b"APP", serial_aid)
    out = cli(
        "backup",
        "master-app",
        "--keystore",
        token_uri,
        *log,
        *WHO,
        "--split",
        "2-of-3",
        "--out",
        str(tmp_path / "again"),
        code=2,
    )
    assert "cannot be exported" in out


def test_rotate_and_revoke_on_a_token(cli: Cli, token_uri: str, tmp_path: Path) -> None:
    log = ["--ceremony-log", str(tmp_path / "ceremony.log")]
    cli("init", "--keystore", token_uri, *log, *WHO)
    cli("rotate", "host-load", "--keystore", token_uri, *log, *WHO)
    cli("revoke", "host-load/1", "--keystore", token_uri, *log, *WHO, "--dry-run")
    assert "REVOKED" not in cli("list", "--keystore", token_uri)
    cli("revoke", "host-load/1", "--keystore", token_uri, *log, *WHO)
    lines = cli("list", "--keystore", token_uri).splitlines()
    assert any("host-load/1" in line and "REVOKED" in line for line in lines)
    assert any(line.startswith("* host-load/2") for line in lines)
    out = cli("verify-log", *log)
    assert "3 records, chain intact" in out  # the dry run logs nothing
