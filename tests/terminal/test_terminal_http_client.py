"""The HTTP host client: ROUTES, JSON bodies, the signing hook, and how answers map onto
HostUnavailable (retry) and HostRejected (definitive)."""

from __future__ import annotations

import json

import httpx
import pytest

from tallypurse.core.hostapi import (
    ROUTES,
    AgentDebitRequest,
    HostRejected,
    HostUnavailable,
    ReversalRequest,
    SyncRequest,
)
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.http_client import HttpHostClient

from .conftest import Clock

BODY = AgentDebitRequest(idempotency_key="ad-0000000000000001-1", terminal_id="00" * 8,
                         card_id="11" * 8, atc=1, amount=700, currency="EUR",
                         tx_type="canteen", record="")


def client(handler: httpx.MockTransport, **kw: object) -> HttpHostClient:
    return HttpHostClient("http://host.test/", transport=handler, **kw)  # type: ignore[arg-type]


def test_a_call_posts_json_to_its_route_with_the_signing_hooks_headers() -> None:
    seen: list[httpx.Request] = []
    signed: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"idempotency_key": BODY.idempotency_key,
                                         "status": "accepted", "debt_id": "d1"})

    def sign(method: str, url: str, body: bytes) -> dict[str, str]:
        signed.append((method, url, body))
        return {"signature-input": "sig1=()", "signature": "sig1=:AA==:"}

    ack = client(httpx.MockTransport(handler), sign_request=sign).agent_debit(BODY)
    assert ack.debt_id == "d1"
    [request] = seen
    assert request.method == "POST" and request.url.path == ROUTES["agent_debit"]
    assert json.loads(request.content) == BODY.model_dump()
    assert request.headers["signature"] == "sig1=:AA==:"
    assert signed == [("POST", "http://host.test" + ROUTES["agent_debit"], request.content)]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_a_retryable_status_is_host_unavailable(status: int) -> None:
    c = client(httpx.MockTransport(lambda r: httpx.Response(status)))
    with pytest.raises(HostUnavailable):
        c.reverse(ReversalRequest(idempotency_key="on-x-00000001"))


def test_a_transport_error_is_host_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    with pytest.raises(HostUnavailable, match="ConnectTimeout"):
        client(httpx.MockTransport(handler)).online_challenge()


def test_a_problem_document_is_a_definitive_rejection() -> None:
    problem = {"title": "idempotency key reused", "status": 409, "code": 4091,
               "detail": "another payload"}
    c = client(httpx.MockTransport(lambda r: httpx.Response(409, json=problem)))
    with pytest.raises(HostRejected) as exc:
        c.agent_debit(BODY)
    assert exc.value.problem.code == 4091


def test_a_4xx_without_a_problem_document_is_still_a_rejection() -> None:
    c = client(httpx.MockTransport(lambda r: httpx.Response(404, text="nope")))
    with pytest.raises(HostRejected) as exc:
        c.sync(SyncRequest(blacklist_version=0, actions_version=0, parameters_version=0))
    assert exc.value.problem.status == 404


def test_a_malformed_success_body_is_retried_not_trusted() -> None:
    c = client(httpx.MockTransport(lambda r: httpx.Response(200, json={"nonsense": 1})))
    with pytest.raises(HostUnavailable, match="malformed"):
        c.agent_debit(BODY)


def test_a_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpHostClient("host.test")


def test_the_terminals_request_signer_makes_headers_the_host_can_verify(
    terminal: Terminal, clock: Clock
) -> None:
    from tallypurse.core.httpsig import verify_request

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"idempotency_key": BODY.idempotency_key,
                                         "reversed": True})

    c = client(httpx.MockTransport(handler), sign_request=terminal.request_signer())
    c.reverse(ReversalRequest(idempotency_key=BODY.idempotency_key))
    [request] = seen
    verified = verify_request(
        "POST", str(request.url), dict(request.headers), request.content,
        resolve_key=lambda key_id: terminal.sam.public_key, now=int(clock()), max_age=60,
        skew=5,
    )
    assert verified.key_id == terminal.terminal_id.hex()
