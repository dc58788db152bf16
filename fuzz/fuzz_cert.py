"""Fuzz the certificate parser and verifier: core.cert.parse and cert.verify.

Invariants: only CertificateError on bad input; a parsed certificate re-encodes
to exactly the input; verification of anything fuzzed against a fixed root
fails with CertificateError (a forgery would be a finding).
"""

from __future__ import annotations

import harness

with harness.instrumented(__name__):
    from tallypurse.core import cert, crypto
    from tallypurse.core.cert import KeyRef
    from tallypurse.core.errors import CertificateError
    from tallypurse.core.protocol import CertRole

_ROOT_KEY = crypto.private_key_from_scalar(bytes(31) + b"\x07")
_ROOT = {KeyRef("issuer-root", 1): crypto.encode_public_key(_ROOT_KEY.public_key())}


def TestOneInput(data: bytes) -> None:  # noqa: N802
    try:
        c = cert.parse(data)
    except CertificateError:
        return
    assert c.encode() == data, data.hex()
    assert len(c.signature) == crypto.SIG_LEN and len(c.public_key) == crypto.PUB_LEN
    for role in (c.role, CertRole.TERMINAL):
        try:
            cert.verify(data, _ROOT, role=role, at=c.not_before)
        except CertificateError:
            pass
        else:
            raise AssertionError(f"a fuzzed certificate verified: {data.hex()}")
    try:  # self-consistency: its own key as the only root (fails unless self-signed)
        cert.verify(c, {c.authority: c.public_key}, role=c.role, at=c.not_after)
    except CertificateError:
        pass


if __name__ == "__main__":
    harness.main(TestOneInput)
