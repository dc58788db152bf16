"""The PKCS#11 keystore on SoftHSM2: keys stay in the token, and it agrees with the
software keystore on every diversified key, signature and certificate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tallypurse.core import cert, crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import BadInput, KeystoreError
from tallypurse.core.protocol import CertRole
from tallypurse.keystore import (
    HOST_API,
    HOST_LIST,
    HOST_LOAD,
    ISSUER_ROOT,
    KEY_SPECS,
    MASTER_APP,
    MASTER_ISD,
    MASTER_SD,
    KeyKind,
    KeyStore,
    SoftwareKeyStore,
)
from tallypurse.keystore.base import ManagedKeyStore

from .conftest import NOW
from .softhsm import PIN, PIN_ENV, SoftHsm, softhsm_fixture, token_uri_fixture  # noqa: F401

ALL_NAMES = [ISSUER_ROOT, HOST_LIST, HOST_LOAD, HOST_API, MASTER_ISD, MASTER_SD, MASTER_APP]
SERIALS = [bytes(8), bytes.fromhex("1000000000000042"), bytes.fromhex("ffffffffffffffff")]
PURPOSES = [b"ISD-ENC", b"ISD-MAC", b"ISD-DEK", b"APP", b"SD-ENC"]
AID = bytes.fromhex("A000000951544150")


@pytest.fixture
def hsm(token_uri: str) -> Iterator[ManagedKeyStore]:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    with Pkcs11KeyStore.create(token_uri, now=NOW) as store:
        yield store


def _session(softhsm: SoftHsm, uri: str):  # type: ignore[no-untyped-def]
    """A raw PKCS#11 session on the token behind ``uri``, to look at it from outside the
    store. The store keeps the token logged in for this process (PKCS#11 login state is
    per application), so this session, opened without a PIN, has the user's view."""
    import pkcs11

    from tallypurse.keystore.pkcs11 import parse_uri

    label = parse_uri(uri).token
    return pkcs11.lib(softhsm.module).get_token(token_label=label).open(rw=True)


# --- The URI (no HSM needed) ----------------------------------------------------------------


def test_the_uri_names_module_token_and_pin_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from tallypurse.keystore.pkcs11 import parse_uri

    uri = parse_uri(
        "pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=tallypurse;pin-source=env:X"
    )
    assert (uri.module, uri.token, uri.pin_source) == (
        "/usr/lib/softhsm/libsofthsm2.so",
        "tallypurse",
        "env:X",
    )
    monkeypatch.setenv("X", "1234")
    assert uri.pin() == "1234"
    rfc = parse_uri("pkcs11:token=my%20token?module-path=/lib/p11.so&pin-value=99")
    assert (rfc.module, rfc.token, rfc.pin()) == ("/lib/p11.so", "my token", "99")
    assert "99" not in str(rfc)


def test_a_pin_file_is_read_without_its_newline(tmp_path: Path) -> None:
    from tallypurse.keystore.pkcs11 import parse_uri

    (tmp_path / "pin").write_text("4321\n")
    uri = parse_uri(f"pkcs11:module=/m.so;token=t;pin-source=file:{tmp_path / 'pin'}")
    assert uri.pin() == "4321"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pkcs12:module=/m.so;token=t", "starts with"),
        ("pkcs11:token=t", "needs module"),
        ("pkcs11:module=/m.so", "needs token"),
        ("pkcs11:module=/m.so;token=t;slot=3", "unknown PKCS#11 URI attribute 'slot'"),
        ("pkcs11:module=/m.so;token=t;token=u", "given twice"),
        ("pkcs11:module=/m.so;token=t;pin-source=env:A;pin-value=1", "not both"),
    ],
)
def test_a_malformed_uri_is_refused_with_a_reason(text: str, message: str) -> None:
    from tallypurse.keystore.pkcs11 import parse_uri

    with pytest.raises(BadInput, match=message):
        parse_uri(text)


