"""Cryptographic building blocks shared by card, SAM, terminal and host.

Everything here is a thin, typed wrapper over pyca/cryptography:

* ECDSA over P-256 with SHA-256; signatures travel as 64 raw bytes (r || s),
  public keys as 65-byte uncompressed points.
* AES-CMAC (NIST SP 800-38B) and AES-CBC without padding, plus ISO/IEC 9797-1
  padding method 2.
* Key diversification with the NIST SP 800-108 counter-mode KDF over CMAC.
* GlobalPlatform key check values for AES keys.
"""

from __future__ import annotations

import hmac
import os
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import cmac, hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFCMAC, CounterLocation, Mode

from tallypurse.core.errors import CryptoError, DecodeError

CURVE = ec.SECP256R1()
SIG_LEN = 64
PUB_LEN = 65
_ECDSA = ec.ECDSA(hashes.SHA256())
# RFC 6979 deterministic nonces: no signature depends on a random number generator.
_ECDSA_SIGN = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE)


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def private_key_from_scalar(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    if len(scalar) != 32:
        raise DecodeError("P-256 private scalar must be 32 bytes", 0)
    value = int.from_bytes(scalar, "big")
    if not 0 < value < P256_ORDER:
        raise DecodeError("P-256 private scalar out of range", 0)
    return ec.derive_private_key(value, CURVE)


def private_key_from_seed(seed: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from 40 random bytes (FIPS 186-5 A.2.1 style: reduce, then add one)."""
    if len(seed) < 40:
        raise ValueError("seed must be at least 40 bytes")
    value = int.from_bytes(seed, "big") % (P256_ORDER - 1) + 1
    return ec.derive_private_key(value, CURVE)


def private_scalar(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(32, "big")


def encode_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@lru_cache(maxsize=4096)
def decode_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """Load a 65-byte uncompressed P-256 point; refuse anything else."""
    if len(point) != PUB_LEN or point[0] != 0x04:
        raise DecodeError("public key must be a 65-byte uncompressed P-256 point", 0)
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, point)
    except ValueError:
        raise DecodeError("public key is not a point on P-256", 0) from None


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature as 64 raw bytes r || s."""
    r, s = decode_dss_signature(key.sign(data, _ECDSA_SIGN))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public: ec.EllipticCurvePublicKey | bytes, signature: bytes, data: bytes) -> bool:
    """Verify a raw 64-byte signature; False on any mismatch or malformed input."""
    if len(signature) != SIG_LEN:
        return False
    try:
        pub = decode_public_key(public) if isinstance(public, bytes) else public
    except DecodeError:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if r == 0 or s == 0:
        return False
    try:
        pub.verify(encode_dss_signature(r, s), data, _ECDSA)
    except InvalidSignature:
        return False
    return True


def require_signature(
    public: ec.EllipticCurvePublicKey | bytes, signature: bytes, data: bytes, what: str
) -> None:
    if not verify(public, signature, data):
        raise CryptoError(f"{what}: signature does not verify")


def sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def aes_cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    if len(data) % 16:
        raise ValueError("AES-CBC input must be a multiple of 16 bytes")
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    if len(data) % 16 or not data:
        raise DecodeError("AES-CBC ciphertext must be a non-empty multiple of 16 bytes", 0)
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def aes_ecb_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def pad_iso9797_m2(data: bytes, block: int = 16) -> bytes:
    """ISO/IEC 9797-1 padding method 2: 0x80 then zeros to a block boundary."""
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % block)


def unpad_iso9797_m2(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= 16:
        raise DecodeError("bad ISO 9797-1 method 2 padding", len(stripped))
    return stripped[:-1]


def scp03_derive(key: bytes, constant: int, context: bytes, bits: int) -> bytes:
    """NIST SP 800-108 KDF in counter mode with AES-CMAC, laid out as GlobalPlatform
    SCP03 (Amendment D, 4.1.5) does: label = 11 zero bytes || derivation constant,
    a 0x00 separator, L (bits, 2 bytes), the 1-byte counter, then the context."""
    fixed = b"\x00" * 11 + bytes([constant]) + b"\x00" + bits.to_bytes(2, "big")
    kdf = KBKDFCMAC(
        algorithm=algorithms.AES,
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=1,
        llen=None,
        location=CounterLocation.MiddleFixed,
        break_location=len(fixed),
        label=None,
        context=None,
        fixed=fixed + context,
    )
    return kdf.derive(key)


def diversify(master: bytes, purpose: bytes, serial: bytes) -> bytes:
    """Diversify a per-card key from a master key (SP 800-108 counter mode, CMAC).

    ``purpose`` names the key (for example ``b"ISD-ENC"``), ``serial`` is the
    card serial (and for APP keys the applet AID after it).
    """
    if len(purpose) > 16:
        raise ValueError("purpose too long")
    return scp03_derive(master, 0x10, purpose.ljust(16, b"\x00") + serial, len(master) * 8)


def key_check_value(key: bytes) -> bytes:
    """GlobalPlatform KCV of an AES key: the first 3 bytes of AES(key, 16 x 0x01)."""
    return aes_ecb_block(key, b"\x01" * 16)[:3]
