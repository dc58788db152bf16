"""A keystore that is missing, damaged, tampered with or opened with the wrong passphrase."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tallypurse.core.errors import KeystoreError
from tallypurse.keystore import HOST_LIST, SoftwareKeyStore
from tallypurse.keystore.software import KEYSTORE_FILE

from .conftest import CHEAP_KDF, NOW, PASSPHRASE, secret_hexes

Doc = dict[str, Any]


def _edit(directory: Path, change: Callable[[Doc], None]) -> None:
    path = directory / KEYSTORE_FILE
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _entry(doc: Doc, ref: str) -> Doc:
    name, _, version = ref.rpartition("/")
    for item in doc["keys"]:
        if item["name"] == name and item["version"] == int(version):
            return item  # type: ignore[no-any-return]
    raise AssertionError(ref)


def _flip(hex_text: str, index: int = 0) -> str:
    raw = bytearray.fromhex(hex_text)
    raw[index] ^= 0x01
    return raw.hex()


def _open(directory: Path) -> None:
    SoftwareKeyStore.open(directory, PASSPHRASE).close()


def test_wrong_passphrase_is_refused_with_a_clear_error(
    store: SoftwareKeyStore, directory: Path
) -> None:
    with pytest.raises(KeystoreError) as info:
        SoftwareKeyStore.open(directory, PASSPHRASE + "!")
    assert info.value.message == "wrong passphrase or corrupt keystore"


def test_a_missing_keystore_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no keystore at"):
        SoftwareKeyStore.open(tmp_path / "nowhere", PASSPHRASE)


def test_an_unreadable_keystore_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEYSTORE_FILE).mkdir()
    with pytest.raises(KeystoreError, match="cannot read keystore"):
        SoftwareKeyStore.open(tmp_path, PASSPHRASE)


def test_a_flipped_bit_in_a_key_ciphertext_is_detected(
    store: SoftwareKeyStore, directory: Path
) -> None:
    _edit(
        directory,
        lambda d: _entry(d, "master-app/1").update(
            ciphertext=_flip(_entry(d, "master-app/1")["ciphertext"], 5)
        ),
    )
    with pytest.raises(KeystoreError, match="master-app/1 does not authenticate"):
        _open(directory)


def test_a_flipped_bit_in_the_seal_reads_as_a_wrong_passphrase(
    store: SoftwareKeyStore, directory: Path
) -> None:
    _edit(directory, lambda d: d["seal"].update(ciphertext=_flip(d["seal"]["ciphertext"])))
    with pytest.raises(KeystoreError, match=r"^wrong passphrase or corrupt keystore$"):
        _open(directory)


def test_a_flipped_byte_anywhere_in_the_file_is_never_accepted_silently(
    store: SoftwareKeyStore, directory: Path
) -> None:
    path = directory / KEYSTORE_FILE
    original = path.read_bytes()
    for index in range(0, len(original), 97):
        damaged = bytearray(original)
        damaged[index] = ord("0") if damaged[index] != ord("0") else ord("1")
        path.write_bytes(bytes(damaged))
        try:
            with SoftwareKeyStore.open(directory, PASSPHRASE) as reopened:
                # Only whitespace/formatting changes may open, and then with the same keys.
                assert reopened.refs() == store.refs()
                for ref in store.refs():
                    assert reopened.info(ref) == store.info(ref)
        except KeystoreError:
            pass


@pytest.mark.parametrize("keep", [0, 1, 10, 200, 1000, -2])
def test_a_truncated_keystore_is_refused(
    store: SoftwareKeyStore, directory: Path, keep: int
) -> None:
    path = directory / KEYSTORE_FILE
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(KeystoreError, match=r"empty|not valid JSON"):
        _open(directory)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "not a tallypurse keystore"),
        (b'{"format": "something-else"}', "not a tallypurse keystore"),
        (b'{"format": "tallypurse-keystore", "format_version": 99}', "format version 99"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_garbage_in_place_of_a_keystore_is_refused(
    store: SoftwareKeyStore, directory: Path, content: bytes, message: str
) -> None:
    (directory / KEYSTORE_FILE).write_bytes(content)
    with pytest.raises(KeystoreError, match=message):
        _open(directory)


def _set(path: list[str | int], value: object) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _delete(path: list[str | int]) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_delete(["keys"]), r"keystore\.keys is missing"),
        (_set(["keys"], {}), r"keystore\.keys must be a list"),
        (_set(["kdf", "salt"], "zz"), r"kdf\.salt is not valid hex"),
        (_set(["kdf", "salt"], "00"), r"kdf\.salt must be 16 bytes"),
        (_set(["kdf", "algorithm"], "scrypt"), r"kdf\.algorithm must be 'argon2id'"),
        (_set(["kdf", "memory_cost"], 10**12), r"kdf\.memory_cost must be an integer"),
        (_set(["kdf", "lanes"], True), r"kdf\.lanes must be an integer"),
        (_set(["aead"], "chacha20"), r"keystore\.aead must be 'aes-256-gcm'"),
        (_set(["seal", "nonce"], None), r"seal\.nonce must be a hex string"),
        (_set(["keys", 0, "version"], "1"), r"keys\[0\]\.version must be an integer"),
        (_set(["keys", 0, "name"], "mystery"), r"unknown key name 'mystery'"),
        (_set(["keys", 0, "kind"], "aes-128"), r"key issuer-root/1\.kind must be 'ec-p256'"),
        (_set(["keys", 4, "public_key"], "04"), r"key master-isd/1\.public_key must be null"),
        (_set(["keys", 1, "certificate"], "7f21"), r"host-list/1\.certificate is not a cert"),
        (_set(["keys", 1, "nonce"], "00" * 8), r"host-list/1\.nonce must be 12 bytes"),
        (_set(["keys", 2, "ciphertext"], "00" * 10), r"host-load/1\.ciphertext must be 48"),
        (_set(["keys", 3], "entry"), r"keys\[3\] must be an object"),
    ],
)
def test_a_bad_field_is_refused_with_a_message_that_names_it(
    store: SoftwareKeyStore,
    directory: Path,
    change: Callable[[Doc], None],
    message: str,
) -> None:
    _edit(directory, change)
    with pytest.raises(KeystoreError, match=message):
        _open(directory)


def test_swapped_key_ciphertexts_are_detected(store: SoftwareKeyStore, directory: Path) -> None:
    def swap(doc: Doc) -> None:
        a, b = _entry(doc, "master-isd/1"), _entry(doc, "master-app/1")
        for field in ("nonce", "ciphertext"):
            a[field], b[field] = b[field], a[field]

    _edit(directory, swap)
    with pytest.raises(KeystoreError, match="does not authenticate"):
        _open(directory)


def test_swapped_key_names_are_detected(store: SoftwareKeyStore, directory: Path) -> None:
    def swap(doc: Doc) -> None:
        a, b = _entry(doc, "master-isd/1"), _entry(doc, "master-sd-operator/1")
        a["name"], b["name"] = b["name"], a["name"]

    _edit(directory, swap)
    with pytest.raises(KeystoreError, match="does not authenticate"):
        _open(directory)


@pytest.mark.parametrize(
    ("ref", "field", "value"),
    [
        ("master-isd/1", "kcv", "000000"),
        ("host-api/1", "created", NOW + 1),
        ("host-list/1", "version", 7),
    ],
)
def test_edited_public_metadata_is_detected(
    store: SoftwareKeyStore, directory: Path, ref: str, field: str, value: object
) -> None:
    _edit(directory, lambda d: _entry(d, ref).update({field: value}))
    with pytest.raises(KeystoreError, match="does not authenticate"):
        _open(directory)


def test_a_certificate_from_another_keystore_is_detected(
    store: SoftwareKeyStore, directory: Path, tmp_path: Path
) -> None:
    other = SoftwareKeyStore.create(tmp_path / "other", PASSPHRASE, now=NOW, kdf_params=CHEAP_KDF)
    foreign = other.certificate(other.current(HOST_LIST)).encode().hex()
    _edit(directory, lambda d: _entry(d, "host-list/1").update(certificate=foreign))
    with pytest.raises(KeystoreError, match="host-list/1"):
        _open(directory)


def test_a_removed_key_version_is_detected(store: SoftwareKeyStore, directory: Path) -> None:
    store.rotate(HOST_LIST, now=NOW + 1)
    _edit(directory, lambda d: d["keys"].remove(_entry(d, "host-list/2")))
    with pytest.raises(KeystoreError, match="does not match the sealed list"):
        _open(directory)


def test_a_duplicated_key_is_detected(store: SoftwareKeyStore, directory: Path) -> None:
    _edit(directory, lambda d: d["keys"].append(dict(_entry(d, "host-api/1"))))
    with pytest.raises(KeystoreError, match="appears twice"):
        _open(directory)


def test_weakened_kdf_parameters_do_not_open_the_keystore(
    store: SoftwareKeyStore, directory: Path
) -> None:
    _edit(directory, _set(["kdf", "iterations"], 2))
    with pytest.raises(KeystoreError, match=r"^wrong passphrase or corrupt keystore$"):
        _open(directory)


def test_no_secret_appears_in_the_repr_of_the_store_or_its_entries(
    store: SoftwareKeyStore, directory: Path
) -> None:
    secrets = secret_hexes(store)
    assert len(secrets) == 14
    shown = "\n".join(
        [
            repr(store),
            str(store),
            repr(store._entries),
            repr(list(store._entries.values())),
            repr(store.infos()),
            str(store.infos()),
            repr(store.signer(store.current(HOST_LIST))),
            json.dumps(store.export_public()),
            (directory / KEYSTORE_FILE).read_text(),
        ]
    )
    for secret in secrets:
        assert secret not in shown
    assert "<keystore entry master-isd/1 aes-128>" in shown
    assert "SoftwareKeyStore(directory=" in repr(store)


def test_the_keystore_and_its_entries_cannot_be_pickled(store: SoftwareKeyStore) -> None:
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(store)
    for entry in store._entries.values():
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(entry)