def test_an_unset_pin_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tallypurse.keystore.pkcs11 import parse_uri

    monkeypatch.delenv("NO_SUCH_PIN_VAR", raising=False)
    with pytest.raises(KeystoreError, match="NO_SUCH_PIN_VAR is not set"):
        parse_uri("pkcs11:module=/m.so;token=t;pin-source=env:NO_SUCH_PIN_VAR").pin()


def test_the_kdf_input_is_the_one_the_software_kdf_macs() -> None:
    """One CMAC over kdf_block_input is crypto.diversify (checked without an HSM)."""
    from tallypurse.keystore.pkcs11 import DIVERSIFY_CONSTANT, kdf_block_input

    master = bytes(range(16))
    for purpose in PURPOSES:
        context = purpose.ljust(16, b"\x00") + SERIALS[1]
        block = kdf_block_input(DIVERSIFY_CONSTANT, context, 128, 1)
        assert crypto.aes_cmac(master, block) == crypto.diversify(master, purpose, SERIALS[1])


# --- On the token ------------------------------------------------------------------------------


def test_create_makes_every_named_key_on_the_token(hsm: ManagedKeyStore) -> None:
    assert isinstance(hsm, KeyStore)
    assert isinstance(hsm, ManagedKeyStore)
    assert hsm.refs() == [KeyRef(name, 1) for name in ALL_NAMES]
    for info in hsm.infos():
        assert info.kind == KEY_SPECS[info.ref.name].kind
        assert info.created == NOW
        assert (info.kcv is not None) == (info.kind == KeyKind.AES_128)


def test_keys_on_the_token_are_sensitive_and_not_extractable(
    hsm: ManagedKeyStore, softhsm: SoftHsm
) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    with _session(softhsm, hsm.location) as session:
        seen = set()
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY):
            for key in session.get_objects({Attribute.CLASS: cls}):
                seen.add(KeyRef.decode(bytes(key[Attribute.ID])))
                assert key[Attribute.SENSITIVE] is True
                assert key[Attribute.EXTRACTABLE] is False
                assert key[Attribute.NEVER_EXTRACTABLE] is True
                assert key[Attribute.ALWAYS_SENSITIVE] is True
                with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                    key[Attribute.VALUE]
        assert seen == set(hsm.refs())


def test_signatures_made_in_the_token_verify(hsm: ManagedKeyStore) -> None:
    data = b"a list, signed in the HSM"
    for name in (ISSUER_ROOT, HOST_LIST, HOST_LOAD, HOST_API):
        ref = hsm.current(name)
        signature = hsm.sign(ref, data)
        assert len(signature) == crypto.SIG_LEN
        assert crypto.verify(hsm.public_key(ref), signature, data)
        assert not crypto.verify(hsm.public_key(ref), signature, data + b"!")
        assert crypto.verify(hsm.public_key(ref), hsm.signer(ref).sign(data), data)


def test_certificates_made_in_the_token_verify(hsm: ManagedKeyStore) -> None:
    root = hsm.current(ISSUER_ROOT)
    roots = {root: hsm.public_key(root)}
    cert.verify(hsm.certificate(root), roots, role=CertRole.ROOT, at=NOW)
    for name in (HOST_LIST, HOST_LOAD, HOST_API):
        ref = hsm.current(name)
        role = KEY_SPECS[name].role
        assert role is not None
        c = cert.verify(hsm.certificate(ref), roots, role=role, at=NOW, holder=ref.encode())
        assert c.public_key == hsm.public_key(ref)
    card_key = crypto.encode_public_key(crypto.generate_private_key().public_key())
    issued = hsm.issue_certificate(
        holder=b"CARD0001",
        role=CertRole.CARD,
        public_key=card_key,
        not_before=NOW,
        not_after=NOW + 3600,
    )
    assert cert.verify(issued.encode(), roots, role=CertRole.CARD, at=NOW).public_key == card_key


