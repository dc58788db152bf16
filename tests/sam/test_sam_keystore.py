"""The SAM's key pair and state file: generated inside, persisted, reopened, refused when bad."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput, KeystoreError
from tallypurse.sam import PURPOSE_BATCH, Sam, verify_signature

from .conftest import PASSPHRASE, TERMINAL_ID


def test_key_is_generated_persisted_and_reopened_with_the_same_public_key(sam_path: Path) -> None:
    with Sam.create(sam_path, PASSPHRASE, terminal_id=TERMINAL_ID) as sam:
        public = sam.public_key
        signature = sam.sign(b"batch", purpose=PURPOSE_BATCH)
    with Sam.open(sam_path, PASSPHRASE) as reopened:
        assert reopened.public_key == public
        assert reopened.terminal_id == TERMINAL_ID
        assert verify_signature(public, reopened.sign(b"x", purpose=PURPOSE_BATCH), b"x",
                                purpose=PURPOSE_BATCH)
    assert verify_signature(public, signature, b"batch", purpose=PURPOSE_BATCH)
    assert len(public) == 65 and public[0] == 4


def test_two_sams_get_different_keys(tmp_path: Path) -> None:
    with Sam.create(tmp_path / "a", "pw", terminal_id=TERMINAL_ID) as a, \
            Sam.create(tmp_path / "b", "pw", terminal_id=TERMINAL_ID) as b:
        assert a.public_key != b.public_key


def test_state_file_is_json_with_an_encrypted_pkcs8_key(sam: Sam, sam_path: Path) -> None:
    doc = json.loads(sam_path.read_text())
    assert doc["format"] == "tallypurse-sam"
    assert doc["terminal_id"] == TERMINAL_ID.hex()
    assert doc["certificate"] is None
    assert doc["trusted_roots"] == {}
    assert doc["private_key"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    key = serialization.load_pem_private_key(doc["private_key"].encode(), PASSPHRASE.encode())
    assert crypto.encode_public_key(key.public_key()) == sam.public_key  # type: ignore[arg-type]
    assert sam_path.stat().st_mode & 0o077 == 0


def test_no_method_or_repr_reveals_the_private_key(sam: Sam, sam_path: Path) -> None:
    doc = json.loads(sam_path.read_text())
    key = serialization.load_pem_private_key(doc["private_key"].encode(), PASSPHRASE.encode())
    scalar = crypto.private_scalar(key)  # type: ignore[arg-type]
    text = repr(sam)
    assert scalar.hex() not in text and "PRIVATE" not in text
    assert TERMINAL_ID.hex() in text
    public_attrs = [name for name in dir(sam) if not name.startswith("_")]
    assert not any("private" in name or name == "key" for name in public_attrs)
    with pytest.raises(TypeError):
        pickle.dumps(sam)


def test_create_refuses_to_overwrite_an_existing_sam(sam: Sam, sam_path: Path) -> None:
    with pytest.raises(KeystoreError, match="already"):
        Sam.create(sam_path, "other", terminal_id=TERMINAL_ID)


def test_create_refuses_a_bad_terminal_id_or_empty_passphrase(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="8 bytes"):
        Sam.create(tmp_path / "s", "pw", terminal_id=b"short")
    with pytest.raises(BadInput, match="passphrase"):
        Sam.create(tmp_path / "s", "", terminal_id=TERMINAL_ID)


def test_wrong_passphrase_is_refused_clearly(sam: Sam, sam_path: Path) -> None:
    sam.close()
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Sam.open(sam_path, "not the passphrase")
    Sam.open(sam_path, PASSPHRASE).close()  # the failed attempt left the lock free


def test_missing_file_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no SAM state"):
        Sam.open(tmp_path / "nothing.json", PASSPHRASE)


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe", b"[]", b'{"format": "something-else"}',
     b'{"format": "tallypurse-sam", "version": 1}'],
    ids=["empty", "broken-json", "not-utf8", "array", "wrong-format", "missing-fields"],
)
def test_corrupt_file_is_refused_clearly(
    sam: Sam, sam_path: Path, content: bytes
) -> None:
    sam.close()
    sam_path.write_bytes(content)
    with pytest.raises(KeystoreError, match="corrupt"):
        Sam.open(sam_path, PASSPHRASE)


def test_truncated_file_is_refused_clearly(sam: Sam, sam_path: Path) -> None:
    sam.close()
    sam_path.write_bytes(sam_path.read_bytes()[:200])
    with pytest.raises(KeystoreError, match="corrupt"):
        Sam.open(sam_path, PASSPHRASE)


@pytest.mark.parametrize("field", ["sequence_high_water", "trusted_roots", "terminal_id"])
def test_altered_field_breaks_the_integrity_seal(sam: Sam, sam_path: Path, field: str) -> None:
    sam.next_sequence()
    sam.close()
    assert json.loads(sam_path.read_text())["sequence_high_water"] == 2
    doc = json.loads(sam_path.read_text())
    doc[field] = {
        "sequence_high_water": 1,
        "trusted_roots": {"evil/1": "04" + "11" * 64},
        "terminal_id": "00" * 8,
    }[field]
    sam_path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="corrupt"):
        Sam.open(sam_path, PASSPHRASE)


def test_damaged_private_key_is_refused(sam: Sam, sam_path: Path) -> None:
    sam.close()
    doc = json.loads(sam_path.read_text())
    doc["private_key"] = doc["private_key"].replace("M", "N", 3)
    sam_path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError):
        Sam.open(sam_path, PASSPHRASE)


def test_a_second_instance_on_the_same_file_is_refused(sam: Sam, sam_path: Path) -> None:
    with pytest.raises(KeystoreError, match="already open"):
        Sam.open(sam_path, PASSPHRASE)


def test_a_closed_sam_refuses_to_work(sam: Sam) -> None:
    sam.close()
    sam.close()  # idempotent
    assert sam.closed
    with pytest.raises(KeystoreError, match="closed"):
        sam.next_sequence()
    with pytest.raises(KeystoreError, match="closed"):
        sam.sign(b"x", purpose=PURPOSE_BATCH)


def test_sam_cannot_be_constructed_directly(sam: Sam) -> None:
    with pytest.raises(TypeError, match="create"):
        Sam(
            object(), path=sam.path, key=crypto.generate_private_key(), pem="",
            terminal_id=TERMINAL_ID, certificate=None, roots={}, high_water=1, lock_fd=-1,
            sequence_block=1, card_cache_size=1,
        )


def test_no_temporary_files_are_left_behind(sam: Sam, sam_path: Path) -> None:
    for _ in range(5):
        sam.next_sequence()
    sam.close()
    assert sorted(p.name for p in sam_path.parent.iterdir()) == ["sam.json", "sam.json.lock"]


@pytest.mark.parametrize("slot", ["certificate", "alternate certificate"])
def test_a_stored_certificate_that_does_not_parse_is_refused_even_when_sealed(
        sam: Sam, sam_path: Path, slot: str) -> None:
    """The seal proves who wrote the file, not that what it holds is sound: a certificate
    (or an alternate one, kept after a key rotation) that does not parse is refused by
    name, though the SAM's own key sealed the file."""
    if slot == "certificate":
        sam._certificate = b"\x30\x00"
    else:
        sam._alternates = [b"\x30\x00"]
    sam._save()  # sealed again with the SAM's own key
    sam.close()
    with pytest.raises(KeystoreError, match=f"stored {slot} is malformed"):
        Sam.open(sam_path, PASSPHRASE)
