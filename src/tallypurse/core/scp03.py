"""Secure channel in the style of GlobalPlatform SCP03 (Card Spec v2.3 Amendment D).

Both ends import this module: the card's security domains to unwrap
commands and wrap responses, the host's TSM to wrap commands and unwrap
responses. Implemented: mutual authentication with card and host
cryptograms, C-MAC on every command with MAC chaining, C-DECRYPTION of
command data (AES-CBC, ICV from an encrypted counter), R-MAC of responses,
and AES key wrapping of key material under the static DEK.

Security level bits (EXTERNAL AUTHENTICATE P1): 0x01 C-MAC, 0x02 C-DECRYPTION,
0x10 R-MAC. tallypurse cards require at least C-MAC; key material travels
only with C-DECRYPTION.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tallypurse.core import crypto
from tallypurse.core.apdu import Command
from tallypurse.core.errors import CryptoError, DecodeError

C_MAC = 0x01
C_DECRYPTION = 0x02
R_MAC = 0x10
FULL = C_MAC | C_DECRYPTION | R_MAC

# Derivation constants (Amendment D, table 4-1)
DC_CARD_CRYPTOGRAM = 0x00
DC_HOST_CRYPTOGRAM = 0x01
DC_S_ENC = 0x04
DC_S_MAC = 0x06
DC_S_RMAC = 0x07

SCP_ID = 0x03
SCP_I_PARAM = 0x00  # random card challenge, no R-ENC


@dataclass(frozen=True, slots=True)
class StaticKeys:
    """A security domain's static key set: ENC, MAC and DEK (AES-128), with a version."""

    version: int
    enc: bytes
    mac: bytes
    dek: bytes

    def __repr__(self) -> str:  # never show key material
        return f"StaticKeys(version={self.version})"

    def kcvs(self) -> tuple[bytes, bytes, bytes]:
        return (
            crypto.key_check_value(self.enc),
            crypto.key_check_value(self.mac),
            crypto.key_check_value(self.dek),
        )


@dataclass(slots=True)
class Session:
    """The keys and running state of one secure channel session (one end)."""

    s_enc: bytes
    s_mac: bytes
    s_rmac: bytes
    context: bytes
    key_version: int
    level: int = 0
    mac_chain: bytes = b"\x00" * 16
    counter: int = 0
    authenticated: bool = False
    _last_cmac: bytes = field(default=b"\x00" * 16)

    def __repr__(self) -> str:
        return f"Session(level={self.level:#x}, authenticated={self.authenticated})"

    @classmethod
    def derive(cls, keys: StaticKeys, host_challenge: bytes, card_challenge: bytes) -> Session:
        if len(host_challenge) != 8 or len(card_challenge) != 8:
            raise DecodeError("challenges must be 8 bytes", 0)
        ctx = host_challenge + card_challenge
        return cls(
            s_enc=crypto.scp03_derive(keys.enc, DC_S_ENC, ctx, 128),
            s_mac=crypto.scp03_derive(keys.mac, DC_S_MAC, ctx, 128),
            s_rmac=crypto.scp03_derive(keys.mac, DC_S_RMAC, ctx, 128),
            context=ctx,
            key_version=keys.version,
        )

    def card_cryptogram(self) -> bytes:
        return crypto.scp03_derive(self.s_mac, DC_CARD_CRYPTOGRAM, self.context, 64)

    def host_cryptogram(self) -> bytes:
        return crypto.scp03_derive(self.s_mac, DC_HOST_CRYPTOGRAM, self.context, 64)

    # --- C-MAC ------------------------------------------------------------------
    def _cmac_input(self, cla: int, ins: int, p1: int, p2: int, body: bytes) -> bytes:
        lc = len(body) + 8
        lc_bytes = bytes([lc]) if lc <= 255 else b"\x00" + lc.to_bytes(2, "big")
        return self.mac_chain + bytes([cla, ins, p1, p2]) + lc_bytes + body

    def _icv(self, *, response: bool) -> bytes:
        block = self.counter.to_bytes(16, "big")
        if response:
            block = b"\x80" + block[1:]
        return crypto.aes_ecb_block(self.s_enc, block)

    # --- host side ------------------------------------------------------------------
    def wrap(self, cmd: Command) -> Command:
        """Host: encrypt (when C-DECRYPTION is on and there is data) and MAC a command."""
        data = cmd.data
        if self.authenticated and self.level & C_DECRYPTION:
            self.counter += 1
            if data:
                data = crypto.aes_cbc_encrypt(
                    self.s_enc, self._icv(response=False), crypto.pad_iso9797_m2(data)
                )
        cla = cmd.cla | 0x04
        full = crypto.aes_cmac(self.s_mac, self._cmac_input(cla, cmd.ins, cmd.p1, cmd.p2, data))
        self.mac_chain = full
        return Command(cla, cmd.ins, cmd.p1, cmd.p2, data + full[:8], cmd.le)

    def unwrap_response(self, data: bytes, sw: int) -> bytes:
        """Host: check the R-MAC of a response when R-MAC is on."""
        if not (self.authenticated and self.level & R_MAC):
            return data
        if len(data) < 8:
            raise CryptoError("response lacks its R-MAC")
        body, mac = data[:-8], data[-8:]
        expected = crypto.aes_cmac(self.s_rmac, self.mac_chain + body + sw.to_bytes(2, "big"))[:8]
        if not crypto.constant_time_equal(expected, mac):
            raise CryptoError("response R-MAC does not verify")
        return body

    # --- card side --------------------------------------------------------------------
    def unwrap(self, cmd: Command) -> bytes:
        """Card: verify the C-MAC (and decrypt) a command; returns the plain data.

        Raises CryptoError on a bad MAC; the caller must then close the session.
        """
        if len(cmd.data) < 8:
            raise CryptoError("command lacks its C-MAC")
        body, mac = cmd.data[:-8], cmd.data[-8:]
        full = crypto.aes_cmac(self.s_mac, self._cmac_input(cmd.cla, cmd.ins, cmd.p1, cmd.p2, body))
        if not crypto.constant_time_equal(full[:8], mac):
            raise CryptoError("command C-MAC does not verify")
        self.mac_chain = full
        if self.authenticated and self.level & C_DECRYPTION:
            self.counter += 1
            if body:
                try:
                    body = crypto.unpad_iso9797_m2(
                        crypto.aes_cbc_decrypt(self.s_enc, self._icv(response=False), body)
                    )
                except DecodeError:
                    raise CryptoError("command data does not decrypt") from None
        return body

    def wrap_response(self, data: bytes, sw: int) -> bytes:
        """Card: append the R-MAC to response data when R-MAC is on."""
        if not (self.authenticated and self.level & R_MAC):
            return data
        return (
            data + crypto.aes_cmac(self.s_rmac, self.mac_chain + data + sw.to_bytes(2, "big"))[:8]
        )


