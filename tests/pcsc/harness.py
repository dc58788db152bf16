"""Helpers for tests through the real PC/SC stack: pcscd, the vpcd virtual reader, pyscard.

The pcscd launcher, the pyscard transport and the card-server thread live in
``tallypurse.cli.bench_pcsc`` (the PC/SC benchmark uses them too); this module adds
what only tests need: skipping or failing when the stack is missing, a card that can
lose power inside a command, reader-state polling and the tear resolution a terminal
performs at the next tap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom, PowerLoss
from tallypurse.cli.bench_pcsc import READER_PREFIX, missing_parts
from tallypurse.core import sw as SW
from tallypurse.core.errors import CardError
from tallypurse.core.messages import SignedEvent
from tallypurse.core.protocol import EventKind
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import Lab
from tallypurse.sam import Sam

READER = f"{READER_PREFIX} 00 00"  # slot 0 of vpcd, on the port of our reader.conf.d


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail in CI, where the stack must be there."""
    if in_ci():
        pytest.fail(f"PC/SC stack unavailable in CI (CI is set): {reason}", pytrace=False)
    pytest.skip(f"PC/SC tests need {reason}")


def ensure_installed() -> None:
    """pcscd and vsmartcard-vpcd through apt-get when missing and we are root (.ci/run
    normally did it already); pyscard cannot be added here (the pcsc extra)."""
    system = [m for m in missing_parts() if not m.startswith("pyscard")]
    if system and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "pcscd", "vsmartcard-vpcd"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
    missing = missing_parts()
    if missing:
        unavailable("; ".join(missing))


# --- reader state -----------------------------------------------------------------------
def reader_state(reader: str = READER) -> tuple[bool, int, bytes] | None:
    """(card present, card event counter, ATR) as pcscd reports ``reader``; None when
    there is no such reader. pcsc-lite counts insertions and removals in the upper 16
    bits of the event state."""
    from smartcard import scard

    hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        return None
    try:
        hresult, states = scard.SCardGetStatusChange(
            ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)]
        )
        if hresult != scard.SCARD_S_SUCCESS:
            return None
        _, event, atr = states[0]
        return bool(event & scard.SCARD_STATE_PRESENT), (event >> 16) & 0xFFFF, bytes(atr)
    finally:
        scard.SCardReleaseContext(ctx)


def card_present(reader: str = READER) -> bool | None:
    state = reader_state(reader)
    return None if state is None else state[0]


def card_events(reader: str = READER) -> int:
    state = reader_state(reader)
    assert state is not None, f"no reader {reader!r}"
    return state[1]


def wait_card(present: bool, reader: str = READER, timeout: float = 10.0,
              *, events_not: int | None = None) -> None:
    """Until pcscd reports the card in (or out); with ``events_not``, also until its
    event counter moved from that value, i.e. pcscd's poll itself saw the change (a
    failed power-down marks the card absent at once, but only the poll thread notices
    a card coming back, and only after it has seen it gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = reader_state(reader)
        if state is not None and state[0] is present and (
            events_not is None or state[1] != events_not
        ):
            return
        time.sleep(0.02)
    raise AssertionError(f"reader {reader!r} did not see the card {'in' if present else 'out'}"
                         f" within {timeout} s")


# --- a card that loses power inside a command --------------------------------------------
class TearingCard:
    """Serves ``card``; once armed, the next APDU with the given INS loses power, either
    at its ``cut``-th persistent write or (cut None) after it completed but before its
    answer left the card. The card server then saves the torn memory and drops off."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self._armed: tuple[int, int | None] | None = None
        self.tore = False

    @property
    def eeprom(self) -> Eeprom:
        return self.card.eeprom

    def arm(self, ins: int, cut: int | None) -> None:
        self._armed = (ins, cut)
        self.tore = False

    def transmit(self, apdu: bytes) -> bytes:
        armed = self._armed
        if armed is None or len(apdu) < 4 or apdu[1] != armed[0]:
            return self.card.transmit(apdu)
        self._armed = None
        self.tore = True
        _, cut = armed
        if cut is None:
            self.card.transmit(apdu)
            self.card.power_off()
            raise PowerLoss("card pulled after the command, before its answer")
        self.card.eeprom.cut_at = self.card.eeprom.writes + cut
        try:
            self.card.transmit(apdu)
        finally:
            self.card.eeprom.cut_at = None
        raise AssertionError(f"the command made fewer than {cut + 1} persistent writes")

    def power_up(self) -> None:
        self.card.power_up()

    def power_off(self) -> None:
        self.card.power_off()

    def save(self) -> None:
        self.card.save()


def writes_per_command(card: Card, fn: Any, ins: int) -> int:
    """Persistent writes the command ``ins`` makes when ``fn(clone)`` runs on an
    in-process clone of ``card`` (the clone's memory is thrown away)."""
    clone = Card(Eeprom.from_image(card.eeprom.to_image()))
    counts: list[int] = []

    class Counting:
        def transmit(self, apdu: bytes) -> bytes:
            before = clone.eeprom.writes
            out = clone.transmit(apdu)
            if apdu[1] == ins:
                counts.append(clone.eeprom.writes - before)
            return out

    fn(Counting())
    assert len(counts) == 1, counts
    return counts[0]


# --- what a terminal does at the next tap ---------------------------------------------------
@dataclass
class Pending:
    """A DEBIT whose answer never came: the card's ATC it would carry, what it was for."""

    atc: int
    amount: int
    split: int = 0


def resolve(transport: Any, lab: Lab, sam: Sam, pending: Pending, *, tx_type: int) -> str:
    """Ask the card for the proof of the pending DEBIT: if the card has it the purchase
    completed (its TAC must verify); if not, nothing was debited and the purchase is
    taken again. Returns "completed" or "retried"."""
    purse = PurseClient(ApduClient(transport))
    purse.select()
    try:
        proof: SignedEvent = purse.transaction_proof(pending.atc)
    except CardError as exc:
        assert exc.sw == SW.RECORD_NOT_FOUND, f"{exc.sw:04X}"
        lab.purchase(transport, sam, pending.amount, split=pending.split, tx_type=tx_type)
        return "retried"
    e = proof.event
    assert (e.kind, e.atc, e.amount, e.split, e.terminal_id) == (
        EventKind.DEBIT, pending.atc, pending.amount, pending.split, sam.terminal_id
    )
    card_key = sam.verify_card_certificate(purse.certificate(), card_id=e.card_id, at=lab.now)
    assert sam.verify_tac(proof, card_key)
    return "completed"
