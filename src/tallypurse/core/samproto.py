"""What a terminal's SAM signs besides card orders, and its certificate request.

Terminal and host both import this: the SAM to sign, the host to verify
enrolment requests, batches, journal entries and HTTP requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput, CertificateError, DecodeError
from tallypurse.core.messages import PROTOCOL_VERSION

# --- Signing domains ------------------------------------------------------------------
# Every SAM signature covers b"TP" || protocol version (0x01) || a purpose code || data,
# the same 4-byte prefix that tallypurse.core.messages.domain() puts in front of card
# protocol messages (codes 0x01-0x0F). The SAM's own codes live in 0x10-0x1F.
PURPOSE_CSR = b"\x10"  # certificate request (proof of possession); internal
PURPOSE_BATCH = b"\x11"  # day-end batch upload to the host
PURPOSE_JOURNAL = b"\x12"  # terminal journal entry
PURPOSE_REQUEST = b"\x13"  # HTTP request to the host
PURPOSE_STATE = b"\x1f"  # integrity seal of the SAM state file; internal

TERMINAL_ID_LEN = 8

CSR_HEADER = b"TP" + bytes([PROTOCOL_VERSION]) + PURPOSE_CSR
CSR_LEN = len(CSR_HEADER) + TERMINAL_ID_LEN + crypto.PUB_LEN + crypto.SIG_LEN


def domain(purpose: bytes) -> bytes:
    """The 4-byte signing prefix for a SAM purpose code."""
    if len(purpose) != 1:
        raise BadInput("a signing purpose is one byte")
    return b"TP" + bytes([PROTOCOL_VERSION]) + purpose


def signed_data(data: bytes, *, purpose: bytes) -> bytes:
    """Exactly the bytes a SAM signs for ``sign(data, purpose=purpose)``."""
    return domain(purpose) + data


def verify_signature(public_key: bytes, signature: bytes, data: bytes, *, purpose: bytes) -> bool:
    """Check a signature made by :meth:`Sam.sign` (for tests and verifiers)."""
    return crypto.verify(public_key, signature, signed_data(data, purpose=purpose))


# --- Certificate request --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """What a SAM hands to the operator at enrolment.

    Layout (141 bytes)::

        "TP" 01 10                  4   domain separator (purpose CSR)
        terminal id                 8
        public key                  65  uncompressed P-256 point
        signature                   64  ECDSA P-256/SHA-256 r||s over the 77 bytes above

    The signature proves possession of the private key.
    """

    terminal_id: bytes
    public_key: bytes
    signature: bytes

    def signed_part(self) -> bytes:
        return CSR_HEADER + self.terminal_id + self.public_key

    def to_bytes(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def parse(cls, raw: bytes) -> CertificateRequest:
        """Parse and check a request, signature included (DecodeError, CertificateError)."""
        if len(raw) != CSR_LEN:
            raise DecodeError(f"certificate request must be {CSR_LEN} bytes, got {len(raw)}", 0)
        if raw[: len(CSR_HEADER)] != CSR_HEADER:
            raise DecodeError("not a tallypurse certificate request", 0)
        at = len(CSR_HEADER)
        tid = raw[at : at + TERMINAL_ID_LEN]
        at += TERMINAL_ID_LEN
        pub = raw[at : at + crypto.PUB_LEN]
        crypto.decode_public_key(pub)
        req = cls(tid, pub, raw[at + crypto.PUB_LEN :])
        if not crypto.verify(pub, req.signature, req.signed_part()):
            raise CertificateError("certificate request signature does not verify")
        return req
