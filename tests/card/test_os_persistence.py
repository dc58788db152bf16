"""The card file: saved after every state change, reopened intact, refused when damaged."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path
from random import Random

import pytest

from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom, PowerLoss
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import CardFileError
from tallypurse.core.protocol import CLA_PROPRIETARY, ISD_AID, LOYALTY_AID, PURSE_AID, Ins
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.scp03 import StaticKeys, encode_key_set
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import (
    card_status,
    domain_key_versions,
    install_loyalty,
    install_partner_domain,
)
from tallypurse.host.tsm.channel import SecureChannel
from tallypurse.host.tsm.keys import isd_keys
from tallypurse.lab import Lab
from tallypurse.sam import Sam

MAGIC = b"TPCARD\x00\x01"


def balance(card: Card) -> int:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse.counters().balance


def points(card: Card) -> int:
    client = ApduClient(card)
    client.select(LOYALTY_AID)
    return int.from_bytes(client.call(Command(CLA_PROPRIETARY, 0x22, 0, 0, b"", 0)), "big")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cards" / "card.tpcard"


def test_a_manufactured_card_with_a_path_is_on_disk_at_once(path: Path) -> None:
    card = Card.manufacture(b"PERSIST1", path=path)
    assert path.is_file()
    assert Card.open(path).eeprom.snapshot() == card.eeprom.snapshot()


def test_a_reopened_card_keeps_its_balance_and_applets(
    make_card: Callable[..., Card], lab: Lab, sam: Sam, path: Path
) -> None:
    card = make_card(path=path)
    lab.load(card, 777)
    install_partner_domain(card, lab.keystore, card.serial)
    install_loyalty(card, lab.keystore, card.serial, points=9)
    status = card_status(card, lab.keystore, card.serial)
    del card  # the process "restarts": only the file remains

    reopened = Card.open(path)
    assert balance(reopened) == 777
    assert points(reopened) == 9
    assert card_status(reopened, lab.keystore, reopened.serial) == status
    lab.purchase(reopened, sam, 77)
    assert balance(Card.open(path)) == 700


def test_every_state_change_is_saved_without_being_asked(
    make_card: Callable[..., Card], lab: Lab, path: Path
) -> None:
    card = make_card(path=path)
    for amount, total in ((100, 100), (50, 150)):
        lab.load(card, amount)
        assert balance(Card.open(path)) == total
        assert Card.open(path).eeprom.snapshot() == card.eeprom.snapshot()


def test_a_command_that_changes_nothing_does_not_rewrite_the_file(
    make_card: Callable[..., Card], path: Path
) -> None:
    card = make_card(path=path)
    before = path.stat()
    content = path.read_bytes()
    balance(card)
    assert Response.parse(card.transmit(bytes.fromhex("80F00080"))).sw != SW.OK
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert path.read_bytes() == content


def test_saving_leaves_no_temporary_files(make_card: Callable[..., Card], path: Path) -> None:
    make_card(path=path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# --- power cuts and the file ---------------------------------------------------------------------


def test_after_a_power_cut_at_any_write_the_file_and_the_card_agree(
    make_card: Callable[..., Card], lab: Lab, path: Path
) -> None:
    """Whatever write the power is cut at, reopening the file gives the same card as
    powering the torn card up again, so a state the card has shown is never lost."""
    card = make_card(path=path)
    serial = card.serial
    image = path.read_bytes()
    old = isd_keys(lab.keystore, serial, version=domain_key_versions(ApduClient(card), ISD_AID)[-1])
    new = StaticKeys(0x44, bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))

    def fresh() -> tuple[Card, SecureChannel]:
        path.write_bytes(image)
        c = Card.open(path, random=Random(5).randbytes)
        ch = SecureChannel.open(ApduClient(c), ISD_AID, old, host_challenge=b"PERSIST!")
        return c, ch

    reference, ch = fresh()
    put_key = ch.session.wrap(
        Command(CLA_PROPRIETARY, Ins.PUT_KEY, old.version, 0x81, encode_key_set(old.dek, new), 0)
    ).to_bytes()
    before, w0 = reference.eeprom.snapshot(), reference.eeprom.writes
    assert Response.parse(reference.transmit(put_key)).sw == SW.OK
    after, count = reference.eeprom.snapshot(), reference.eeprom.writes - w0
    assert count > 2

    outcomes = set()
    for i in range(count):
        c, _ = fresh()
        c.eeprom.cut_at = c.eeprom.writes + i
        with pytest.raises(PowerLoss):
            c.transmit(put_key)
        powered = Card(c.eeprom).eeprom.snapshot()
        from_file = Card.open(path).eeprom.snapshot()
        assert from_file == powered, f"cut at write {i}"
        assert powered in (before, after)
        outcomes.add(powered == after)
    assert outcomes == {False, True}


# --- damaged files --------------------------------------------------------------------------------


def _image(body: bytes) -> bytes:
    return MAGIC + body + hashlib.sha256(MAGIC + body).digest()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"", "bad magic or truncated"),
        (lambda b: b[:20], "bad magic or truncated"),
        (lambda b: b[: len(b) // 2], "checksum mismatch"),
        (lambda b: b[:-1], "checksum mismatch"),
        (lambda b: b + b"\x00", "checksum mismatch"),
        (lambda b: b[:100] + bytes([b[100] ^ 0x40]) + b[101:], "checksum mismatch"),
        (lambda b: b[:-32] + bytes(32), "checksum mismatch"),
        (lambda b: Random(1).randbytes(len(b)), "not a tallypurse card image"),
        (lambda b: b'{"balance": 1000000}', "not a tallypurse card image"),
        (lambda b: b"TPCARD\x00\x02" + b[8:], "not a tallypurse card image"),
        (lambda b: _image(b"\x00" * 3), "truncated"),
        (lambda b: _image(struct.pack(">?II", False, 0, 1) + b"\x00\x00\x00\x09os"), "truncated"),
        (lambda b: _image(struct.pack(">?II", False, 0, 0) + b"junk"), "trailing bytes"),
        (
            lambda b: _image(
                struct.pack(">?II", False, 0, 1) + b"\x00\x00\x00\x01\xff" + b"\x00\x00\x00\x00"
            ),
            "bad structure",
        ),
    ],
    ids=[
        "empty",
        "shorter than a header",
        "truncated in half",
        "last byte cut",
        "byte appended",
        "one bit flipped",
        "checksum zeroed",
        "random garbage",
        "json",
        "other format version",
        "checksummed but truncated header",
        "checksummed but truncated object",
        "checksummed with trailing bytes",
        "checksummed with a non-UTF-8 name",
    ],
)
def test_a_damaged_card_file_gives_card_file_error_with_a_clear_message(
    make_card: Callable[..., Card], path: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    make_card(path=path)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(CardFileError, match=message) as err:
        Card.open(path)
    assert err.value.code == 1302
    assert path.read_bytes() == damaged  # a failed open leaves the file alone


def test_a_missing_card_file_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.tpcard"
    with pytest.raises(CardFileError, match="no card file") as err:
        Card.open(missing)
    assert str(missing) in str(err.value)


def test_a_directory_is_not_a_card_file(tmp_path: Path) -> None:
    with pytest.raises(CardFileError, match="cannot read card file"):
        Card.open(tmp_path)


def test_an_image_roundtrips_through_bytes(card: Card) -> None:
    image = card.eeprom.to_image()
    assert image.startswith(MAGIC)
    assert Eeprom.from_image(image).snapshot() == card.eeprom.snapshot()
    assert Eeprom.from_image(image).to_image() == image


def test_a_reopened_card_answers_like_the_original(
    make_card: Callable[..., Card], path: Path
) -> None:
    card = make_card(path=path)
    ours = ApduClient(card)
    theirs = ApduClient(Card.open(path))
    ours.select(PURSE_AID)
    theirs.select(PURSE_AID)
    for tag in (0x0101, 0x0102, 0x0103, 0x0104):
        cmd = Command(CLA_PROPRIETARY, Ins.GET_DATA, tag >> 8, tag & 0xFF, b"", 0)
        assert ours.call(cmd) == theirs.call(cmd)
