"""The phone as a reader: `phone read` through the purse's own APDUs, and the top-up seam
(INITIALIZE LOAD → host authorisation → CREDIT → host confirmation)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tallypurse.card.card import Card
from tallypurse.card.storage import PowerLoss
from tallypurse.cli import phone as phone_cli
from tallypurse.core import cert, crypto
from tallypurse.core.errors import CardError, CryptoError
from tallypurse.core.hostapi import (
    ROUTES,
    Ack,
    HostUnavailable,
    LoadConfirm,
    LoadRequest,
    Problem,
)
from tallypurse.core.httpsig import SignatureError, verify_request
from tallypurse.core.protocol import EventKind, Ins, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.tsm.membership import install_membership
from tallypurse.lab import Lab
from tallypurse.sam import Sam

from .conftest import NOW, FakeHost, PhoneFactory, a_pass, phone_serial

runner = CliRunner()


@pytest.fixture
def env(lab: Lab) -> dict[str, str]:
    return {"TALLYPURSE_KEYSTORE_PASSPHRASE": "lab", "TALLYPURSE_SAM_PASSPHRASE": "sam"}


def balance(card: Card) -> int:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse.counters().balance


def read_json(*args: str) -> dict[str, object]:
    result = runner.invoke(phone_cli.app, ["read", *args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


# --- phone read --------------------------------------------------------------------------------
def test_phone_read_prints_balance_last_transactions_credit_record_and_debts_as_json(
    lab: Lab, sam: Sam, make_card: Callable[..., Card], tmp_path: Path
) -> None:
    path = tmp_path / "card.card"
    card = make_card(path=path)
    lab.load(card, 2_000)
    lab.purchase(card, sam, 1_500, time=NOW + 60)
    split = lab.purchase(card, sam, 500, split=700, tx_type=TxType.CANTEEN, time=NOW + 120)

    data = read_json("--card", str(path))  # a fresh process reads the card file

    assert data["card_id"] == card.serial.hex() and data["reader"] == str(path)
    assert (data["balance"], data["balance_text"], data["currency"]) == (0, "0.00 EUR", "EUR")
    assert (data["atc"], data["load_counter"], data["blocked"]) == (2, 1, False)
    assert data["log"] == [
        {"kind": "debit", "atc": 2, "load_counter": 1, "amount": 500, "split": 700,
         "tx_type": "canteen", "balance_before": 500, "balance_after": 0,
         "terminal_id": sam.terminal_id.hex(), "time": NOW + 120},
        {"kind": "debit", "atc": 1, "load_counter": 1, "amount": 1_500, "split": 0,
         "tx_type": "general", "balance_before": 2_000, "balance_after": 500,
         "terminal_id": sam.terminal_id.hex(), "time": NOW + 60},
        {"kind": "load", "atc": 0, "load_counter": 1, "amount": 2_000, "split": 0,
         "tx_type": "general", "balance_before": 0, "balance_after": 2_000,
         "terminal_id": "0000000000000000", "time": NOW},
    ]
    assert data["credit_record"] == {
        "version": 1, "grade": "B", "per_tap_overdraft": 2_000, "max_outstanding": 5_000,
        "max_slots": 4, "allowed_types": ["canteen", "transit"], "expires": NOW + 365 * 86400,
    }
    assert data["debts"] == [
        {"slot": 0, "state": "pending", "ref": split.result.atc, "amount": 700}
    ]
    assert data["membership"] is None


def test_phone_read_shows_a_card_without_credit_and_the_membership_pass_it_carries(
    lab: Lab, make_card: Callable[..., Card], tmp_path: Path
) -> None:
    path = tmp_path / "card.card"
    card = make_card(path=path, credit=False)
    install_membership(card, lab.keystore, card.serial, a_pass(b"dora", points=12))
    data = read_json("--card", str(path))
    assert (data["credit_record"], data["debts"], data["log"]) == (None, [], [])
    assert data["membership"] == {"holder": "dora", "not_before": NOW - 3600,
                                  "not_after": NOW + 365 * 86400, "points": 12,
                                  "entitlements": [0, 1, 3]}


def test_phone_read_text_names_the_balance_and_the_debts(
    lab: Lab, sam: Sam, make_card: Callable[..., Card], tmp_path: Path
) -> None:
    path = tmp_path / "card.card"
    card = make_card(path=path)
    lab.load(card, 300)
    lab.purchase(card, sam, 300, split=200, tx_type=TxType.TRANSIT)
    result = runner.invoke(phone_cli.app, ["read", "--card", str(path)])
    assert result.exit_code == 0, result.output
    assert "balance 0.00 EUR" in result.output
    assert "debt slot 0" in result.output and "PENDING" in result.output
    assert "credit grade B" in result.output


@pytest.mark.parametrize("args", [[], ["--card", "CARD", "--pcsc"]])
def test_phone_read_needs_either_a_card_file_or_a_pcsc_reader(
    make_card: Callable[..., Card], tmp_path: Path, args: list[str]
) -> None:
    path = tmp_path / "card.card"
    make_card(path=path)
    result = runner.invoke(phone_cli.app,
                           ["read", *[str(path) if a == "CARD" else a for a in args]])
    assert result.exit_code == 2
    assert "--card CARD_FILE or --pcsc" in result.output


# --- phone new / add-purse -------------------------------------------------------------------
def test_phone_new_and_add_purse_issue_a_wallet_that_phone_read_reads(
    lab: Lab, sam: Sam, env: dict[str, str], tmp_path: Path
) -> None:
    keystore = str(lab.directory / "keystore")
    out = tmp_path / "phone.card"
    serial = phone_serial().hex()
    result = runner.invoke(phone_cli.app, [
        "new", "--keystore", keystore, "--serial", serial, "--out", str(out),
        "--without-purse", "--member", "erin", "--entitlements", "0,2"], env=env)
    assert result.exit_code == 0, result.output
    assert "no purse" in result.output and "membership pass for erin" in result.output
    refused = runner.invoke(phone_cli.app, ["read", "--card", str(out)])
    assert refused.exit_code == 2  # no purse on it yet

    added = runner.invoke(phone_cli.app, ["add-purse", str(out), "--keystore", keystore],
                          env=env)
    assert added.exit_code == 0, added.output
    again = runner.invoke(phone_cli.app, ["add-purse", str(out), "--keystore", keystore],
                          env=env)
    assert again.exit_code == 2

    phone = Card.open(out)
    lab.load(phone, 900)
    lab.purchase(phone, sam, 100, time=int(time.time()) + 5)  # certified at issue time
    data = read_json("--card", str(out))
    assert (data["card_id"], data["balance"]) == (serial, 800)
    membership = data["membership"]
    assert isinstance(membership, dict)
    assert (membership["holder"], membership["entitlements"]) == ("erin", [0, 2])


def test_phone_new_refuses_an_existing_file_and_a_bad_entitlement(
    lab: Lab, env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "phone.card"
    out.write_bytes(b"x")
    args = ["new", "--keystore", str(lab.directory / "keystore"), "--serial",
            phone_serial().hex(), "--out", str(out)]
    assert runner.invoke(phone_cli.app, args, env=env).exit_code == 2
    assert out.read_bytes() == b"x"
    out2 = tmp_path / "phone2.card"
    bad = runner.invoke(phone_cli.app, [*args[:-1], str(out2), "--entitlements", "32"], env=env)
    assert bad.exit_code == 2 and not out2.exists()


# --- the top-up seam -----------------------------------------------------------------------------
def test_a_phone_tops_a_card_up_through_the_host_and_confirms_the_cards_record(
    lab: Lab, card: Card
) -> None:
    host = FakeHost(lab)
    result = phone_cli.topup(card, host, 2_500)  # type: ignore[arg-type]
    assert result.confirmed and balance(card) == 2_500
    request = host.requests[0]
    assert (request.card_id, request.amount, request.currency, request.load_counter) == (
        card.serial.hex(), 2_500, "EUR", 0)
    record = host.confirmed[result.idempotency_key]
    assert record == result.event
    e = record.event
    assert (e.kind, e.amount, e.balance_after, e.load_counter) == (EventKind.LOAD, 2_500, 2_500, 1)
    # the record is the card's own: its TAC verifies with the card's certified key
    purse = PurseClient(ApduClient(card))
    purse.select()
    card_key = cert.parse(purse.certificate()).public_key
    assert crypto.verify(card_key, record.tac, e.signed_data())
    # a second top-up is a new authorisation, bound to the card's next load counter
    phone_cli.topup(card, host, 500)  # type: ignore[arg-type]
    assert host.requests[1].load_counter == 1 and balance(card) == 3_000


def test_a_top_up_repays_a_failed_debt_before_it_adds_to_the_purse(
    lab: Lab, sam: Sam, card: Card
) -> None:
    lab.load(card, 400)
    tap = lab.purchase(card, sam, 400, split=600, tx_type=TxType.CANTEEN)
    lab.fail_debt(card, tap.result.atc, 600)
    result = phone_cli.topup(card, FakeHost(lab), 1_000)  # type: ignore[arg-type]
    assert (result.event.event.split, result.event.event.balance_after) == (600, 400)


def test_a_phone_tops_up_a_phone_wallet_too(lab: Lab, make_phone: PhoneFactory) -> None:
    phone, _ = make_phone()
    result = phone_cli.topup(phone, FakeHost(lab), 1_200)  # type: ignore[arg-type]
    assert result.event.event.card_id == phone.serial and balance(phone) == 1_200


class LoseCredit:
    """Loses the card's answer to CREDIT: after it committed (cut None) or at its
    ``cut``-th persistent write (before or after the commit point)."""

    def __init__(self, card: Card, cut: int | None) -> None:
        self.card = card
        self.cut = cut

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[1] != Ins.CREDIT:
            return self.card.transmit(apdu)
        if self.cut is None:
            self.card.transmit(apdu)
            self.card.power_off()
            raise PowerLoss("answer lost")
        self.card.eeprom.cut_at = self.card.eeprom.writes + self.cut
        return self.card.transmit(apdu)


@pytest.mark.parametrize(("cut", "loaded"), [(None, True), (0, False)])
def test_a_top_up_whose_answer_was_lost_is_settled_from_the_cards_log_at_the_next_tap(
    lab: Lab, card: Card, cut: int | None, loaded: bool
) -> None:
    host = FakeHost(lab)
    with pytest.raises(phone_cli.TopupInterrupted) as err:
        phone_cli.topup(LoseCredit(card, cut), host, 1_500)  # type: ignore[arg-type]
    assert host.confirmed == {}
    card.power_up()  # the next tap
    result = phone_cli.finish_topup(card, host, err.value.pending)  # type: ignore[arg-type]
    if loaded:
        assert result is not None and result.confirmed
        assert host.confirmed[err.value.pending.idempotency_key].event.amount == 1_500
        assert balance(card) == 1_500
    else:
        assert result is None and host.confirmed == {} and balance(card) == 0


def test_a_phone_relays_no_authorisation_that_is_not_for_this_card_session_and_amount(
    lab: Lab, card: Card
) -> None:
    with pytest.raises(CryptoError, match="not relayed"):
        phone_cli.topup(card, FakeHost(lab, lie_amount=1), 100)  # type: ignore[arg-type]
    assert balance(card) == 0


def test_a_card_refusing_the_load_loads_nothing_and_confirms_nothing(
    lab: Lab, card: Card
) -> None:
    host = FakeHost(lab)
    with pytest.raises(CardError):  # over the purse cap
        phone_cli.topup(card, host, 100_001)  # type: ignore[arg-type]
    assert host.confirmed == {} and balance(card) == 0


def test_a_host_that_does_not_acknowledge_leaves_the_load_unconfirmed_but_kept(
    lab: Lab, card: Card
) -> None:
    class Mute(FakeHost):
        def confirm_load(self, body: LoadConfirm) -> Ack:
            raise HostUnavailable("confirm: HTTP 503")

    result = phone_cli.topup(card, Mute(lab), 700)  # type: ignore[arg-type]
    assert not result.confirmed and "503" in result.note
    assert result.event.event.balance_after == 700 == balance(card)


# --- `phone topup` over HTTP (HttpHostClient), requests signed by the phone's SAM ---------
@pytest.fixture
def http_host(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    """A host answering the phone's HTTP requests in process: it checks each request's
    RFC 9421 signature against the enrolled SAM's key, then answers as FakeHost does."""
    fake = FakeHost(lab)
    keys: dict[str, bytes] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        body = request.read()
        try:
            verify_request("POST", str(request.url), dict(request.headers), body,
                           resolve_key=keys.__getitem__, now=NOW, max_age=10**10, skew=10**10)
        except SignatureError as exc:
            problem = Problem(title="unauthorised", status=401, detail=exc.message, code=2001)
            return httpx.Response(401, content=problem.model_dump_json())
        if request.url.path == ROUTES["load_authorisation"]:
            answer = fake.load_authorisation(LoadRequest.model_validate_json(body))
        elif request.url.path == ROUTES["confirm_load"]:
            answer = fake.confirm_load(LoadConfirm.model_validate_json(body))  # type: ignore[assignment]
        else:
            return httpx.Response(404)
        return httpx.Response(200, content=answer.model_dump_json())

    monkeypatch.setattr(phone_cli, "http_transport", httpx.MockTransport(handle))
    fake.keys = keys  # type: ignore[attr-defined]
    yield fake


