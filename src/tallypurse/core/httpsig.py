"""HTTP Message Signatures (RFC 9421) for terminal requests, signed inside the SAM.

Every request a terminal sends to the host carries three headers:

* ``Content-Digest: sha-256=:<base64>:`` (RFC 9530) over the exact body bytes
  (the empty body too);
* ``Signature-Input: tp=("@method" "@target-uri" "content-digest");created=<unix>;
  keyid="<terminal id hex>";alg="ecdsa-p256-sha256";nonce="<32 hex>";tag="tallypurse-sam"``
* ``Signature: tp=:<base64 of the 64-byte r||s>:``

How the signature base meets the SAM
------------------------------------
The signature base is built exactly as RFC 9421 section 2.5 says (by the
``http-message-signatures`` package): one line per covered component and the
``@signature-params`` line, ASCII, no trailing newline. The host checks a request
whose headers are in exactly the form :func:`sign_request` writes by building that
base itself (no structured-field parser on the hot path); any other form goes to
the package's general verifier. The SAM never hands
out its key and only signs under a purpose prefix (:mod:`tallypurse.core.samproto`),
so the terminal passes the signature base to ``Sam.sign(base,
purpose=PURPOSE_REQUEST)``, which signs ECDSA P-256/SHA-256 over::

    "TP" 01 13 || signature base

That is the ``ecdsa-p256-sha256`` algorithm of RFC 9421 section 3.3.4 applied
to the prefixed base; the signed ``tag="tallypurse-sam"`` names this profile.
The prefix keeps a request signature from ever being valid as a debit order,
a batch or a journal entry, and vice versa. A verifier prepends the same four
bytes (:class:`SamP256`); nothing else differs from a plain RFC 9421 verifier.

The host refuses a signature whose ``created`` is more than the allowed age in
the past or beyond the clock skew in the future, and a nonce it has already
seen from the same key within that window (it keeps nonces in its database,
so every host process agrees).

The day-end batch is signed too, with purpose ``PURPOSE_BATCH`` over
:func:`batch_signed_bytes`: the canonical JSON (sorted keys, no spaces, UTF-8)
of the batch without its ``signature`` field.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_message_signatures.structures import VerifyResult

from tallypurse.core import crypto
from tallypurse.core.errors import CryptoError, DecodeError
from tallypurse.core.hostapi import BatchUpload, batch_json
from tallypurse.core.samproto import PURPOSE_REQUEST, domain

ALGORITHM = "ecdsa-p256-sha256"
LABEL = "tp"
TAG = "tallypurse-sam"
COVERED = ("@method", "@target-uri", "content-digest")
PREFIX = domain(PURPOSE_REQUEST)
NONCE_BYTES = 16

Signer = Callable[[bytes], bytes]
"""Signs a signature base; for a terminal ``lambda b: sam.sign(b, purpose=PURPOSE_REQUEST)``."""


class SamP256(algorithms.ECDSA_P256_SHA256):
    """ecdsa-p256-sha256 over the SAM's request prefix and the signature base."""

    def sign(self, message: bytes) -> bytes:  # pragma: no cover - the SAM signs, not us
        raise HTTPMessageSignaturesException("terminal keys stay in the SAM")

    def verify(self, signature: bytes, message: bytes) -> None:
        if not crypto.verify(self.public_key, signature, PREFIX + message):
            raise InvalidSignature("signature does not verify")


