"""Fixtures for phone wallets, membership passes and reader mode: phones of their own
serial range ("PHON"), issued by the session lab through their own commands."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from tallypurse.card.card import Card
from tallypurse.core.hostapi import (
    Ack,
    LoadAuthorisationResponse,
    LoadConfirm,
    LoadRequest,
)
from tallypurse.core.messages import LoadAuthorisation, SignedEvent
from tallypurse.core.money import currency
from tallypurse.host.tsm.membership import MembershipPass
from tallypurse.host.tsm.phone import IssuedPhone, issue_phone
from tallypurse.keystore.base import HOST_LOAD
from tallypurse.lab import Lab

NOW = 1_767_225_600  # the session lab's time
YEAR = 365 * 24 * 3600
_serials = itertools.count(1)


def phone_serial() -> bytes:
    return (0x5048_4F4E_0000_0000 + next(_serials)).to_bytes(8, "big")


def a_pass(holder: bytes = b"alice", *, entitlements: int = 0b1011, points: int = 0,
           not_before: int = NOW - 3600, not_after: int = NOW + YEAR) -> MembershipPass:
    return MembershipPass(holder, not_before, not_after, entitlements, points)


class Recorder:
    """A transport that keeps every command APDU it passes to the card."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.commands: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        return self.card.transmit(apdu)


PhoneFactory = Callable[..., tuple[Card, IssuedPhone]]


@pytest.fixture
def make_phone(lab: Lab) -> PhoneFactory:
    """Factory: a phone wallet issued into its own domain (purse and credit record by
    default)."""

    def make(*, with_purse: bool = True, credit: bool = True,
             path: Path | None = None) -> tuple[Card, IssuedPhone]:
        serial = phone_serial()
        phone = Card.manufacture(serial, path=path)
        record = lab.credit_record(serial) if credit and with_purse else None
        issued = issue_phone(phone, lab.keystore, serial=serial, now=lab.now, credit=record,
                             with_purse=with_purse)
        return phone, issued

    return make


@pytest.fixture
def phone(make_phone: PhoneFactory) -> Card:
    return make_phone()[0]


class FakeHost:
    """The two host calls a phone in reader mode makes, answered with the lab's keys
    (as the host's load service signs them); every other HostApi call is refused."""

    def __init__(self, lab: Lab, *, lie_amount: int = 0) -> None:
        self.lab = lab
        self.lie_amount = lie_amount
        self.requests: list[LoadRequest] = []
        self.confirmed: dict[str, SignedEvent] = {}

    def load_authorisation(self, body: LoadRequest) -> LoadAuthorisationResponse:
        self.requests.append(body)
        auth = LoadAuthorisation(
            bytes.fromhex(body.card_id), body.load_counter, body.amount + self.lie_amount,
            currency(body.currency).numeric, bytes.fromhex(body.card_challenge),
            len(self.requests).to_bytes(8, "big"), self.lab.now,
        )
        ks = self.lab.keystore
        ref = ks.current(HOST_LOAD)
        return LoadAuthorisationResponse(
            idempotency_key=body.idempotency_key,
            authorisation=auth.to_bytes().hex(),
            signature=ks.sign(ref, auth.signed_data()).hex(),
            load_certificate=ks.certificate(ref).encode().hex(),
        )

    def confirm_load(self, body: LoadConfirm) -> Ack:
        self.confirmed[body.idempotency_key] = SignedEvent.parse(bytes.fromhex(body.record))
        return Ack()

    def __getattr__(self, name: str) -> object:
        raise AttributeError(f"the fake host does not answer {name}")
