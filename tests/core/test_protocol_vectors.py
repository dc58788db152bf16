"""Replay the checked-in protocol test vectors (tests/vectors/*.json) against the code.

Each test is named after the docs/protocol.md section it checks. The vectors
come from tools/make_vectors.py (fixed keys, deterministic RFC 6979 signatures,
a deterministic card random function); here every value is recomputed with the
implementation and compared, and every signature is verified.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert, crypto, messages, scp03, tlv
from tallypurse.core.apdu import Command, Response
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import DecodeError
from tallypurse.core.messages import (
    CancelOrder,
    CardEvent,
    CreditRecord,
    DebitOrder,
    DebtOutcome,
    DebtSlot,
    Layout,
    LoadAuthorisation,
    OnlineRequest,
    SignedEvent,
    WriteBackHeader,
    WriteBackReceipt,
)
from tallypurse.core.protocol import (
    CVR_DEBT_OUTSTANDING,
    CVR_LOW_BALANCE,
    CVR_SPLIT,
    OPERATOR_SD_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    CertRole,
    Ins,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"

LAYOUTS: dict[str, type[Layout]] = {
    cls.__name__: cls
    for cls in (DebitOrder, CancelOrder, CardEvent, LoadAuthorisation, OnlineRequest,
                CreditRecord, WriteBackHeader, DebtOutcome, WriteBackReceipt)
}


@cache
def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def b(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


def ids(items: list[dict[str, Any]], key: str = "name") -> list[str]:
    return [str(i.get(key, n)) for n, i in enumerate(items)]


def scalar_key(hexstr: str) -> Any:
    return crypto.private_key_from_scalar(b(hexstr))


def static_keys(d: dict[str, Any]) -> scp03.StaticKeys:
    keys = scp03.StaticKeys(d["version"], b(d["enc"]), b(d["mac"]), b(d["dek"]))
    assert [k.hex() for k in keys.kcvs()] == d["kcvs"]
    return keys


def command(d: dict[str, Any]) -> Command:
    return Command(d["cla"], d["ins"], d["p1"], d["p2"], b(d["data"]), d["le"])


def from_fields(cls: type, fields: dict[str, Any]) -> Any:
    types = {f["name"]: f["type"] for f in layout_of(cls)}
    return cls(**{k: (b(v) if types[k] == "bytes" else v) for k, v in fields.items()})


def layout_of(cls: type) -> list[dict[str, Any]]:
    for m in load("messages.json")["messages"]:
        if m["layout_name"] == cls.__name__:
            return m["layout"]  # type: ignore[no-any-return]
    return load("messages.json")["debt_slots"][0]["layout"]  # type: ignore[no-any-return]


# --- §1 Conventions ----------------------------------------------------------------------


@pytest.mark.parametrize("case", load("tlv.json")["encode"], ids=ids(load("tlv.json")["encode"],
                                                                     "encoded"))
def test_s1_2_ber_tlv_encoding(case: dict[str, Any]) -> None:
    tag, value = int(case["tag"], 16), b(case["value"])
    assert tlv.encode(tag, value) == b(case["encoded"])
    [item] = tlv.decode(b(case["encoded"]))
    assert (item.tag, item.value, item.constructed) == (tag, value, case["constructed"])


@pytest.mark.parametrize("case", load("tlv.json")["invalid"],
                         ids=ids(load("tlv.json")["invalid"], "reason"))
def test_s1_2_ber_tlv_rejects(case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        tlv.decode(b(case["encoded"]))


@pytest.mark.parametrize("case", load("apdu.json")["commands"],
                         ids=ids(load("apdu.json")["commands"]))
def test_s1_3_apdu_cases(case: dict[str, Any]) -> None:
    cmd = command(case)
    assert cmd.to_bytes() == b(case["encoded"])
    parsed = Command.parse(b(case["encoded"]))
    assert parsed.header() == cmd.header() and parsed.data == cmd.data
    assert parsed.le == case["parsed_le"]


@pytest.mark.parametrize("case", load("apdu.json")["invalid_commands"],
                         ids=ids(load("apdu.json")["invalid_commands"], "reason"))
def test_s1_3_apdu_malformed_gets_6700(case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        Command.parse(b(case["encoded"]))
    card = Card.manufacture(b"\x00" * 7 + b"\x01", random=lambda n: b"\x00" * n)
    assert card.transmit(b(case["encoded"])).hex().upper() == case["card_answers"]


def test_s1_3_apdu_responses() -> None:
    for case in load("apdu.json")["responses"]:
        resp = Response(b(case["data"]), int(case["sw"], 16))
        assert resp.to_bytes() == b(case["encoded"])
        assert Response.parse(b(case["encoded"])) == resp


# --- §5 Key hierarchy --------------------------------------------------------------------


@pytest.mark.parametrize("case", load("kdf.json")["scp03_derive"],
                         ids=ids(load("kdf.json")["scp03_derive"], "note"))
def test_s5_2_kdf_layout(case: dict[str, Any]) -> None:
    key, context = b(case["key"]), b(case["context"])
    out = crypto.scp03_derive(key, case["constant"], context, case["bits"])
    assert out.hex() == case["output"]
    # The PRF inputs the specification lays out, block by block.
    prf = b"".join(crypto.aes_cmac(key, b(blk)) for blk in case["prf_inputs"])
    assert prf[: case["bits"] // 8] == out
    for i, blk in enumerate(case["prf_inputs"], start=1):
        raw = b(blk)
        assert raw[:11] == b"\x00" * 11 and raw[11] == case["constant"] and raw[12] == 0
        assert int.from_bytes(raw[13:15], "big") == case["bits"] and raw[15] == i
        assert raw[16:] == context


@pytest.mark.parametrize("case", load("kdf.json")["diversify"],
                         ids=ids(load("kdf.json")["diversify"], "purpose"))
def test_s5_3_key_diversification(case: dict[str, Any]) -> None:
    out = crypto.diversify(b(case["master"]), case["purpose"].encode(), b(case["context"]))
    assert out.hex() == case["output"]
    assert crypto.aes_cmac(b(case["master"]), b(case["prf_input"])) == out
    assert crypto.key_check_value(out).hex() == case["kcv"]


def test_s5_4_key_check_values() -> None:
    for case in load("kdf.json")["kcv"]:
        assert crypto.key_check_value(b(case["key"])).hex() == case["kcv"]


def test_s5_5_app_subkeys() -> None:
    for case in load("kdf.json")["app_subkeys"]:
        enc, mac = messages.app_subkeys(b(case["app_key"]))
        assert (enc.hex(), mac.hex()) == (case["enc"], case["mac"])
        assert (case["enc_constant"], case["mac_constant"]) == (messages.APP_KEY_ENC,
                                                                messages.APP_KEY_MAC)


# --- §6 Secure channel ---------------------------------------------------------------------


@pytest.mark.parametrize("channel", load("scp03.json")["channels"],
                         ids=[f"level-{c['level']:02x}" for c in load("scp03.json")["channels"]])
def test_s6_secure_channel(channel: dict[str, Any]) -> None:
    keys = static_keys(channel["static_keys"])
    hc, cc = b(channel["host_challenge"]), b(channel["card_challenge"])
    host = scp03.Session.derive(keys, hc, cc)
    card = scp03.Session.derive(keys, hc, cc)
    assert {"s_enc": host.s_enc.hex(), "s_mac": host.s_mac.hex(),
            "s_rmac": host.s_rmac.hex()} == channel["session"]
    assert host.card_cryptogram().hex() == channel["card_cryptogram"]
    assert host.host_cryptogram().hex() == channel["host_cryptogram"]
    init = Command.parse(b(channel["initialize_update"]["command"]))
    assert (init.cla, init.ins, init.p1, init.data) == (0x80, 0x50, keys.version, hc)
    resp = b(channel["initialize_update"]["response"])
    assert len(resp) == 29 + 2 and resp[10:13] == bytes([keys.version, 0x03, 0x00])
    assert resp[13:21] == cc and resp[21:29] == host.card_cryptogram()

    ext = host.wrap(Command(0x80, Ins.EXTERNAL_AUTHENTICATE, channel["level"], 0,
                            host.host_cryptogram()))
    assert ext.to_bytes().hex() == channel["external_authenticate"]
    assert card.unwrap(ext) == card.host_cryptogram()
    for end in (host, card):
        end.authenticated, end.level = True, channel["level"]

    for step in channel["commands"]:
        plain = command(step["plain"])
        wrapped = host.wrap(plain)
        assert wrapped.to_bytes().hex() == step["wrapped"], step["name"]
        assert host.mac_chain.hex() == step["cmac"]
        assert crypto.aes_cmac(host.s_mac, b(step["cmac_input"])).hex() == step["cmac"]
        assert host.counter == step["counter"]
        if step["icv"]:
            assert crypto.aes_ecb_block(host.s_enc, step["counter"].to_bytes(16, "big")).hex() \
                == step["icv"]
        assert card.unwrap(Command.parse(b(step["wrapped"]))) == plain.data
        data, sw = b(step["response"]["data"]), int(step["response"]["sw"], 16)
        if "wrapped" in step["response"]:
            rmac = crypto.aes_cmac(host.s_rmac, b(step["response"]["rmac_input"]))[:8]
            assert card.wrap_response(data, sw).hex() == step["response"]["wrapped"]
            assert b(step["response"]["wrapped"]) == data + rmac
            assert host.unwrap_response(b(step["response"]["wrapped"]), sw) == data


def test_s6_7_key_wrap_and_put_key_data() -> None:
    v = load("scp03.json")
    for case in v["key_wrap"]:
        assert scp03.wrap_key(b(case["dek"]), b(case["key"])).hex() == case["wrapped"]
        assert scp03.unwrap_key(b(case["dek"]), b(case["wrapped"])).hex() == case["key"]
    new = static_keys(v["put_key"]["new_keys"])
    dek = b(v["put_key"]["dek"])
    assert scp03.encode_key_set(dek, new).hex() == v["put_key"]["data"]
    assert scp03.decode_key_set(dek, b(v["put_key"]["data"])) == new
    assert (bytes([new.version]) + b"".join(new.kcvs())).hex() == v["put_key"]["response"]


def test_s7_1_install_security_domain_data() -> None:
    from tallypurse.card.gp import parse_lv_fields

    case = load("scp03.json")["install_sd_params"]
    package, module, aid, priv, params, token = parse_lv_fields(b(case["install_data"]), 6)
    assert (package, module, aid) == (SD_PACKAGE_AID, SD_MODULE_AID, OPERATOR_SD_AID)
    assert priv == b"\x80" and token == b""
    inner = tlv.decode_map(tlv.decode_one(params, 0xC9), required=(0xDA,))
    keys = scp03.decode_key_set(b(case["dek"]), inner[0xDA])
    assert keys == static_keys(case["initial_keys"])


# --- §9 Certificates -------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("certificate.json")["certificates"],
                         ids=ids(load("certificate.json")["certificates"]))
def test_s9_certificate_format(case: dict[str, Any]) -> None:
    v = load("certificate.json")
    root_key = scalar_key(v["issuer_root"]["scalar"])
    f = case["fields"]
    body = cert.encode_body(authority=KeyRef.decode(f["authority"].encode()),
                            holder=b(f["holder"]), role=CertRole(f["role"]),
                            public_key=b(f["public_key"]), not_before=f["not_before"],
                            not_after=f["not_after"])
    assert body.hex() == case["body"]
    assert crypto.sign(root_key, body).hex() == case["signature"]  # RFC 6979
    assert crypto.verify(b(v["issuer_root"]["public_key"]), b(case["signature"]), body)
    assert tlv.encode(0x7F21, body + tlv.encode(0x5F37, b(case["signature"]))).hex() \
        == case["encoded"]
    assert crypto.encode_public_key(scalar_key(case["subject_scalar"]).public_key()).hex() \
        == f["public_key"]
    roots = {KeyRef.decode(v["issuer_root"]["ref"].encode()): b(v["issuer_root"]["public_key"])}
    c = cert.verify(b(case["encoded"]), roots, role=CertRole(f["role"]), at=v["verify_at"],
                    holder=b(f["holder"]))
    assert c.fingerprint.hex() == case["fingerprint"]
    assert crypto.sha256(b(case["encoded"]))[:8].hex() == case["fingerprint"]


# --- §11 Signed and MACed data -------------------------------------------------------------


@pytest.mark.parametrize("case", load("messages.json")["messages"],
                         ids=ids(load("messages.json")["messages"]))
def test_s11_message_layouts(case: dict[str, Any]) -> None:
    cls = LAYOUTS[case["layout_name"]]
    assert cls.MSG == case["msg_type"] and cls.size() == case["size"]
    # The offsets and sizes in the vector (and in the specification) are the struct's.
    assert [f["name"] for f in case["layout"]] == messages.field_names(cls)
    end = 0
    for f in case["layout"]:
        assert f["offset"] == end
        end += f["size"]
    assert end == case["size"]
    obj = from_fields(cls, case["fields"])
    raw = obj.to_bytes()
    assert raw.hex() == case["encoded"]
    assert cls.parse(raw) == obj
    for f in case["layout"]:
        value = raw[f["offset"]: f["offset"] + f["size"]]
        expected = case["fields"][f["name"]]
        if f["type"] == "bytes":
            assert value.hex() == expected
        else:
            assert int.from_bytes(value, "big") == expected
    if "signature" in case:
        signed = obj.signed_data()
        assert signed.hex() == case["signed_data"]
        assert signed[:4] == b"TP\x01" + bytes([case["msg_type"]])
        key = scalar_key(case["signer_scalar"])
        assert crypto.encode_public_key(key.public_key()).hex() == case["signer_public_key"]
        assert crypto.verify(b(case["signer_public_key"]), b(case["signature"]), signed)
        assert crypto.sign(key, signed).hex() == case["signature"]


def test_s11_7_debt_slots() -> None:
    for case in load("messages.json")["debt_slots"]:
        slot = DebtSlot(**case["fields"])
        assert slot.to_bytes().hex() == case["encoded"]
        assert DebtSlot.parse(b(case["encoded"])) == slot
        assert struct.unpack(">BII", b(case["encoded"])) == (slot.state, slot.ref, slot.amount)


@pytest.mark.parametrize("case", load("writeback.json")["writebacks"],
                         ids=ids(load("writeback.json")["writebacks"], "action"))
def test_s11_9_writeback_sealing(case: dict[str, Any]) -> None:
    v = load("writeback.json")
    key = b(v["app_key"])
    k_enc, k_mac = messages.app_subkeys(key)
    assert (k_enc.hex(), k_mac.hex()) == (v["k_enc"], v["k_mac"])
    header = from_fields(WriteBackHeader, case["header"])
    assert header.to_bytes().hex() == case["header_encoded"]
    payload = b(case["payload"])
    sealed = messages.seal_writeback(key, header, payload)
    assert sealed.hex() == case["sealed"]
    assert crypto.aes_ecb_block(k_enc, b(case["iv_input"])).hex() == case["iv"]
    assert crypto.pad_iso9797_m2(payload).hex() == case["padded_payload"]
    assert crypto.aes_cbc_encrypt(k_enc, b(case["iv"]), b(case["padded_payload"])).hex() \
        == case["ciphertext"]
    assert crypto.aes_cmac(k_mac, b(case["mac_input"])).hex() == case["mac"]
    assert sealed == header.to_bytes() + b(case["ciphertext"]) + b(case["mac"])
    assert messages.open_writeback(key, sealed) == (header, payload)


def test_s11_10_writeback_receipts() -> None:
    v = load("writeback.json")
    key = b(v["app_key"])
    for case in v["receipts"]:
        r = from_fields(WriteBackReceipt, case["fields"])
        assert r.to_bytes().hex() == case["encoded"]
        assert r.signed_data().hex() == case["mac_input"]
        assert messages.receipt_mac(key, r).hex() == case["mac"]
        assert (r.to_bytes() + b(case["mac"])).hex() + "9000" == case["response"]


# --- §13 Worked trace --------------------------------------------------------------------------


class VectorRandom:
    """Call k of random(n): the first n bytes of SHAKE-256(label || k as 4 bytes)."""

    def __init__(self, label: str) -> None:
        self.label = label.encode()
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self.label + self.calls.to_bytes(4, "big")).digest(n)
        self.calls += 1
        return out


def test_s13_trace_card_replay() -> None:
    """Every response of the personalisation and purchase trace, byte for byte."""
    v = load("purchase_trace.json")
    card = Card.manufacture(b(v["serial"]), random=VectorRandom(v["random"]["card_label"]))
    for step in v["steps"]:
        assert card.transmit(b(step["command"])).hex() == step["response"], \
            f"step {step['index']}: {step['name']}"


def test_s13_trace_host_secure_messaging() -> None:
    """The host end of every personalisation channel produces the recorded commands."""
    v = load("purchase_trace.json")
    key_sets = {n: static_keys(k) for n, k in v["keys"]["key_sets"].items()}
    host_random = VectorRandom(v["random"]["host_label"])
    session: scp03.Session | None = None
    for step in v["steps"][: v["personalisation_steps"]]:
        cmd = Command.parse(b(step["command"]))
        resp = Response.parse(b(step["response"]))
        assert resp.sw == 0x9000
        if cmd.ins == Ins.INITIALIZE_UPDATE:
            assert cmd.data == host_random(8)
            session = scp03.Session.derive(key_sets[step["keys"]], cmd.data, resp.data[13:21])
            assert resp.data[21:29] == session.card_cryptogram()
            assert resp.data[:10] == b(v["serial"]) + b"\x00\x00"
        elif cmd.ins == Ins.EXTERNAL_AUTHENTICATE:
            assert session is not None
            ext = session.wrap(Command(0x80, Ins.EXTERNAL_AUTHENTICATE, cmd.p1, 0,
                                       session.host_cryptogram()))
            assert ext.to_bytes() == b(step["command"])
            session.authenticated, session.level = True, cmd.p1
        elif "plain" in step:
            assert session is not None
            assert session.wrap(Command.parse(b(step["plain"]))).to_bytes() == cmd.to_bytes()
            assert session.unwrap_response(resp.data, resp.sw) == b(step.get("plain_response",
                                                                             ""))


def _step(v: dict[str, Any], name: str) -> tuple[Command, Response]:
    [step] = [s for s in v["steps"] if s["name"] == name]
    return Command.parse(b(step["command"])), Response.parse(b(step["response"]))


def test_s13_trace_signatures() -> None:
    """The signed objects inside the trace verify under the keys the trace names."""
    v = load("purchase_trace.json")
    keys = v["keys"]
    roots = {KeyRef.decode(keys["issuer_root"]["ref"].encode()):
             b(keys["issuer_root"]["public_key"])}
    card_pub = b(v["card"]["public_key"])
    c = cert.verify(b(v["card"]["certificate"]), roots, role=CertRole.CARD, at=v["now"],
                    holder=b(v["serial"]))
    assert c.public_key == card_pub
    _, cert_resp = _step(v, "purchase: GET DATA certificate")
    assert cert_resp.data == b(v["card"]["certificate"])

    # CREDIT: host-load signature over the load authorisation; the card's LOAD record.
    credit_cmd, credit_resp = _step(v, "load: CREDIT")
    n = LoadAuthorisation.size()
    auth = LoadAuthorisation.parse(credit_cmd.data[:n])
    assert crypto.verify(b(keys["host_load"]["public_key"]), credit_cmd.data[n:n + 64],
                         auth.signed_data())
    assert credit_cmd.data[n + 64:] == b(keys["host_load"]["certificate"])
    load_rec = SignedEvent.parse(credit_resp.data)
    assert load_rec.verify(card_pub) and load_rec.event.balance_after == auth.amount

    # DEBIT: terminal signature over the order; card TAC over the event.
    for prefix in ("purchase", "split"):
        init_cmd, init_resp = _step(v, f"{prefix}: INITIALIZE PURCHASE")
        assert init_cmd.data == b(keys["terminal"]["certificate"])
        session = tlv.decode_map(init_resp.data)
        debit_cmd, debit_resp = _step(v, f"{prefix}: DEBIT")
        order = DebitOrder.parse(debit_cmd.data[:55])
        assert crypto.verify(b(keys["terminal"]["public_key"]), debit_cmd.data[55:],
                             order.signed_data())
        assert order.card_challenge == session[0xC6]
        atc, after, slot, cvr = struct.unpack(">IIBH", debit_resp.data[:11])
        event = CardEvent(1, order.card_id, atc, int.from_bytes(session[0xC3], "big"),
                          order.amount, order.split, order.currency, order.tx_type,
                          int.from_bytes(session[0xC4], "big"), after, order.terminal_id,
                          order.terminal_seq, order.time, order.card_challenge,
                          order.terminal_challenge, slot, cvr)
        assert SignedEvent(event, debit_resp.data[11:]).verify(card_pub)
        # 13: the 12.50 purchase leaves 37.50, enough to pay it again: no finding; the split
        # takes credit, leaves a debt and an empty purse.
        expected = 0 if prefix == "purchase" else CVR_SPLIT | CVR_DEBT_OUTSTANDING | CVR_LOW_BALANCE
        assert cvr == expected
    _, proof = _step(v, "purchase: GET TRANSACTION PROOF")
    _, record = _step(v, "purchase: READ RECORD 1")
    assert proof.data == record.data and SignedEvent.parse(proof.data).verify(card_pub)

    # ONLINE AUTHORISE: the card's signature over the online request.
    online_cmd, online_resp = _step(v, "online: ONLINE AUTHORISE")
    amount, currency, tx_type, when = struct.unpack(">IHBI", online_cmd.data[:11])
    request = OnlineRequest(b(v["serial"]), int.from_bytes(online_resp.data[:4], "big"), amount,
                            currency, tx_type, b(keys["terminal"]["terminal_id"]), when,
                            online_cmd.data[11:])
    assert crypto.verify(card_pub, online_resp.data[4:], request.signed_data())

    # WRITE-BACK: sealed under the APP key; the receipt's MAC.
    app = b(keys["app_key"]["key"])
    wb_cmd, wb_resp = _step(v, "write-back: WRITE-BACK settle debt")
    header, payload = messages.open_writeback(app, wb_cmd.data)
    assert header.action == 1 and DebtOutcome.parse(payload).amount == 500
    receipt = WriteBackReceipt.parse(wb_resp.data[:22])
    assert messages.receipt_mac(app, receipt) == wb_resp.data[22:]
    _, debts = _step(v, "write-back: GET DATA debts")
    assert debts.data == DebtSlot(0, 0, 0).to_bytes() * 4


def test_s14_generator_reproduces_vectors() -> None:
    """tools/make_vectors.py, run again, writes exactly the checked-in files."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_vectors.py"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
