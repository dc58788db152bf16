#!/usr/bin/env python3
"""Generate the card-protocol test vectors under tests/vectors/ (see docs/protocol.md).

Every input is fixed in this file: P-256 private scalars, AES keys, challenges,
times and the card's random numbers (a SHAKE-256 stream, see ``VectorRandom``).
ECDSA signatures are deterministic (RFC 6979, ``crypto.sign``), so running the
script twice gives byte-identical files.

    .venv/bin/python tools/make_vectors.py           # (re)write tests/vectors/*.json
    .venv/bin/python tools/make_vectors.py --check   # exit 1 if a file would change

The vectors are generated once and checked in; tests/core/test_protocol_vectors.py
replays them against the implementation. Regenerate only when the protocol changes
on purpose, and say so in docs/protocol.md.

Where the generator can compute a value without the implementation (the KDF's
PRF input blocks, the C-MAC input, the write-back IV and MAC input), it does so
and asserts that the implementation agrees, so the files also check the
layouts the specification describes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import re
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from tallypurse.card.card import Card
from tallypurse.core import apdu, cert, crypto, messages, scp03, tlv
from tallypurse.core.apdu import Command, Response
from tallypurse.core.cert import Certificate, KeyRef, KeySigner
from tallypurse.core.messages import (
    CancelOrder,
    CardEvent,
    CreditRecord,
    DebitOrder,
    DebtOutcome,
    DebtSlot,
    LoadAuthorisation,
    OnlineRequest,
    WriteBackHeader,
    WriteBackReceipt,
)
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    CVR_DEBT_OUTSTANDING,
    CVR_LOW_BALANCE,
    CVR_SPLIT,
    ISD_AID,
    OPERATOR_SD_AID,
    PURSE_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    CertRole,
    DebtState,
    EventKind,
    Ins,
    TxType,
    WriteBackAction,
)
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm import keys as tsm_keys
from tallypurse.host.tsm.channel import lv
from tallypurse.host.tsm.personalise import PursePolicy, personalise
from tallypurse.keystore.base import (
    HOST_LIST,
    HOST_LOAD,
    ISSUER_ROOT,
    MASTER_APP,
    MASTER_ISD,
    MASTER_SD,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "vectors"

# --- Fixed inputs ------------------------------------------------------------------------
# P-256 private scalars (SHA-256 of "tallypurse vectors <name>", written out).
SCALARS = {
    "issuer-root": "4ed8ba71ca607a456b5ba5939793f21e7552162e5dc66aefcc010843e1c5b85c",
    "host-list": "565a2d30ea5bc0fce3f7d223904a9337f473c70860f0e140737d840644eab0e5",
    "host-load": "0876089356c851f1ef4b0bf2a06c5bc506f346d06e9ef26c20d63927812e8354",
    "terminal": "3f6027980b34e1e08a382ff19afec840315e5ae40e5d74da2727420541bfa0e7",
    "card": "694c949b9985fd7796f45af9c214208a830bc5312c88e47b008852c99e366710",
}
# AES-128 master keys and a stand-alone APP key.
AES = {
    "master-isd": "685c75f87b3741cc24a8874d35746420",
    "master-sd-operator": "ec648634f4eded6a343fa1599aae3d0c",
    "master-app": "8f6dddedde3d525d29f8601af69107b2",
    "app-key": "edb659fab04f168e5d2798b0a37f87c4",
}
KEY_VERSION = 1
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
YEAR = 365 * 24 * 3600
SERIAL = bytes.fromhex("1000000000000001")
TERMINAL_ID = b"TERM0001"
EUR = 978
CARD_RANDOM_LABEL = b"tallypurse/vectors/card-random"
HOST_RANDOM_LABEL = b"tallypurse/vectors/host-random"


def h(b: bytes) -> str:
    return bytes(b).hex()


def ec_key(name: str) -> Any:
    return crypto.private_key_from_scalar(bytes.fromhex(SCALARS[name]))


def pub(name: str) -> bytes:
    return crypto.encode_public_key(ec_key(name).public_key())


def aes(name: str) -> bytes:
    return bytes.fromhex(AES[name])


class VectorRandom:
    """Deterministic random numbers: call k (0-based) of ``random(n)`` returns the
    first n bytes of SHAKE-256(label || k as 4 bytes big-endian)."""

    def __init__(self, label: bytes) -> None:
        self.label = label
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self.label + self.calls.to_bytes(4, "big")).digest(n)
        self.calls += 1
        return out


# --- Independent re-statements of the layouts the spec describes ----------------------------


def kdf_blocks(constant: int, context: bytes, bits: int) -> list[bytes]:
    """PRF inputs of the SP 800-108 counter-mode KDF as docs/protocol.md §5.2 lays it out."""
    n = (bits + 127) // 128
    return [
        b"\x00" * 11 + bytes([constant]) + b"\x00" + bits.to_bytes(2, "big") + bytes([i]) + context
        for i in range(1, n + 1)
    ]


def kdf_spec(key: bytes, constant: int, context: bytes, bits: int) -> bytes:
    out = b"".join(crypto.aes_cmac(key, blk) for blk in kdf_blocks(constant, context, bits))
    return out[: bits // 8]


# --- Files ----------------------------------------------------------------------------------


def tlv_vectors() -> dict[str, Any]:
    cases = [
        (0x5A, b"\x01\x02"),
        (0x84, bytes.fromhex("F05450010001")),
        (0xC6, b""),
        (0x6F, tlv.encode(0x84, PURSE_AID) + tlv.encode(0xA5, b"")),
        (0x9F70, b"\x07"),
        (0x5F20, SERIAL),
        (0x7F21, b"\x00" * 3),
        (0xDF8101, b"\xaa"),
        (0xC1, b"\x11" * 0x7F),
        (0xC1, b"\x22" * 0x80),
        (0xC1, b"\x33" * 0xFF),
        (0xC1, b"\x44" * 0x100),
    ]
    encode = []
    for tag, value in cases:
        raw = tlv.encode(tag, value)
        assert tlv.decode(raw) == [tlv.Tlv(tag, value)]
        encode.append({"tag": f"{tag:X}", "value": h(value), "encoded": h(raw),
                       "constructed": tlv.Tlv(tag, value).constructed})
    invalid = [
        ("00", "tag byte 00 (padding) is refused"),
        ("ff01", "tag byte FF is refused"),
        ("5a", "missing length"),
        ("5a0301", "value runs past the end"),
        ("5a8101", "long form for a length below 0x80"),
        ("5a820001aa", "long form not in shortest form"),
        ("5a84000000010aa", "unsupported length byte 84"),
        ("5a80", "indefinite length refused"),
        ("1f", "truncated tag"),
        ("df818101", "tag longer than three bytes"),
    ]
    bad = []
    for raw, why in invalid:
        data = bytes.fromhex(raw if len(raw) % 2 == 0 else raw + "0")
        try:
            tlv.decode(data)
        except tlv.DecodeError:
            pass
        else:  # pragma: no cover - generator self-check
            raise AssertionError(f"TLV {raw} decoded")
        bad.append({"encoded": h(data), "reason": why})
    return {
        "section": "1.2 BER-TLV",
        "encode": encode,
        "invalid": bad,
    }


def apdu_vectors() -> dict[str, Any]:
    cases = [
        ("case 1", Command(0x80, 0xF0, 0x80, 0x0F)),
        ("case 2 short, Le 00 = 256", Command(0x80, 0xCA, 0x01, 0x02, b"", 0)),
        ("case 2 short, Le 10", Command(0x00, 0xB2, 0x01, 0x04, b"", 0x10)),
        ("case 3 short", Command(0x80, 0x50, 0x01, 0x00, bytes(range(8)))),
        ("case 4 short (SELECT purse)", Command(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 0)),
        ("case 2 extended", Command(0x80, 0xCA, 0x01, 0x03, b"", 0x1234)),
        ("case 3 extended", Command(0x84, 0xE2, 0x00, 0x00, b"\x5a" * 300)),
        ("case 4 extended, Le 0000 = 65536", Command(0x84, 0xE2, 0x80, 0x01, b"\x5a" * 256,
                                                     65536)),
    ]
    out = []
    for name, cmd in cases:
        raw = cmd.to_bytes()
        parsed = Command.parse(raw)
        out.append({
            "name": name, "cla": cmd.cla, "ins": cmd.ins, "p1": cmd.p1, "p2": cmd.p2,
            "data": h(cmd.data), "le": cmd.le, "encoded": h(raw), "parsed_le": parsed.le,
        })
    invalid = [
        ("80ca01", "shorter than a header"),
        ("80ca010203aabb", "Lc does not match"),
        ("80ca01020000", "truncated extended length"),
        ("80ca010200000001", "extended Lc of zero"),
        ("80ca01020000030102", "extended Lc does not match"),
    ]
    bad = []
    for raw, why in invalid:
        try:
            Command.parse(bytes.fromhex(raw))
        except apdu.DecodeError:
            pass
        else:  # pragma: no cover
            raise AssertionError(raw)
        bad.append({"encoded": raw, "reason": why, "card_answers": "6700"})
    responses = [Response(b"", 0x9000), Response(b"\x01\x02\x03", 0x9000),
                 Response(b"", 0x6A82), Response(b"\x00", 0x9401)]
    return {
        "section": "1.3 APDUs",
        "commands": out,
        "invalid_commands": bad,
        "responses": [{"data": h(r.data), "sw": f"{r.sw:04X}", "encoded": h(r.to_bytes())}
                      for r in responses],
    }


def kdf_vectors() -> dict[str, Any]:
    derive = []
    inputs = [
        (aes("master-isd"), 0x04, bytes.fromhex("0102030405060708") + bytes.fromhex(
            "a1a2a3a4a5a6a7a8"), 128, "S-ENC from host || card challenge"),
        (aes("master-isd"), 0x00, bytes.fromhex("0102030405060708a1a2a3a4a5a6a7a8"), 64,
         "card cryptogram (64 bits)"),
        (aes("master-isd"), 0x10, b"ISD-ENC".ljust(16, b"\0") + SERIAL, 128,
         "diversify ISD-ENC"),
        (aes("app-key"), 0x21, b"tallypurse-app", 128, "APP sub-key ENC"),
        (aes("master-app"), 0x10, b"x" * 20, 256, "two PRF blocks (counter 1 and 2)"),
    ]
    for key, constant, context, bits, note in inputs:
        out = crypto.scp03_derive(key, constant, context, bits)
        assert out == kdf_spec(key, constant, context, bits), note
        derive.append({
            "note": note, "key": h(key), "constant": constant, "context": h(context),
            "bits": bits, "prf_inputs": [h(b) for b in kdf_blocks(constant, context, bits)],
            "output": h(out),
        })
    diversify = []
    for master_name, purpose, context in [
        ("master-isd", b"ISD-ENC", SERIAL),
        ("master-isd", b"ISD-MAC", SERIAL),
        ("master-isd", b"ISD-DEK", SERIAL),
        ("master-sd-operator", b"SD-ENC", SERIAL + OPERATOR_SD_AID),
        ("master-sd-operator", b"SD-MAC", SERIAL + OPERATOR_SD_AID),
        ("master-sd-operator", b"SD-DEK", SERIAL + OPERATOR_SD_AID),
        ("master-app", b"APP", SERIAL + PURSE_AID),
    ]:
        master = aes(master_name)
        out = crypto.diversify(master, purpose, context)
        assert out == kdf_spec(master, 0x10, purpose.ljust(16, b"\0") + context, 128)
        diversify.append({
            "master_name": master_name, "master": h(master), "purpose": purpose.decode(),
            "context": h(context), "prf_input": h(kdf_blocks(0x10, purpose.ljust(16, b"\0")
                                                            + context, 128)[0]),
            "output": h(out), "kcv": h(crypto.key_check_value(out)),
        })
    kcv = []
    for key in [scp03.TRANSPORT_KEY, aes("master-isd"), b"\x00" * 16]:
        kcv.append({"key": h(key), "kcv": h(crypto.key_check_value(key))})
    k_enc, k_mac = messages.app_subkeys(aes("app-key"))
    return {
        "section": "5 Key hierarchy",
        "scp03_derive": derive,
        "diversify": diversify,
        "kcv": kcv,
        "app_subkeys": [{"app_key": h(aes("app-key")), "context": h(b"tallypurse-app"),
                         "enc_constant": messages.APP_KEY_ENC, "enc": h(k_enc),
                         "mac_constant": messages.APP_KEY_MAC, "mac": h(k_mac)}],
    }


def _keys_json(k: scp03.StaticKeys) -> dict[str, Any]:
    return {"version": k.version, "enc": h(k.enc), "mac": h(k.mac), "dek": h(k.dek),
            "kcvs": [h(x) for x in k.kcvs()]}


def _cmd_json(c: Command) -> dict[str, Any]:
    return {"cla": c.cla, "ins": c.ins, "p1": c.p1, "p2": c.p2, "data": h(c.data), "le": c.le}


def _channel(keys: scp03.StaticKeys, host_challenge: bytes, card_challenge: bytes, level: int,
             commands: list[tuple[str, Command, bytes, int]]) -> dict[str, Any]:
    host = scp03.Session.derive(keys, host_challenge, card_challenge)
    card = scp03.Session.derive(keys, host_challenge, card_challenge)
    card_crypto = host.card_cryptogram()
    assert card_crypto == kdf_spec(host.s_mac, 0x00, host_challenge + card_challenge, 64)
    init_resp = SERIAL + b"\x00\x00" + bytes([keys.version, 0x03, 0x00]) + card_challenge \
        + card_crypto
    ext = host.wrap(Command(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, level, 0x00,
                            host.host_cryptogram()))
    assert card.unwrap(ext) == card.host_cryptogram()
    host.authenticated = card.authenticated = True
    host.level = card.level = level
    steps = []
    for name, cmd, resp_data, sw in commands:
        chain_before = host.mac_chain
        counter_before = host.counter
        wrapped = host.wrap(cmd)
        # restate the spec: ICV, padding, encryption, C-MAC input
        data = cmd.data
        icv = b""
        if level & scp03.C_DECRYPTION:
            icv = crypto.aes_ecb_block(host.s_enc, (counter_before + 1).to_bytes(16, "big"))
            if data:
                data = crypto.aes_cbc_encrypt(host.s_enc, icv, crypto.pad_iso9797_m2(data))
        lc = len(data) + 8
        lc_b = bytes([lc]) if lc <= 255 else b"\x00" + lc.to_bytes(2, "big")
        mac_input = chain_before + bytes([cmd.cla | 4, cmd.ins, cmd.p1, cmd.p2]) + lc_b + data
        full = crypto.aes_cmac(host.s_mac, mac_input)
        assert wrapped.data == data + full[:8] and host.mac_chain == full, name
        assert card.unwrap(wrapped) == cmd.data, name
        resp_wrapped = card.wrap_response(resp_data, sw)
        assert host.unwrap_response(resp_wrapped, sw) == resp_data
        step = {
            "name": name, "plain": _cmd_json(cmd), "counter": host.counter,
            "icv": h(icv), "encrypted_data": h(data) if level & scp03.C_DECRYPTION else None,
            "cmac_input": h(mac_input), "cmac": h(full), "wrapped": h(wrapped.to_bytes()),
            "response": {"data": h(resp_data), "sw": f"{sw:04X}"},
        }
        if level & scp03.R_MAC:
            step["response"]["rmac_input"] = h(full + resp_data + sw.to_bytes(2, "big"))
            step["response"]["wrapped"] = h(resp_wrapped)
        steps.append(step)
    return {
        "static_keys": _keys_json(keys),
        "host_challenge": h(host_challenge), "card_challenge": h(card_challenge),
        "session": {"s_enc": h(host.s_enc), "s_mac": h(host.s_mac), "s_rmac": h(host.s_rmac)},
        "card_cryptogram": h(card_crypto), "host_cryptogram": h(host.host_cryptogram()),
        "initialize_update": {
            "command": h(Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, keys.version, 0,
                                 host_challenge, 0).to_bytes()),
            "response": h(init_resp) + "9000",
        },
        "level": level,
        "external_authenticate": h(ext.to_bytes()),
        "commands": steps,
    }


def scp03_vectors() -> dict[str, Any]:
    isd = tsm_keys_from_masters()["isd"]
    sd = tsm_keys_from_masters()["sd"]
    put_key_data = scp03.encode_key_set(scp03.TRANSPORT_KEY, isd)
    isd_status = tlv.encode(0xE3, tlv.encode_many([
        (0x4F, ISD_AID), (0x9F70, b"\x07"), (0xC5, b"\x80\x00\x00"),
        (0xC4, SD_PACKAGE_AID), (0xCC, ISD_AID)]))
    sd_params = tlv.encode(0xC9, tlv.encode(0xDA, scp03.encode_key_set(isd.dek, sd)))
    install = lv(SD_PACKAGE_AID, SD_MODULE_AID,
                 OPERATOR_SD_AID, b"\x80", sd_params, b"")
    full = _channel(
        scp03.TRANSPORT_KEYS, bytes.fromhex("0011223344556677"),
        bytes.fromhex("8899aabbccddeeff"), scp03.FULL,
        [
            ("PUT KEY (replace transport keys)",
             Command(0x80, Ins.PUT_KEY, 0xFF, 0x81, put_key_data, 0),
             bytes([isd.version]) + b"".join(isd.kcvs()), 0x9000),
            ("SET STATUS card INITIALIZED (no data: counter still increments)",
             Command(0x80, Ins.SET_STATUS, 0x80, 0x07), b"", 0x9000),
            ("GET STATUS ISD", Command(0x80, Ins.GET_STATUS, 0x80, 0x02,
                                       tlv.encode(0x4F, b""), 0),
             isd_status, 0x9000),
        ],
    )
    mac_only = _channel(
        isd, bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718"),
        scp03.C_MAC,
        [
            ("INSTALL [for install] without C-DECRYPTION (the card refuses a security domain)",
             Command(0x80, Ins.INSTALL, 0x0C, 0x00, install, 0), b"", 0x6982),
            ("DELETE", Command(0x80, Ins.DELETE, 0x00, 0x00, tlv.encode(0x4F, PURSE_AID), 0),
             b"\x00", 0x9000),
        ],
    )
    wrapped = [
        {"dek": h(scp03.TRANSPORT_KEY), "key": h(k), "wrapped": h(scp03.wrap_key(
            scp03.TRANSPORT_KEY, k))} for k in (isd.enc, isd.mac, isd.dek)
    ]
    return {
        "section": "6 Secure channel",
        "transport_keys": _keys_json(scp03.TRANSPORT_KEYS),
        "channels": [full, mac_only],
        "key_wrap": wrapped,
        "put_key": {"dek": h(scp03.TRANSPORT_KEY), "new_keys": _keys_json(isd),
                    "data": h(put_key_data),
                    "response": h(bytes([isd.version]) + b"".join(isd.kcvs()))},
        "install_sd_params": {"dek": h(isd.dek), "initial_keys": _keys_json(sd),
                              "install_data": h(install)},
    }


def tsm_keys_from_masters() -> dict[str, Any]:
    ks = FixedKeyStore()
    return {
        "isd": tsm_keys.isd_keys(ks, SERIAL),  # type: ignore[arg-type]
        "sd": tsm_keys.sd_keys(ks, SERIAL),  # type: ignore[arg-type]
        "app": tsm_keys.app_key(ks, SERIAL),  # type: ignore[arg-type]
    }


class FixedKeyStore:
    """Just enough of the KeyStore protocol for personalisation, over the fixed keys."""

    _ec: ClassVar[dict[str, str]] = {
        ISSUER_ROOT: "issuer-root", HOST_LIST: "host-list", HOST_LOAD: "host-load"}
    _aes: ClassVar[dict[str, str]] = {
        MASTER_ISD: "master-isd", MASTER_SD: "master-sd-operator", MASTER_APP: "master-app"}

    def current(self, name: str) -> KeyRef:
        return KeyRef(name, KEY_VERSION)

    def public_key(self, ref: KeyRef) -> bytes:
        return pub(self._ec[ref.name])

    def sign(self, ref: KeyRef, data: bytes) -> bytes:
        return crypto.sign(ec_key(self._ec[ref.name]), data)

    def diversify(self, master: KeyRef, purpose: bytes, serial: bytes) -> bytes:
        return crypto.diversify(aes(self._aes[master.name]), purpose, serial)

    def certificate(self, ref: KeyRef) -> Certificate:
        return certificates()[ref.name]

    def issue_certificate(self, *, holder: bytes, role: CertRole, public_key: bytes,
                          not_before: int, not_after: int) -> Certificate:
        return cert.issue(KeySigner(ec_key("issuer-root")), authority=KeyRef(ISSUER_ROOT, 1),
                          holder=holder, role=role, public_key=public_key,
                          not_before=not_before, not_after=not_after)


def certificates() -> dict[str, Certificate]:
    root_ref = KeyRef(ISSUER_ROOT, KEY_VERSION)
    signer = KeySigner(ec_key("issuer-root"))
    out = {
        ISSUER_ROOT: cert.issue(signer, authority=root_ref, holder=root_ref.encode(),
                                role=CertRole.ROOT, public_key=pub("issuer-root"),
                                not_before=NOW, not_after=NOW + 20 * YEAR),
        HOST_LOAD: cert.issue(signer, authority=root_ref, holder=b"host-load/1",
                              role=CertRole.HOST_LOAD, public_key=pub("host-load"),
                              not_before=NOW, not_after=NOW + 5 * YEAR),
        HOST_LIST: cert.issue(signer, authority=root_ref, holder=b"host-list/1",
                              role=CertRole.HOST_LIST, public_key=pub("host-list"),
                              not_before=NOW, not_after=NOW + 5 * YEAR),
        "terminal": cert.issue(signer, authority=root_ref, holder=TERMINAL_ID,
                               role=CertRole.TERMINAL, public_key=pub("terminal"),
                               not_before=NOW, not_after=NOW + 3 * YEAR),
        "card": cert.issue(signer, authority=root_ref, holder=SERIAL, role=CertRole.CARD,
                           public_key=pub("card"), not_before=NOW, not_after=NOW + 5 * YEAR),
    }
    return out


def certificate_vectors() -> dict[str, Any]:
    keys = {ISSUER_ROOT: "issuer-root", HOST_LOAD: "host-load", HOST_LIST: "host-list",
            "terminal": "terminal", "card": "card"}
    out = []
    for name, c in certificates().items():
        assert crypto.sign(ec_key("issuer-root"), c.body) == c.signature
        out.append({
            "name": name,
            "subject_scalar": SCALARS[keys[name]],
            "fields": {"authority": str(c.authority), "holder": h(c.holder),
                       "role": int(c.role), "role_name": c.role.name,
                       "public_key": h(c.public_key), "not_before": c.not_before,
                       "not_after": c.not_after},
            "body": h(c.body), "signature": h(c.signature), "encoded": h(c.encode()),
            "fingerprint": h(c.fingerprint),
        })
    return {
        "section": "9 Certificates",
        "issuer_root": {"ref": f"{ISSUER_ROOT}/{KEY_VERSION}", "scalar": SCALARS["issuer-root"],
                        "public_key": h(pub("issuer-root"))},
        "certificates": out,
        "verify_at": NOW + 3600,
    }


_FMT = re.compile(r"(\d*)([a-zA-Z])")


def layout(cls: type) -> list[dict[str, Any]]:
    out = []
    off = 0
    names = [f.name for f in dataclasses.fields(cls)]
    for (n, c), name in zip(_FMT.findall(cls.FORMAT[1:]), names, strict=True):  # type: ignore[attr-defined]
        size = int(n) if c == "s" else struct.calcsize(">" + c)
        out.append({"name": name, "offset": off, "size": size,
                    "type": "bytes" if c == "s" else "uint"})
        off += size
    return out


def _fields(obj: Any) -> dict[str, Any]:
    return {k: (h(v) if isinstance(v, bytes) else v) for k, v in dataclasses.asdict(obj).items()}


def message_vectors() -> dict[str, Any]:
    cc, tc = bytes.fromhex("c1c2c3c4c5c6c7c8"), bytes.fromhex("7465726d6368616c")
    t = NOW + 7200
    credit = CreditRecord(SERIAL, 1, 2, 2_000, 5_000, 4, TxType.CANTEEN.bit | TxType.TRANSIT.bit,
                          3, 0, NOW, NOW + YEAR, EUR)
    samples: list[tuple[str, Any, str | None]] = [
        ("DebitOrder", DebitOrder(SERIAL, 1, 1250, 0, EUR, TxType.CANTEEN, TERMINAL_ID, 1, t,
                                  cc, tc), "terminal"),
        ("DebitOrder (split)", DebitOrder(SERIAL, 2, 3750, 500, EUR, TxType.CANTEEN,
                                          TERMINAL_ID, 2, t, cc, tc), "terminal"),
        ("CancelOrder", CancelOrder(SERIAL, 2, 1250, 0, EUR, TxType.CANTEEN, TERMINAL_ID, 3,
                                    t + 30, cc, tc), "terminal"),
        ("CardEvent (DEBIT)", CardEvent(EventKind.DEBIT, SERIAL, 2, 1, 1250, 0, EUR,
                                        TxType.CANTEEN, 5000, 3750, TERMINAL_ID, 1, t, cc, tc,
                                        0xFF, 0), "card"),
        ("CardEvent (split DEBIT)", CardEvent(EventKind.DEBIT, SERIAL, 3, 1, 3750, 500, EUR,
                                              TxType.CANTEEN, 3750, 0, TERMINAL_ID, 2, t, cc,
                                              tc, 0, CVR_SPLIT | CVR_DEBT_OUTSTANDING
                                              | CVR_LOW_BALANCE), "card"),
        ("CardEvent (CANCEL)", CardEvent(EventKind.CANCEL, SERIAL, 3, 1, 1250, 0, EUR,
                                         TxType.CANTEEN, 3750, 5000, TERMINAL_ID, 3, t + 30,
                                         cc, tc, 0xFF, 0), "card"),
        ("CardEvent (LOAD)", CardEvent(EventKind.LOAD, SERIAL, 1, 1, 5000, 0, EUR, 0, 0, 5000,
                                       b"\0" * 8, 0, NOW + 3600, cc, b"LOAD0001", 0xFF, 0),
         "card"),
        ("LoadAuthorisation", LoadAuthorisation(SERIAL, 0, 5000, EUR, cc, b"LOAD0001",
                                                NOW + 3600), "host-load"),
        ("OnlineRequest", OnlineRequest(SERIAL, 1, 20_000, EUR, TxType.RETAIL, TERMINAL_ID, t,
                                        bytes(range(16))), "card"),
        ("CreditRecord", credit, "host-list"),
        ("WriteBackHeader", WriteBackHeader(SERIAL, 1, WriteBackAction.SETTLE_DEBT), None),
        ("DebtOutcome", DebtOutcome(3, 500), None),
        ("WriteBackReceipt", WriteBackReceipt(SERIAL, 1, WriteBackAction.SETTLE_DEBT, 0, 3, 0),
         None),
    ]
    out = []
    for name, obj, key in samples:
        raw = obj.to_bytes()
        entry: dict[str, Any] = {
            "name": name, "layout_name": type(obj).__name__, "msg_type": type(obj).MSG,
            "size": len(raw), "layout": layout(type(obj)), "fields": _fields(obj),
            "encoded": h(raw),
        }
        if key is not None:
            sd = obj.signed_data()
            assert sd == b"TP\x01" + bytes([type(obj).MSG]) + raw
            entry.update(signed_data=h(sd), signer=key, signer_scalar=SCALARS[key],
                         signer_public_key=h(pub(key)), signature=h(crypto.sign(ec_key(key),
                                                                                sd)))
        out.append(entry)
    slots = [DebtSlot(DebtState.FREE, 0, 0), DebtSlot(DebtState.PENDING, 3, 500),
             DebtSlot(DebtState.FAILED, 7, 1234)]
    return {
        "section": "11 Signed and MACed data",
        "domain_prefix": "TP || 01 || msg_type",
        "messages": out,
        "debt_slots": [{"fields": {"state": s.state, "ref": s.ref, "amount": s.amount},
                        "encoded": h(s.to_bytes()), "layout": layout(DebtSlot)} for s in slots],
    }


def writeback_vectors() -> dict[str, Any]:
    key = aes("app-key")
    k_enc, k_mac = messages.app_subkeys(key)
    credit = CreditRecord(SERIAL, 2, 1, 5_000, 10_000, 4, 0x7F, 5, 500, NOW, NOW + YEAR, EUR)
    credit_payload = credit.to_bytes() + crypto.sign(ec_key("host-list"), credit.signed_data())
    cases = [
        (WriteBackHeader(SERIAL, 1, WriteBackAction.SETTLE_DEBT), DebtOutcome(3, 500).to_bytes()),
        (WriteBackHeader(SERIAL, 2, WriteBackAction.FAIL_DEBT), DebtOutcome(4, 250).to_bytes()),
        (WriteBackHeader(SERIAL, 3, WriteBackAction.CREDIT_RECORD), credit_payload),
        (WriteBackHeader(SERIAL, 4, WriteBackAction.BLOCK), b""),
        (WriteBackHeader(SERIAL, 5, WriteBackAction.UNBLOCK), b""),
    ]
    out = []
    for header, payload in cases:
        sealed = messages.seal_writeback(key, header, payload)
        iv_in = (SERIAL + header.seq.to_bytes(4, "big")).ljust(16, b"\0")
        iv = crypto.aes_ecb_block(k_enc, iv_in)
        padded = crypto.pad_iso9797_m2(payload)
        ct = crypto.aes_cbc_encrypt(k_enc, iv, padded)
        mac_in = b"TP\x01\x08" + header.to_bytes() + ct
        mac = crypto.aes_cmac(k_mac, mac_in)
        assert sealed == header.to_bytes() + ct + mac
        out.append({
            "action": WriteBackAction(header.action).name, "header": _fields(header),
            "header_encoded": h(header.to_bytes()), "payload": h(payload),
            "iv_input": h(iv_in), "iv": h(iv), "padded_payload": h(padded),
            "ciphertext": h(ct), "mac_input": h(mac_in), "mac": h(mac), "sealed": h(sealed),
        })
    receipts = []
    for r in [WriteBackReceipt(SERIAL, 1, WriteBackAction.SETTLE_DEBT, 0, 3, 0),
              WriteBackReceipt(SERIAL, 3, WriteBackAction.CREDIT_RECORD, 1, 3, 0)]:
        receipts.append({"fields": _fields(r), "encoded": h(r.to_bytes()),
                         "mac_input": h(r.signed_data()), "mac": h(messages.receipt_mac(key, r)),
                         "response": h(r.to_bytes() + messages.receipt_mac(key, r)) + "9000"})
    return {
        "section": "11.9 Write-back",
        "app_key": h(key), "k_enc": h(k_enc), "k_mac": h(k_mac),
        "writebacks": out, "receipts": receipts,
    }


# --- Full trace --------------------------------------------------------------------------------


class Recorder:
    """A card transport that records every exchange, under the current step name."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.steps: list[dict[str, Any]] = []
        self.name = ""

    def transmit(self, raw: bytes) -> bytes:
        out = self.card.transmit(raw)
        self.steps.append({"name": self.name, "command": h(raw), "response": h(out)})
        return out


