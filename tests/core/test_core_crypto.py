"""Cryptographic building blocks: ECDSA, AES-CMAC, SCP03 KDF, diversification, KCV,
ISO 9797-1 padding and AES-CBC. Reference values are computed independently here."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from tallypurse.core import crypto
from tallypurse.core.errors import CryptoError, DecodeError

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_MSG = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)

_KEY = crypto.private_key_from_scalar(bytes.fromhex("11" * 32))
_PUB = crypto.encode_public_key(_KEY.public_key())
_OTHER = crypto.private_key_from_scalar(bytes.fromhex("22" * 32))
_OTHER_PUB = crypto.encode_public_key(_OTHER.public_key())


def sig_of(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --- ECDSA -------------------------------------------------------------------


def test_ecdsa_signature_is_64_raw_bytes_that_verify() -> None:
    sig = crypto.sign(_KEY, b"pay 12.50")
    assert len(sig) == crypto.SIG_LEN == 64
    assert crypto.verify(_PUB, sig, b"pay 12.50")
    assert crypto.verify(_KEY.public_key(), sig, b"pay 12.50")


def test_ecdsa_signature_is_interoperable_with_der_verification() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    sig = crypto.sign(_KEY, b"data")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    _KEY.public_key().verify(der, b"data", ec.ECDSA(hashes.SHA256()))  # raises if wrong


def test_ecdsa_verify_is_false_for_different_data() -> None:
    sig = crypto.sign(_KEY, b"pay 12.50")
    assert not crypto.verify(_PUB, sig, b"pay 12.51")
    assert not crypto.verify(_PUB, sig, b"")


def test_ecdsa_verify_is_false_for_a_different_key() -> None:
    sig = crypto.sign(_KEY, b"data")
    assert not crypto.verify(_OTHER_PUB, sig, b"data")


@pytest.mark.parametrize("length", [0, 1, 32, 63, 65, 72])
def test_ecdsa_verify_is_false_for_a_signature_of_the_wrong_length(length: int) -> None:
    sig = crypto.sign(_KEY, b"data")
    bad = (sig + b"\x00" * 8)[:length]
    assert not crypto.verify(_PUB, bad, b"data")


def test_ecdsa_verify_is_false_for_a_flipped_signature_bit() -> None:
    sig = bytearray(crypto.sign(_KEY, b"data"))
    for i in (0, 31, 32, 63):
        flipped = bytearray(sig)
        flipped[i] ^= 0x01
        assert not crypto.verify(_PUB, bytes(flipped), b"data")


@pytest.mark.parametrize(
    ("r", "s"), [(0, 1), (1, 0), (0, 0), (P256_N, 1), (1, P256_N), (2**256 - 1, 2**256 - 1)]
)
def test_ecdsa_verify_is_false_for_zero_or_out_of_range_r_and_s(r: int, s: int) -> None:
    assert not crypto.verify(_PUB, sig_of(r, s), b"data")


def test_ecdsa_verify_is_false_for_r_zero_or_s_zero_taken_from_a_real_signature() -> None:
    sig = crypto.sign(_KEY, b"data")
    assert not crypto.verify(_PUB, b"\x00" * 32 + sig[32:], b"data")
    assert not crypto.verify(_PUB, sig[:32] + b"\x00" * 32, b"data")


@pytest.mark.parametrize(
    "point",
    [
        b"",
        b"\x04",
        b"\x04" + b"\x00" * 64,  # not on the curve
        b"\x04" + b"\x01" * 64,  # not on the curve
        b"\x05" + b"\x01" * 64,  # wrong prefix
        _PUB[:-1],  # truncated
        _PUB + b"\x00",  # too long
        b"\x02" + _PUB[1:33],  # compressed form is refused
    ],
)
def test_ecdsa_verify_is_false_for_a_malformed_public_key(point: bytes) -> None:
    sig = crypto.sign(_KEY, b"data")
    assert not crypto.verify(point, sig, b"data")


def test_ecdsa_verify_is_false_for_a_public_key_with_a_flipped_coordinate_bit() -> None:
    sig = crypto.sign(_KEY, b"data")
    bad = bytearray(_PUB)
    bad[40] ^= 0x01
    assert not crypto.verify(bytes(bad), sig, b"data")


@pytest.mark.parametrize("point", [b"", b"\x04" + b"\x00" * 64, b"\x02" + _PUB[1:33], _PUB[:-1]])
def test_decode_public_key_refuses_anything_but_an_uncompressed_curve_point(point: bytes) -> None:
    with pytest.raises(DecodeError):
        crypto.decode_public_key(point)


def test_public_key_encoding_is_a_65_byte_uncompressed_point_that_decodes_back() -> None:
    assert len(_PUB) == crypto.PUB_LEN and _PUB[0] == 0x04
    assert crypto.encode_public_key(crypto.decode_public_key(_PUB)) == _PUB


def test_private_scalar_round_trips_and_needs_32_bytes() -> None:
    key = crypto.generate_private_key()
    scalar = crypto.private_scalar(key)
    assert len(scalar) == 32
    again = crypto.private_key_from_scalar(scalar)
    assert crypto.encode_public_key(again.public_key()) == crypto.encode_public_key(
        key.public_key()
    )
    with pytest.raises(DecodeError):
        crypto.private_key_from_scalar(scalar[:31])


def test_require_signature_raises_crypto_error_naming_what_failed() -> None:
    sig = crypto.sign(_KEY, b"data")
    crypto.require_signature(_PUB, sig, b"data", "debit order")
    with pytest.raises(CryptoError, match="debit order"):
        crypto.require_signature(_PUB, sig, b"other", "debit order")


@given(st.binary(min_size=64, max_size=64), st.binary(max_size=32))
def test_ecdsa_verify_of_random_signatures_is_false_and_never_raises(
    sig: bytes, data: bytes
) -> None:
    assert crypto.verify(_PUB, sig, data) is False


@given(st.binary(max_size=70))
def test_ecdsa_verify_with_random_public_key_bytes_never_raises(point: bytes) -> None:
    assert crypto.verify(point, crypto.sign(_KEY, b"x"), b"x") is (point == _PUB)


# --- AES-CMAC (NIST SP 800-38B, AES-128 examples; also RFC 4493) -------------


@pytest.mark.parametrize(
    ("length", "mac_hex"),
    [
        (0, "bb1d6929e95937287fa37d129b756746"),
        (16, "070a16b46b4d4144f79bdd9dd04a287c"),
        (40, "dfa66747de9ae63030ca32611497c827"),
        (64, "51f0bebf7e3b9d92fc49741779363cfe"),
    ],
)
def test_aes_cmac_matches_the_nist_sp800_38b_aes128_examples(length: int, mac_hex: str) -> None:
    assert crypto.aes_cmac(NIST_KEY, NIST_MSG[:length]).hex() == mac_hex


def test_aes_cmac_of_the_nist_single_block_message() -> None:
    msg = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    assert crypto.aes_cmac(NIST_KEY, msg) == bytes.fromhex("070a16b46b4d4144f79bdd9dd04a287c")


# --- SCP03 KDF (NIST SP 800-108 counter mode, GlobalPlatform Amendment D layout)


def reference_scp03_derive(key: bytes, constant: int, context: bytes, bits: int) -> bytes:
    """The KDF written out by hand from the SCP03 fixed-data layout."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        block = (
            b"\x00" * 11
            + bytes([constant])  # label
            + b"\x00"  # separator
            + bits.to_bytes(2, "big")  # L
            + bytes([counter])  # i
            + context
        )
        out += crypto.aes_cmac(key, block)
        counter += 1
    return out[: bits // 8]


@pytest.mark.parametrize("bits", [64, 128, 192, 256])
@pytest.mark.parametrize("key", [bytes(range(16)), bytes(range(32))], ids=["aes128", "aes256"])
@pytest.mark.parametrize("constant", [0x00, 0x04, 0x06, 0x07, 0x21])
def test_scp03_derive_matches_an_independent_cmac_computation(
    bits: int, key: bytes, constant: int
) -> None:
    context = bytes.fromhex("0102030405060708a1a2a3a4a5a6a7a8")
    got = crypto.scp03_derive(key, constant, context, bits)
    assert len(got) == bits // 8
    assert got == reference_scp03_derive(key, constant, context, bits)


def test_scp03_derive_256_bit_output_is_two_cmac_blocks_with_counters_one_and_two() -> None:
    key = bytes(16)
    fixed = b"\x00" * 11 + b"\x04" + b"\x00" + (256).to_bytes(2, "big")
    expected = crypto.aes_cmac(key, fixed + b"\x01" + b"ctx") + crypto.aes_cmac(
        key, fixed + b"\x02" + b"ctx"
    )
    assert crypto.scp03_derive(key, 0x04, b"ctx", 256) == expected


def test_scp03_derive_depends_on_constant_context_and_length() -> None:
    key = bytes(range(16))
    base = crypto.scp03_derive(key, 0x04, b"ctx", 128)
    assert crypto.scp03_derive(key, 0x06, b"ctx", 128) != base
    assert crypto.scp03_derive(key, 0x04, b"cty", 128) != base
    # L is part of the input, so a 256-bit output does not start with the 128-bit one
    assert crypto.scp03_derive(key, 0x04, b"ctx", 256)[:16] != base


# --- diversification ---------------------------------------------------------

MASTER = bytes.fromhex("404142434445464748494a4b4c4d4e4f")
SERIAL = bytes.fromhex("0102030405060708")


def test_diversify_is_deterministic() -> None:
    assert crypto.diversify(MASTER, b"ISD-ENC", SERIAL) == crypto.diversify(
        MASTER, b"ISD-ENC", SERIAL
    )


def test_diversify_matches_the_documented_kdf_layout() -> None:
    expected = reference_scp03_derive(MASTER, 0x10, b"ISD-ENC".ljust(16, b"\x00") + SERIAL, 128)
    assert crypto.diversify(MASTER, b"ISD-ENC", SERIAL) == expected


def test_diversify_separates_purposes_serials_and_masters() -> None:
    keys = {
        crypto.diversify(MASTER, b"ISD-ENC", SERIAL),
        crypto.diversify(MASTER, b"ISD-MAC", SERIAL),
        crypto.diversify(MASTER, b"ISD-DEK", SERIAL),
        crypto.diversify(MASTER, b"APP", SERIAL),
        crypto.diversify(MASTER, b"ISD-ENC", SERIAL[:-1] + b"\x09"),
        crypto.diversify(MASTER, b"ISD-ENC", SERIAL + bytes.fromhex("F05450010001")),
        crypto.diversify(bytes(16), b"ISD-ENC", SERIAL),
    }
    assert len(keys) == 7
    assert MASTER not in keys


def test_diversify_keeps_the_master_key_length() -> None:
    assert len(crypto.diversify(MASTER, b"ISD-ENC", SERIAL)) == 16
    master256 = bytes(range(32))
    key = crypto.diversify(master256, b"ISD-ENC", SERIAL)
    assert len(key) == 32
    assert key == reference_scp03_derive(
        master256, 0x10, b"ISD-ENC".ljust(16, b"\x00") + SERIAL, 256
    )


def test_diversify_refuses_a_purpose_longer_than_16_bytes() -> None:
    crypto.diversify(MASTER, b"P" * 16, SERIAL)
    with pytest.raises(ValueError, match="purpose"):
        crypto.diversify(MASTER, b"P" * 17, SERIAL)


# --- key check value ---------------------------------------------------------


def reference_kcv(key: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return (enc.update(b"\x01" * 16) + enc.finalize())[:3]


@pytest.mark.parametrize(
    "key",
    [NIST_KEY, bytes(16), MASTER, bytes(range(24)), bytes(range(32))],
    ids=["nist", "zero", "master", "aes192", "aes256"],
)
def test_key_check_value_is_the_first_three_bytes_of_aes_of_sixteen_0x01(key: bytes) -> None:
    kcv = crypto.key_check_value(key)
    assert len(kcv) == 3
    assert kcv == reference_kcv(key)


def test_key_check_values_differ_between_keys() -> None:
    assert crypto.key_check_value(bytes(16)) != crypto.key_check_value(NIST_KEY)


# --- ISO/IEC 9797-1 method 2 padding -----------------------------------------


@pytest.mark.parametrize("length", [0, 1, 14, 15, 16, 17, 31, 32, 33])
def test_iso9797_m2_padding_round_trips_and_reaches_a_block_boundary(length: int) -> None:
    data = b"\x00" * length  # trailing zeros in the data must survive
    padded = crypto.pad_iso9797_m2(data)
    assert len(padded) % 16 == 0
    assert len(data) < len(padded) <= len(data) + 16
    assert padded[len(data)] == 0x80
    assert set(padded[len(data) + 1 :]) <= {0}
    assert crypto.unpad_iso9797_m2(padded) == data


def test_iso9797_m2_padding_of_a_full_block_adds_a_whole_block() -> None:
    assert crypto.pad_iso9797_m2(b"A" * 16) == b"A" * 16 + b"\x80" + b"\x00" * 15


def test_iso9797_m2_padding_honours_the_block_size_argument() -> None:
    assert crypto.pad_iso9797_m2(b"abc", block=8) == b"abc\x80\x00\x00\x00\x00"


@given(st.binary(max_size=100))
def test_iso9797_m2_padding_round_trips_any_data(data: bytes) -> None:
    assert crypto.unpad_iso9797_m2(crypto.pad_iso9797_m2(data)) == data


@pytest.mark.parametrize(
    "padded",
    [
        b"",
        b"\x00" * 16,  # no 0x80 marker
        b"A" * 16,  # no padding at all
        b"A" * 15 + b"\x01",
        b"A" * 15 + b"\x81",
        b"\x80" + b"\x00" * 16,  # more zeros than one block of padding
        b"A" * 16 + b"\x80" + b"\x00" * 31,
    ],
)
def test_iso9797_m2_unpad_refuses_bad_padding_with_decode_error(padded: bytes) -> None:
    with pytest.raises(DecodeError, match="padding"):
        crypto.unpad_iso9797_m2(padded)


# --- AES-CBC -----------------------------------------------------------------


def test_aes_cbc_matches_the_nist_sp800_38a_first_block() -> None:
    iv = bytes(range(16))
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    ct = crypto.aes_cbc_encrypt(NIST_KEY, iv, pt)
    assert ct == bytes.fromhex("7649abac8119b246cee98e9b12e9197d")


@given(
    key=st.sampled_from([bytes(range(16)), bytes(range(32))]),
    iv=st.binary(min_size=16, max_size=16),
    blocks=st.integers(1, 6),
    seed=st.binary(min_size=1, max_size=1),
)
def test_aes_cbc_round_trips(key: bytes, iv: bytes, blocks: int, seed: bytes) -> None:
    data = (seed * 16 * blocks)[: 16 * blocks]
    ct = crypto.aes_cbc_encrypt(key, iv, data)
    assert len(ct) == len(data)
    assert ct != data
    assert crypto.aes_cbc_decrypt(key, iv, ct) == data


def test_aes_cbc_chains_blocks() -> None:
    iv = bytes(16)
    ct = crypto.aes_cbc_encrypt(NIST_KEY, iv, b"\x00" * 32)
    assert ct[:16] != ct[16:]


@pytest.mark.parametrize("length", [1, 15, 17])
def test_aes_cbc_encrypt_refuses_a_partial_block(length: int) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        crypto.aes_cbc_encrypt(NIST_KEY, bytes(16), b"\x00" * length)


@pytest.mark.parametrize("length", [0, 1, 15, 17])
def test_aes_cbc_decrypt_refuses_empty_or_partial_ciphertext(length: int) -> None:
    with pytest.raises(DecodeError, match="multiple of 16"):
        crypto.aes_cbc_decrypt(NIST_KEY, bytes(16), b"\x00" * length)


# --- small helpers -----------------------------------------------------------


def test_sha256_of_abc_is_the_fips_180_value() -> None:
    assert crypto.sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_constant_time_equal_compares_bytes() -> None:
    assert crypto.constant_time_equal(b"abc", b"abc")
    assert not crypto.constant_time_equal(b"abc", b"abd")
    assert not crypto.constant_time_equal(b"abc", b"ab")


def test_random_bytes_have_the_requested_length_and_vary() -> None:
    assert len(crypto.random_bytes(16)) == 16
    assert crypto.random_bytes(16) != crypto.random_bytes(16)
