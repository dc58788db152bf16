"""What the keystore does with its keys: sign, certify, diversify."""

from __future__ import annotations

import pytest

from tallypurse.core import cert, crypto
from tallypurse.core.errors import BadInput, CertificateError
from tallypurse.core.protocol import CertRole
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

from .conftest import NOW


def _roots(store: SoftwareKeyStore) -> dict[cert.KeyRef, bytes]:
    root = store.current(ISSUER_ROOT)
    return {root: store.public_key(root)}


@pytest.mark.parametrize("name", [ISSUER_ROOT, HOST_LIST, HOST_LOAD, HOST_API])
def test_signatures_verify_with_the_public_key_and_not_over_other_data(
    store: SoftwareKeyStore, name: str
) -> None:
    ref = store.current(name)
    public = store.public_key(ref)
    assert len(public) == 65 and public[0] == 0x04
    sig = store.sign(ref, b"a list to sign")
    assert len(sig) == 64
    assert crypto.verify(public, sig, b"a list to sign")
    assert not crypto.verify(public, sig, b"a list to sign!")


def test_a_signer_signs_with_the_key_it_names(store: SoftwareKeyStore) -> None:
    ref = store.current(HOST_LOAD)
    signer = store.signer(ref)
    assert crypto.verify(store.public_key(ref), signer.sign(b"load"), b"load")
    assert repr(signer) == "<keystore signer host-load/1>"


def test_the_root_certificate_is_self_signed_with_role_root(store: SoftwareKeyStore) -> None:
    ref = store.current(ISSUER_ROOT)
    root = store.certificate(ref)
    assert root.authority == ref
    assert root.holder == ref.encode()
    assert root.public_key == store.public_key(ref)
    cert.verify(root.encode(), _roots(store), role=CertRole.ROOT, at=NOW)


@pytest.mark.parametrize(
    ("name", "role"),
    [
        (HOST_LIST, CertRole.HOST_LIST),
        (HOST_LOAD, CertRole.HOST_LOAD),
        (HOST_API, CertRole.HOST_API),
    ],
)
def test_host_certificates_verify_against_the_root_with_their_role(
    store: SoftwareKeyStore, name: str, role: CertRole
) -> None:
    ref = store.current(name)
    c = cert.verify(
        store.certificate(ref).encode(), _roots(store), role=role, at=NOW, holder=ref.encode()
    )
    assert c.public_key == store.public_key(ref)
    with pytest.raises(CertificateError, match="role"):
        cert.verify(store.certificate(ref), _roots(store), role=CertRole.TERMINAL, at=NOW)


def test_issued_certificates_verify_against_the_current_root(store: SoftwareKeyStore) -> None:
    card_key = crypto.generate_private_key()
    public = crypto.encode_public_key(card_key.public_key())
    c = store.issue_certificate(
        holder=b"\x00\x00\x00\x00\x00\x00\x00\x2a",
        role=CertRole.CARD,
        public_key=public,
        not_before=NOW,
        not_after=NOW + 86_400,
    )
    verified = cert.verify(c.encode(), _roots(store), role=CertRole.CARD, at=NOW + 1)
    assert verified.public_key == public
    with pytest.raises(CertificateError, match="not valid at this time"):
        cert.verify(c, _roots(store), role=CertRole.CARD, at=NOW + 86_401)


def test_issuing_a_certificate_refuses_bad_requests(store: SoftwareKeyStore) -> None:
    public = crypto.encode_public_key(crypto.generate_private_key().public_key())

    def issue(
        *,
        role: CertRole = CertRole.TERMINAL,
        holder: bytes = b"T1",
        public_key: bytes = public,
        not_before: int = NOW,
        not_after: int = NOW + 10,
    ) -> None:
        store.issue_certificate(
            holder=holder,
            role=role,
            public_key=public_key,
            not_before=not_before,
            not_after=not_after,
        )

    issue()
    with pytest.raises(BadInput, match="ROOT"):
        issue(role=CertRole.ROOT)
    with pytest.raises(BadInput, match="before"):
        issue(not_after=NOW - 1)
    with pytest.raises(BadInput, match="outlive"):
        issue(not_after=NOW + 30 * 365 * 86_400)
    with pytest.raises(BadInput, match="not_before"):
        issue(not_before=-1)
    with pytest.raises(BadInput, match="holder"):
        issue(holder=b"")
    with pytest.raises(BadInput, match="holder"):
        issue(holder=b"x" * 33)
    with pytest.raises(BadInput, match="point"):
        issue(public_key=b"\x04" + b"\x00" * 64)


@pytest.mark.parametrize("name", [MASTER_ISD, MASTER_SD, MASTER_APP])
def test_diversify_is_deterministic_per_serial(store: SoftwareKeyStore, name: str) -> None:
    master = store.current(name)
    first = store.diversify(master, b"KEY-ENC", b"\x12\x34\x56\x78\x9a\xbc\xde\xf0")
    assert len(first) == 16
    assert store.diversify(master, b"KEY-ENC", b"\x12\x34\x56\x78\x9a\xbc\xde\xf0") == first


def test_diversified_keys_differ_by_serial_by_purpose_and_by_master(
    store: SoftwareKeyStore,
) -> None:
    isd, app = store.current(MASTER_ISD), store.current(MASTER_APP)
    keys = {
        store.diversify(isd, b"ISD-ENC", b"SERIAL01"),
        store.diversify(isd, b"ISD-ENC", b"SERIAL02"),
        store.diversify(isd, b"ISD-MAC", b"SERIAL01"),
        store.diversify(app, b"ISD-ENC", b"SERIAL01"),
    }
    assert len(keys) == 4


def test_diversify_refuses_an_overlong_purpose(store: SoftwareKeyStore) -> None:
    with pytest.raises(BadInput, match="purpose"):
        store.diversify(store.current(MASTER_APP), b"P" * 17, b"SERIAL01")


def test_master_keys_have_distinct_key_check_values(store: SoftwareKeyStore) -> None:
    kcvs = {store.kcv(store.current(n)) for n in (MASTER_ISD, MASTER_SD, MASTER_APP)}
    assert len(kcvs) == 3
    assert all(len(k) == 3 for k in kcvs)
