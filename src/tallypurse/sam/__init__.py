"""The SAM: a terminal's security module (emulated in software).

A :class:`Sam` generates its P-256 key pair inside itself and never returns
the private key. It holds the terminal certificate issued at enrolment, the
trusted issuer roots, and the terminal transaction counter; it signs debit
and cancel orders and the terminal's batches, journal entries and requests to
the host; it verifies card certificates (with a bounded LRU cache keyed by the
SHA-256 of the certificate bytes) and card transaction certificates (TACs).

Signing domains
---------------
Every SAM signature is ECDSA P-256/SHA-256, 64 raw bytes r||s, over
``b"TP" || 0x01 (protocol version) || code || data``; the card protocol
messages of :mod:`tallypurse.core.messages` use codes 0x01-0x0F, the SAM's
own purposes use 0x10-0x1F:

====  =================  ===================================================
code  constant           signed data after the prefix
====  =================  ===================================================
0x01  (DebitOrder)       ``DebitOrder.to_bytes()``  via ``sign_debit_order``
0x03  (CancelOrder)      ``CancelOrder.to_bytes()`` via ``sign_debit_order``
0x10  PURPOSE_CSR        terminal id (8) || public key (65): certificate request
0x11  PURPOSE_BATCH      a day-end batch, via ``sign(data, purpose=...)``
0x12  PURPOSE_JOURNAL    a terminal journal entry, via ``sign``
0x13  PURPOSE_REQUEST    an HTTP request to the host, via ``sign``
0x1F  PURPOSE_STATE      the SAM's own state file (integrity seal); internal
====  =================  ===================================================

:meth:`Sam.sign` accepts only 0x11, 0x12 and 0x13, so it can never be made to
sign a debit order, a certificate request or a state file.

State file
----------
One JSON object at the SAM's path, replaced atomically (temporary file in the
same directory, fsync, ``os.replace``, fsync of the directory), mode 0600::

    {"format": "tallypurse-sam", "version": 1,
     "terminal_id": "<16 hex>", "public_key": "<130 hex>",
     "private_key": "-----BEGIN ENCRYPTED PRIVATE KEY----- ...",  # PKCS#8, passphrase
     "certificate": "<hex>" | null,
     "trusted_roots": {"<name>/<version>": "<130 hex point>", ...},
     "sequence_high_water": <int>,
     "seal": "<128 hex>"}   # SAM signature (0x1F) over the other fields, canonical JSON

``sequence_high_water`` is the first number not yet reserved: the SAM reserves
blocks of sequence numbers by writing the end of the block durably before
handing out the first of it, so after a crash it resumes at the high-water
mark (numbers may be skipped, never reused); a clean :meth:`Sam.close`
records the exact position. While open, a SAM holds an exclusive ``flock`` on
``<path>.lock`` so that two instances never share a counter.
"""

from tallypurse.core.samproto import (
    PURPOSE_BATCH,
    PURPOSE_CSR,
    PURPOSE_JOURNAL,
    PURPOSE_REQUEST,
    PURPOSE_STATE,
    CertificateRequest,
    signed_data,
    verify_signature,
)
from tallypurse.sam.emulator import SIGN_PURPOSES, Sam

__all__ = [
    "PURPOSE_BATCH",
    "PURPOSE_CSR",
    "PURPOSE_JOURNAL",
    "PURPOSE_REQUEST",
    "PURPOSE_STATE",
    "SIGN_PURPOSES",
    "CertificateRequest",
    "Sam",
    "signed_data",
    "verify_signature",
]
