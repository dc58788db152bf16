"""Fuzz the card itself: Card.transmit on a personalised card image.

The image (a purse with loads, a split debit and a pending debt, a credit
record) is made once at start-up by tallypurse.lab, or read from
``$TALLYPURSE_FUZZ_CARD_IMAGE``. Each input is a session on a fresh copy of
it: the first byte picks an applet to SELECT first (purse, ISD, operator SD or
none), then each APDU is a length byte and that many bytes.

Invariants: transmit never raises; every answer ends with a status word; an
answer other than 9000 leaves the card's memory exactly as it was.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import harness

with harness.instrumented(__name__):
    from tallypurse.card.card import Card
    from tallypurse.card.storage import Eeprom
    from tallypurse.core import sw as SW
    from tallypurse.core.apdu import Command, Response
    from tallypurse.core.protocol import ISD_AID, OPERATOR_SD_AID, PURSE_AID, Ins, TxType
    from tallypurse.lab import Lab

NOW = 1_767_225_600
TARGETS = [PURSE_AID, ISD_AID, OPERATOR_SD_AID, None]
MAX_APDUS = 8


def _make_image() -> bytes:
    given = os.environ.get("TALLYPURSE_FUZZ_CARD_IMAGE")
    if given:
        return Path(given).read_bytes()
    with tempfile.TemporaryDirectory(prefix="tallypurse-fuzz-") as tmp:
        lab = Lab.create(Path(tmp) / "lab", now=NOW)
        serial = bytes.fromhex("2000000000000001")
        card, _ = lab.new_card(serial, credit=lab.credit_record(serial))
        sam = lab.new_sam(Path(tmp) / "sam.json", b"FUZZTERM")
        try:
            lab.load(card, 1_000)
            lab.purchase(card, sam, 1_000, split=500, tx_type=TxType.CANTEEN)
            lab.load(card, 5_000)
        finally:
            sam.close()
        return card.eeprom.to_image()


IMAGE = _make_image()


def _exchange(card: Card, raw: bytes) -> int:
    before = card.eeprom.snapshot()
    out = card.transmit(raw)
    assert isinstance(out, bytes) and len(out) >= 2, raw.hex()
    sw = Response.parse(out).sw
    if sw != SW.OK:
        assert card.eeprom.snapshot() == before, f"{sw:04X} changed the card: {raw.hex()}"
    return sw


def TestOneInput(data: bytes) -> None:  # noqa: N802
    r = harness.Reader(data)
    card = Card(Eeprom.from_image(IMAGE), random=random.Random(7).randbytes)
    target = TARGETS[r.byte() % len(TARGETS)]
    if target is not None:
        select = Command(0x00, Ins.SELECT, 0x04, 0x00, target, 0).to_bytes()
        assert _exchange(card, select) == SW.OK
    for _ in range(MAX_APDUS):
        if not r.left:
            break
        _exchange(card, r.take(r.byte()))


if __name__ == "__main__":
    harness.main(TestOneInput)
