"""Agent debits over signed HTTP: the request's nonce is recorded in the debit's own
transaction, the terminal's key is kept per process but every debit re-reads the terminal
(a revoked terminal is refused at once, a new SAM is heard at once)."""

from __future__ import annotations

import sqlalchemy as sa

from tallypurse.core.cert import KeyRef
from tallypurse.core.hostapi import ROUTES, AgentDebitAck, EnrolRequest
from tallypurse.host import errors as E
from tallypurse.host.db.models import Debt, RequestNonce
from tallypurse.sam import Sam

from .client import SignedClient
from .test_agent import debt_states, split_purchase
from .test_http import problem_of
from .world import World

PATH = ROUTES["agent_debit"]


def nonces(world: World) -> int:
    with world.host.uow() as uow:
        return int(uow.session.scalar(sa.select(sa.func.count()).select_from(RequestNonce)) or 0)


def test_a_replayed_agent_debit_is_refused_and_changes_nothing(world: World) -> None:
    assert world.client is not None
    holder = world.cardholder(funds=2_000)
    raw = world.agent_request(split_purchase(world, world.card(holder))).model_dump_json().encode()
    headers = {**world.client.headers(PATH, raw, nonce="ab" * 16),
               "Content-Type": "application/json"}
    before = nonces(world)
    first = world.http.post(PATH, content=raw, headers=headers)
    assert first.status_code == 200
    assert AgentDebitAck.model_validate(first.json()).status == "accepted"
    assert nonces(world) == before + 1  # committed with the debit
    again = world.http.post(PATH, content=raw, headers=headers)
    assert again.status_code == 401 and problem_of(again).code == E.REPLAY.code
    assert debt_states(world) == [(500, "settled")]
    assert world.host.registry.online_balance(holder) == 1_500


def test_a_refused_agent_debit_records_no_nonce_and_no_debt(world: World) -> None:
    assert world.client is not None
    holder = world.cardholder(funds=2_000)
    request = world.agent_request(split_purchase(world, world.card(holder)))
    assert world.client.agent_debit(request).status == "accepted"
    before = nonces(world)
    other = request.model_copy(update={"tx_type": "transit"}).model_dump_json().encode()
    response = world.client.post(PATH, other)
    assert response.status_code == 409
    assert problem_of(response).code == E.IDEMPOTENCY_CONFLICT.code
    assert nonces(world) == before  # rolled back with everything else
    assert debt_states(world) == [(500, "settled")]
    # A retry of the same debit (a new signature) is a duplicate; its nonce is kept.
    assert world.client.agent_debit(request).status == "duplicate"
    assert nonces(world) == before + 1


def test_a_terminal_revoked_after_its_key_was_kept_is_refused_at_once(world: World) -> None:
    assert world.client is not None
    holder = world.cardholder(funds=5_000)
    card = world.card(holder)
    assert world.client.agent_debit(
        world.agent_request(split_purchase(world, card))).status == "accepted"
    request = world.agent_request(split_purchase(world, card))
    world.host.tms.revoke(world.tid)
    response = world.client.post(PATH, request.model_dump_json().encode())
    assert response.status_code == 403 and problem_of(response).code == E.TERMINAL_REVOKED.code
    assert debt_states(world) == [(500, "settled")]
    assert world.host.registry.online_balance(holder) == 4_500


def test_a_terminal_with_a_new_sam_is_heard_at_once(world: World) -> None:
    assert world.client is not None and world.sam is not None
    holder = world.cardholder(funds=5_000)
    card = world.card(holder)
    assert world.client.agent_debit(
        world.agent_request(split_purchase(world, card))).status == "accepted"
    split = split_purchase(world, card)  # tapped with the old SAM, forwarded by the new one
    old_client = world.client
    sam = Sam.create(world.tmp / "sam2.json", "sam", terminal_id=world.sam.terminal_id)
    client = SignedClient(world.http, sam, world.clock)
    answer = client.enrol(EnrolRequest(terminal_id=world.tid, csr=sam.certificate_request().hex(),
                                       token=world.host.tms.new_token(world.tid)))
    sam.install_certificate(bytes.fromhex(answer.certificate),
                            {KeyRef.decode(k.encode()): bytes.fromhex(v)
                             for k, v in answer.roots.items()}, at=world.clock())
    try:
        request = world.agent_request(split)
        stale = old_client.post(PATH, request.model_dump_json().encode())
        assert stale.status_code == 401
        assert problem_of(stale).code == E.SIGNATURE_INVALID.code
        assert client.agent_debit(request).status == "accepted"
    finally:
        sam.close()
    with world.host.uow() as uow:
        assert uow.session.scalar(sa.select(sa.func.count()).select_from(Debt)) == 2
    assert world.host.registry.online_balance(holder) == 4_000
