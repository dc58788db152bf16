"""What a terminal accepts from a host's trust bundle after a key rotation: a new root
only through a certificate signed by a root it already trusts, host keys and its own
certificates only under roots it keeps; nothing on the host's word alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tallypurse.core import cert, crypto
from tallypurse.core.cert import KeyRef, KeySigner
from tallypurse.core.errors import CertificateError, KeystoreError
from tallypurse.core.hostapi import TrustBundle
from tallypurse.core.protocol import CertRole
from tallypurse.host.config import HostSettings
from tallypurse.host.db.engine import Database
from tallypurse.host.db.models import Terminal as TerminalRow
from tallypurse.host.service import Host
from tallypurse.keystore.base import HOST_LIST, ISSUER_ROOT
from tallypurse.keystore.software import SoftwareKeyStore
from tallypurse.lab import LAB_KDF
from tallypurse.sam import Sam
from tallypurse.terminal.errors import ListRejected
from tallypurse.terminal.lists import verify_trust

TID = bytes.fromhex("00000000000000e7")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    ks = SoftwareKeyStore.create(tmp_path / "ks", "pw", now=int(time.time()) - 60,
                                 kdf_params=LAB_KDF)
    db = Database.connect(f"sqlite:///{tmp_path / 'unused.sqlite3'}")
    yield Host(db, ks, settings=HostSettings(data_dir=tmp_path))
    db.dispose()


@pytest.fixture
def sam(host: Host, tmp_path: Path) -> Iterator[Sam]:
    s = Sam.create(tmp_path / "sam.json", "pw", terminal_id=TID)
    c = host.keys.issue_certificate(holder=TID, role=CertRole.TERMINAL, public_key=s.public_key,
                                    not_before=host.now() - 60, not_after=host.now() + 86400)
    s.install_certificate(c.encode(), host.roots(), at=host.now())
    yield s
    s.close()


def row(sam: Sam) -> TerminalRow:
    return TerminalRow(terminal_id=TID.hex(), merchant_id="m", public_key=sam.public_key.hex())


def rotated(host: Host) -> None:
    now = host.now()
    host.keys.rotate(ISSUER_ROOT, now=now)
    host.keys.rotate(HOST_LIST, now=now)


def test_after_a_root_rotation_the_terminal_learns_the_new_root_through_the_old(
        host: Host, sam: Sam) -> None:
    rotated(host)
    new = verify_trust(host.trust.bundle(row(sam)), sam.trusted_roots, at=host.now())
    assert set(new.roots) == {KeyRef(ISSUER_ROOT, 1), KeyRef(ISSUER_ROOT, 2)}
    assert set(new.host_keys[CertRole.HOST_LIST]) == {KeyRef(HOST_LIST, 1), KeyRef(HOST_LIST, 2)}
    sam.update_trust(new.roots, new.terminal_certificates, at=host.now())
    assert [cert.parse(c).authority for c in sam.certificates] == [
        KeyRef(ISSUER_ROOT, 2), KeyRef(ISSUER_ROOT, 1)]


def test_a_root_certified_by_nobody_the_terminal_trusts_is_not_learnt(
        host: Host, sam: Sam) -> None:
    now = host.now()
    rogue = crypto.generate_private_key()
    rogue_ref = KeyRef(ISSUER_ROOT, 9)
    rogue_point = crypto.encode_public_key(rogue.public_key())
    self_signed = cert.issue(KeySigner(rogue), authority=rogue_ref, holder=rogue_ref.encode(),
                             role=CertRole.ROOT, public_key=rogue_point, not_before=now - 60,
                             not_after=now + 86400)
    rogue_list = cert.issue(KeySigner(rogue), authority=rogue_ref,
                            holder=KeyRef(HOST_LIST, 9).encode(), role=CertRole.HOST_LIST,
                            public_key=rogue_point, not_before=now - 60, not_after=now + 86400)
    genuine = host.trust.bundle(row(sam))
    forged = genuine.model_copy(update={
        "roots": [*genuine.roots, str(rogue_ref)],
        "root_certificates": [self_signed.encode().hex()],
        "host_certificates": [*genuine.host_certificates, rogue_list.encode().hex()],
    })
    new = verify_trust(forged, sam.trusted_roots, at=now)
    assert rogue_ref not in new.roots
    assert KeyRef(HOST_LIST, 9) not in new.host_keys[CertRole.HOST_LIST]
    # only the rogue's keys: nothing to trust, the bundle is refused whole
    only_rogue = TrustBundle(tag="x", roots=[str(rogue_ref)],
                             root_certificates=[self_signed.encode().hex()],
                             host_certificates=[rogue_list.encode().hex()])
    with pytest.raises(ListRejected):
        verify_trust(only_rogue, sam.trusted_roots, at=now)


def test_a_bundle_without_a_host_list_key_under_a_kept_root_is_refused(
        host: Host, sam: Sam) -> None:
    bundle = host.trust.bundle(row(sam)).model_copy(update={"host_certificates": []})
    with pytest.raises(ListRejected, match="no host list key"):
        verify_trust(bundle, sam.trusted_roots, at=host.now())


def test_a_tampered_link_certificate_is_refused(host: Host, sam: Sam) -> None:
    rotated(host)
    bundle = host.trust.bundle(row(sam))
    link = bytearray(bytes.fromhex(bundle.root_certificates[0]))
    link[-1] ^= 1
    bad = bundle.model_copy(update={"root_certificates": [link.hex()]})
    with pytest.raises(ListRejected):
        verify_trust(bad, sam.trusted_roots, at=host.now())


def test_the_sam_refuses_a_certificate_for_another_key_and_changes_nothing(
        host: Host, sam: Sam, tmp_path: Path) -> None:
    other = Sam.create(tmp_path / "other.json", "pw", terminal_id=TID)
    try:
        c = host.keys.issue_certificate(holder=TID, role=CertRole.TERMINAL,
                                        public_key=other.public_key,
                                        not_before=host.now() - 60, not_after=host.now() + 600)
    finally:
        other.close()
    before = (sam.certificates, sam.trusted_roots, (tmp_path / "sam.json").read_bytes())
    with pytest.raises(CertificateError):
        sam.update_trust(sam.trusted_roots, [c.encode()], at=host.now())
    assert (sam.certificates, sam.trusted_roots, (tmp_path / "sam.json").read_bytes()) == before


def test_the_sams_alternate_certificates_survive_a_reopen_and_are_sealed(
        host: Host, sam: Sam, tmp_path: Path) -> None:
    rotated(host)
    new = verify_trust(host.trust.bundle(row(sam)), sam.trusted_roots, at=host.now())
    sam.update_trust(new.roots, new.terminal_certificates, at=host.now())
    certificates = sam.certificates
    sam.close()
    path = tmp_path / "sam.json"
    with Sam.open(path, "pw") as reopened:
        assert reopened.certificates == certificates
        assert set(reopened.trusted_roots) == set(new.roots)
    text = path.read_text()
    alternate = certificates[1].hex()
    path.write_text(text.replace(alternate, certificates[0].hex()))
    with pytest.raises(KeystoreError, match="seal"):
        Sam.open(path, "pw")
    path.write_text(text)