def test_diversified_keys_equal_the_software_keystores_for_the_same_master(
    hsm: ManagedKeyStore, tmp_path: Path
) -> None:
    """The honest comparison: a master is generated in software, carried into the token by
    the import (restore) ceremony, and both stores then diversify; the token never shows it."""
    from .conftest import CHEAP_KDF, PASSPHRASE

    with SoftwareKeyStore.create(
        tmp_path / "soft", PASSPHRASE, now=NOW, kdf_params=CHEAP_KDF
    ) as soft:
        for name in (MASTER_ISD, MASTER_APP):
            soft_ref = soft.current(name)
            imported = KeyRef(name, 7)
            hsm.import_master(imported, soft.export_master(soft_ref), now=NOW)
            assert hsm.kcv(imported) == soft.kcv(soft_ref)
            for purpose in PURPOSES:
                for serial in SERIALS:
                    assert hsm.diversify(imported, purpose, serial) == soft.diversify(
                        soft_ref, purpose, serial
                    )
            assert hsm.diversify(imported, b"APP", SERIALS[1] + AID) == soft.diversify(
                soft_ref, b"APP", SERIALS[1] + AID
            )


def test_an_imported_master_is_not_extractable_either(
    hsm: ManagedKeyStore, softhsm: SoftHsm
) -> None:
    import pkcs11
    from pkcs11 import Attribute

    ref = KeyRef(MASTER_SD, 2)
    hsm.import_master(ref, bytes(range(16)), now=NOW)
    assert hsm.kcv(ref) == crypto.key_check_value(bytes(range(16)))
    with _session(softhsm, hsm.location) as session:
        key = session.get_key(id=ref.encode())
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.ALWAYS_SENSITIVE] is False  # it was outside once: the ceremony
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]


def test_the_token_refuses_to_export_a_master(hsm: ManagedKeyStore) -> None:
    with pytest.raises(KeystoreError, match="non-extractable"):
        hsm.export_master(hsm.current(MASTER_ISD))


def test_a_reopened_token_has_the_same_keys_and_kcvs(hsm: ManagedKeyStore) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    with Pkcs11KeyStore.open(hsm.location) as again:
        assert again.refs() == hsm.refs()
        for ref in hsm.refs():
            assert again.info(ref) == hsm.info(ref)
        ref = again.current(MASTER_ISD)
        assert again.diversify(ref, b"ISD-ENC", SERIALS[1]) == hsm.diversify(
            ref, b"ISD-ENC", SERIALS[1]
        )


def test_rotation_adds_a_version_and_old_versions_stay_usable(hsm: ManagedKeyStore) -> None:
    old_list, old_isd = hsm.current(HOST_LIST), hsm.current(MASTER_ISD)
    before = hsm.diversify(old_isd, b"ISD-ENC", SERIALS[1])
    assert hsm.rotate(HOST_LIST, now=NOW + 10) == KeyRef(HOST_LIST, 2)
    assert hsm.rotate(MASTER_ISD, now=NOW + 10) == KeyRef(MASTER_ISD, 2)
    assert hsm.current(HOST_LIST) == KeyRef(HOST_LIST, 2)
    assert crypto.verify(hsm.public_key(old_list), hsm.sign(old_list, b"x"), b"x")
    assert hsm.diversify(old_isd, b"ISD-ENC", SERIALS[1]) == before
    assert hsm.diversify(hsm.current(MASTER_ISD), b"ISD-ENC", SERIALS[1]) != before
    with pytest.raises(KeystoreError, match="use 'rotate"):
        hsm.generate(HOST_LIST, now=NOW)


def test_a_revoked_key_is_listed_but_signs_and_diversifies_no_more(hsm: ManagedKeyStore) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    old_load, old_app = hsm.current(HOST_LOAD), hsm.current(MASTER_APP)
    hsm.rotate(HOST_LOAD, now=NOW + 1)
    hsm.rotate(MASTER_APP, now=NOW + 1)
    hsm.revoke(old_load, now=NOW + 2)
    hsm.revoke(old_app, now=NOW + 2)
    for store in (hsm, Pkcs11KeyStore.open(hsm.location)):
        assert store.info(old_load).revoked == NOW + 2
        with pytest.raises(KeystoreError, match="revoked"):
            store.sign(old_load, b"x")
        with pytest.raises(KeystoreError, match="revoked"):
            store.diversify(old_app, b"APP", SERIALS[0])
        store.sign(store.current(HOST_LOAD), b"x")  # the new version works
        if store is not hsm:
            store.close()


