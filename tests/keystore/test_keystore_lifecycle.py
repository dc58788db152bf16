"""Creating, opening, rotating and exporting a software keystore."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tallypurse.core import cert, crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, KeystoreError
from tallypurse.core.protocol import CertRole
from tallypurse.keystore import (
    DEFAULT_KDF_PARAMS,
    HOST_API,
    HOST_LIST,
    HOST_LOAD,
    ISSUER_ROOT,
    KEY_SPECS,
    MASTER_APP,
    MASTER_ISD,
    MASTER_SD,
    KeyStore,
    SoftwareKeyStore,
)
from tallypurse.keystore.base import HOST_VALIDITY, ROOT_VALIDITY
from tallypurse.keystore.software import KEYSTORE_FILE

from .conftest import CHEAP_KDF, NOW, PASSPHRASE

ALL_NAMES = [ISSUER_ROOT, HOST_LIST, HOST_LOAD, HOST_API, MASTER_ISD, MASTER_SD, MASTER_APP]


def test_create_makes_every_named_key_at_version_one(store: SoftwareKeyStore) -> None:
    assert list(KEY_SPECS) == ALL_NAMES
    assert store.refs() == [KeyRef(name, 1) for name in ALL_NAMES]
    for name in ALL_NAMES:
        info = store.info(store.current(name))
        assert info.created == NOW
        assert info.kind == KEY_SPECS[name].kind


def test_the_software_store_satisfies_the_keystore_protocol(store: SoftwareKeyStore) -> None:
    assert isinstance(store, KeyStore)


def test_a_created_keystore_opens_again_with_the_same_keys(
    store: SoftwareKeyStore, directory: Path
) -> None:
    with SoftwareKeyStore.open(directory, PASSPHRASE) as reopened:
        assert reopened.refs() == store.refs()
        for ref in store.refs():
            assert reopened.info(ref) == store.info(ref)
        data = b"same key after reopening"
        for name in (ISSUER_ROOT, HOST_LIST):
            sig = reopened.sign(reopened.current(name), data)
            assert crypto.verify(store.public_key(store.current(name)), sig, data)
        master = store.current(MASTER_ISD)
        assert reopened.diversify(master, b"ISD-ENC", b"\x01" * 8) == store.diversify(
            master, b"ISD-ENC", b"\x01" * 8
        )
        assert reopened.kdf_params == CHEAP_KDF


def test_create_refuses_a_directory_that_already_holds_a_keystore(
    store: SoftwareKeyStore, directory: Path
) -> None:
    before = (directory / KEYSTORE_FILE).read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        SoftwareKeyStore.create(directory, PASSPHRASE, now=NOW, kdf_params=CHEAP_KDF)
    assert (directory / KEYSTORE_FILE).read_bytes() == before


def test_an_empty_passphrase_is_refused(directory: Path) -> None:
    with pytest.raises(KeystoreError, match="passphrase"):
        SoftwareKeyStore.create(directory, "", now=NOW, kdf_params=CHEAP_KDF)
    assert not (directory / KEYSTORE_FILE).exists()


def test_kdf_parameters_that_argon2_would_refuse_are_refused_up_front(directory: Path) -> None:
    from tallypurse.keystore.software import KdfParams

    with pytest.raises(BadInput, match="memory_cost"):
        SoftwareKeyStore.create(
            directory,
            PASSPHRASE,
            now=NOW,
            kdf_params=KdfParams(memory_cost=8, iterations=1, lanes=4),
        )


def test_the_default_kdf_is_memory_hard_and_the_chosen_parameters_are_stored(
    store: SoftwareKeyStore, directory: Path
) -> None:
    assert DEFAULT_KDF_PARAMS.memory_cost == 64 * 1024
    assert DEFAULT_KDF_PARAMS.iterations == 3
    assert DEFAULT_KDF_PARAMS.lanes == 4
    doc = json.loads((directory / KEYSTORE_FILE).read_text())
    assert doc["format"] == "tallypurse-keystore"
    assert doc["format_version"] == 1
    assert doc["kdf"]["algorithm"] == "argon2id"
    assert doc["kdf"]["memory_cost"] == CHEAP_KDF.memory_cost
    assert len(bytes.fromhex(doc["kdf"]["salt"])) == 16
    assert doc["aead"] == "aes-256-gcm"


def test_the_keystore_file_is_readable_by_its_owner_only(
    store: SoftwareKeyStore, directory: Path
) -> None:
    mode = stat.S_IMODE(os.stat(directory / KEYSTORE_FILE).st_mode)
    assert mode == 0o600


def test_writing_leaves_no_temporary_file_behind(store: SoftwareKeyStore, directory: Path) -> None:
    store.rotate(HOST_API, now=NOW + 1)
    assert sorted(p.name for p in directory.iterdir()) == ["keystore.json", "keystore.lock"]


def test_a_passphrase_opens_whatever_its_unicode_normal_form(directory: Path) -> None:
    composed, decomposed = "caf\u00e9 cr\u00e8me", "cafe\u0301 cre\u0300me"
    SoftwareKeyStore.create(directory, composed, now=NOW, kdf_params=CHEAP_KDF).close()
    with SoftwareKeyStore.open(directory, decomposed) as reopened:
        assert len(reopened.refs()) == len(ALL_NAMES)


def test_unknown_keys_are_refused(store: SoftwareKeyStore) -> None:
    with pytest.raises(KeystoreError, match="unknown key"):
        store.current("no-such-key")
    with pytest.raises(KeystoreError, match="unknown key"):
        store.sign(KeyRef(HOST_LIST, 9), b"x")
    with pytest.raises(KeystoreError, match="unknown key"):
        store.rotate("no-such-key", now=NOW)


def test_each_key_refuses_the_operations_of_the_other_kind(store: SoftwareKeyStore) -> None:
    master, host = store.current(MASTER_APP), store.current(HOST_LOAD)
    with pytest.raises(KeystoreError, match="not an EC"):
        store.sign(master, b"x")
    with pytest.raises(KeystoreError, match="not an EC"):
        store.signer(master)
    with pytest.raises(KeystoreError, match="not an EC"):
        store.public_key(master)
    with pytest.raises(KeystoreError, match="no certificate"):
        store.certificate(master)
    with pytest.raises(KeystoreError, match="not an AES"):
        store.kcv(host)
    with pytest.raises(KeystoreError, match="not an AES"):
        store.diversify(host, b"APP", b"\x00" * 8)


def test_rotation_keeps_old_versions_usable_and_moves_current(
    store: SoftwareKeyStore, directory: Path
) -> None:
    old = store.current(HOST_LIST)
    new = store.rotate(HOST_LIST, now=NOW + 100)
    assert new == KeyRef(HOST_LIST, 2)
    assert store.current(HOST_LIST) == new
    assert store.public_key(new) != store.public_key(old)
    for ref in (old, new):
        sig = store.sign(ref, b"list")
        assert crypto.verify(store.public_key(ref), sig, b"list")
    roots = {store.current(ISSUER_ROOT): store.public_key(store.current(ISSUER_ROOT))}
    cert.verify(store.certificate(new), roots, role=CertRole.HOST_LIST, at=NOW + 100)
    assert store.info(new).created == NOW + 100

    with SoftwareKeyStore.open(directory, PASSPHRASE) as reopened:
        assert reopened.current(HOST_LIST) == new
        assert reopened.public_key(old) == store.public_key(old)
        assert crypto.verify(reopened.public_key(old), reopened.sign(old, b"a"), b"a")


def test_rotating_a_master_key_changes_diversified_keys_but_keeps_the_old_ones(
    store: SoftwareKeyStore,
) -> None:
    old = store.current(MASTER_ISD)
    before = store.diversify(old, b"ISD-MAC", b"SERIAL01")
    new = store.rotate(MASTER_ISD, now=NOW + 5)
    assert store.diversify(old, b"ISD-MAC", b"SERIAL01") == before
    assert store.diversify(new, b"ISD-MAC", b"SERIAL01") != before
    assert store.kcv(new) != store.kcv(old)


def test_rotating_the_root_makes_new_host_keys_certified_by_the_new_root(
    store: SoftwareKeyStore,
) -> None:
    old_root = store.current(ISSUER_ROOT)
    new_root = store.rotate(ISSUER_ROOT, now=NOW + 10)
    root_cert = store.certificate(new_root)
    assert root_cert.authority == new_root and root_cert.role == CertRole.ROOT
    assert store.certificate(store.current(HOST_LOAD)).authority == old_root
    host = store.rotate(HOST_LOAD, now=NOW + 20)
    assert store.certificate(host).authority == new_root
    card = store.issue_certificate(
        holder=b"CARD0001",
        role=CertRole.CARD,
        public_key=store.public_key(store.current(HOST_API)),
        not_before=NOW,
        not_after=NOW + 1000,
    )
    assert card.authority == new_root


def test_a_keystore_changed_on_disk_is_not_overwritten_by_a_stale_copy(
    store: SoftwareKeyStore, directory: Path
) -> None:
    with SoftwareKeyStore.open(directory, PASSPHRASE) as other:
        other.rotate(HOST_API, now=NOW + 1)
    with pytest.raises(KeystoreError, match="changed on disk"):
        store.rotate(HOST_API, now=NOW + 2)
    assert store.current(HOST_API) == KeyRef(HOST_API, 1)
    assert KeyRef(HOST_API, 2) not in store.refs()
    with SoftwareKeyStore.open(directory, PASSPHRASE) as reopened:
        assert reopened.current(HOST_API) == KeyRef(HOST_API, 2)


def test_a_closed_keystore_refuses_to_work(directory: Path) -> None:
    s = SoftwareKeyStore.create(directory, PASSPHRASE, now=NOW, kdf_params=CHEAP_KDF)
    ref = s.current(HOST_LIST)
    s.close()
    with pytest.raises(KeystoreError, match="closed"):
        s.sign(ref, b"x")
    with pytest.raises(KeystoreError, match="closed"):
        s.current(HOST_LIST)


def test_host_certificates_are_valid_five_years_and_the_root_twenty(
    store: SoftwareKeyStore,
) -> None:
    root = store.certificate(store.current(ISSUER_ROOT))
    assert (root.not_before, root.not_after) == (NOW, NOW + ROOT_VALIDITY)
    for name in (HOST_LIST, HOST_LOAD, HOST_API):
        c = store.certificate(store.current(name))
        assert (c.not_before, c.not_after) == (NOW, NOW + HOST_VALIDITY)


def test_the_trust_bundle_holds_the_root_and_host_certificates_and_nothing_secret(
    store: SoftwareKeyStore,
) -> None:
    store.rotate(HOST_LIST, now=NOW + 1)
    bundle = store.export_public()
    assert json.loads(json.dumps(bundle)) == bundle
    assert bundle["issuer_root"] == "issuer-root/1"
    assert bundle["current"] == {
        ISSUER_ROOT: "issuer-root/1",
        HOST_LIST: "host-list/2",
        HOST_LOAD: "host-load/1",
        HOST_API: "host-api/1",
    }
    assert set(bundle["certificates"]) == {
        "issuer-root/1",
        "host-list/1",
        "host-list/2",
        "host-load/1",
        "host-api/1",
    }
    root = cert.parse(bytes.fromhex(bundle["certificates"]["issuer-root/1"]))
    roots = {root.authority: root.public_key}
    cert.verify(root, roots, role=CertRole.ROOT, at=NOW)
    for ref_text, cert_hex in bundle["certificates"].items():
        name = ref_text.rpartition("/")[0]
        role = KEY_SPECS[name].role
        assert role is not None
        cert.verify(bytes.fromhex(cert_hex), roots, role=role, at=NOW + 1)
    text = json.dumps(bundle)
    assert not any(name in text for name in (MASTER_ISD, MASTER_SD, MASTER_APP))


@pytest.mark.slow
def test_the_default_memory_hard_parameters_create_and_open_a_keystore(directory: Path) -> None:
    SoftwareKeyStore.create(directory, PASSPHRASE, now=NOW).close()
    with SoftwareKeyStore.open(directory, PASSPHRASE) as reopened:
        assert reopened.kdf_params == DEFAULT_KDF_PARAMS