@contextlib.contextmanager
def host_random(fn: Callable[[int], bytes]) -> Iterator[None]:
    saved = crypto.random_bytes
    crypto.random_bytes = fn  # type: ignore[assignment]
    try:
        yield
    finally:
        crypto.random_bytes = saved  # type: ignore[assignment]


def annotate_secure_messaging(steps: list[dict[str, Any]],
                              key_sets: dict[str, scp03.StaticKeys]) -> None:
    """Add the plain command (and plain response) to every secure-messaging step, by
    running the card end of the channel over the recorded bytes."""
    selected = b""
    session: scp03.Session | None = None
    for step in steps:
        raw = bytes.fromhex(step["command"])
        resp = Response.parse(bytes.fromhex(step["response"]))
        cmd = Command.parse(raw)
        if cmd.cla == 0x00 and cmd.ins == Ins.SELECT:
            selected, session = cmd.data, None
            continue
        if cmd.ins == Ins.INITIALIZE_UPDATE:
            name = next(n for n, k in key_sets.items()
                        if k.version == cmd.p1 and n.startswith(
                            "isd" if selected == ISD_AID else "sd"))
            step["keys"] = name
            session = scp03.Session.derive(key_sets[name], cmd.data, resp.data[13:21])
            continue
        if not cmd.secure_messaging or session is None:
            continue
        plain = session.unwrap(cmd)
        if cmd.ins == Ins.EXTERNAL_AUTHENTICATE:
            session.authenticated, session.level = True, cmd.p1
            step["host_cryptogram"] = h(plain)
            continue
        step["plain"] = h(Command(cmd.cla & ~0x04, cmd.ins, cmd.p1, cmd.p2, plain,
                                  cmd.le).to_bytes())
        if resp.sw == 0x9000 and session.level & scp03.R_MAC:
            body = resp.data[:-8]
            assert session.wrap_response(body, resp.sw) == resp.data
            step["plain_response"] = h(body)


