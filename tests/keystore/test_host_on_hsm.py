"""The host on a PKCS#11 token (SoftHSM2): ``tallypurse keys init`` makes the keys on the
token, ``tallypurse host serve --keystore pkcs11:...`` runs in a child process on
loopback, and a terminal and a card work against it over HTTP. Every signature the host
makes (terminal certificate, lists, load authorisations) and every per-card key it
diversifies comes from the token; the host refuses to hand out any of those keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.core import cert, crypto, scp03
from tallypurse.core.errors import CardError, CryptoError, KeystoreError
from tallypurse.core.hostapi import SyncRequest
from tallypurse.core.protocol import ISD_AID, OPERATOR_SD_AID, CertRole
from tallypurse.core.transport import ApduClient
from tallypurse.host.bootstrap import open_host
from tallypurse.host.config import HostSettings
from tallypurse.host.keyring import ReloadingKeyStore
from tallypurse.host.tsm.channel import SecureChannel
from tallypurse.host.tsm.keys import isd_keys, sd_keys
from tallypurse.keystore import (
    HOST_API,
    HOST_LIST,
    HOST_LOAD,
    ISSUER_ROOT,
    MASTER_APP,
    MASTER_ISD,
    MASTER_SD,
    SoftwareKeyStore,
)
from tallypurse.system import ServedHost, enrol_till, issue_card

from .conftest import CHEAP_KDF, NOW, PASSPHRASE
from .softhsm import PIN, PIN_ENV, SoftHsm, softhsm_fixture, token_uri_fixture  # noqa: F401

TP = [sys.executable, "-m", "tallypurse.cli.main"]
SIGNING_KEYS = (ISSUER_ROOT, HOST_LIST, HOST_LOAD, HOST_API)
MASTER_KEYS = (MASTER_ISD, MASTER_SD, MASTER_APP)


def tp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TP, *args], env=dict(os.environ), capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.fixture
def keyed_token(token_uri: str, tmp_path: Path) -> str:
    """A token on which ``tallypurse keys init`` made every key (in a child process)."""
    done = tp("keys", "init", "--keystore", token_uri, "--ceremony-log",
              str(tmp_path / "ceremony.log"), "--operator", "alice", "--reason", "hsm host")
    assert done.returncode == 0, done.stderr
    assert "issuer-root/1" in done.stdout and "master-app/1" in done.stdout
    return token_uri


@pytest.fixture
def served(keyed_token: str, tmp_path: Path) -> Iterator[ServedHost]:
    with ServedHost(tmp_path / "hostdata", keystore=keyed_token) as s:
        yield s


def test_a_host_served_on_a_token_enrols_syncs_issues_and_clears_with_its_keys(
    served: ServedHost, keyed_token: str, tmp_path: Path
) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    assert isinstance(served.host.keys, ReloadingKeyStore)  # it follows the token's ceremonies
    keys = served.host.keys.inner  # the same token, opened in this process
    assert isinstance(keys, Pkcs11KeyStore)
    assert not (served.data_dir / "keystore").exists()  # no software keystore was made
    root_ref = keys.current(ISSUER_ROOT)
    root = keys.public_key(root_ref)
    list_ref = keys.current(HOST_LIST)
    reg = served.host.registry
    canteen = reg.create_merchant("Campus Canteen", iban="DE89370400440532013000",
                                  bic="COBADEFFXXX", merchant_id="canteen")

    # Enrolment over HTTP: the SAM's certificate is signed by the token's issuer root.
    till = enrol_till(served, tmp_path / "till", name="Campus Canteen", merchant_id=canteen,
                      terminal_id=bytes.fromhex("00000000000000c1"))
    try:
        sam_cert = cert.parse(till.terminal.sam.certificate)
        assert sam_cert.authority == root_ref
        assert sam_cert.role == CertRole.TERMINAL
        assert crypto.verify(root, sam_cert.signature, sam_cert.body)
        assert cert.verify(till.terminal.sam.certificate, {root_ref: root},
                           role=CertRole.TERMINAL, at=int(time.time())) == sam_cert

        # A card personalised by the host: its keys are diversified on the token, and the
        # card opens secure channels with keys the token diversifies again.
        alice = reg.create_cardholder("Alice", "EUR")
        reg.fund_online_account(alice, 5_000, "hsm-fund-alice")
        serial = bytes.fromhex("00000000000000a1")
        card = issue_card(served, serial, cardholder_id=alice, path=tmp_path / "alice.card")
        client = ApduClient(card)
        SecureChannel.open(client, ISD_AID, isd_keys(keys, serial))
        SecureChannel.open(client, OPERATOR_SD_AID, sd_keys(keys, serial))
        with SoftwareKeyStore.create(tmp_path / "other", PASSPHRASE, now=NOW,
                                     kdf_params=CHEAP_KDF) as other:
            with pytest.raises(CryptoError, match="card cryptogram does not verify"):
                SecureChannel.open(client, ISD_AID, isd_keys(other, serial))
        with pytest.raises(CardError):
            SecureChannel.open(client, ISD_AID, scp03.TRANSPORT_KEYS)

        # Lists over HTTP (a lost card puts an entry on the blacklist): signed by the
        # token's host list key, and the terminal takes them.
        lost = bytes.fromhex("00000000000000b1")
        issue_card(served, lost, cardholder_id=None)
        reg.set_card_status(lost.hex(), "lost")
        synced = till.client.sync(SyncRequest(blacklist_version=0, actions_version=0,
                                              parameters_version=0))
        assert synced.blacklist is not None and synced.parameters is not None
        assert [e.card_id for e in synced.blacklist.blacklist] == [lost.hex()]
        list_key = keys.public_key(list_ref)
        for doc in (synced.blacklist, synced.parameters):
            assert doc.key == str(list_ref)
            body = doc.signed_bytes()
            signature = bytes.fromhex(doc.signature)
            assert crypto.verify(list_key, signature, body)
            assert not crypto.verify(list_key, signature, body + b"x")
        till.terminal.sync()
        assert till.terminal.lists.is_blacklisted(lost)

        # Load (host load key on the token), an offline purchase, a split, day-end close.
        assert till.terminal.load(till.reader(card), 2_000).receipt is not None
        paid = till.terminal.purchase(till.reader(card), 1_250, tx_type="canteen").receipt
        assert paid is not None and paid.balance_after == 750
        split = till.terminal.purchase(till.reader(card), 1_200, tx_type="canteen").receipt
        assert split is not None
        assert (split.purse_amount, split.online_amount) == (750, 450)
        report = till.terminal.close_day()
        assert report.delivered and report.accepted == 3 and not report.mismatch
        assert not report.rejected
        status = till.terminal.status()
        assert status["journal"]["unacknowledged"] == 0
        assert status["outbox"]["depth"] == 0  # the agent debit reached the host
    finally:
        till.close()
    assert served.host.reports.audit()["balanced"] is True
    assert served.process.poll() is None  # still serving
    assert f"keystore: PKCS#11 token {keyed_token}" in served.log()  # named, without a PIN


def test_the_host_on_a_token_refuses_to_export_its_signing_and_master_keys(
    keyed_token: str, tmp_path: Path
) -> None:
    import pkcs11
    from pkcs11 import Attribute

    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    host = open_host(HostSettings(data_dir=tmp_path / "hostdata", keystore=keyed_token),
                     create_keystore=False)
    following = host.keys
    assert isinstance(following, ReloadingKeyStore)  # it follows the token's ceremonies
    try:
        keys = following.inner
        assert isinstance(keys, Pkcs11KeyStore)
        for name in MASTER_KEYS:
            with pytest.raises(KeystoreError, match="non-extractable"):
                keys.export_master(keys.current(name))
        for name in (*SIGNING_KEYS, *MASTER_KEYS):
            obj = keys._entry(keys.current(name)).key  # the token object the host uses
            assert obj[Attribute.SENSITIVE] is True
            assert obj[Attribute.EXTRACTABLE] is False
            assert obj[Attribute.NEVER_EXTRACTABLE] is True
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                obj[Attribute.VALUE]
        assert PIN not in repr(keys) and PIN not in keys.location
    finally:
        host.db.dispose()
        following.close()


# --- What the host commands say about a keystore they cannot use -----------------------------

def _host_cli(*args: str) -> tuple[int, str]:
    from tallypurse.cli.main import app

    result = CliRunner().invoke(app, ["host", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("command", [["migrate"], ["audit"], ["terminals"]])
def test_host_commands_on_a_token_without_tallypurse_keys_change_nothing(
    token_uri: str, tmp_path: Path, command: list[str]
) -> None:
    data = tmp_path / "hostdata"
    code, out = _host_cli(*command, "--data-dir", str(data), "--keystore", token_uri)
    assert code == 2
    assert "holds no tallypurse keys" in out and "tallypurse keys init" in out
    assert not data.exists()


def test_host_commands_name_what_is_wrong_with_a_keystore(
    keyed_token: str, softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "hostdata"
    label = keyed_token.split("token=")[1].split(";")[0]
    cases = [
        ("pkcs11:module=/nonexistent/libnothing.so;token=x;pin-source=env:" + PIN_ENV,
         "cannot load the PKCS#11 module /nonexistent/libnothing.so"),
        (f"pkcs11:module={softhsm.module};tokn={label}", "unknown PKCS#11 URI attribute 'tokn'"),
        (f"pkcs11:module={softhsm.module};token={label}", "no PIN for the PKCS#11 token"),
        (f"pkcs11:module={softhsm.module};token={label};pin-value={PIN}",
         "the host takes no PIN in its keystore URI"),
        (f"pkcs11:module={softhsm.module};token=no-such-token;pin-source=env:{PIN_ENV}",
         "no PKCS#11 token labelled 'no-such-token'"),
        (f"pkcs11:module={softhsm.module};token={label};pin-source=env:TP_UNSET_PIN",
         "the PIN variable TP_UNSET_PIN is not set"),
        (str(tmp_path / "no-keystore"), "no keystore in"),
    ]
    monkeypatch.delenv("TP_UNSET_PIN", raising=False)
    for spec, message in cases:
        code, out = _host_cli("migrate", "--data-dir", str(data), "--keystore", spec)
        assert code == 2, (spec, out)
        assert message in out, (spec, out)
        assert PIN not in out
        assert not data.exists()
    monkeypatch.setenv(PIN_ENV, "000000")
    code, out = _host_cli("migrate", "--data-dir", str(data), "--keystore", keyed_token)
    assert code == 2 and f"wrong PIN for PKCS#11 token {label!r}" in out
    assert not data.exists()
    monkeypatch.setenv(PIN_ENV, PIN)
    code, out = _host_cli("migrate", "--data-dir", str(data), "--keystore", keyed_token)
    assert code == 0, out
    assert "database at revision" in out and not (data / "keystore").exists()


def test_the_keystore_can_come_from_the_environment(
    keyed_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLYPURSE_KEYSTORE", keyed_token)
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    settings = HostSettings.from_env(data_dir=tmp_path / "hostdata")
    assert settings.keystore == keyed_token
    host = open_host(settings, create_keystore=False)
    following = host.keys
    assert isinstance(following, ReloadingKeyStore)
    try:
        assert isinstance(following.inner, Pkcs11KeyStore)
        assert host.list_key() == following.current(HOST_LIST)
    finally:
        host.db.dispose()
        following.close()
