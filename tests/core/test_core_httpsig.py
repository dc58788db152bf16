"""RFC 9421 request signatures: the usual form is checked without the general parser,
with the same outcome; any other form still goes through the general verifier."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tallypurse.core import crypto, httpsig
from tallypurse.core.httpsig import SignatureError, sign_request, verify_request

URL = "http://127.0.0.1:8000/v1/terminal/agent-debits"
KEY = crypto.private_key_from_seed(b"request signing test key seed, 40 bytes!")
POINT = crypto.encode_public_key(KEY.public_key())
TID = "6167000000000001"
NOW = 1_700_000_000


def signer(base: bytes) -> bytes:
    return crypto.sign(KEY, httpsig.PREFIX + base)


def signed(body: bytes = b'{"a":1}') -> dict[str, str]:
    return sign_request("POST", URL, body, key_id=TID, signer=signer, created=NOW)


def check(headers: dict[str, str], body: bytes = b'{"a":1}', url: str = URL) -> httpsig.Verified:
    return verify_request("POST", url, headers, body, resolve_key=lambda _: POINT, now=NOW,
                          max_age=300, skew=60)


def test_the_usual_form_takes_the_canonical_path_with_the_general_paths_answer() -> None:
    headers = signed()
    lowered = {k.lower(): v for k, v in headers.items()}
    fast = httpsig._verify_canonical("POST", URL, lowered, b'{"a":1}', lambda _: POINT)
    general = httpsig._verify_general("POST", URL, headers, b'{"a":1}', lambda _: POINT)
    assert fast is not None
    assert fast == general
    verified = check(headers)
    assert (verified.key_id, verified.created, verified.nonce) == (TID, NOW, fast["nonce"])


@pytest.mark.parametrize("change", ["body", "url", "signature", "digest"])
def test_a_changed_request_is_refused(change: str) -> None:
    headers, body, url = signed(), b'{"a":1}', URL
    if change == "body":
        body = b'{"a":2}'
    elif change == "url":
        url = URL + "x"
    elif change == "signature":
        sig = bytearray(base64.b64decode(headers["Signature"][4:-1]))
        sig[5] ^= 1
        headers["Signature"] = "tp=:" + base64.b64encode(bytes(sig)).decode() + ":"
    else:
        headers["Content-Digest"] = "sha-256=:" + base64.b64encode(
            hashlib.sha256(b"other").digest()).decode() + ":"
    with pytest.raises(SignatureError) as caught:
        check(headers, body, url)
    assert caught.value.reason == "invalid"


def test_another_valid_form_goes_through_the_general_verifier() -> None:
    # The same parameters in another order: valid RFC 9421, not the form sign_request writes.
    body = b'{"a":1}'
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    params = (f'("@method" "@target-uri" "content-digest");nonce="{"ab" * 16}";'
              f'created={NOW};keyid="{TID}";tag="tallypurse-sam";alg="ecdsa-p256-sha256"')
    base = (f'"@method": POST\n"@target-uri": {URL}\n"content-digest": {digest}\n'
            f'"@signature-params": {params}').encode()
    headers = {"Content-Digest": digest, "Signature-Input": "tp=" + params,
               "Signature": "tp=:" + base64.b64encode(signer(base)).decode() + ":"}
    lowered = {k.lower(): v for k, v in headers.items()}
    assert httpsig._verify_canonical("POST", URL, lowered, body, lambda _: POINT) is None
    verified = check(headers, body)
    assert (verified.key_id, verified.nonce) == (TID, "ab" * 16)


def test_the_key_resolvers_refusal_passes_through() -> None:
    class Unknown(Exception):
        pass

    def refuse(_: str) -> bytes:
        raise Unknown

    with pytest.raises(Unknown):
        verify_request("POST", URL, signed(), b'{"a":1}', resolve_key=refuse, now=NOW,
                       max_age=300, skew=60)


def test_a_stale_signature_is_refused_on_the_canonical_path() -> None:
    with pytest.raises(SignatureError) as caught:
        verify_request("POST", URL, signed(), b'{"a":1}', resolve_key=lambda _: POINT,
                       now=NOW + 301, max_age=300, skew=60)
    assert caught.value.reason == "stale"
