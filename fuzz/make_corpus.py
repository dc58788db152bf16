"""Write the seed corpus of every harness into fuzz/corpus/<target>/ (checked in).

    python fuzz/make_corpus.py

Seeds are valid inputs of each decoder (real commands, certificates, messages,
API bodies) so that the fuzzers start from deep inside the formats. Files are
named by the SHA-1 of their content, as libFuzzer names its own.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_hostapi  # noqa: E402
import fuzz_messages  # noqa: E402

from tallypurse.core import cert, crypto, messages, tlv  # noqa: E402
from tallypurse.core.apdu import Command  # noqa: E402
from tallypurse.core.cert import KeyRef  # noqa: E402
from tallypurse.core.protocol import (  # noqa: E402
    CLA_PROPRIETARY,
    ISD_AID,
    PURSE_AID,
    CertRole,
    Ins,
    WriteBackAction,
)

NOW = 1_767_225_600
SEED_KEY = crypto.private_key_from_scalar(bytes(31) + b"\x0b")  # not the cert harness's root
CARD_KEY = crypto.private_key_from_scalar(bytes(31) + b"\x0d")


def write(target: str, seeds: list[bytes]) -> None:
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"{target}: {len(seeds)} seeds")


def certificates() -> list[bytes]:
    root_ref = KeyRef("issuer-root", 1)
    root_pub = crypto.encode_public_key(SEED_KEY.public_key())
    root = cert.issue(
        cert.KeySigner(SEED_KEY),
        authority=root_ref,
        holder=root_ref.encode(),
        role=CertRole.ROOT,
        public_key=root_pub,
        not_before=NOW,
        not_after=NOW + 10**8,
    )
    card = cert.issue(
        cert.KeySigner(SEED_KEY),
        authority=root_ref,
        holder=bytes.fromhex("1000000000000001"),
        role=CertRole.CARD,
        public_key=crypto.encode_public_key(CARD_KEY.public_key()),
        not_before=NOW,
        not_after=NOW + 10**7,
    )
    terminal = cert.issue(
        cert.KeySigner(SEED_KEY),
        authority=root_ref,
        holder=b"TERM0001",
        role=CertRole.TERMINAL,
        public_key=crypto.encode_public_key(CARD_KEY.public_key()),
        not_before=NOW,
        not_after=NOW + 10**7,
    )
    return [root.encode(), card.encode(), terminal.encode()]


def apdus() -> list[bytes]:
    return [
        Command(0x00, Ins.SELECT, 0x04, 0x00, PURSE_AID, 0).to_bytes(),
        Command(0x00, Ins.SELECT, 0x04, 0x00, ISD_AID, 0).to_bytes(),
        Command(CLA_PROPRIETARY, Ins.GET_DATA, 0x00, 0x5A, b"", 0).to_bytes(),
        Command(CLA_PROPRIETARY, Ins.READ_RECORD, 0x01, 0x0C, b"", 0).to_bytes(),
        Command(CLA_PROPRIETARY, Ins.INITIALIZE_LOAD, 0x00, 0x00, b"", 0).to_bytes(),
        Command(CLA_PROPRIETARY, Ins.DEBIT, 0, 0, bytes(300), 0).to_bytes(),  # extended
        Command(0x84, Ins.PUT_KEY, 0x01, 0x81, bytes(70), None).to_bytes(),
        Command(0x00, Ins.GET_CHALLENGE, 0, 0, b"", 65536).to_bytes(),
        bytes.fromhex("00a40400"),
    ]


def tlvs(certs: list[bytes]) -> list[bytes]:
    return [
        *certs,
        tlv.encode_many([(0x5A, bytes(8)), (0x9F02, b"\x00\x01")]),
        tlv.encode(0x7F4E, tlv.encode_many([(0x5F29, b"\x01"), (0x42, b"issuer-root/1")])),
        tlv.encode(0x70, tlv.encode(0x61, tlv.encode(0x4F, PURSE_AID))),
        tlv.encode(0x5A, bytes(200)),  # 0x81 length form
        tlv.encode(0x53, bytes(300)),  # 0x82 length form
    ]


def message_seeds() -> list[bytes]:
    out = []
    for index, layout in enumerate(fuzz_messages.LAYOUTS):
        size = layout.size() if hasattr(layout, "size") else messages.EVENT_RECORD_LEN
        if layout is messages.SignedEvent:
            size = messages.EVENT_RECORD_LEN
        raw = bytearray(random.Random(index).randbytes(size))
        out.append(bytes([index]) + bytes(raw))
    # known-valid values where check() is strict
    wb = messages.WriteBackHeader(bytes(8), 7, int(WriteBackAction.SETTLE_DEBT))
    out.append(bytes([fuzz_messages.LAYOUTS.index(messages.WriteBackHeader)]) + wb.to_bytes())
    record = messages.CreditRecord(bytes(8), 1, 2, 2000, 5000, 4, 3, 3, 0, NOW, NOW + 1, 978)
    out.append(bytes([fuzz_messages.LAYOUTS.index(messages.CreditRecord)]) + record.to_bytes())
    writeback = len(fuzz_messages.LAYOUTS)
    sealed = messages.seal_writeback(
        fuzz_messages.APP_KEY, wb, messages.DebtOutcome(3, 500).to_bytes()
    )
    out.append(bytes([writeback, 1]) + sealed)  # open a sealed write-back
    out.append(bytes([writeback, 0]) + bytes(8) + b"\x00\x00\x00\x07\x01\x00\x05payload")
    return out


def host_api_seeds() -> list[bytes]:
    """Each template, once as a raw body (even selector) and once to be mutated (odd)."""
    models = [m.__name__ for m in fuzz_hostapi.MODELS]
    templates = sorted(fuzz_hostapi.TEMPLATES)
    out = []
    for name, body in sorted(fuzz_hostapi.TEMPLATES.items()):
        out.append(bytes([models.index(name) << 1]) + json.dumps(body).encode())
        out.append(bytes([templates.index(name) << 1 | 1]) + bytes(range(1, 17)))
    return out


def card_sessions(certs: list[bytes]) -> list[bytes]:
    def session(target: int, *commands: bytes) -> bytes:
        out = bytes([target])
        for c in commands:
            if len(c) > 255:
                continue
            out += bytes([len(c)]) + c
        return out

    terminal_cert = certs[2]
    init_purchase = Command(CLA_PROPRIETARY, Ins.INITIALIZE_PURCHASE, 0, 0, terminal_cert, 0)
    return [
        session(0, Command(CLA_PROPRIETARY, Ins.GET_DATA, 0x00, 0x5A, b"", 0).to_bytes()),
        session(0, Command(CLA_PROPRIETARY, Ins.INITIALIZE_LOAD, 0, 0, b"", 0).to_bytes()),
        session(0, Command(CLA_PROPRIETARY, Ins.READ_RECORD, 1, 0x0C, b"", 0).to_bytes()),
        session(0, Command(CLA_PROPRIETARY, Ins.GET_TRANSACTION_PROOF, 0, 0, b"", 0).to_bytes()),
        session(0, init_purchase.to_bytes()[:255]),
        session(1, Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, 0, 0, bytes(8), 0).to_bytes()),
        session(1, Command(CLA_PROPRIETARY, Ins.GET_STATUS, 0x80, 0x02, b"\x4f\x00", 0).to_bytes()),
        session(3, Command(0x00, Ins.SELECT, 0x04, 0x00, PURSE_AID, 0).to_bytes()),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory():
        certs = certificates()
        write("apdu", apdus())
        write("tlv", tlvs(certs))
        write("cert", certs)
        write("messages", message_seeds())
        write("hostapi", host_api_seeds())
        write("card", card_sessions(certs))


if __name__ == "__main__":
    main()