AID_NAMES = {ISD_AID: "ISD", OPERATOR_SD_AID: "operator SD", PURSE_AID: "purse"}


def describe(step: dict[str, Any]) -> str:
    """A readable name for a personalisation step (from its plain command when wrapped)."""
    cmd = Command.parse(bytes.fromhex(step.get("plain", step["command"])))
    if cmd.ins == Ins.SELECT:
        return f"SELECT {AID_NAMES.get(cmd.data, cmd.data.hex())}"
    if cmd.ins == Ins.INITIALIZE_UPDATE:
        return f"INITIALIZE UPDATE (key set {step['keys']}, KVN {cmd.p1:02X})"
    if cmd.ins == Ins.EXTERNAL_AUTHENTICATE:
        return f"EXTERNAL AUTHENTICATE (security level {cmd.p1:02X})"
    if cmd.ins == Ins.PUT_KEY:
        return f"PUT KEY (replace KVN {cmd.p1:02X})"
    if cmd.ins == Ins.INSTALL:
        if cmd.p1 == 0x20:
            return "INSTALL [for personalization] purse"
        aid = cmd.data[1 + cmd.data[0]:]
        aid = aid[1 + aid[0]:]
        return f"INSTALL [for install and make selectable] {AID_NAMES[aid[1:1 + aid[0]]]}"
    if cmd.ins == Ins.SET_STATUS:
        return f"SET STATUS card life cycle {cmd.p2:02X}"
    if cmd.ins == Ins.STORE_DATA:
        return f"STORE DATA block {cmd.p2}{' (last)' if cmd.p1 & 0x80 else ''}"
    return Ins(cmd.ins).name  # pragma: no cover


