"""A phone wallet behind the real PC/SC stack (pcscd + vpcd): a terminal pays with it as
with a card (purchase, split, load, a DEBIT torn after its commit), a gate checks its
membership pass in the same tap, and a phone in reader mode reads and tops up a card
through a PC/SC reader."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tallypurse.card.card import Card
from tallypurse.cli import phone as phone_cli
from tallypurse.cli.bench_pcsc import PcscdProcess, PcscTransport, connect_reader, release, served
from tallypurse.core.hostapi import Ack, LoadAuthorisationResponse, LoadConfirm, LoadRequest
from tallypurse.core.messages import DebtSlot, LoadAuthorisation, SignedEvent
from tallypurse.core.money import currency
from tallypurse.core.protocol import PHONE_SD_AID, DebtState, Ins, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.applets import card_status
from tallypurse.host.tsm.membership import MembershipClient, MembershipPass, install_membership
from tallypurse.host.tsm.phone import issue_phone
from tallypurse.keystore.base import HOST_LOAD
from tallypurse.lab import Lab
from tallypurse.sam import Sam

from .conftest import Served, next_serial
from .harness import READER, Pending, TearingCard, card_present, resolve, wait_card
from .test_pcsc_purse import connection_lost

runner = CliRunner()
GATE_POOL = 1


@pytest.fixture
def served_phone(lab: Lab, pcscd: PcscdProcess, tmp_path: Path) -> Iterator[Served]:
    """A phone wallet (purse in the phone's own domain, credit record, membership pass)
    in the virtual reader's field, as `tallypurse card serve PHONE_FILE` serves it."""
    serial = next_serial()
    path = tmp_path / "phone.card"
    phone = Card.manufacture(serial, path=path)
    issue_phone(phone, lab.keystore, serial=serial, now=lab.now,
                credit=lab.credit_record(serial))
    install_membership(phone, lab.keystore, serial,
                       MembershipPass(b"frank", lab.now - 60, lab.now + 86400, 1 << GATE_POOL))
    tearing = TearingCard(phone)
    if card_present(READER):
        wait_card(False)  # the previous test's card has left the field
    with served(tearing, pcscd.port) as server:
        wait_card(True)
        yield Served(phone, tearing, path, server, pcscd)
    wait_card(False)


@pytest.fixture
def connect_phone(served_phone: Served) -> Iterator[Callable[[], Any]]:
    made: list[Any] = []

    def make() -> Any:
        conn = connect_reader(READER)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        release(conn)


def counters(transport: Any) -> Any:
    purse = PurseClient(ApduClient(transport))
    purse.select()
    return purse.counters()


def test_a_terminal_takes_a_purchase_from_a_phone_through_pcsc(
    lab: Lab, sam: Sam, served_phone: Served, connect_phone: Callable[[], Any]
) -> None:
    transport = PcscTransport(connect_phone())
    assert PHONE_SD_AID in {s.aid for s in card_status(transport, lab.keystore,
                                                      served_phone.card.serial)}
    lab.load(transport, 5_000)  # type: ignore[arg-type]
    tap = lab.purchase(transport, sam, 1_234)  # type: ignore[arg-type]  # TAC verified
    assert tap.session.card_id == served_phone.card.serial
    assert (tap.result.atc, tap.result.balance_after) == (1, 3_766)
    # the phone's file followed, as a card's does
    assert Card.open(served_phone.path).eeprom.snapshot() == served_phone.card.eeprom.snapshot()


def test_a_split_purchase_and_a_load_from_a_phone_through_pcsc(
    lab: Lab, sam: Sam, served_phone: Served, connect_phone: Callable[[], Any]
) -> None:
    transport = PcscTransport(connect_phone())
    lab.load(transport, 1_000)  # type: ignore[arg-type]
    tap = lab.purchase(  # type: ignore[arg-type]
        transport, sam, 1_000, split=1_500, tx_type=TxType.CANTEEN
    )
    purse = PurseClient(ApduClient(transport))
    purse.select()
    assert purse.debts()[0] == DebtSlot(DebtState.PENDING, tap.result.atc, 1_500)
    lab.load(transport, 250)  # type: ignore[arg-type]
    assert (counters(transport).balance, counters(transport).load_counter) == (250, 2)


def test_a_debit_on_a_phone_whose_answer_is_lost_is_completed_by_its_proof_at_the_next_tap(
    lab: Lab, sam: Sam, served_phone: Served, connect_phone: Callable[[], Any]
) -> None:
    conn = connect_phone()
    transport = PcscTransport(conn)
    lab.load(transport, 3_000)  # type: ignore[arg-type]
    served_phone.tearing.arm(Ins.DEBIT, None)
    served_phone.mark()
    with pytest.raises(connection_lost()):
        lab.purchase(transport, sam, 900)  # type: ignore[arg-type]
    release(conn)
    served_phone.wait_out()
    served_phone.insert()
    again = PcscTransport(connect_phone())
    assert resolve(again, lab, sam, Pending(atc=1, amount=900), tx_type=TxType.GENERAL) == (
        "completed")
    assert (counters(again).balance, counters(again).atc) == (2_100, 1)


def test_a_gate_checks_the_phones_pass_and_takes_a_payment_in_one_tap_through_pcsc(
    lab: Lab, sam: Sam, served_phone: Served, connect_phone: Callable[[], Any]
) -> None:
    transport = PcscTransport(connect_phone())
    lab.load(transport, 600)  # type: ignore[arg-type]
    gate = MembershipClient(ApduClient(transport))
    gate.select()
    assert gate.granted(lab.now, GATE_POOL)
    assert not gate.granted(lab.now, 0)
    assert lab.purchase(transport, sam, 350).result.balance_after == 250  # type: ignore[arg-type]


def test_phone_read_reads_a_card_through_a_pcsc_reader(
    lab: Lab, sam: Sam, served_phone: Served, connect_phone: Callable[[], Any]
) -> None:
    transport = PcscTransport(connect_phone())
    lab.load(transport, 900)  # type: ignore[arg-type]
    lab.purchase(transport, sam, 400)  # type: ignore[arg-type]
    result = runner.invoke(phone_cli.app, ["read", "--pcsc", "--reader", READER, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["reader"].startswith(READER)
    assert (data["card_id"], data["balance"], data["atc"]) == (
        served_phone.card.serial.hex(), 500, 1)
    assert [e["kind"] for e in data["log"]] == ["debit", "load"]
    assert data["credit_record"]["grade"] == "B" and data["debts"] == []
    assert data["membership"]["holder"] == "frank"


class LabHost:
    """The host's load service, answered with the lab's keys."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.confirmed: list[SignedEvent] = []

    def load_authorisation(self, body: LoadRequest) -> LoadAuthorisationResponse:
        auth = LoadAuthorisation(bytes.fromhex(body.card_id), body.load_counter, body.amount,
                                 currency(body.currency).numeric,
                                 bytes.fromhex(body.card_challenge), b"pcsc-ld1", self.lab.now)
        ref = self.lab.keystore.current(HOST_LOAD)
        return LoadAuthorisationResponse(
            idempotency_key=body.idempotency_key, authorisation=auth.to_bytes().hex(),
            signature=self.lab.keystore.sign(ref, auth.signed_data()).hex(),
            load_certificate=self.lab.keystore.certificate(ref).encode().hex())

    def confirm_load(self, body: LoadConfirm) -> Ack:
        self.confirmed.append(SignedEvent.parse(bytes.fromhex(body.record)))
        return Ack()


def test_a_phone_in_reader_mode_tops_up_through_a_pcsc_reader(
    lab: Lab, served_phone: Served, connect_phone: Callable[[], Any]
) -> None:
    transport = PcscTransport(connect_phone())
    host = LabHost(lab)
    result = phone_cli.topup(transport, host, 1_800)  # type: ignore[arg-type]
    assert result.confirmed and host.confirmed == [result.event]
    assert counters(transport).balance == 1_800


def test_card_serve_serves_a_phone_file_and_a_terminal_pays_with_it(
    lab: Lab, sam: Sam, pcscd: PcscdProcess, tmp_path: Path
) -> None:
    """`tallypurse card serve PHONE_FILE`, as a process, in front of a terminal's reader."""
    serial = next_serial()
    path = tmp_path / "phone.card"
    issue_phone(Card.manufacture(serial, path=path), lab.keystore, serial=serial, now=lab.now)
    lab.load(Card.open(path), 2_000)
    if card_present(READER):
        wait_card(False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tallypurse.cli.main", "card", "serve", str(path),
         "--port", str(pcscd.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_card(True)
        conn = connect_reader(READER)
        try:
            tap = lab.purchase(PcscTransport(conn), sam, 750)  # type: ignore[arg-type]
        finally:
            release(conn)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert (tap.session.card_id, tap.result.balance_after) == (serial, 1_250)
    wait_card(False)
    purse = PurseClient(ApduClient(Card.open(path)))
    purse.select()
    assert purse.counters().balance == 1_250  # the phone file was saved by the server