def test_a_wrong_pin_is_refused(hsm: ManagedKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    monkeypatch.setenv(PIN_ENV, "000000")
    with pytest.raises(KeystoreError, match="wrong PIN"):
        Pkcs11KeyStore.open(hsm.location)


def test_an_unknown_token_is_refused(hsm: ManagedKeyStore, softhsm: SoftHsm) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    with pytest.raises(KeystoreError, match="no PKCS#11 token labelled 'nope'"):
        Pkcs11KeyStore.open(softhsm.uri("nope"))


def test_an_empty_token_is_not_a_keystore(token_uri: str) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    with pytest.raises(KeystoreError, match="holds no tallypurse keys"):
        Pkcs11KeyStore.open(token_uri)


def test_create_refuses_a_token_that_already_has_keys(hsm: ManagedKeyStore) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    with pytest.raises(KeystoreError, match="already holds tallypurse keys"):
        Pkcs11KeyStore.create(hsm.location, now=NOW)


def test_an_extractable_key_planted_on_the_token_is_refused(
    hsm: ManagedKeyStore, softhsm: SoftHsm
) -> None:
    from pkcs11 import Attribute, KeyType, ObjectClass

    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    with _session(softhsm, hsm.location) as session:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: bytes(16),
                Attribute.TOKEN: True,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.LABEL: MASTER_ISD,
                Attribute.ID: b"master-isd/9",
            }
        )
    with pytest.raises(KeystoreError, match="master-isd/9 is extractable"):
        Pkcs11KeyStore.open(hsm.location)


def test_a_card_personalised_and_used_with_hsm_keys_works(
    hsm: ManagedKeyStore, tmp_path: Path
) -> None:
    """The issuer on the HSM: personalisation (diversified keys), a load (host-load key)
    and a purchase (SAM certified by the HSM root) on the card emulator."""
    from tallypurse.lab import Lab

    lab = Lab(hsm, tmp_path, NOW)
    serial = bytes.fromhex("3000000000000001")
    card, _ = lab.new_card(serial, credit=lab.credit_record(serial))
    lab.load(card, 2_000)
    sam = lab.new_sam(tmp_path / "sam.json", b"HSMTERM1")
    try:
        tap = lab.purchase(card, sam, 500)
    finally:
        sam.close()
    assert tap.event is not None  # the TAC verified against the HSM-certified card key
    assert tap.result.balance_after == 1_500


def test_a_wrong_pin_is_refused_by_the_token_when_no_store_is_open(
    token_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

    Pkcs11KeyStore.create(token_uri, now=NOW).close()
    monkeypatch.setenv(PIN_ENV, "000000")
    with pytest.raises(KeystoreError, match="wrong PIN"):
        Pkcs11KeyStore.open(token_uri)
    monkeypatch.setenv(PIN_ENV, PIN)
    with Pkcs11KeyStore.open(token_uri) as store:
        assert store.refs()


def test_a_rotation_that_fails_halfway_leaves_no_orphan_on_the_token(
    hsm: ManagedKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tallypurse.keystore import pkcs11 as backend

    def broken(*args: object, **kwargs: object) -> None:
        raise KeystoreError("the certificate could not be made")

    before = hsm.refs()
    with monkeypatch.context() as patch:
        patch.setattr(cert, "issue", broken)  # as the backend calls it: cert.issue
        with pytest.raises(KeystoreError, match="could not be made"):
            hsm.rotate(HOST_API, now=NOW + 5)
    assert hsm.refs() == before
    with backend.Pkcs11KeyStore.open(hsm.location) as again:
        assert again.refs() == before
        assert again.rotate(HOST_API, now=NOW + 6) == KeyRef(HOST_API, 2)
