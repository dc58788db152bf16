"""Card-verifiable certificates: issue, parse and verify."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallypurse.core import cert, crypto, tlv
from tallypurse.core.cert import Certificate, KeyRef, KeySigner
from tallypurse.core.errors import CertificateError, CryptoError, DecodeError
from tallypurse.core.protocol import CertRole

NOW = 1_750_000_000
ROOT_REF = KeyRef("TP-ROOT", 1)
ROOT_KEY = crypto.private_key_from_scalar(bytes.fromhex("31" * 32))
ROOT_PUB = crypto.encode_public_key(ROOT_KEY.public_key())
CARD_KEY = crypto.private_key_from_scalar(bytes.fromhex("32" * 32))
CARD_PUB = crypto.encode_public_key(CARD_KEY.public_key())
CARD_ID = bytes.fromhex("0102030405060708")
ROOTS = {ROOT_REF: ROOT_PUB}


def issue_card(**overrides: object) -> Certificate:
    args: dict[str, object] = {
        "authority": ROOT_REF,
        "holder": CARD_ID,
        "role": CertRole.CARD,
        "public_key": CARD_PUB,
        "not_before": NOW - 100,
        "not_after": NOW + 100,
    } | overrides
    return cert.issue(KeySigner(ROOT_KEY), **args)  # type: ignore[arg-type]


CARD_CERT = issue_card()
RAW = CARD_CERT.encode()


def resign(body: bytes, key: object = ROOT_KEY) -> bytes:
    sig = crypto.sign(key, body)  # type: ignore[arg-type]
    return tlv.encode(cert.T_CERT, body + tlv.encode(cert.T_SIGNATURE, sig))


def body_with(fields: list[tuple[int, bytes]]) -> bytes:
    return tlv.encode(cert.T_BODY, tlv.encode_many(fields))


def good_fields() -> list[tuple[int, bytes]]:
    return [
        (cert.T_PROFILE, b"\x01"),
        (cert.T_AUTHORITY, ROOT_REF.encode()),
        (cert.T_HOLDER, CARD_ID),
        (cert.T_ROLE, bytes([CertRole.CARD])),
        (cert.T_PUBKEY, CARD_PUB),
        (cert.T_NOT_BEFORE, (NOW - 100).to_bytes(4, "big")),
        (cert.T_NOT_AFTER, (NOW + 100).to_bytes(4, "big")),
    ]


def replace_field(tag: int, value: bytes) -> list[tuple[int, bytes]]:
    return [(t, value if t == tag else v) for t, v in good_fields()]


# --- issue and verify --------------------------------------------------------


def test_cert_issue_then_verify_accepts_a_good_certificate() -> None:
    c = cert.verify(RAW, ROOTS, role=CertRole.CARD, at=NOW, holder=CARD_ID)
    assert c.authority == ROOT_REF
    assert c.holder == CARD_ID
    assert c.role is CertRole.CARD
    assert c.public_key == CARD_PUB
    assert (c.not_before, c.not_after) == (NOW - 100, NOW + 100)
    assert c == CARD_CERT


def test_cert_verify_accepts_a_parsed_certificate_object() -> None:
    assert cert.verify(CARD_CERT, ROOTS, role=CertRole.CARD, at=NOW) == CARD_CERT


def test_cert_holder_check_is_optional() -> None:
    cert.verify(RAW, ROOTS, role=CertRole.CARD, at=NOW)


def test_cert_encoding_follows_the_documented_layout() -> None:
    (outer,) = tlv.decode(RAW)
    assert outer.tag == 0x7F21
    body, sig = outer.children()
    assert (body.tag, sig.tag) == (0x7F4E, 0x5F37)
    assert len(sig.value) == 64
    assert [t.tag for t in body.children()] == [
        0x5F29,
        0x42,
        0x5F20,
        0x5F4C,
        0x86,
        0x5F25,
        0x5F24,
    ]
    assert CARD_CERT.body == tlv.encode(0x7F4E, body.value)
    assert crypto.verify(ROOT_PUB, sig.value, CARD_CERT.body)


def test_cert_parse_of_the_encoding_gives_back_the_same_certificate() -> None:
    assert cert.parse(RAW) == CARD_CERT
    assert cert.parse(RAW).encode() == RAW


def test_cert_fingerprint_is_eight_bytes_of_sha256_of_the_encoding() -> None:
    assert CARD_CERT.fingerprint == crypto.sha256(RAW)[:8]
    assert issue_card(holder=b"other").fingerprint != CARD_CERT.fingerprint


def test_cert_a_self_signed_root_verifies_against_itself() -> None:
    root = cert.issue(
        KeySigner(ROOT_KEY),
        authority=ROOT_REF,
        holder=ROOT_REF.encode(),
        role=CertRole.ROOT,
        public_key=ROOT_PUB,
        not_before=0,
        not_after=0xFFFFFFFF,
    )
    assert (
        cert.verify(root.encode(), ROOTS, role=CertRole.ROOT, at=NOW, holder=ROOT_REF.encode())
        == root
    )


def test_cert_validity_bounds_are_inclusive() -> None:
    cert.verify(RAW, ROOTS, role=CertRole.CARD, at=NOW - 100)
    cert.verify(RAW, ROOTS, role=CertRole.CARD, at=NOW + 100)


def test_cert_verify_refuses_an_unknown_issuer() -> None:
    with pytest.raises(CertificateError, match="unknown key TP-ROOT/1"):
        cert.verify(RAW, {}, role=CertRole.CARD, at=NOW)
    with pytest.raises(CertificateError, match="unknown key"):
        cert.verify(RAW, {KeyRef("TP-ROOT", 2): ROOT_PUB}, role=CertRole.CARD, at=NOW)


def test_cert_verify_refuses_a_trusted_name_with_the_wrong_key() -> None:
    other = crypto.encode_public_key(CARD_KEY.public_key())
    with pytest.raises(CertificateError, match="signature does not verify"):
        cert.verify(RAW, {ROOT_REF: other}, role=CertRole.CARD, at=NOW)


def test_cert_verify_refuses_a_certificate_signed_by_another_key() -> None:
    forged = cert.issue(
        KeySigner(CARD_KEY),
        authority=ROOT_REF,
        holder=CARD_ID,
        role=CertRole.CARD,
        public_key=CARD_PUB,
        not_before=0,
        not_after=0xFFFFFFFF,
    )
    with pytest.raises(CertificateError, match="signature does not verify"):
        cert.verify(forged.encode(), ROOTS, role=CertRole.CARD, at=NOW)


@pytest.mark.parametrize("role", [r for r in CertRole if r is not CertRole.CARD])
def test_cert_verify_refuses_the_wrong_role(role: CertRole) -> None:
    with pytest.raises(CertificateError, match="role is CARD"):
        cert.verify(RAW, ROOTS, role=role, at=NOW)


def test_cert_verify_refuses_an_expired_certificate() -> None:
    with pytest.raises(CertificateError, match="not valid at this time"):
        cert.verify(RAW, ROOTS, role=CertRole.CARD, at=NOW + 101)


def test_cert_verify_refuses_a_not_yet_valid_certificate() -> None:
    with pytest.raises(CertificateError, match="not valid at this time"):
        cert.verify(RAW, ROOTS, role=CertRole.CARD, at=NOW - 101)


def test_cert_verify_refuses_the_wrong_holder() -> None:
    with pytest.raises(CertificateError, match="holder does not match"):
        cert.verify(RAW, ROOTS, role=CertRole.CARD, at=NOW, holder=CARD_ID[:-1] + b"\x09")


def test_cert_verify_refuses_a_tampered_body_byte() -> None:
    raw = bytearray(RAW)
    i = RAW.index(CARD_ID) + 7
    raw[i] ^= 0x01
    with pytest.raises(CertificateError, match="signature does not verify"):
        cert.verify(bytes(raw), ROOTS, role=CertRole.CARD, at=NOW)


def test_cert_verify_refuses_a_tampered_signature() -> None:
    raw = bytearray(RAW)
    raw[-1] ^= 0x80
    with pytest.raises(CertificateError, match="signature does not verify"):
        cert.verify(bytes(raw), ROOTS, role=CertRole.CARD, at=NOW)


def test_cert_verify_refuses_every_single_byte_change() -> None:
    for i in range(len(RAW)):
        raw = bytearray(RAW)
        raw[i] ^= 0x01
        with pytest.raises(CertificateError):
            cert.verify(bytes(raw), ROOTS, role=CertRole.CARD, at=NOW)


def test_cert_verify_refuses_a_body_swapped_into_another_certificate() -> None:
    other = issue_card(holder=b"other-card")
    spliced = tlv.encode(
        cert.T_CERT, other.body + tlv.encode(cert.T_SIGNATURE, CARD_CERT.signature)
    )
    with pytest.raises(CertificateError, match="signature does not verify"):
        cert.verify(spliced, ROOTS, role=CertRole.CARD, at=NOW)


def test_cert_errors_are_crypto_errors() -> None:
    with pytest.raises(CryptoError):
        cert.verify(RAW, {}, role=CertRole.CARD, at=NOW)


# --- issue refusals ----------------------------------------------------------


@pytest.mark.parametrize("holder", [b"", b"x" * 33])
def test_cert_issue_refuses_a_holder_outside_1_to_32_bytes(holder: bytes) -> None:
    with pytest.raises(ValueError, match="holder"):
        issue_card(holder=holder)


def test_cert_issue_accepts_holders_of_1_and_32_bytes() -> None:
    for holder in (b"h", b"h" * 32):
        c = cert.verify(issue_card(holder=holder).encode(), ROOTS, role=CertRole.CARD, at=NOW)
        assert c.holder == holder


@pytest.mark.parametrize("pub", [b"", CARD_PUB[:-1], CARD_PUB + b"\x00"])
def test_cert_issue_refuses_a_public_key_that_is_not_65_bytes(pub: bytes) -> None:
    with pytest.raises(ValueError, match="public key"):
        issue_card(public_key=pub)


# --- malformed structures ----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"garbage",
        RAW[:-1],  # truncated
        RAW + b"\x00",  # trailing byte
        RAW + tlv.encode(0x5F37, b"x"),  # trailing object
        tlv.encode(0x7F22, RAW[3:]),  # wrong outer tag
        tlv.encode(cert.T_CERT, CARD_CERT.body),  # no signature
        tlv.encode(
            cert.T_CERT, tlv.encode(cert.T_SIGNATURE, CARD_CERT.signature) + CARD_CERT.body
        ),  # signature first
        tlv.encode(
            cert.T_CERT, CARD_CERT.body + tlv.encode(cert.T_SIGNATURE, CARD_CERT.signature[:-1])
        ),
        tlv.encode(
            cert.T_CERT, CARD_CERT.body + tlv.encode(cert.T_SIGNATURE, CARD_CERT.signature) * 2
        ),
    ],
    ids=[
        "empty",
        "zero",
        "garbage",
        "truncated",
        "trailing-byte",
        "trailing-object",
        "wrong-outer-tag",
        "no-signature",
        "signature-first",
        "short-signature",
        "two-signatures",
    ],
)
def test_cert_parse_refuses_malformed_structure_with_certificate_error(raw: bytes) -> None:
    with pytest.raises(CertificateError, match="malformed certificate"):
        cert.parse(raw)


def test_cert_parse_refuses_non_minimal_tlv_lengths() -> None:
    (outer,) = tlv.decode(RAW)
    # re-encode the outer length in a longer form than necessary
    assert RAW[2] == 0x81
    long_form = RAW[:2] + b"\x82\x00" + RAW[3:]
    with pytest.raises(CertificateError, match="shortest form"):
        cert.parse(long_form)
    assert outer.tag == cert.T_CERT


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([f for f in good_fields() if f[0] != cert.T_PUBKEY], "missing tag 86"),
        ([f for f in good_fields() if f[0] != cert.T_NOT_AFTER], "missing tag 5F24"),
        ([*good_fields(), (cert.T_HOLDER, b"again")], "duplicate tag 5F20"),
        (replace_field(cert.T_PROFILE, b"\x02"), "profile"),
        (replace_field(cert.T_PROFILE, b"\x01\x00"), "profile"),
        (replace_field(cert.T_ROLE, b"\x09"), "unknown role 9"),
        (replace_field(cert.T_ROLE, b"\x00\x01"), "role must be 1 bytes"),
        (replace_field(cert.T_HOLDER, b""), "holder"),
        (replace_field(cert.T_HOLDER, b"x" * 33), "holder"),
        (replace_field(cert.T_PUBKEY, b"\x04" + b"\x00" * 64), "not a point"),
        (replace_field(cert.T_PUBKEY, CARD_PUB[:-1]), "65-byte"),
        (replace_field(cert.T_NOT_BEFORE, b"\x00\x00\x01"), "not before must be 4 bytes"),
        (replace_field(cert.T_NOT_AFTER, b"\x00" * 5), "not after must be 4 bytes"),
        (replace_field(cert.T_AUTHORITY, b"no-version"), "key reference"),
    ],
)
def test_cert_parse_refuses_malformed_body_fields_even_when_correctly_signed(
    fields: list[tuple[int, bytes]], reason: str
) -> None:
    raw = resign(body_with(fields))
    with pytest.raises(CertificateError, match=reason):
        cert.parse(raw)
    with pytest.raises(CertificateError):
        cert.verify(raw, ROOTS, role=CertRole.CARD, at=NOW)


def test_cert_parse_refuses_an_over_long_certificate() -> None:
    with pytest.raises(CertificateError, match="too long"):
        cert.parse(RAW + b"\x00" * (cert.MAX_CERT_LEN - len(RAW) + 1))


def test_cert_parse_refuses_a_body_that_is_primitive_data() -> None:
    raw = tlv.encode(
        cert.T_CERT,
        tlv.encode(cert.T_BODY, b"\x00\x00") + tlv.encode(cert.T_SIGNATURE, CARD_CERT.signature),
    )
    with pytest.raises(CertificateError, match="malformed"):
        cert.parse(raw)


@given(st.binary(max_size=300))
def test_cert_parse_of_random_bytes_raises_only_certificate_error(raw: bytes) -> None:
    with pytest.raises(CertificateError):
        cert.parse(raw)


@given(st.integers(0, len(RAW) - 1), st.integers(1, 255))
def test_cert_parse_of_a_mutated_certificate_returns_or_raises_certificate_error(
    index: int, xor: int
) -> None:
    raw = bytearray(RAW)
    raw[index] ^= xor
    try:
        cert.parse(bytes(raw))
    except CertificateError:
        pass


def test_cert_verify_of_an_edited_certificate_object_still_checks_the_signed_body() -> None:
    edited = dataclasses.replace(CARD_CERT, signature=b"\x00" * 64)
    with pytest.raises(CertificateError, match="signature does not verify"):
        cert.verify(edited, ROOTS, role=CertRole.CARD, at=NOW)


# --- key references ----------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "raw"),
    [
        (KeyRef("TP-ROOT", 1), b"TP-ROOT/1"),
        (KeyRef("host-list", 0), b"host-list/0"),
        (KeyRef("a", 65535), b"a/65535"),
        (KeyRef("ns/key", 3), b"ns/key/3"),  # the version follows the last slash
    ],
)
def test_keyref_encodes_as_name_slash_version_and_decodes_back(ref: KeyRef, raw: bytes) -> None:
    assert ref.encode() == raw
    assert KeyRef.decode(raw) == ref
    assert str(ref) == raw.decode()


def test_keyref_is_hashable_and_usable_as_a_trust_store_key() -> None:
    assert {KeyRef("TP-ROOT", 1): 1}[KeyRef.decode(b"TP-ROOT/1")] == 1
    assert KeyRef("TP-ROOT", 1) != KeyRef("TP-ROOT", 2)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"/",
        b"name",
        b"name/",
        b"/1",
        b"name/x",
        b"name/-1",
        b"name/+1",
        b"name/1.0",
        b"name/ 1",
        b"n\xe4me/1",
        b"\xff/1",
        b"name/\xc2\xb2",
        b"name/1 ",
    ],
)
def test_keyref_decode_refuses_bad_references(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="key reference"):
        KeyRef.decode(raw)
