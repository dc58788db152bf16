"""The HTTP API: SAM-signed terminal requests (RFC 9421), replay and tampering refused,
problem documents with stable codes for bad input that change nothing, roles for people."""

from __future__ import annotations

import json
import warnings

import pytest
import sqlalchemy as sa

from tallypurse.core.hostapi import ROUTES, Problem, SyncRequest
from tallypurse.core.protocol import TxType
from tallypurse.host import errors as E
from tallypurse.host.api import create_app
from tallypurse.host.api.auth import create_token
from tallypurse.host.db.models import LedgerTransaction, RequestNonce
from tallypurse.host.ledger import LedgerError
from tallypurse.host.service import Host

from .world import World

SYNC = ROUTES["sync"]
BODY = SyncRequest(blacklist_version=0, actions_version=0, parameters_version=0)


def problem_of(response: object) -> Problem:
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    return Problem.model_validate(response.json())  # type: ignore[attr-defined]


def state(host: Host) -> tuple[int, int]:
    with host.uow() as uow:
        s = uow.session
        return (s.scalar(sa.select(sa.func.count()).select_from(LedgerTransaction)) or 0,
                s.scalar(sa.select(sa.func.count()).select_from(RequestNonce)) or 0)


def test_a_signed_request_is_answered(world: World) -> None:
    assert world.client is not None
    response = world.client.post(SYNC, BODY.model_dump_json().encode())
    assert response.status_code == 200
    assert response.json()["parameters"]["parameters"]["version"] == 1


def test_a_replayed_request_is_refused(world: World) -> None:
    assert world.client is not None
    raw = BODY.model_dump_json().encode()
    headers = world.client.headers(SYNC, raw, nonce="aa" * 16)
    first = world.http.post(SYNC, content=raw, headers=headers)
    again = world.http.post(SYNC, content=raw, headers=headers)
    assert first.status_code == 200
    assert again.status_code == 401 and problem_of(again).code == E.REPLAY.code


def test_a_tampered_body_is_refused(world: World) -> None:
    assert world.client is not None
    raw = BODY.model_dump_json().encode()
    headers = world.client.headers(SYNC, raw)
    tampered = raw.replace(b'"blacklist_version":0', b'"blacklist_version":1')
    response = world.http.post(SYNC, content=tampered, headers=headers)
    assert response.status_code == 401 and problem_of(response).code == E.SIGNATURE_INVALID.code


def test_a_signature_for_another_route_is_refused(world: World) -> None:
    assert world.client is not None
    raw = BODY.model_dump_json().encode()
    headers = world.client.headers(ROUTES["upload_batch"], raw)
    response = world.http.post(SYNC, content=raw, headers=headers)
    assert response.status_code == 401 and problem_of(response).code == E.SIGNATURE_INVALID.code


@pytest.mark.parametrize("offset", [-3_600, 3_600])
def test_a_stale_or_future_signature_is_refused(world: World, offset: int) -> None:
    assert world.client is not None
    raw = BODY.model_dump_json().encode()
    headers = world.client.headers(SYNC, raw, created=world.clock() + offset)
    response = world.http.post(SYNC, content=raw, headers=headers)
    assert response.status_code == 401 and problem_of(response).code == E.SIGNATURE_STALE.code


def test_an_unsigned_request_is_refused(world: World) -> None:
    response = world.http.post(SYNC, content=BODY.model_dump_json())
    assert response.status_code == 401 and problem_of(response).code == E.SIGNATURE_MISSING.code


def test_an_unknown_or_revoked_terminal_is_refused(world: World) -> None:
    assert world.client is not None
    world.host.tms.revoke(world.tid)
    response = world.client.post(SYNC, BODY.model_dump_json().encode())
    assert response.status_code == 403 and problem_of(response).code == E.TERMINAL_REVOKED.code


@pytest.mark.parametrize("raw,code", [
    (b"{not json", E.VALIDATION.code),
    (b'{"blacklist_version": -1, "actions_version": 0, "parameters_version": 0}',
     E.VALIDATION.code),
    (b'{"blacklist_version": 0, "actions_version": 0, "parameters_version": 0, "x": 1}',
     E.VALIDATION.code),
])
def test_a_malformed_body_gets_a_problem_document_and_changes_nothing(
        world: World, raw: bytes, code: int) -> None:
    assert world.client is not None
    before = state(world.host)
    response = world.client.post(SYNC, raw)
    assert response.status_code == 422
    doc = problem_of(response)
    assert doc.code == code and doc.status == 422 and doc.type.endswith("validation")
    assert state(world.host)[0] == before[0]


def test_an_agent_debit_for_another_terminal_is_refused(world: World) -> None:
    assert world.client is not None
    card = world.card(world.cardholder(funds=1_000))
    world.load(card, 500)
    split = world.purchase(card, 500, split=100, tx_type=TxType.CANTEEN)
    body = world.agent_request(split).model_copy(update={"terminal_id": "00" * 8})
    response = world.client.post(ROUTES["agent_debit"], body.model_dump_json().encode())
    assert response.status_code == 403 and problem_of(response).code == E.TERMINAL_MISMATCH.code
    assert world.host.registry.online_balance(world.host.registry.card_info(
        card.serial.hex()).cardholder_id) == 1_000


