"""Rate limits (a token bucket per proven identity, else per address) and body size
limits on every kind of route; 429 and 413 are problem documents."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tallypurse.core import hostapi as api
from tallypurse.core.errors import BadInput
from tallypurse.host.api.auth import create_token
from tallypurse.host.config import HostSettings
from tallypurse.host.ratelimit import Limit, TokenBuckets

from .world import World


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = FakeTime()
    buckets = TokenBuckets(Limit(rate=2.0, burst=3), clock=now)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every half second
    assert buckets.take("b") == 0.0  # another key has its own bucket
    now.t += 0.25
    assert buckets.wait("a") == pytest.approx(0.25) and buckets.take("a") == pytest.approx(0.25)
    now.t += 0.25
    assert buckets.take("a") == 0.0
    now.t += 3600
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # never more than the burst saved
    assert TokenBuckets(Limit(rate=0, burst=1), clock=now).take("x") == 0.0  # 0: no limit
    for bad in ((-1.0, 1), (1.0, 0), (float("inf"), 1)):
        with pytest.raises(BadInput):
            Limit(*bad)


def test_buckets_are_forgotten_beyond_the_key_limit_full_ones_first() -> None:
    now = FakeTime()
    buckets = TokenBuckets(Limit(rate=1.0, burst=1), clock=now, max_keys=10)
    for i in range(10):
        buckets.take(f"k{i}")
    now.t += 5  # every bucket full again: all forgotten, nothing lost
    buckets.take("k10")
    assert set(buckets._buckets) == {"k10"}
    for i in range(11, 21):  # ten busy keys, one after the other: the oldest go first
        now.t += 0.01
        buckets.take(f"k{i}")
    assert len(buckets._buckets) == 5 and "k20" in buckets._buckets
    assert buckets.take("k20") > 0  # a key kept keeps its empty bucket


def test_the_defaults_are_far_above_what_a_busy_terminal_sends() -> None:
    s = HostSettings()
    # the agent bench aims at 1,000 debits a second over 16 terminals, 5,000 by default:
    # the defaults take five times that rate, and a whole default run within the burst
    assert 16 * s.rate_terminal_per_s >= 5 * 1_000 and s.rate_terminal_burst >= 5_000
    assert s.rate_token_per_s > 0 and s.rate_console_per_s > 0 and s.rate_address_per_s > 0


def limit(world: World, kind: str, burst: int) -> None:
    world.host.limits.buckets[kind] = TokenBuckets(Limit(rate=0.001, burst=burst))


def assert_429(response: object, code: int = 2006) -> None:
    r = response
    assert r.status_code == 429  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert int(r.headers["retry-after"]) >= 1  # type: ignore[attr-defined]
    assert r.json()["code"] == code  # type: ignore[attr-defined]


def test_a_terminal_is_limited_by_its_verified_key_id(world: World) -> None:
    assert world.client is not None
    limit(world, "terminal", 2)
    sync = api.SyncRequest(blacklist_version=0, actions_version=0, parameters_version=0)
    raw = sync.model_dump_json().encode()
    path = api.ROUTES["sync"]
    # forged requests naming the terminal do not spend its bucket (they count on the address)
    forged = world.client.headers(path, raw)
    forged["Signature"] = re.sub(r":[^:]+:$", ":AAAA:", forged["Signature"])
    assert world.http.post(path, content=raw, headers=forged).status_code == 401
    assert world.client.post(path, raw).status_code == 200
    assert world.client.post(path, raw).status_code == 200
    refused = world.client.post(path, raw)
    assert_429(refused)
    assert "terminal" in refused.json()["detail"]
    auditor = {"Authorization": "Bearer " + create_token(world.host, "auditor")}
    metrics = world.http.get("/metrics", headers=auditor).text
    assert 'tallypurse_rate_limited_total{identity="terminal"} 1.0' in metrics
    assert 'status="429"' in metrics


def test_a_token_is_limited_and_another_token_is_not(world: World) -> None:
    limit(world, "token", 2)
    one = {"Authorization": "Bearer " + create_token(world.host, "auditor", name="one")}
    two = {"Authorization": "Bearer " + create_token(world.host, "auditor", name="two")}
    assert [world.http.get("/v1/reports/alerts", headers=one).status_code
            for _ in range(2)] == [200, 200]
    assert_429(world.http.get("/v1/reports/alerts", headers=one))
    assert world.http.get("/v1/reports/alerts", headers=two).status_code == 200


def test_an_address_is_limited_for_anonymous_requests_and_made_up_credentials(
        world: World) -> None:
    limit(world, "address", 3)
    token = {"Authorization": "Bearer " + create_token(world.host, "auditor")}
    assert world.http.get("/health").status_code == 200
    for _ in range(2):  # made-up tokens count against the address
        assert world.http.get("/v1/reports/alerts",
                              headers={"Authorization": "Bearer tp_made_up"}).status_code == 401
    assert_429(world.http.get("/health"))
    assert_429(world.http.get("/v1/reports/alerts", headers=token))  # the address is spent
    assert_429(world.http.get("/console/login"))


def test_proven_identities_do_not_spend_their_address(world: World) -> None:
    assert world.client is not None
    limit(world, "address", 2)
    token = {"Authorization": "Bearer " + create_token(world.host, "auditor")}
    sync = api.SyncRequest(blacklist_version=0, actions_version=0, parameters_version=0)
    for _ in range(5):
        assert world.http.get("/v1/reports/alerts", headers=token).status_code == 200
        assert world.client.post(api.ROUTES["sync"],
                                 sync.model_dump_json().encode()).status_code == 200
    assert [world.http.get("/health").status_code for _ in range(3)] == [200, 200, 429]


# --- body size: every kind of route -----------------------------------------------------------
@pytest.fixture
def too_big(world: World) -> Iterator[bytes]:
    yield b"{" + b" " * world.host.settings.max_body_bytes + b"}"


def chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 65_536):
        yield body[i:i + 65_536]


@pytest.mark.parametrize("path", [
    "/v1/terminal/sync",  # signed terminal routes
    "/v1/ops/cardholders",  # operator JSON routes
    "/v1/ops/credit/run",
    "/console/login",  # console forms
    "/console/cards/0000000000000001/status",
    "/nowhere",  # not even a route
])
@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_limit_is_refused_on_every_route(world: World, too_big: bytes,
                                                          path: str, declared: bool) -> None:
    operator = {"Authorization": "Bearer " + create_token(world.host, "operator")}
    before = world.host.audit.count()
    content: bytes | Iterator[bytes] = too_big if declared else chunks(too_big)
    r = world.http.post(path, content=content, headers={
        **operator, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == 2003 and r.headers["content-type"] == "application/problem+json"
    assert world.host.audit.count() == before  # refused before any route or audit saw it
    small = world.http.post("/v1/ops/cardholders", json={"name": "Ada"}, headers=operator)
    assert small.status_code == 200


def test_requests_side_by_side_cannot_all_pass_the_address_limit(world: World) -> None:
    """The address's token is taken when a request arrives, not when it ends: with a
    burst of 1, a second request arriving while the first is still in flight is refused."""
    import asyncio

    from tallypurse.host.api.guard import RequestGuard

    limit(world, "address", 1)
    in_flight = asyncio.Event()
    release = asyncio.Event()
    answers: list[int] = []

    async def slow_app(scope: object, receive: object, send: Any) -> None:
        in_flight.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = RequestGuard(slow_app, world.host)

    def call() -> Any:
        scope = {"type": "http", "method": "GET", "path": "/v1/ops/loads", "headers": [],
                 "client": ("192.0.2.7", 4000)}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answers.append(message["status"])

        return guard(scope, receive, send)

    async def scenario() -> None:
        first = asyncio.create_task(call())
        await in_flight.wait()
        # arrives while the first is in flight (its token is taken): refused at once, or
        # (were it let through) it would wait for the release and time out here
        await asyncio.wait_for(call(), 5)
        release.set()
        await first

    asyncio.run(scenario())
    assert answers == [429, 200]