class _Message:
    """What the RFC 9421 component resolver reads from a request."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        self.method = method.upper()
        self.url = url
        self.headers: dict[str, str] = dict(headers)


class SignatureError(CryptoError):
    """A request signature that is missing, malformed, wrong, stale or replayed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "missing", "invalid", "stale"


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def sign_request(
    method: str,
    url: str,
    body: bytes,
    *,
    key_id: str,
    signer: Signer,
    created: int,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign a request (Content-Digest, Signature-Input, Signature).

    ``url`` is the absolute target URI exactly as sent; ``body`` the exact bytes
    sent; ``key_id`` the terminal id (16 hex digits); ``created`` unix seconds.
    """
    message = _Message(method, url, {})
    handler = HTTPMessageSigner(signature_algorithm=SamP256)
    prepared = handler.prepare(
        message,
        key_id=key_id,
        created=dt.datetime.fromtimestamp(created, dt.UTC),
        nonce=nonce or new_nonce(),
        label=LABEL,
        tag=TAG,
        covered_component_ids=COVERED,
        body=body,
    )
    signature = signer(prepared.signature_base)
    handler.apply(message, prepared, signature)
    return {name: message.headers[name]
            for name in ("Content-Digest", "Signature-Input", "Signature")}


@dataclass(frozen=True, slots=True)
class Verified:
    key_id: str
    created: int
    nonce: str


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, resolve: Callable[[str], bytes]) -> None:
        self.resolve = resolve
        self.key_id = ""
        self.refusal: Exception | None = None

    def resolve_public_key(self, key_id: str) -> Any:
        self.key_id = key_id
        try:
            point = self.resolve(key_id)
        except Exception as exc:
            self.refusal = exc  # the caller's own refusal ("unknown terminal"), passed through
            raise
        return _public_key(point)

    def resolve_private_key(self, key_id: str) -> Any:  # pragma: no cover
        raise HTTPMessageSignaturesException("no private keys here")


class _Verifier(HTTPMessageVerifier):
    """Times are checked by :func:`verify_request` against the caller's clock."""

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    resolve_key: Callable[[str], bytes],
    now: int,
    max_age: int,
    skew: int,
) -> Verified:
    """Check a signed request; returns the signer's key id, created time and nonce.

    ``resolve_key(key_id)`` returns the signer's 65-byte public key or raises
    (its exception passes through, so a caller can say "unknown terminal").
    Raises :class:`SignatureError` for anything else that is wrong. The caller
    must still refuse a nonce it has seen.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if "signature" not in lowered or "signature-input" not in lowered:
        raise SignatureError("missing", "the request is not signed (Signature-Input, Signature)")
    if "content-digest" not in lowered:
        raise SignatureError("missing", "the request has no Content-Digest")
    params = _verify_canonical(method, url, lowered, body, resolve_key)
    if params is None:
        params = _verify_general(method, url, headers, body, resolve_key)
    created, nonce, alg = params.get("created"), params.get("nonce"), params.get("alg")
    if alg is not None and alg != ALGORITHM:
        raise SignatureError("invalid", f"algorithm must be {ALGORITHM}")
    if not isinstance(created, int):
        raise SignatureError("invalid", "the signature has no created time")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
        raise SignatureError("invalid", "the signature needs a nonce of 16..64 characters")
    if created < now - max_age or created > now + skew:
        raise SignatureError("stale", f"signature created at {created}, host time is {now}")
    return Verified(str(params.get("keyid", "")), created, nonce)


# The headers exactly as :func:`sign_request` writes them (every terminal signs through it).
_CANONICAL_INPUT = re.compile(
    r'tp=(\("@method" "@target-uri" "content-digest"\);created=([0-9]{1,15});'
    r'keyid="([0-9a-f]{1,64})";alg="ecdsa-p256-sha256";nonce="([0-9a-f]{16,64})";'
    r'tag="tallypurse-sam")')
_CANONICAL_SIGNATURE = re.compile(r"tp=:([A-Za-z0-9+/]{86}==):")


@functools.lru_cache(maxsize=4096)
def _public_key(point: bytes) -> Any:
    """A decoded public key (decoding a point costs about as much as a verification)."""
    return crypto.decode_public_key(point)


def _verify_canonical(method: str, url: str, lowered: Mapping[str, str], body: bytes,
                      resolve_key: Callable[[str], bytes]) -> dict[str, Any] | None:
    """The usual request, checked without the general RFC 9421 parser: headers in
    exactly the form :func:`sign_request` writes, a Content-Digest that matches the
    body and a signature that verifies. The same signature base as the general path
    (RFC 9421 section 2.5: the signature parameters serialised as they were sent, the
    only serialisation of these parameters). None for anything else: the general
    path then checks the request and says what is wrong."""
    sig_input = _CANONICAL_INPUT.fullmatch(lowered["signature-input"])
    signature = _CANONICAL_SIGNATURE.fullmatch(lowered["signature"])
    digest = lowered["content-digest"]
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    if (sig_input is None or signature is None or not url.isprintable()
            or not crypto.constant_time_equal(digest.encode(), expected.encode())):
        return None
    params, created, key_id, nonce = sig_input.groups()
    point = resolve_key(key_id)  # its refusal passes through, as on the general path
    base = (f'"@method": {method.upper()}\n"@target-uri": {url}\n'
            f'"content-digest": {digest}\n"@signature-params": {params}')
    try:
        key = _public_key(point)
    except DecodeError:
        return None  # the general path says so
    if not crypto.verify(key, base64.b64decode(signature.group(1)), PREFIX + base.encode()):
        # the usual form, fully parsed: the general verifier would only check it again
        raise SignatureError("invalid", "request signature: the signature does not verify")
    return {"created": int(created), "keyid": key_id, "alg": ALGORITHM, "nonce": nonce,
            "tag": TAG}


def _verify_general(method: str, url: str, headers: Mapping[str, str], body: bytes,
                    resolve_key: Callable[[str], bytes]) -> dict[str, Any]:
    """Any RFC 9421 form, with the ``http-message-signatures`` verifier."""
    message = _Message(method, url, headers)
    keys = _Keys(resolve_key)
    verifier = _Verifier(signature_algorithm=SamP256, key_resolver=keys)
    try:
        results: list[VerifyResult] = verifier.verify(
            message, max_age=None, expect_tag=TAG, require_components=COVERED, body=body)
    except InvalidSignature as exc:
        if keys.refusal is not None:
            raise keys.refusal from None  # the key resolver's own refusal
        raise SignatureError("invalid", f"request signature: {exc}") from None
    except HTTPMessageSignaturesException as exc:
        raise SignatureError("invalid", f"request signature: {exc}") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        # Malformed structured fields (RFC 8941) in Signature-Input or Signature.
        raise SignatureError("invalid", f"malformed signature headers: {exc}") from None
    if len(results) != 1:
        raise SignatureError("invalid", "exactly one tallypurse signature is expected")
    return dict(results[0].parameters)


def batch_signed_bytes(batch: BatchUpload) -> bytes:
    """What the SAM signs (purpose PURPOSE_BATCH) for a day-end batch: its canonical JSON
    without ``signature``."""
    return batch_json(batch)[1]

