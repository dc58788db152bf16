"""Loads: host-signed authorisations bound to the card's load counter, funded by cash or
the online account, confirmed by the card's own LOAD event, each taking effect once."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa

from tallypurse.core.hostapi import BatchAck, HostRejected, LoadConfirm, LoadRequest
from tallypurse.core.messages import LoadAuthorisation, SignedEvent
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.api.auth import create_token
from tallypurse.host.db.models import AuditRecord, LoadRow
from tallypurse.host.errors import (
    CARD_BLOCKED,
    IDEMPOTENCY_CONFLICT,
    INSUFFICIENT_FUNDS,
    LIMIT_EXCEEDED,
    LOAD_CLEARED,
    LOAD_CONFIRMED,
    LOAD_UNKNOWN,
    LOAD_VOIDED,
    RECORD_MISMATCH,
    VALIDATION,
    HostError,
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


# --- unconfirmed loads and their void ------------------------------------------------------------
def tokens(world: World) -> tuple[dict[str, str], dict[str, str]]:
    operator = create_token(world.host, "operator", name="olga")
    auditor = create_token(world.host, "auditor", name="audrey")
    return {"Authorization": f"Bearer {operator}"}, {"Authorization": f"Bearer {auditor}"}


def in_flight(world: World) -> int:
    recon = world.host.reports.reconciliation().get("EUR", {})
    return int(recon.get("outstanding", {}).get("loads_in_flight", 0))


def status_of(world: World, load_id: str) -> str:
    with world.host.uow() as uow:
        status = uow.session.scalar(sa.select(LoadRow.status).where(LoadRow.auth_id == load_id))
    assert status is not None
    return status


def upload_load(world: World, event: SignedEvent) -> BatchAck:
    """The terminal's batch with the LOAD entry, referenced by the load's key as terminals
    journal it."""
    with world.host.uow() as uow:
        key = uow.session.scalar(sa.select(LoadRow.idempotency_key).where(
            LoadRow.auth_id == event.event.terminal_challenge.hex()))
    assert key is not None
    ack: BatchAck = world.host.clearing.upload(
        world.tid, world.batch([world.entry(event, reference=key)]))
    return ack


def authorise(world: World, card_id: str, amount: int, *, funding: str = "cash",
              counter: int = 0, key: str | None = None) -> str:
    """An authorisation handed to a terminal that never came back: the load's id."""
    assert world.client is not None
    answer = world.client.load_authorisation(request(
        card_id, amount, funding, key=key or f"load-{secrets.token_hex(4)}", counter=counter))
    return LoadAuthorisation.parse(bytes.fromhex(answer.authorisation)).auth_id.hex()


@pytest.mark.parametrize("funding", ["cash", "online_account"])
def test_an_operator_finds_an_unconfirmed_load_and_voids_it_back_to_its_source(
        world: World, funding: str) -> None:
    holder = world.cardholder(funds=3_000)
    card = world.card(holder)
    load_id = authorise(world, card.serial.hex(), 1_200, funding=funding)
    operator, auditor = tokens(world)
    listed = world.http.get("/v1/ops/loads", params={"unconfirmed": "true"}, headers=auditor)
    assert listed.status_code == 200
    [row] = listed.json()
    assert (row["load_id"], row["amount"], row["status"], row["evidence"]) == (
        load_id, 1_200, "authorised", "none")
    assert in_flight(world) == 1_200
    assert world.http.post(f"/v1/ops/loads/{load_id}/void", json={"reason": "till crashed"},
                           headers=auditor).status_code == 403  # auditors only look
    done = world.http.post(f"/v1/ops/loads/{load_id}/void",
                           json={"reason": "customer kept the cash"}, headers=operator)
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["by"]) == ("voided", "olga")
    assert in_flight(world) == 0
    assert world.host.registry.online_balance(holder) == 3_000
    recon = world.host.reports.reconciliation()["EUR"]
    assert recon["taken_in"]["cash_for_loads"] == 0 and recon["losses"] == 0
    assert world.host.reports.audit()["balanced"] is True
    assert world.http.get("/v1/ops/loads", params={"unconfirmed": "true"},
                          headers=auditor).json() == []
    [every] = world.http.get("/v1/ops/loads", params={"card_id": card.serial.hex()},
                             headers=auditor).json()
    assert (every["load_id"], every["status"], "evidence" in every) == (load_id, "voided", False)
    assert world.http.get("/v1/ops/loads", params={"card_id": "XYZ"},
                          headers=auditor).status_code == 422
    with world.host.uow() as uow:
        audit = uow.session.scalars(sa.select(AuditRecord).where(
            AuditRecord.action == "load_void", AuditRecord.outcome == "done")).one()
        refused = uow.session.scalars(sa.select(AuditRecord).where(
            AuditRecord.action == "load_void", AuditRecord.outcome == "refused")).one()
        assert refused.role == "auditor"  # the auditor's attempt is on record too
        assert (audit.actor, audit.target, audit.reason, audit.source) == (
            "olga", load_id, "customer kept the cash", "api")


