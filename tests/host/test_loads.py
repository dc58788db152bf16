"""Loads: host-signed authorisations bound to the card's load counter, funded by cash or
the online account, confirmed by the card's own LOAD event, each taking effect once."""

from __future__ import annotations

import pytest

from tallypurse.core.hostapi import HostRejected, LoadConfirm, LoadRequest
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.errors import (
    CARD_BLOCKED,
    IDEMPOTENCY_CONFLICT,
    INSUFFICIENT_FUNDS,
    LIMIT_EXCEEDED,
    RECORD_MISMATCH,
)

from .world import World


def request(card_id: str, amount: int, funding: str = "cash", key: str = "load-000001",
            counter: int = 0) -> LoadRequest:
    return LoadRequest.model_validate({
        "idempotency_key": key, "card_id": card_id, "load_counter": counter,
        "card_challenge": "00" * 8, "amount": amount, "currency": "EUR", "funding": funding})


def test_a_cash_load_reaches_the_purse_float_when_the_card_confirms_it(world: World) -> None:
    card = world.card()
    world.load(card, 4_000)
    assert PurseClient(ApduClient(card)).counters().balance == 4_000
    recon = world.host.reports.reconciliation()["EUR"]
    assert recon["taken_in"]["cash_for_loads"] == 4_000
    assert recon["outstanding"]["purse_float"] == 4_000
    assert recon["outstanding"]["loads_in_flight"] == 0
    assert world.host.reports.audit()["balanced"] is True


def test_an_unconfirmed_load_stays_in_flight_until_its_event_is_uploaded(world: World) -> None:
    card = world.card()
    event = world.load(card, 1_000, confirm=False)
    assert world.host.reports.reconciliation()["EUR"]["outstanding"]["loads_in_flight"] == 1_000
    ack = world.upload(event)
    assert ack.accepted == [1]
    assert world.host.reports.reconciliation()["EUR"]["outstanding"]["loads_in_flight"] == 0
    assert world.host.registry.card_info(card.serial.hex()).purse_host_view == 1_000


def test_a_load_from_the_online_account_moves_the_money_once(world: World) -> None:
    holder = world.cardholder(funds=3_000)
    card = world.card(holder)
    event = world.load(card, 2_000, funding="online_account")
    assert world.host.registry.online_balance(holder) == 1_000
    world.upload(event)  # the same LOAD event in a batch is a duplicate
    assert world.host.registry.card_info(card.serial.hex()).purse_host_view == 2_000
    assert world.host.reports.audit()["balanced"] is True


def test_a_retried_authorisation_returns_the_same_signed_answer(world: World) -> None:
    assert world.client is not None
    card = world.card()
    body = request(card.serial.hex(), 500)
    first = world.client.load_authorisation(body)
    assert world.client.load_authorisation(body) == first
    with pytest.raises(HostRejected) as exc:
        world.client.load_authorisation(request(card.serial.hex(), 600))
    assert exc.value.problem.code == IDEMPOTENCY_CONFLICT.code
    assert world.host.reports.reconciliation()["EUR"]["outstanding"]["loads_in_flight"] == 500


@pytest.mark.parametrize("amount,funding,code", [
    (100_001, "cash", LIMIT_EXCEEDED.code),
    (5_000, "online_account", INSUFFICIENT_FUNDS.code),
])
def test_a_load_over_the_cap_or_unfunded_is_refused(world: World, amount: int, funding: str,
                                                     code: int) -> None:
    assert world.client is not None
    card = world.card(world.cardholder(funds=100))
    with pytest.raises(HostRejected) as exc:
        world.client.load_authorisation(request(card.serial.hex(), amount, funding))
    assert exc.value.problem.code == code
    assert world.host.reports.reconciliation().get("EUR", {}).get(
        "outstanding", {}).get("loads_in_flight", 0) == 0


def test_a_blacklisted_card_gets_no_load(world: World) -> None:
    assert world.client is not None
    card = world.card()
    world.host.registry.set_card_status(card.serial.hex(), "lost")
    with pytest.raises(HostRejected) as exc:
        world.client.load_authorisation(request(card.serial.hex(), 100))
    assert exc.value.problem.code == CARD_BLOCKED.code


def test_a_confirmation_with_another_record_is_refused(world: World) -> None:
    assert world.client is not None
    card = world.card()
    world.load(card, 1_000)
    debit = world.purchase(card, 100)
    world.client.load_authorisation(request(card.serial.hex(), 700, key="load-other-1",
                                            counter=1))
    with pytest.raises(HostRejected) as exc:
        world.client.confirm_load(LoadConfirm(idempotency_key="load-other-1",
                                              record=debit.to_bytes().hex()))
    assert exc.value.problem.code == RECORD_MISMATCH.code