def test_phone_topup_goes_through_the_host_api_over_http_signed_by_the_phones_sam(
    lab: Lab, http_host: FakeHost, make_card: Callable[..., Card], env: dict[str, str],
    tmp_path: Path
) -> None:
    sam = lab.new_sam(tmp_path / "sam.json", b"PHONE001")
    http_host.keys[sam.terminal_id.hex()] = sam.public_key  # type: ignore[attr-defined]
    sam.close()
    path = tmp_path / "card.card"
    card = make_card(path=path)
    result = runner.invoke(phone_cli.app, [
        "topup", "--amount", "12.50", "--host", "http://host.test", "--sam",
        str(tmp_path / "sam.json"), "--card", str(path), "--json"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["card_id"], out["amount"], out["balance"], out["confirmed"]) == (
        card.serial.hex(), 1_250, 1_250, True)
    assert out["idempotency_key"] in http_host.confirmed
    assert balance(Card.open(path)) == 1_250


def test_phone_topup_without_the_sam_is_refused_by_the_host_and_loads_nothing(
    http_host: FakeHost, make_card: Callable[..., Card], env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "card.card"
    make_card(path=path)
    result = runner.invoke(phone_cli.app, [
        "topup", "--amount", "5", "--host", "http://host.test", "--card", str(path)], env=env)
    assert result.exit_code == 2
    assert "nothing was loaded" in result.output
    assert balance(Card.open(path)) == 0
