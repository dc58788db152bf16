"""Enrolment: the certificate request; only the SAM's own valid terminal certificate installs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tallypurse.core import crypto
from tallypurse.core.errors import CertificateError, DecodeError, KeystoreError
from tallypurse.core.protocol import CertRole
from tallypurse.sam import CertificateRequest, Sam

from .conftest import NOW, PASSPHRASE, TERMINAL_ID, Issuer


def test_certificate_request_carries_terminal_id_and_public_key_and_proves_possession(
    sam: Sam,
) -> None:
    raw = sam.certificate_request()
    req = CertificateRequest.parse(raw)
    assert req.terminal_id == TERMINAL_ID
    assert req.public_key == sam.public_key
    assert raw.startswith(b"TP\x01\x10")


def test_a_tampered_certificate_request_is_refused(sam: Sam) -> None:
    raw = bytearray(sam.certificate_request())
    raw[5] ^= 1  # terminal id
    with pytest.raises(CertificateError):
        CertificateRequest.parse(bytes(raw))
    with pytest.raises(DecodeError):
        CertificateRequest.parse(bytes(raw[:-1]))


def test_sam_is_not_enrolled_before_a_certificate_is_installed(sam: Sam) -> None:
    assert not sam.enrolled
    assert sam.trusted_roots == {}
    with pytest.raises(KeystoreError, match="not enrolled"):
        _ = sam.certificate


def test_own_valid_terminal_certificate_is_installed_and_persisted(
    sam: Sam, sam_path: Path, issuer: Issuer
) -> None:
    good = issuer.issue(holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=sam.public_key)
    sam.install_certificate(good, issuer.roots, at=NOW)
    assert sam.enrolled and sam.certificate == good
    assert sam.trusted_roots == issuer.roots
    sam.close()
    doc = json.loads(sam_path.read_text())
    assert doc["certificate"] == good.hex()
    assert doc["trusted_roots"] == {"tp-root/1": issuer.public.hex()}
    with Sam.open(sam_path, PASSPHRASE) as reopened:
        assert reopened.certificate == good
        assert reopened.trusted_roots == issuer.roots


def test_install_refuses_a_certificate_for_another_terminal(sam: Sam, issuer: Issuer) -> None:
    bad = issuer.issue(holder=b"OTHERTID", role=CertRole.TERMINAL, public_key=sam.public_key)
    with pytest.raises(CertificateError, match="holder"):
        sam.install_certificate(bad, issuer.roots, at=NOW)
    assert not sam.enrolled


@pytest.mark.parametrize("role", [CertRole.CARD, CertRole.ROOT, CertRole.HOST_API])
def test_install_refuses_a_certificate_with_another_role(
    sam: Sam, issuer: Issuer, role: CertRole
) -> None:
    bad = issuer.issue(holder=TERMINAL_ID, role=role, public_key=sam.public_key)
    with pytest.raises(CertificateError, match="role"):
        sam.install_certificate(bad, issuer.roots, at=NOW)
    assert not sam.enrolled


def test_install_refuses_a_certificate_from_an_untrusted_issuer(
    sam: Sam, issuer: Issuer, other_issuer: Issuer
) -> None:
    bad = other_issuer.issue(holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=sam.public_key)
    with pytest.raises(CertificateError, match="unknown key"):
        sam.install_certificate(bad, issuer.roots, at=NOW)
    # same key reference, different key: the signature does not verify
    forged = {issuer.ref: other_issuer.public}
    good = issuer.issue(holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=sam.public_key)
    with pytest.raises(CertificateError, match="signature"):
        sam.install_certificate(good, forged, at=NOW)
    assert not sam.enrolled


def test_install_refuses_a_certificate_for_another_public_key(sam: Sam, issuer: Issuer) -> None:
    stranger = crypto.encode_public_key(crypto.generate_private_key().public_key())
    bad = issuer.issue(holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=stranger)
    with pytest.raises(CertificateError, match="public key"):
        sam.install_certificate(bad, issuer.roots, at=NOW)
    assert not sam.enrolled


def test_install_refuses_an_expired_or_malformed_certificate(sam: Sam, issuer: Issuer) -> None:
    expired = issuer.issue(holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=sam.public_key,
                           not_before=NOW - 100, not_after=NOW - 1)
    with pytest.raises(CertificateError, match="valid"):
        sam.install_certificate(expired, issuer.roots, at=NOW)
    with pytest.raises(CertificateError, match="malformed"):
        sam.install_certificate(b"\x7f\x21\x01\x00", issuer.roots, at=NOW)
    assert not sam.enrolled


def test_a_refused_install_keeps_the_previous_certificate(
    enrolled_sam: Sam, issuer: Issuer, other_issuer: Issuer
) -> None:
    before = enrolled_sam.certificate
    bad = other_issuer.issue(holder=TERMINAL_ID, role=CertRole.TERMINAL,
                             public_key=enrolled_sam.public_key)
    with pytest.raises(CertificateError):
        enrolled_sam.install_certificate(bad, issuer.roots, at=NOW)
    assert enrolled_sam.certificate == before
    assert enrolled_sam.trusted_roots == issuer.roots