def purchase_trace() -> dict[str, Any]:
    card_random = VectorRandom(CARD_RANDOM_LABEL)
    card = Card.manufacture(SERIAL, random=card_random)
    rec = Recorder(card)
    ks = FixedKeyStore()
    k = tsm_keys_from_masters()
    policy = PursePolicy.default("EUR")
    credit = CreditRecord(SERIAL, 1, 2, 2_000, 5_000, 4, TxType.CANTEEN.bit | TxType.TRANSIT.bit,
                          3, 0, NOW, NOW + YEAR, EUR)
    rec.name = "personalise"
    with host_random(VectorRandom(HOST_RANDOM_LABEL)):
        issued = personalise(rec, ks, serial=SERIAL, policy=policy, now=NOW,  # type: ignore[arg-type]
                             credit=credit)
    perso_steps = len(rec.steps)
    annotate_secure_messaging(rec.steps, {"isd-transport": scp03.TRANSPORT_KEYS,
                                          "isd": k["isd"], "sd-operator": k["sd"]})
    for step in rec.steps:
        step["name"] = "personalise: " + describe(step)

    purse = PurseClient(ApduClient(rec))
    certs = certificates()
    # Load 50.00 (the load also advances the card's clock; see §10.4).
    rec.name = "load: SELECT purse"
    purse.select()
    rec.name = "load: INITIALIZE LOAD"
    ls = purse.initialize_load()
    auth = LoadAuthorisation(SERIAL, ls.load_counter, 5000, EUR, ls.challenge, b"LOAD0001",
                             NOW + 3600)
    rec.name = "load: CREDIT"
    purse.credit(auth, crypto.sign(ec_key("host-load"), auth.signed_data()),
                 certs[HOST_LOAD].encode())

    # Offline purchase of 12.50.
    terminal_cert = certs["terminal"].encode()
    rec.name = "purchase: SELECT purse"
    purse.select()
    rec.name = "purchase: INITIALIZE PURCHASE"
    ps = purse.initialize_purchase(terminal_cert)
    order = DebitOrder(SERIAL, ps.atc, 1250, 0, EUR, TxType.CANTEEN, TERMINAL_ID, 1,
                       NOW + 7200, ps.challenge, bytes.fromhex("7465726d6368616c"))
    rec.name = "purchase: DEBIT"
    purse.debit(order, crypto.sign(ec_key("terminal"), order.signed_data()))
    rec.name = "purchase: GET TRANSACTION PROOF"
    purse.transaction_proof(ps.atc + 1)
    rec.name = "purchase: READ RECORD 1"
    purse.read_record(1)
    rec.name = "purchase: GET DATA counters"
    purse.counters()
    rec.name = "purchase: GET DATA certificate"
    purse.certificate()

    # Split purchase: the whole purse (37.50) plus 5.00 recorded as a debt.
    rec.name = "split: SELECT purse"
    purse.select()
    rec.name = "split: INITIALIZE PURCHASE"
    ps2 = purse.initialize_purchase(terminal_cert)
    order2 = DebitOrder(SERIAL, ps2.atc, ps2.balance, 500, EUR, TxType.CANTEEN, TERMINAL_ID, 2,
                        NOW + 7260, ps2.challenge, bytes.fromhex("7465726d63686132"))
    rec.name = "split: DEBIT"
    purse.debit(order2, crypto.sign(ec_key("terminal"), order2.signed_data()))
    rec.name = "online: ONLINE AUTHORISE"
    purse.online_authorise(amount=20_000, currency=EUR, tx_type=TxType.RETAIL, time=NOW + 7300,
                           host_challenge=bytes(range(0x30, 0x40)))
    rec.name = "write-back: SELECT purse"
    purse.select()
    _, app = k["app"]
    sealed = messages.seal_writeback(app, WriteBackHeader(SERIAL, 1,
                                                          WriteBackAction.SETTLE_DEBT),
                                     DebtOutcome(ps2.atc + 1, 500).to_bytes())
    rec.name = "write-back: WRITE-BACK settle debt"
    purse.write_back(sealed)
    rec.name = "write-back: GET DATA debts"
    purse.debts()

    for i, step in enumerate(rec.steps):
        step["index"] = i
    return {
        "section": "13 Worked trace",
        "description": (
            "A blank card manufactured with a deterministic random function, personalised "
            "with fixed master keys (host challenges from a second deterministic stream), "
            "then loaded, used for an offline purchase, a split purchase, an online "
            "authorisation and a write-back. Replay: manufacture the card with the same "
            "serial and random function, send every command in order and compare every "
            "response byte for byte."
        ),
        "random": {
            "algorithm": "call k (0-based) of random(n) = first n bytes of "
                         "SHAKE-256(label || k as 4-byte big-endian)",
            "card_label": CARD_RANDOM_LABEL.decode(),
            "host_label": HOST_RANDOM_LABEL.decode(),
        },
        "serial": h(SERIAL),
        "now": NOW,
        "policy": {"currency": EUR, "cap": policy.cap, "offline_limit": policy.offline_limit,
                   "validity_years": policy.validity_years,
                   "cancel_window": policy.cancel_window, "log_size": policy.log_size},
        "credit_record": _fields(credit),
        "keys": {
            "issuer_root": {"ref": "issuer-root/1", "scalar": SCALARS["issuer-root"],
                            "public_key": h(pub("issuer-root"))},
            "host_list": {"scalar": SCALARS["host-list"], "public_key": h(pub("host-list"))},
            "host_load": {"scalar": SCALARS["host-load"], "public_key": h(pub("host-load")),
                          "certificate": h(certs[HOST_LOAD].encode())},
            "terminal": {"terminal_id": h(TERMINAL_ID), "scalar": SCALARS["terminal"],
                         "public_key": h(pub("terminal")), "certificate": h(terminal_cert)},
            "masters": {n: AES[n] for n in ("master-isd", "master-sd-operator", "master-app")},
            "key_sets": {"isd-transport": _keys_json(scp03.TRANSPORT_KEYS),
                         "isd": _keys_json(k["isd"]), "sd-operator": _keys_json(k["sd"])},
            "app_key": {"version": k["app"][0], "key": h(k["app"][1])},
        },
        "card": {"public_key": h(issued.public_key), "certificate": h(issued.certificate),
                 "expiry": issued.expiry},
        "personalisation_steps": perso_steps,
        "steps": rec.steps,
    }


# --- Main -----------------------------------------------------------------------------------

FILES: dict[str, Callable[[], dict[str, Any]]] = {
    "tlv.json": tlv_vectors,
    "apdu.json": apdu_vectors,
    "kdf.json": kdf_vectors,
    "scp03.json": scp03_vectors,
    "certificate.json": certificate_vectors,
    "messages.json": message_vectors,
    "writeback.json": writeback_vectors,
    "purchase_trace.json": purchase_trace,
}


def render(build: Callable[[], dict[str, Any]]) -> str:
    doc = {"generator": "tools/make_vectors.py", **build()}
    return json.dumps(doc, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the files in tests/vectors instead of writing")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, build in FILES.items():
        text = render(build)
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("vectors differ from the generator: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
