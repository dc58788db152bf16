"""Console fixtures: cheap password hashes, a seeded host (real card-signed traffic, see
seed.py), a small host for actions, and a logged-in client per role."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import argon2
import httpx
import pytest
from fastapi import FastAPI

from host.world import Clock, World
from tallypurse.host.api import create_app
from tallypurse.host.console.users import set_hash_parameters
from tallypurse.host.service import Host
from tallypurse.lab import Lab

from .seed import IBAN, PASSWORD, Seeded, add_users, enrolled, new_host, online_purchase, seed

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashes() -> None:
    """Argon2id at its cheapest: the tests log in often; production keeps the defaults."""
    set_hash_parameters(argon2.profiles.CHEAPEST)


@pytest.fixture(scope="session")
def seeded(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """Read-only for the tests that share it: nothing may change its data."""
    tmp = tmp_path_factory.mktemp("console-seeded")
    clock = Clock(lab.now + 3600)
    host = new_host(lab, tmp, clock)
    world = seed(host, lab, clock, tmp)
    yield world
    world.close()
    host.db.dispose()


class Small:
    """A host with two merchants, an enrolled terminal, a cardholder with two cards and
    one online sale today, and the three console users: for tests that act."""

    def __init__(self, host: Host, app: FastAPI, world: World, card_id: str,
                 spare_id: str) -> None:
        self.host = host
        self.app = app
        self.world = world
        self.card_id = card_id
        self.spare_id = spare_id
        self.terminal_id = world.terminal_id


@pytest.fixture
def small(lab: Lab, tmp_path: Path) -> Iterator[Small]:
    clock = Clock(lab.now + 3600)
    host = new_host(lab, tmp_path, clock)
    mid = host.registry.create_merchant("Canteen", iban=IBAN, bic="COBADEFFXXX",
                                        fee_basis_points=150, merchant_id="m_canteen")
    host.registry.create_merchant("Other", iban=IBAN, bic="COBADEFFXXX", merchant_id="m_other")
    app = create_app(host)
    with TestClient(app) as http:
        world = enrolled(host, lab, clock, tmp_path, http, mid, "small")
        holder = world.cardholder(funds=10_000)
        card, spare = world.card(holder), world.card(holder)
        assert online_purchase(world, card, 2_500, "online-small-1")
    add_users(host, mid)
    yield Small(host, app, world, card.serial.hex(), spare.serial.hex())
    assert world.sam is not None
    world.sam.close()
    host.db.dispose()


class Console:
    """A browser-like client of the console: cookies kept, CSRF token at hand."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.csrf = ""

    def get(self, path: str, **kw: object) -> httpx.Response:
        response = self.client.get("/console" + path, **kw)  # type: ignore[arg-type]
        found = CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True,
             **kw: object) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", self.csrf)
        return self.client.post("/console" + path, data=form, **kw)  # type: ignore[arg-type]

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        self.get("/login")
        return self.post("/login", {"username": username, "password": password, "next": "/"},
                         follow_redirects=False)


@pytest.fixture(scope="session")
def seeded_app(seeded: Seeded) -> FastAPI:
    return create_app(seeded.host)


def console_for(app: FastAPI) -> Iterator[Console]:
    with TestClient(app) as client:
        yield Console(client)


@pytest.fixture
def anon(seeded_app: FastAPI) -> Iterator[Console]:
    yield from console_for(seeded_app)


@pytest.fixture(params=["olga", "arne", "mia"])
def each_role(request: pytest.FixtureRequest, seeded_app: FastAPI) -> Iterator[Console]:
    for c in console_for(seeded_app):
        assert c.login(request.param).status_code == 303
        yield c


def logged_in(app: FastAPI, username: str) -> Iterator[Console]:
    for c in console_for(app):
        assert c.login(username).status_code == 303
        c.get("/")
        yield c
