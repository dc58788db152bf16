"""A host on a PKCS#11 token (SoftHSM2) follows the key ceremonies run on the token by
``tallypurse keys ...`` in other processes, without a restart: every ceremony replaces
the token's change stamp, and each host process (each uvicorn worker, with a session of
its own) reads the stamp at most once per interval (1 s) and reads the keys again when it
changed (``host.keyring``, ``Pkcs11KeyStore.change_stamp``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import KeystoreError
from tallypurse.core.hostapi import SyncRequest
from tallypurse.host.keyring import ReloadingKeyStore, file_stamp
from tallypurse.keystore import HOST_LIST, KEY_SPECS, MASTER_APP, locate
from tallypurse.system import ServedHost, Till, enrol_till, issue_card

from .softhsm import PIN, softhsm_fixture, token_uri_fixture  # noqa: F401

TP = [sys.executable, "-m", "tallypurse.cli.main"]
NOW = 1_760_000_000


def tp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TP, *args], env=dict(os.environ), capture_output=True, text=True,
                          timeout=180, check=False)


def ceremony(uri: str, log: Path, *args: str) -> str:
    """One ``tallypurse keys`` ceremony on the token, in a child process."""
    done = tp("keys", *args, "--keystore", uri, "--ceremony-log", str(log),
              "--operator", "ops", "--reason", "while the host serves")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def keyed_token(token_uri: str, tmp_path: Path) -> str:
    ceremony(token_uri, tmp_path / "ceremony.log", "init")
    return token_uri


@pytest.fixture
def served(keyed_token: str, tmp_path: Path) -> Iterator[ServedHost]:
    with ServedHost(tmp_path / "hostdata", keystore=keyed_token, workers=2) as s:
        yield s


def lists_signed(till: Till, publics: dict[KeyRef, bytes]) -> set[str]:
    """The list key named by the blacklist and parameters the served host signs now
    (several requests, so that both workers answer some), each signature checked under
    the public key of the version it names."""
    keys = set()
    for _ in range(6):
        synced = till.client.sync(SyncRequest(blacklist_version=0, actions_version=0,
                                              parameters_version=0))
        assert synced.blacklist is not None and synced.parameters is not None
        for doc in (synced.blacklist, synced.parameters):
            public = publics[KeyRef.decode(doc.key.encode())]
            assert crypto.verify(public, bytes.fromhex(doc.signature), doc.signed_bytes())
            keys.add(doc.key)
    return keys


def test_a_host_served_on_a_token_follows_rotate_and_revoke_without_a_restart(
    served: ServedHost, keyed_token: str, tmp_path: Path
) -> None:
    log = tmp_path / "ceremony.log"
    host = served.host  # the operator's side, in this process: it follows the token too
    assert isinstance(host.keys, ReloadingKeyStore)
    assert host.keys.interval == 1.0
    v1, v2 = KeyRef(HOST_LIST, 1), KeyRef(HOST_LIST, 2)
    merchant = host.registry.create_merchant("Kiosk", iban="DE89370400440532013000",
                                             bic="COBADEFFXXX", merchant_id="kiosk")
    till = enrol_till(served, tmp_path / "till", name="Kiosk", merchant_id=merchant,
                      terminal_id=bytes.fromhex("00000000000000c7"))
    try:
        lost = bytes.fromhex("00000000000000b7")  # an entry on the blacklist
        issue_card(served, lost, cardholder_id=None)
        host.registry.set_card_status(lost.hex(), "lost")
        publics = {v1: host.keys.public_key(v1)}
        assert lists_signed(till, publics) == {"host-list/1"}

        out = ceremony(keyed_token, log, "rotate", HOST_LIST)
        assert "host-list/2" in out
        time.sleep(host.keys.interval + 0.2)  # one interval: each process looks again
        assert host.keys.current(HOST_LIST) == v2  # no restart, no reopening by hand
        publics[v2] = host.keys.public_key(v2)
        assert lists_signed(till, publics) == {"host-list/2"}  # every worker signs with v2
        changes = till.terminal.sync()["changes"]
        assert changes["trust"]["list_keys"] == ["host-list/1", "host-list/2"]
        assert host.keys.sign(v1, b"still in force")  # v1 stays usable until revoked

        assert "revoked host-list/1" in ceremony(keyed_token, log, "revoke", "host-list/1")
        time.sleep(host.keys.interval + 0.2)
        with pytest.raises(KeystoreError, match="revoked"):
            host.keys.sign(v1, b"x")
        assert host.keys.info(v1).revoked is not None
        changes = till.terminal.sync()["changes"]  # the served workers name v2 alone now
        assert changes["trust"]["list_keys"] == ["host-list/2"]
        assert lists_signed(till, publics) == {"host-list/2"}
    finally:
        till.close()
    assert served.process.poll() is None  # never restarted
    assert PIN not in served.log()


def test_every_ceremony_on_the_token_changes_its_stamp_and_nothing_else_does(
    token_uri: str,
) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    with locate.open_keystore(token_uri, allow_empty=True) as made:
        assert isinstance(made, Pkcs11KeyStore)
        assert made.change_stamp() is None  # a token no ceremony has touched
        seen = []
        for name in KEY_SPECS:
            made.generate(name, now=NOW)
            seen.append(made.change_stamp())
        with Pkcs11KeyStore.open(token_uri) as host:  # another view of the token
            stamp = host.change_stamp()
            assert stamp == seen[-1]
            host.sign(host.current(HOST_LIST), b"signing changes nothing")
            host.diversify(host.current(MASTER_APP), b"p", b"serial")
            assert host.change_stamp() == stamp
            made.rotate(HOST_LIST, now=NOW + 1)
            seen.append(made.change_stamp())
            made.revoke(KeyRef(HOST_LIST, 1), now=NOW + 2)
            seen.append(made.change_stamp())
            made.import_master(KeyRef(MASTER_APP, 2), bytes(range(16)), now=NOW + 3)
            seen.append(made.change_stamp())
            assert None not in seen and len(set(seen)) == len(seen)  # each one new
            assert host.change_stamp() == seen[-1]
            # the host's view is the one it read until it reloads
            assert host.current(HOST_LIST) == KeyRef(HOST_LIST, 1)
            host.reload()
            assert host.current(HOST_LIST) == KeyRef(HOST_LIST, 2)
            assert host.current(MASTER_APP) == KeyRef(MASTER_APP, 2)
            with pytest.raises(KeystoreError, match="revoked"):
                host.sign(KeyRef(HOST_LIST, 1), b"x")


def test_a_failed_reload_keeps_the_view_and_is_tried_again(
    keyed_token: str, tmp_path: Path
) -> None:
    from tallypurse.host.bootstrap import open_host
    from tallypurse.host.config import HostSettings
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    host = open_host(HostSettings(data_dir=tmp_path / "hostdata", keystore=keyed_token),
                     create_keystore=False)
    keys = host.keys
    assert isinstance(keys, ReloadingKeyStore)
    try:
        token = keys.inner
        assert isinstance(token, Pkcs11KeyStore)
        keys.interval = 0  # look at every use
        calls = []
        real = token.reload

        def failing() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise KeystoreError("HSM: reading the token failed (DeviceError)")
            real()

        token.reload = failing  # type: ignore[method-assign]
        ceremony(keyed_token, tmp_path / "ceremony.log", "rotate", HOST_LIST)
        with pytest.raises(KeystoreError, match="DeviceError"):
            keys.current(HOST_LIST)
        assert token.current(HOST_LIST) == KeyRef(HOST_LIST, 1)  # the view it had
        assert keys.current(HOST_LIST) == KeyRef(HOST_LIST, 2)  # tried again: read
        assert len(calls) == 2
        assert keys.current(HOST_LIST) == KeyRef(HOST_LIST, 2)
        assert len(calls) == 2  # the stamp did not change again: nothing read again
    finally:
        host.db.dispose()
        keys.close()


def test_what_the_change_stamp_costs(keyed_token: str, tmp_path: Path) -> None:
    """Prints what one look at the stamp costs beside a signature on the same token and
    the software keystore's ``stat`` (shown, not asserted)."""
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    n = 300
    with Pkcs11KeyStore.open(keyed_token) as store:
        stamp = store.change_stamp()
        assert stamp is not None
        searches = []
        find = store._find_stamps

        def counted() -> list[object]:
            searches.append(1)
            return find()

        store._find_stamps = counted  # type: ignore[method-assign]
        start = time.perf_counter()
        for _ in range(n):
            assert store.change_stamp() == stamp
        per_stamp = (time.perf_counter() - start) / n
        assert not searches  # one attribute read on the kept handle, no search
        ref = store.current(HOST_LIST)
        start = time.perf_counter()
        for _ in range(n // 10):
            store.sign(ref, b"a list")
        per_sign = (time.perf_counter() - start) / (n // 10)
    path = tmp_path / "keystore.json"
    path.write_text("{}")
    look = file_stamp(path)
    start = time.perf_counter()
    for _ in range(n):
        look()
    per_stat = (time.perf_counter() - start) / n
    print(f"\ntoken change stamp: {per_stamp * 1e6:.1f} us per look; "
          f"ECDSA signature on the token (floor of a signing request): "
          f"{per_sign * 1e6:.1f} us; ratio {per_stamp / per_sign:.3f}; "
          f"keystore.json stat: {per_stat * 1e6:.1f} us; "
          "a host looks at most once a second per process")
