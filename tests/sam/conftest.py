"""Fixtures for the SAM tests: an issuer root and helpers to issue certificates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tallypurse.core import cert, crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.protocol import CertRole
from tallypurse.sam import Sam

TERMINAL_ID = bytes.fromhex("5445524d00000001")
PASSPHRASE = "correct horse battery staple"
NOW = 1_760_000_000
NOT_BEFORE = NOW - 86_400
NOT_AFTER = NOW + 365 * 86_400


@dataclass
class Issuer:
    ref: KeyRef
    key: ec.EllipticCurvePrivateKey

    @property
    def public(self) -> bytes:
        return crypto.encode_public_key(self.key.public_key())

    @property
    def roots(self) -> dict[KeyRef, bytes]:
        return {self.ref: self.public}

    def issue(
        self,
        *,
        holder: bytes,
        role: CertRole,
        public_key: bytes,
        not_before: int = NOT_BEFORE,
        not_after: int = NOT_AFTER,
    ) -> bytes:
        return cert.issue(
            cert.KeySigner(self.key),
            authority=self.ref,
            holder=holder,
            role=role,
            public_key=public_key,
            not_before=not_before,
            not_after=not_after,
        ).encode()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer(KeyRef("tp-root", 1), crypto.generate_private_key())


@pytest.fixture
def other_issuer() -> Issuer:
    return Issuer(KeyRef("rogue-root", 1), crypto.generate_private_key())


@pytest.fixture
def sam_path(tmp_path: Path) -> Path:
    return tmp_path / "sam.json"


@pytest.fixture
def sam(sam_path: Path) -> Iterator[Sam]:
    with Sam.create(sam_path, PASSPHRASE, terminal_id=TERMINAL_ID) as s:
        yield s


@pytest.fixture
def enrolled_sam(sam: Sam, issuer: Issuer) -> Sam:
    terminal_cert = issuer.issue(
        holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=sam.public_key
    )
    sam.install_certificate(terminal_cert, issuer.roots, at=NOW)
    return sam