# The well-known key set a blank card leaves the factory with (GlobalPlatform's
# test keys 40..4F, key version 0xFF). Personalisation replaces it first.
TRANSPORT_KEY = bytes(range(0x40, 0x50))
TRANSPORT_KEYS = StaticKeys(0xFF, TRANSPORT_KEY, TRANSPORT_KEY, TRANSPORT_KEY)


def wrap_key(dek: bytes, key: bytes) -> bytes:
    """Encrypt a 16-byte key under a DEK (AES-CBC, zero ICV, one block)."""
    if len(key) != 16:
        raise ValueError("only AES-128 keys are wrapped")
    return crypto.aes_cbc_encrypt(dek, b"\x00" * 16, key)


def unwrap_key(dek: bytes, wrapped: bytes) -> bytes:
    if len(wrapped) != 16:
        raise DecodeError("a wrapped AES-128 key is 16 bytes", 0)
    return crypto.aes_cbc_decrypt(dek, b"\x00" * 16, wrapped)


KEY_TYPE_AES = 0x88


def encode_key_set(dek: bytes, new: StaticKeys) -> bytes:
    """PUT KEY data: new KVN, then ENC, MAC, DEK blocks: type 0x88, length 0x11,
    0x10 + wrapped key, KCV length 0x03 + KCV."""
    out = bytearray([new.version])
    for key in (new.enc, new.mac, new.dek):
        out += bytes([KEY_TYPE_AES, 0x11, 0x10]) + wrap_key(dek, key)
        out += b"\x03" + crypto.key_check_value(key)
    return bytes(out)


def decode_key_set(dek: bytes, data: bytes) -> StaticKeys:
    """Parse and unwrap PUT KEY data, checking every key's KCV."""
    if len(data) != 1 + 3 * 23:
        raise DecodeError("PUT KEY data must hold a version and three AES key blocks", 0)
    version = data[0]
    if version in (0x00, 0xFF):
        raise DecodeError("key version 0x00 and 0xFF are reserved", 0)
    keys = []
    for i in range(3):
        blk = data[1 + 23 * i : 1 + 23 * (i + 1)]
        if blk[0] != KEY_TYPE_AES or blk[1] != 0x11 or blk[2] != 0x10 or blk[19] != 0x03:
            raise DecodeError("malformed key block", 1 + 23 * i)
        key = unwrap_key(dek, blk[3:19])
        if not crypto.constant_time_equal(crypto.key_check_value(key), blk[20:23]):
            raise CryptoError("key check value does not match")
        keys.append(key)
    return StaticKeys(version, keys[0], keys[1], keys[2])