def test_a_void_is_refused_with_a_problem_and_changes_nothing(world: World) -> None:
    operator, _ = tokens(world)
    confirmed_card, cleared_card, open_card = world.card(), world.card(), world.card()
    world.load(confirmed_card, 500)
    upload_load(world, world.load(cleared_card, 700, confirm=False))
    voided = authorise(world, open_card.serial.hex(), 300, key="load-voided")
    world.host.loads.void(voided, reason="never reached the card", by="olga")
    with world.host.uow() as uow:
        ids = dict(uow.session.execute(sa.select(LoadRow.card_id, LoadRow.auth_id)).all())
    cases = [
        ("00" * 8, {"reason": "x"}, 404, LOAD_UNKNOWN.code),
        ("not-a-load", {"reason": "x"}, 404, LOAD_UNKNOWN.code),
        (ids[confirmed_card.serial.hex()], {"reason": "x"}, 409, LOAD_CONFIRMED.code),
        (ids[cleared_card.serial.hex()], {"reason": "x"}, 409, LOAD_CLEARED.code),
        (voided, {"reason": "again"}, 409, LOAD_VOIDED.code),
        (voided, {"reason": ""}, 422, VALIDATION.code),
        (voided, {}, 422, VALIDATION.code),
    ]
    before = (world.host.reports.reconciliation(), {i: status_of(world, i) for i in ids.values()})
    for load_id, body, status, code in cases:
        answer = world.http.post(f"/v1/ops/loads/{load_id}/void", json=body, headers=operator)
        assert answer.status_code == status, (load_id, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == code
    assert (world.host.reports.reconciliation(),
            {i: status_of(world, i) for i in ids.values()}) == before
    with world.host.uow() as uow:
        outcomes = dict(uow.session.execute(
            sa.select(AuditRecord.outcome, sa.func.count()).group_by(AuditRecord.outcome)).all())
    assert outcomes == {"done": 1, "failed": len(cases)}  # each refusal is on record too


def test_clearing_tells_whether_an_unconfirmed_authorisation_can_still_be_on_the_card(
        world: World) -> None:
    card = world.card()
    cid = card.serial.hex()
    spare = authorise(world, cid, 400, key="load-spare")  # same load counter, never used
    event = world.load(card, 1_000, confirm=False)
    used = event.event.terminal_challenge.hex()
    debit = world.purchase(card, 100)
    world.upload(debit)  # the card's later event arrives before its LOAD event
    evidence = {r["load_id"]: r["evidence"] for r in world.host.loads.unconfirmed()}
    assert evidence == {spare: "pending", used: "pending"}
    with pytest.raises(HostError) as exc:
        world.host.loads.void(used, reason="looks lost", by="olga")
    assert exc.value.what is LOAD_CLEARED
    assert status_of(world, used) == "authorised"
    world.upload(event)
    assert status_of(world, used) == "confirmed"
    [row] = world.host.loads.unconfirmed()
    assert (row["load_id"], row["evidence"]) == (spare, "unused")
    out = world.host.loads.void(spare, reason="superseded by the next load", by="olga")
    assert out["evidence"] == "unused"
    assert in_flight(world) == 0
    assert world.host.registry.card_info(cid).purse_host_view == 900
    assert world.host.reports.audit()["balanced"] is True


@pytest.mark.parametrize("path", ["batch", "confirm"])
def test_a_voided_load_found_on_the_card_is_taken_from_losses_and_alerted(
        world: World, path: str) -> None:
    assert world.client is not None
    card = world.card()
    cid = card.serial.hex()
    purse = PurseClient(ApduClient(card))
    purse.select()
    session = purse.initialize_load()
    answer = world.client.load_authorisation(LoadRequest(
        idempotency_key="load-late", card_id=cid, load_counter=session.load_counter,
        card_challenge=session.challenge.hex(), amount=1_500, currency="EUR", funding="cash"))
    event = purse.credit(LoadAuthorisation.parse(bytes.fromhex(answer.authorisation)),
                         bytes.fromhex(answer.signature), bytes.fromhex(answer.load_certificate))
    load_id = event.event.terminal_challenge.hex()
    world.host.loads.void(load_id, reason="terminal never confirmed", by="olga")
    assert world.host.reports.reconciliation()["EUR"]["taken_in"]["cash_for_loads"] == 0
    if path == "batch":
        assert upload_load(world, event).accepted == [len(world.journal)]
    else:
        world.client.confirm_load(LoadConfirm(idempotency_key="load-late",
                                              record=event.to_bytes().hex()))
    assert status_of(world, load_id) == "confirmed"
    assert world.host.registry.card_info(cid).purse_host_view == 1_500
    recon = world.host.reports.reconciliation()["EUR"]
    assert recon["outstanding"]["loads_in_flight"] == 0
    assert recon["losses"] == 1_500
    assert world.host.reports.audit()["balanced"] is True
    alerts = [a for a in world.host.reports.alerts() if a["kind"] == "load_void_reversed"]
    assert len(alerts) == 1 and load_id in alerts[0]["detail"]
    world.upload(event)  # the same event again changes nothing
    assert world.host.reports.reconciliation()["EUR"]["losses"] == 1_500
    assert len([a for a in world.host.reports.alerts()
                if a["kind"] == "load_void_reversed"]) == 1
    with pytest.raises(HostError) as exc:
        world.host.loads.void(load_id, reason="again", by="olga")
    assert exc.value.what is LOAD_CLEARED if path == "batch" else LOAD_CONFIRMED
