"""Fuzzing the card with APDUs: random bytes, random commands to every applet and
security domain, and mutations of real DEBIT, CANCEL, CREDIT, WRITE-BACK, INSTALL and
PUT KEY commands.

Whatever arrives, Card.transmit answers (it never raises), every answer ends with a
status word, and an answer other than 9000 leaves the card's memory exactly as it was.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom
from tallypurse.core import crypto, scp03, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.messages import (
    MSG_CANCEL_ORDER,
    MSG_DEBIT_ORDER,
    DebitOrder,
    DebtOutcome,
    LoadAuthorisation,
    WriteBackHeader,
    domain,
    seal_writeback,
)
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    INSTALL_FOR_INSTALL_AND_SELECTABLE,
    ISD_AID,
    LOYALTY_AID,
    LOYALTY_MODULE_AID,
    LOYALTY_PACKAGE_AID,
    OPERATOR_SD_AID,
    PRIV_SECURITY_DOMAIN,
    PURSE_AID,
    SD_MODULE_AID,
    SD_PACKAGE_AID,
    T_CAP,
    T_CREDIT_RECORD,
    T_OFFLINE_LIMIT,
    CertRole,
    Ins,
    TxType,
    WriteBackAction,
)
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.channel import SecureChannel, lv
from tallypurse.host.tsm.keys import app_key, isd_keys, sd_keys
from tallypurse.host.tsm.personalise import signed_credit_record
from tallypurse.keystore.base import HOST_LOAD
from tallypurse.lab import YEAR, Lab

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TERMINAL_ID = b"FUZZTERM"
HOST_CHALLENGE = bytes(range(8))


@dataclass
class World:
    """A card image with history (loads, a split debit with a pending debt) and what is
    needed to build valid commands for it."""

    lab: Lab
    image: bytes
    serial: bytes
    terminal_key: ec.EllipticCurvePrivateKey
    terminal_cert: bytes
    app_key: bytes

    def card(self) -> Card:
        """A fresh copy of the card whose random numbers are always the same."""
        return Card(Eeprom.from_image(self.image), random=random.Random(7).randbytes)

    def sign_order(self, order_bytes: bytes, msg: int = MSG_DEBIT_ORDER) -> bytes:
        return crypto.sign(self.terminal_key, domain(msg) + order_bytes)


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    serial = (0x2000_0000_0000_0000 + random.getrandbits(32)).to_bytes(8, "big")
    card, _ = lab.new_card(serial, credit=lab.credit_record(serial))
    key = crypto.generate_private_key()
    terminal_cert = lab.keystore.issue_certificate(
        holder=TERMINAL_ID,
        role=CertRole.TERMINAL,
        public_key=crypto.encode_public_key(key.public_key()),
        not_before=lab.now,
        not_after=lab.now + YEAR,
    ).encode()
    sam = lab.new_sam(tmp_path_factory.mktemp("fuzz") / "sam.json", b"TERM0001")
    try:
        lab.load(card, 1_000)
        lab.purchase(card, sam, 1_000, split=500, tx_type=TxType.CANTEEN)
        lab.load(card, 5_000)
    finally:
        sam.close()
    # the last debit is this terminal's, so that a CANCEL of it is valid
    purse = PurseClient(ApduClient(card))
    purse.select()
    session = purse.initialize_purchase(terminal_cert)
    order = replace(
        DebitOrder.parse(bytes(DebitOrder.size())),
        card_id=serial,
        atc=session.atc,
        amount=250,
        currency=session.currency,
        terminal_id=TERMINAL_ID,
        time=lab.now,
        card_challenge=session.challenge,
    )
    purse.debit(order, crypto.sign(key, order.signed_data()))
    _, app = app_key(lab.keystore, serial)
    yield World(lab, card.eeprom.to_image(), serial, key, terminal_cert, app)


def exchange(card: Card, raw: bytes) -> Response:
    """Send one APDU and check the rules every answer obeys."""
    before = card.eeprom.snapshot()
    out = card.transmit(raw)
    assert isinstance(out, bytes) and len(out) >= 2
    resp = Response.parse(out)
    if currently_in_test_context():
        event(f"SW {resp.sw:04X}")
    if resp.sw != SW.OK:
        assert card.eeprom.snapshot() == before, f"{resp.sw:04X} changed the card"
    return resp


def select(card: Card, aid: bytes) -> None:
    assert exchange(card, Command(0x00, Ins.SELECT, 0x04, 0x00, aid, 0).to_bytes()).sw == SW.OK


def apdu(cla: int, ins: int, p1: int, p2: int, data: bytes, le: int | None = 0) -> bytes:
    return Command(cla, ins, p1, p2, data, le).to_bytes()


# --- strategies ----------------------------------------------------------------------------

TARGETS = [PURSE_AID, ISD_AID, OPERATOR_SD_AID]
CLASSES = [0x00, 0x04, 0x0C, 0x80, 0x84, 0x8C, 0xFF]
INSTRUCTIONS = [int(i) for i in Ins]
bytes_ = st.integers(0, 255)
classes = st.one_of(st.sampled_from(CLASSES), bytes_)
instructions = st.one_of(st.sampled_from(INSTRUCTIONS), bytes_)
parameters = st.one_of(st.sampled_from([0x00, 0x01, 0x04, 0x0C, 0x80, 0x81, 0xFF]), bytes_)
datas = st.one_of(st.binary(max_size=40), st.binary(min_size=100, max_size=300))
les = st.one_of(st.none(), st.sampled_from([0, 1, 256, 65536]))


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    return apdu(
        draw(classes),
        draw(instructions),
        draw(parameters),
        draw(parameters),
        draw(datas),
        draw(les),
    )


GP_INSTRUCTIONS = [
    Ins.INSTALL,
    Ins.DELETE,
    Ins.PUT_KEY,
    Ins.GET_STATUS,
    Ins.SET_STATUS,
    Ins.STORE_DATA,
    Ins.GET_DATA,
    Ins.EXTERNAL_AUTHENTICATE,
    Ins.INITIALIZE_UPDATE,
]


@st.composite
def managed_commands(draw: st.DrawFn) -> Command:
    """Plain card-management commands, to be wrapped in a secure channel."""
    return Command(
        draw(st.one_of(st.just(CLA_PROPRIETARY), bytes_)),
        draw(st.one_of(st.sampled_from([int(i) for i in GP_INSTRUCTIONS]), bytes_)),
        draw(parameters),
        draw(parameters),
        draw(st.binary(max_size=120)),
        draw(st.sampled_from([None, 0])),
    )


@st.composite
def mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    """1 to 3 of: flip a bit, truncate, extend, overwrite a byte."""
    out = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["flip", "flip", "overwrite", "overwrite", "truncate", "extend"])
        )
        if kind == "flip" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[draw(st.integers(0, len(out))) :]
        elif kind == "extend":
            out += draw(st.binary(min_size=1, max_size=40))
        elif out:
            out[draw(st.integers(0, len(out) - 1))] = draw(bytes_)
    return bytes(out)


# --- random APDUs -------------------------------------------------------------------------


@FUZZ
@given(
    target=st.sampled_from([None, *TARGETS]),
    raws=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)
def test_random_bytes_never_break_the_card(
    world: World, target: bytes | None, raws: list[bytes]
) -> None:
    card = world.card()
    if target is not None:
        select(card, target)
    for raw in raws:
        exchange(card, raw)


@FUZZ
@given(
    target=st.sampled_from(TARGETS),
    prelude=st.sampled_from(["none", "purchase", "load", "channel"]),
    cmds=st.lists(commands(), min_size=1, max_size=4),
)
def test_random_commands_to_every_applet_and_domain_never_break_the_card(
    world: World, target: bytes, prelude: str, cmds: list[bytes]
) -> None:
    card = world.card()
    select(card, target)
    if prelude == "purchase":
        exchange(card, apdu(CLA_PROPRIETARY, Ins.INITIALIZE_PURCHASE, 0, 0, world.terminal_cert))
    elif prelude == "load":
        exchange(card, apdu(CLA_PROPRIETARY, Ins.INITIALIZE_LOAD, 0, 0, b""))
    elif prelude == "channel":
        exchange(card, apdu(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, 0, 0, HOST_CHALLENGE))
    for raw in cmds:
        exchange(card, raw)


@FUZZ
@given(
    target=st.sampled_from([ISD_AID, OPERATOR_SD_AID]),
    cmds=st.lists(managed_commands(), min_size=1, max_size=3),
)
def test_random_commands_inside_an_open_secure_channel_never_break_the_card(
    world: World, target: bytes, cmds: list[Command]
) -> None:
    card = world.card()
    channel = open_channel(world, card, target)
    for cmd in cmds:
        plain = Command(cmd.cla & ~0x04 & 0xFF, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le)
        exchange(card, channel.session.wrap(plain).to_bytes())


# --- mutations of real commands --------------------------------------------------------------


def open_channel(world: World, card: Card, aid: bytes) -> SecureChannel:
    keys = (
        isd_keys(world.lab.keystore, world.serial)
        if aid == ISD_AID
        else sd_keys(world.lab.keystore, world.serial)
    )
    return SecureChannel.open(ApduClient(card), aid, keys, host_challenge=HOST_CHALLENGE)


def begin_purchase(world: World, card: Card) -> bytes:
    purse = PurseClient(ApduClient(card))
    purse.select()
    session = purse.initialize_purchase(world.terminal_cert)
    return DebitOrder(
        card_id=session.card_id,
        atc=session.atc,
        amount=300,
        split=0,
        currency=session.currency,
        tx_type=0,
        terminal_id=TERMINAL_ID,
        terminal_seq=9,
        time=world.lab.now,
        card_challenge=session.challenge,
        terminal_challenge=b"CHALLNGE",
    ).to_bytes()


def begin_load(world: World, card: Card) -> bytes:
    purse = PurseClient(ApduClient(card))
    purse.select()
    s = purse.initialize_load()
    return LoadAuthorisation(
        s.card_id, s.load_counter, 2_000, s.currency, s.challenge, b"AUTHID01", world.lab.now
    ).to_bytes()


def sign_load(world: World, auth: bytes) -> bytes:
    ks = world.lab.keystore
    ref = ks.current(HOST_LOAD)
    return ks.sign(ref, domain(LoadAuthorisation.MSG) + auth) + ks.certificate(ref).encode()


# A kind of command: brings a fresh card to where the command is valid and returns the
# command's plain body and how a body becomes an authentic APDU (signed, sealed, wrapped).
Kind = Callable[[World, Card], tuple[bytes, Callable[[bytes], bytes]]]


def debit_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    order = begin_purchase(world, card)

    def build(body: bytes) -> bytes:
        return apdu(CLA_PROPRIETARY, Ins.DEBIT, 0, 0, body + world.sign_order(body))

    return order, build


def cancel_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    # cancel the card's last debit (250, by this terminal)
    order = bytearray(begin_purchase(world, card))
    order[12:16] = (250).to_bytes(4, "big")

    def build(body: bytes) -> bytes:
        sig = world.sign_order(body, MSG_CANCEL_ORDER)
        return apdu(CLA_PROPRIETARY, Ins.CANCEL_LAST_DEBIT, 0, 0, body + sig)

    return bytes(order), build


def online_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    begin_purchase(world, card)
    body = struct.pack(">IHBI", 4_000, 978, 3, world.lab.now) + bytes(16)
    return body, lambda b: apdu(CLA_PROPRIETARY, Ins.ONLINE_AUTHORISE, 0, 0, b)


def credit_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    auth = begin_load(world, card)
    return auth, lambda b: apdu(CLA_PROPRIETARY, Ins.CREDIT, 0, 0, b + sign_load(world, b))


def write_back_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    PurseClient(ApduClient(card)).select()
    # body: header (card id, seq, action) || payload; sealing makes it authentic
    body = WriteBackHeader(world.serial, 5, WriteBackAction.SETTLE_DEBT).to_bytes()
    body += DebtOutcome(2, 500).to_bytes()

    def build(b: bytes) -> bytes:
        card_id, seq, action = struct.unpack(">8sIB", (b[:13] + bytes(13))[:13])
        # WriteBackHeader checks its action only when parsed: any code can be sealed
        sealed = seal_writeback(world.app_key, WriteBackHeader(card_id, seq, action), b[13:])
        return apdu(CLA_PROPRIETARY, Ins.WRITE_BACK, 0, 0, sealed)

    return body, build


def install_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    channel = open_channel(world, card, OPERATOR_SD_AID)
    body = lv(LOYALTY_PACKAGE_AID, LOYALTY_MODULE_AID, LOYALTY_AID, b"\x00", b"", b"")

    def build(b: bytes) -> bytes:
        cmd = Command(CLA_PROPRIETARY, Ins.INSTALL, INSTALL_FOR_INSTALL_AND_SELECTABLE, 0, b, 0)
        return channel.session.wrap(cmd).to_bytes()

    return body, build


def install_domain_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    keys = isd_keys(world.lab.keystore, world.serial)
    channel = open_channel(world, card, ISD_AID)
    new = scp03.StaticKeys(0x30, bytes(16), bytes(range(16)), bytes(range(16, 32)))
    params = tlv.encode(0xC9, tlv.encode(0xDA, scp03.encode_key_set(keys.dek, new)))
    body = lv(
        SD_PACKAGE_AID,
        SD_MODULE_AID,
        b"\xf0\x54\x50\x53\x44\x00\x09",
        bytes([PRIV_SECURITY_DOMAIN]),
        params,
        b"",
    )

    def build(b: bytes) -> bytes:
        cmd = Command(CLA_PROPRIETARY, Ins.INSTALL, INSTALL_FOR_INSTALL_AND_SELECTABLE, 0, b, 0)
        return channel.session.wrap(cmd).to_bytes()

    return body, build


def put_key_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    keys = isd_keys(world.lab.keystore, world.serial)
    channel = open_channel(world, card, ISD_AID)
    new = scp03.StaticKeys(keys.version + 1, bytes(16), bytes(range(16)), bytes(range(16, 32)))
    body = scp03.encode_key_set(keys.dek, new)

    def build(b: bytes) -> bytes:
        cmd = Command(CLA_PROPRIETARY, Ins.PUT_KEY, 0, 0x81, b, 0)
        return channel.session.wrap(cmd).to_bytes()

    return body, build


def store_data_kind(world: World, card: Card) -> tuple[bytes, Callable[[bytes], bytes]]:
    channel = open_channel(world, card, OPERATOR_SD_AID)
    channel.install_for_personalisation(PURSE_AID)
    record = world.lab.credit_record(world.serial, version=9, grade=3)
    body = tlv.encode_many(
        [
            (T_CAP, (50_000).to_bytes(4, "big")),
            (T_OFFLINE_LIMIT, (2_000).to_bytes(4, "big")),
            (T_CREDIT_RECORD, signed_credit_record(world.lab.keystore, record)),
        ]
    )

    def build(b: bytes) -> bytes:
        cmd = Command(CLA_PROPRIETARY, Ins.STORE_DATA, 0x80, 0x03, b, 0)
        return channel.session.wrap(cmd).to_bytes()

    return body, build


KINDS: dict[str, Kind] = {
    "DEBIT": debit_kind,
    "CANCEL": cancel_kind,
    "ONLINE AUTHORISE": online_kind,
    "CREDIT": credit_kind,
    "WRITE-BACK": write_back_kind,
    "INSTALL (applet)": install_kind,
    "INSTALL (domain)": install_domain_kind,
    "PUT KEY": put_key_kind,
    "STORE DATA (purse)": store_data_kind,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_real_command_is_accepted_unmutated(world: World, kind: str) -> None:
    card = world.card()
    body, build = KINDS[kind](world, card)
    assert exchange(card, build(body)).sw == SW.OK


@pytest.mark.parametrize("kind", list(KINDS))
@FUZZ
@given(data=st.data())
def test_a_mutated_real_command_is_refused_cleanly_or_accepted(
    world: World, kind: str, data: st.DataObject
) -> None:
    """Mutations of the authentic APDU: of its bytes, or of its data with Lc adjusted
    (signatures, MACs and lengths then fail)."""
    card = world.card()
    body, build = KINDS[kind](world, card)
    valid = build(body)
    if data.draw(st.booleans(), label="whole APDU"):
        exchange(card, data.draw(mutations(valid), label="apdu"))
    else:
        cmd = Command.parse(valid)
        mutated = data.draw(mutations(cmd.data), label="data")
        exchange(card, apdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, mutated, cmd.le))


@pytest.mark.parametrize("kind", list(KINDS))
@FUZZ
@given(data=st.data())
def test_a_mutated_command_made_authentic_again_is_refused_cleanly_or_accepted(
    world: World, kind: str, data: st.DataObject
) -> None:
    """Mutations of the body, then signed / sealed / wrapped properly: this reaches the
    parsing and checking behind the signature, MAC or secure channel."""
    card = world.card()
    body, build = KINDS[kind](world, card)
    exchange(card, build(data.draw(mutations(body), label="body")))
