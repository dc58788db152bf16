"""Online purchases: the card signs, the host debits the online account in real time,
idempotently; a reversal undoes an answer the terminal never got."""

from __future__ import annotations

import pytest

from tallypurse.card.card import Card
from tallypurse.core.hostapi import (
    HostRejected,
    OnlineAuthoriseRequest,
    OnlineAuthoriseResponse,
    ReversalRequest,
)
from tallypurse.core.messages import OnlineRequest
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.errors import CHALLENGE_INVALID, IDEMPOTENCY_CONFLICT, RECORD_INVALID
from tallypurse.host.online import INSUFFICIENT_FUNDS, RESTRICTED_CARD, REVERSED

from .world import World


def signed_request(world: World, card: Card, amount: int,
                   key: str = "online-0001") -> OnlineAuthoriseRequest:
    """What the terminal sends: the card's signature over the amount and a host challenge."""
    assert world.client is not None and world.sam is not None
    challenge = world.client.online_challenge()
    purse = PurseClient(ApduClient(card))
    purse.select()
    session = purse.initialize_purchase(world.sam.certificate)
    counter, signature = purse.online_authorise(
        amount=amount, currency=session.currency, tx_type=0, time=world.clock(),
        host_challenge=bytes.fromhex(challenge.challenge))
    request = OnlineRequest(session.card_id, counter, amount, session.currency, 0,
                            world.sam.terminal_id, world.clock(),
                            bytes.fromhex(challenge.challenge))
    return OnlineAuthoriseRequest(idempotency_key=key, request=request.to_bytes().hex(),
                                  signature=signature.hex())


def authorise(world: World, request: OnlineAuthoriseRequest) -> OnlineAuthoriseResponse:
    assert world.client is not None
    return world.client.online_authorise(request)


def test_an_online_purchase_debits_the_online_account_and_pays_the_merchant(
        world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    answer = authorise(world, signed_request(world, card, 6_000))
    assert answer.approved and answer.auth_code and answer.available_after == 4_000
    assert world.host.registry.online_balance(holder) == 4_000
    assert world.host.settlement.merchant_balance(world.merchant_id) == 6_000
    assert PurseClient(ApduClient(card)).counters().balance == 0  # the purse is not touched


def test_a_retried_authorisation_gets_the_same_answer_and_debits_once(world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    request = signed_request(world, card, 2_500)
    first = authorise(world, request)
    assert authorise(world, request) == first
    assert world.host.registry.online_balance(holder) == 7_500


def test_a_short_online_account_is_declined_with_a_reason(world: World) -> None:
    holder = world.cardholder(funds=100)
    card = world.card(holder)
    answer = authorise(world, signed_request(world, card, 2_500))
    assert not answer.approved and answer.reason_code == INSUFFICIENT_FUNDS
    assert world.host.registry.online_balance(holder) == 100


def test_a_blacklisted_card_is_declined(world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    world.host.registry.set_card_status(card.serial.hex(), "stolen")
    answer = authorise(world, signed_request(world, card, 100))
    assert not answer.approved and answer.reason_code == RESTRICTED_CARD


def test_a_reversal_gives_the_money_back_once(world: World) -> None:
    assert world.client is not None
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    authorise(world, signed_request(world, card, 3_000, key="online-lost-1"))
    for _ in range(2):
        assert world.client.reverse(ReversalRequest(idempotency_key="online-lost-1")).reversed
    assert world.host.registry.online_balance(holder) == 10_000
    assert world.host.settlement.merchant_balance(world.merchant_id) == 0
    assert world.host.reports.audit()["balanced"] is True


def test_a_reversal_that_overtakes_its_authorisation_makes_it_decline(world: World) -> None:
    assert world.client is not None
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    request = signed_request(world, card, 3_000, key="online-late-1")
    assert world.client.reverse(ReversalRequest(idempotency_key="online-late-1")).reversed
    answer = authorise(world, request)
    assert not answer.approved and answer.reason_code == REVERSED
    assert world.host.registry.online_balance(holder) == 10_000


def test_a_challenge_is_good_once(world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    request = signed_request(world, card, 100, key="online-once-1")
    authorise(world, request)
    with pytest.raises(HostRejected) as exc:
        authorise(world, request.model_copy(update={"idempotency_key": "online-once-2"}))
    assert exc.value.problem.code == CHALLENGE_INVALID.code


def test_a_request_the_card_did_not_sign_is_refused_and_changes_nothing(world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    request = signed_request(world, card, 100)
    forged = bytearray.fromhex(request.request)
    forged[12:16] = (9_000).to_bytes(4, "big")  # a bigger amount than the card signed
    with pytest.raises(HostRejected) as exc:
        authorise(world, request.model_copy(update={"request": forged.hex()}))
    assert exc.value.problem.code == RECORD_INVALID.code
    assert world.host.registry.online_balance(holder) == 10_000


def test_an_authorisation_key_reused_for_another_request_is_refused(world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    authorise(world, signed_request(world, card, 100, key="online-same-1"))
    with pytest.raises(HostRejected) as exc:
        authorise(world, signed_request(world, card, 200, key="online-same-1"))
    assert exc.value.problem.code == IDEMPOTENCY_CONFLICT.code
