"""Key ceremonies through `tallypurse keys`: generate, rotate, revoke, backup M-of-N,
restore, dry runs, and the hash-chained ceremony log."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tallypurse.cli import keys
from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, KeystoreError
from tallypurse.keystore import SoftwareKeyStore, shares
from tallypurse.keystore import software as software_module
from tallypurse.keystore.ceremony import GENESIS, CeremonyLog, CeremonyLogError
from tallypurse.keystore.software import KEYSTORE_FILE

from .conftest import CHEAP_KDF, NOW, PASSPHRASE, secret_hexes

ENV = {keys.PASSPHRASE_ENV: PASSPHRASE}
WHO = ["--operator", "alice", "--reason", "test ceremony"]


@pytest.fixture(autouse=True)
def cheap_default_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(software_module, "DEFAULT_KDF_PARAMS", CHEAP_KDF)
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(keys.CEREMONY_LOG_ENV, raising=False)


@pytest.fixture
def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(keys.app, name="keys")
    return root


@pytest.fixture
def run(cli: typer.Typer) -> Callable[..., object]:
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> object:
        result = runner.invoke(cli, ["keys", *args], env=ENV)
        assert result.exit_code == code, result.output
        return result

    return invoke


@pytest.fixture
def ks(run: Callable[..., object], tmp_path: Path) -> Path:
    directory = tmp_path / "ks"
    run("init", "--keystore", str(directory), "--operator", "alice")
    return directory


def _out(result: object) -> str:
    return str(result.output)  # type: ignore[attr-defined]


def _log(directory: Path) -> list[dict[str, object]]:
    return CeremonyLog(directory / "ceremony.log").records()


def _snapshot(*paths: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for root in paths:
        for p in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            if p.is_file():
                out[str(p)] = p.read_bytes()
    return out


# --- The log ----------------------------------------------------------------------------------


def test_init_starts_the_ceremony_log(ks: Path) -> None:
    records = _log(ks)
    assert [r["ceremony"] for r in records] == ["init"]
    assert records[0]["operator"] == "alice"
    assert records[0]["prev"] == GENESIS


def test_every_ceremony_appends_who_when_why_and_what(
    run: Callable[..., object], ks: Path, tmp_path: Path
) -> None:
    run("rotate", "host-list", "--keystore", str(ks), *WHO)
    run("revoke", "host-list/1", "--keystore", str(ks), "--operator", "bob", "--reason", "leak")
    run(
        "backup",
        "master-isd",
        "--keystore",
        str(ks),
        *WHO,
        "--split",
        "2-of-3",
        "--out",
        str(tmp_path / "shares"),
    )
    records = _log(ks)
    assert [r["ceremony"] for r in records] == ["init", "rotate", "revoke", "backup"]
    revoke = records[2]
    assert (revoke["operator"], revoke["reason"]) == ("bob", "leak")
    assert revoke["details"]["key"] == "host-list/1"  # type: ignore[index]
    assert isinstance(revoke["time"], int)
    text = (ks / "ceremony.log").read_text()
    with SoftwareKeyStore.open(ks, PASSPHRASE) as store:
        for secret in secret_hexes(store):
            assert secret not in text


def test_verify_log_accepts_an_intact_chain_and_prints_its_head(
    run: Callable[..., object], ks: Path
) -> None:
    run("rotate", "master-app", "--keystore", str(ks), *WHO)
    out = _out(run("verify-log", "--keystore", str(ks)))
    head = CeremonyLog(ks / "ceremony.log").verify().head
    assert "2 records, chain intact" in out and head in out


def test_verify_log_finds_an_edited_record(run: Callable[..., object], ks: Path) -> None:
    run("rotate", "master-app", "--keystore", str(ks), *WHO)
    path = ks / "ceremony.log"
    path.write_text(path.read_text().replace('"operator":"alice"', '"operator":"mallory"', 1))
    result = run("verify-log", "--keystore", str(ks), code=2)
    assert "line 1" in result.stderr  # type: ignore[attr-defined]


def test_verify_log_finds_a_removed_record(run: Callable[..., object], ks: Path) -> None:
    for name in ("master-app", "master-isd"):
        run("rotate", name, "--keystore", str(ks), *WHO)
    path = ks / "ceremony.log"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2])
    result = run("verify-log", "--keystore", str(ks), code=2)
    assert "line 2" in result.stderr  # type: ignore[attr-defined]


def test_verify_log_with_an_expected_head_finds_records_cut_off_the_end(
    run: Callable[..., object], ks: Path
) -> None:
    run("rotate", "master-app", "--keystore", str(ks), *WHO)
    head = CeremonyLog(ks / "ceremony.log").verify().head
    run("verify-log", "--keystore", str(ks), "--expect-head", head)
    path = ks / "ceremony.log"
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    run("verify-log", "--keystore", str(ks))  # the chain alone cannot tell
    result = run("verify-log", "--keystore", str(ks), "--expect-head", head, code=2)
    assert "cut off" in result.stderr  # type: ignore[attr-defined]


def test_no_ceremony_runs_on_a_broken_log(run: Callable[..., object], ks: Path) -> None:
    path = ks / "ceremony.log"
    path.write_text(path.read_text().replace("alice", "mallory"))
    before = (ks / KEYSTORE_FILE).read_bytes()
    result = run("rotate", "host-api", "--keystore", str(ks), *WHO, code=2)
    assert "broken log" in result.stderr  # type: ignore[attr-defined]
    assert (ks / KEYSTORE_FILE).read_bytes() == before


def test_the_log_refuses_an_empty_operator_or_reason(tmp_path: Path) -> None:
    log = CeremonyLog(tmp_path / "ceremony.log")
    for operator, reason in (("", "why"), ("who", " "), ("who", "two\nlines")):
        with pytest.raises(BadInput):
            log.append(ceremony="x", operator=operator, reason=reason, details={}, now=NOW)
    assert not (tmp_path / "ceremony.log").exists() or log.records() == []


def test_a_truncated_last_record_is_reported(tmp_path: Path) -> None:
    log = CeremonyLog(tmp_path / "ceremony.log")
    log.append(ceremony="x", operator="a", reason="b", details={}, now=NOW)
    log.path.write_bytes(log.path.read_bytes()[:-5])
    with pytest.raises(CeremonyLogError, match="truncated"):
        log.verify()


def test_operator_and_reason_are_required(run: Callable[..., object], ks: Path) -> None:
    run("rotate", "host-api", "--keystore", str(ks), "--operator", "alice", code=2)
    run("rotate", "host-api", "--keystore", str(ks), "--reason", "why", code=2)


# --- Generate, rotate, revoke ---------------------------------------------------------------------


def test_generate_refuses_a_key_the_keystore_holds_and_points_to_rotate(
    run: Callable[..., object], ks: Path
) -> None:
    result = run("generate", "master-isd", "--keystore", str(ks), *WHO, code=2)
    assert "use 'rotate master-isd'" in result.stderr  # type: ignore[attr-defined]
    result = run("generate", "mystery", "--keystore", str(ks), *WHO, code=2)
    assert "unknown key 'mystery'" in result.stderr  # type: ignore[attr-defined]


def test_rotate_makes_a_new_current_version_and_the_old_one_stays_usable(
    run: Callable[..., object], ks: Path
) -> None:
    out = _out(run("rotate", "host-load", "--keystore", str(ks), *WHO))
    assert "host-load/2" in out and "host-load/1 stays usable" in out
    run("rotate", "master-isd", "--keystore", str(ks), *WHO)
    with SoftwareKeyStore.open(ks, PASSPHRASE) as store:
        assert store.current("host-load") == KeyRef("host-load", 2)
        old = KeyRef("host-load", 1)
        assert crypto.verify(store.public_key(old), store.sign(old, b"x"), b"x")
        v1, v2 = KeyRef("master-isd", 1), KeyRef("master-isd", 2)
        assert store.diversify(v1, b"ISD-ENC", bytes(8)) != store.diversify(
            v2, b"ISD-ENC", bytes(8)
        )
        kcv = store.kcv(v2).hex().upper()
    assert kcv in (ks / "ceremony.log").read_text().upper()


def test_a_revoked_key_is_listed_and_refuses_to_sign(run: Callable[..., object], ks: Path) -> None:
    run("rotate", "host-list", "--keystore", str(ks), *WHO)
    run("revoke", "host-list/1", "--keystore", str(ks), *WHO)
    listing = _out(run("list", "--keystore", str(ks)))
    assert any("host-list/1" in line and "REVOKED" in line for line in listing.splitlines())
    assert not any("host-list/2" in line and "REVOKED" in line for line in listing.splitlines())
    doc = json.loads(_out(run("list", "--keystore", str(ks), "--json")))
    revoked = {k["ref"]: k["revoked"] for k in doc["keys"]}
    assert revoked["host-list/1"] is not None and revoked["host-list/2"] is None
    with SoftwareKeyStore.open(ks, PASSPHRASE) as store:
        with pytest.raises(KeystoreError, match="revoked"):
            store.sign(KeyRef("host-list", 1), b"x")
        with pytest.raises(KeystoreError, match="revoked"):
            store.signer(KeyRef("host-list", 1))
        store.sign(KeyRef("host-list", 2), b"x")


def test_a_revoked_master_refuses_to_diversify(run: Callable[..., object], ks: Path) -> None:
    run("rotate", "master-app", "--keystore", str(ks), *WHO)
    run("revoke", "master-app/1", "--keystore", str(ks), *WHO)
    with SoftwareKeyStore.open(ks, PASSPHRASE) as store:
        with pytest.raises(KeystoreError, match="revoked"):
            store.diversify(KeyRef("master-app", 1), b"APP", bytes(8))


def test_revoking_the_current_version_is_refused(run: Callable[..., object], ks: Path) -> None:
    result = run("revoke", "host-api/1", "--keystore", str(ks), *WHO, code=2)
    assert "rotate host-api first" in result.stderr  # type: ignore[attr-defined]


def test_a_revocation_cannot_be_edited_out_of_the_keystore_file(
    run: Callable[..., object], ks: Path
) -> None:
    run("rotate", "host-list", "--keystore", str(ks), *WHO)
    run("revoke", "host-list/1", "--keystore", str(ks), *WHO)
    doc = json.loads((ks / KEYSTORE_FILE).read_text())
    for entry in doc["keys"]:
        entry.pop("revoked", None)
    (ks / KEYSTORE_FILE).write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="does not authenticate"):
        SoftwareKeyStore.open(ks, PASSPHRASE)


# --- Backup and restore --------------------------------------------------------------------------


def _backup(
    run: Callable[..., object], ks: Path, out: Path, key: str = "master-isd", split: str = "3-of-5"
) -> list[Path]:
    names = ["ann", "ben", "cat", "dan", "eve"][: int(split.split("-of-")[1])]
    custodians = [arg for n in names for arg in ("--custodian", n)]
    run(
        "backup", key, "--keystore", str(ks), *WHO, "--split", split, "--out", str(out), *custodians
    )
    return sorted(out.glob("*.json"))


def test_backup_writes_one_checkable_share_per_custodian(
    run: Callable[..., object], ks: Path, tmp_path: Path
) -> None:
    files = _backup(run, ks, tmp_path / "shares")
    assert len(files) == 5
    with SoftwareKeyStore.open(ks, PASSPHRASE) as store:
        kcv = store.kcv(store.current("master-isd"))
        secret = store.export_master(store.current("master-isd")).hex()
    for f in files:
        assert f.stat().st_mode & 0o077 == 0
        assert secret not in f.read_text()
        out = _out(run("check-share", str(f)))
        assert f"key kcv {kcv.hex().upper()}" in out and "OK" in out


def test_a_damaged_share_fails_its_own_check(
    run: Callable[..., object], ks: Path, tmp_path: Path
) -> None:
    f = _backup(run, ks, tmp_path / "shares")[0]
    doc = json.loads(f.read_text())
    doc["share"] = ("0" if doc["share"][0] != "0" else "1") + doc["share"][1:]
    f.write_text(json.dumps(doc))
    result = run("check-share", str(f), code=2)
    assert "check value" in result.stderr  # type: ignore[attr-defined]


def test_any_three_of_five_shares_restore_the_master(
    run: Callable[..., object], ks: Path, tmp_path: Path
) -> None:
    run("rotate", "master-isd", "--keystore", str(ks), *WHO)
    files = _backup(run, ks, tmp_path / "shares", key="master-isd/2")
    other = tmp_path / "other"
    run("init", "--keystore", str(other), "--operator", "alice")
    out = _out(
        run("restore", str(files[4]), str(files[0]), str(files[2]), "--keystore", str(other), *WHO)
    )
    assert "restored master-isd/2" in out
    with SoftwareKeyStore.open(ks, PASSPHRASE) as a, SoftwareKeyStore.open(other, PASSPHRASE) as b:
        ref = KeyRef("master-isd", 2)
        assert b.kcv(ref) == a.kcv(ref)
        assert b.diversify(ref, b"ISD-ENC", bytes(8)) == a.diversify(ref, b"ISD-ENC", bytes(8))
    assert _log(other)[-1]["details"]["result"] == "imported"  # type: ignore[index]
    # the same shares against the original keystore: a check, not an import
    out = _out(run("restore", *map(str, files[1:4]), "--keystore", str(ks), *WHO))
    assert "matches the shares" in out


def test_two_shares_of_three_needed_are_refused(
    run: Callable[..., object], ks: Path, tmp_path: Path
) -> None:
    files = _backup(run, ks, tmp_path / "shares")
    result = run("restore", str(files[0]), str(files[1]), "--keystore", str(ks), *WHO, code=2)
    assert "needs 3 of 5 shares" in result.stderr  # type: ignore[attr-defined]


def test_shares_of_two_different_splits_do_not_mix(
    run: Callable[..., object], ks: Path, tmp_path: Path
) -> None:
    a = _backup(run, ks, tmp_path / "a")
    b = _backup(run, ks, tmp_path / "b")
    result = run("restore", str(a[0]), str(a[1]), str(b[2]), "--keystore", str(ks), *WHO, code=2)
    assert "another backup" in result.stderr  # type: ignore[attr-defined]


def test_restoring_over_a_different_key_is_refused(
    run: Callable[..., object], ks: Path, tmp_path: Path
) -> None:
    files = _backup(run, ks, tmp_path / "shares")
    other = tmp_path / "other"
    run("init", "--keystore", str(other), "--operator", "alice")  # its own master-isd/1
    before = (other / KEYSTORE_FILE).read_bytes()
    result = run("restore", *map(str, files[:3]), "--keystore", str(other), *WHO, code=2)
    assert "holds a different master-isd/1" in result.stderr  # type: ignore[attr-defined]
    assert (other / KEYSTORE_FILE).read_bytes() == before


def test_only_aes_masters_are_split(run: Callable[..., object], ks: Path, tmp_path: Path) -> None:
    result = run(
        "backup",
        "host-list",
        "--keystore",
        str(ks),
        *WHO,
        "--split",
        "2-of-3",
        "--out",
        str(tmp_path / "s"),
        code=2,
    )
    assert "only AES master keys" in result.stderr  # type: ignore[attr-defined]


def test_a_wrong_share_rebuilds_a_key_whose_kcv_is_refused() -> None:
    key = bytes(range(16))
    parts = shares.split(
        KeyRef("master-app", 1), key, threshold=2, custodians=["a", "b", "c"], now=NOW
    )
    assert shares.combine(parts[:2]) == (KeyRef("master-app", 1), key)
    assert shares.combine([parts[2], parts[0]])[1] == key
    forged = dataclasses.replace(parts[1], value=bytes(16))
    with pytest.raises(shares.ShareError, match="key check value differs"):
        shares.combine([parts[0], forged])


@pytest.mark.parametrize("split", ["1-of-3", "4-of-3", "3-of-40", "three"])
def test_a_bad_split_is_refused(
    run: Callable[..., object], ks: Path, tmp_path: Path, split: str
) -> None:
    run(
        "backup",
        "master-isd",
        "--keystore",
        str(ks),
        *WHO,
        "--split",
        split,
        "--out",
        str(tmp_path / "s"),
        code=2,
    )
    assert not (tmp_path / "s").exists()


# --- Dry runs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ceremony",
    [
        ["rotate", "host-list"],
        ["rotate", "master-isd"],
        ["revoke", "host-list/1"],
        ["generate", "host-list"],
        ["backup", "master-app", "--split", "2-of-3"],
        ["restore"],
    ],
    ids=["rotate-ec", "rotate-aes", "revoke", "generate", "backup", "restore"],
)
def test_a_dry_run_prints_the_plan_and_changes_nothing(
    run: Callable[..., object], ks: Path, tmp_path: Path, ceremony: list[str]
) -> None:
    run("rotate", "host-list", "--keystore", str(ks), *WHO)  # so that host-list/1 is revocable
    files = _backup(run, ks, tmp_path / "made", key="master-isd/1", split="2-of-3")
    run("rotate", "master-isd", "--keystore", str(ks), *WHO)
    args = list(ceremony)
    if args[0] == "backup":
        args += ["--out", str(tmp_path / "dry-shares")]
    if args[0] == "restore":
        args += [str(f) for f in files[:2]]
    before = _snapshot(ks, tmp_path / "made")
    expected = 2 if args[0] == "generate" else 0  # generate refuses: the key exists
    result = run(*args, "--keystore", str(ks), *WHO, "--dry-run", code=expected)
    if expected == 0:
        assert "dry run" in _out(result) and "nothing changed" in _out(result)
    assert _snapshot(ks, tmp_path / "made") == before
    assert not (tmp_path / "dry-shares").exists()


def test_init_dry_run_creates_nothing(run: Callable[..., object], tmp_path: Path) -> None:
    out = _out(run("init", "--keystore", str(tmp_path / "new"), "--dry-run"))
    assert "would create" in out and "master-isd/1" in out
    assert not (tmp_path / "new").exists()