def test_an_oversized_body_is_refused(world: World) -> None:
    assert world.client is not None
    raw = json.dumps({"padding": "x" * (world.host.settings.max_body_bytes + 1)}).encode()
    response = world.client.post(ROUTES["upload_batch"], raw)
    assert response.status_code == 413 and problem_of(response).code == E.TOO_LARGE.code


def test_every_terminal_route_and_its_bodies_are_in_the_openapi_document(world: World) -> None:
    doc = world.http.get("/openapi.json").json()
    for path in ROUTES.values():
        assert "post" in doc["paths"][path]
    for name in ("BatchUpload", "AgentDebitRequest", "EnrolRequest", "Problem"):
        assert name in doc["components"]["schemas"]


def test_health_answers_without_a_token_and_ready_checks_the_schema(world: World) -> None:
    assert world.http.get("/health").json() == {"status": "ok"}
    ready = world.http.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_people_need_a_token_with_the_right_role(world: World) -> None:
    host = world.host
    operator = create_token(host, "operator")
    auditor = create_token(host, "auditor")
    body = {"name": "Grace Hopper", "currency": "EUR"}
    assert world.http.post("/v1/ops/cardholders", json=body).status_code == 401
    bad = world.http.post("/v1/ops/cardholders", json=body,
                          headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and problem_of(bad).code == E.TOKEN_INVALID.code
    denied = world.http.post("/v1/ops/cardholders", json=body,
                             headers={"Authorization": f"Bearer {auditor}"})
    assert denied.status_code == 403 and problem_of(denied).code == E.FORBIDDEN.code
    made = world.http.post("/v1/ops/cardholders", json=body,
                           headers={"Authorization": f"Bearer {operator}"})
    assert made.status_code == 200
    audit = world.http.get("/v1/reports/audit", headers={"Authorization": f"Bearer {auditor}"})
    assert audit.status_code == 200 and audit.json()["balanced"] is True
    chain = audit.json()["audit_log"]  # the operator audit log's chain, checked too
    assert chain["ok"] is True and chain["records"] >= 2  # the refusal and the cardholder
    assert world.http.get("/metrics").status_code == 401
    metrics = world.http.get("/metrics", headers={"Authorization": f"Bearer {auditor}"})
    assert "tallypurse_http_requests_total" in metrics.text


def test_a_merchant_sees_only_its_own_data(world: World) -> None:
    host = world.host
    other = host.registry.create_merchant("Kiosk", iban="DE89370400440532013000",
                                          bic="COBADEFFXXX")
    mine = create_token(host, "merchant", merchant_id=world.merchant_id)
    auth = {"Authorization": f"Bearer {mine}"}
    own = world.http.get("/v1/merchant/balance", headers=auth)
    assert own.status_code == 200 and own.json()["merchant_id"] == world.merchant_id
    theirs = world.http.get("/v1/merchant/balance", params={"merchant_id": other}, headers=auth)
    assert theirs.status_code == 403
    terminals = world.http.get("/v1/ops/terminals", headers=auth).json()
    assert [t["merchant_id"] for t in terminals] == [world.merchant_id]
    assert world.http.get("/v1/reports/audit", headers=auth).status_code == 403
    assert world.http.post("/v1/ops/merchants", headers=auth, json={
        "name": "x", "iban": "DE89370400440532013000", "bic": "COBADEFFXXX"}).status_code == 403


def test_operator_requests_with_bad_input_get_problems_and_change_nothing(world: World) -> None:
    token = create_token(world.host, "operator")
    auth = {"Authorization": f"Bearer {token}"}
    cases = [
        ("/v1/ops/merchants", {"name": "x", "iban": "DE00370400440532013000",
                               "bic": "COBADEFFXXX"}, 400),
        ("/v1/ops/merchants", {"name": "", "iban": "x", "bic": "y"}, 422),
        ("/v1/ops/terminals", {"merchant_id": "nobody"}, 404),
        ("/v1/ops/cardholders/ch_missing/fund", {"amount": 5, "reference": "r"}, 404),
        ("/v1/ops/cardholders", {"name": "x", "currency": "XXX"}, 400),
    ]
    before = state(world.host)
    for path, body, status in cases:
        response = world.http.post(path, json=body, headers=auth)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert isinstance(response.json()["code"], int)
    assert state(world.host)[0] == before[0]


def test_an_unknown_path_is_a_problem_document(world: World) -> None:
    response = world.http.get("/v1/nowhere")
    assert response.status_code == 404 and problem_of(response).code == E.NOT_FOUND.code


@pytest.mark.parametrize(("fault", "code", "status"), [
    (RuntimeError("a bug"), E.INTERNAL, 500),
    (LedgerError("settlement x: unbalanced by 1"), E.LEDGER_REFUSED, 500),
])
def test_a_host_fault_is_a_problem_document_not_a_bare_500(
        host: Host, monkeypatch: pytest.MonkeyPatch, fault: Exception, code: E.Code,
        status: int) -> None:
    def broken(**_: object) -> object:
        raise fault

    monkeypatch.setattr(host.loads, "recent", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from starlette.testclient import TestClient
    with TestClient(create_app(host), raise_server_exceptions=False) as client:
        auth = {"Authorization": "Bearer " + create_token(host, "operator")}
        r = client.get("/v1/ops/loads", headers=auth)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert problem_of(r).code == code.code
    assert "a bug" not in r.text  # an internal error tells the client nothing of its cause
