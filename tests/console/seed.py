"""A host with a few days of real traffic for the console's tests: merchants, enrolled
terminals with real SAMs, cards issued by the host, loads, offline, split and online
purchases signed by the cards, agent debits (one collected online, one failed into
collection), a clone caught by clearing, a counter gap left open, a stale terminal,
a settled day, and console users of every role.

It drives the host through the same calls the terminal makes (signed HTTP through
``tests/host/world.py``), never by writing rows. ``Seeded.expected`` keeps what the
flows did (counted here, not read back from the database) for the tests to compare
with what the pages show.
"""

from __future__ import annotations

import copy
import datetime as dt
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from host.client import SignedClient
from host.world import Clock, World
from tallypurse.card.card import Card
from tallypurse.core.cert import KeyRef
from tallypurse.core.hostapi import EnrolRequest, OnlineAuthoriseRequest, SyncRequest
from tallypurse.core.messages import OnlineRequest, SignedEvent
from tallypurse.core.protocol import TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.api import create_app
from tallypurse.host.config import HostSettings
from tallypurse.host.console import create_user
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import upgrade
from tallypurse.host.service import Host
from tallypurse.lab import Lab
from tallypurse.sam import Sam

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

DAY = 86_400
PASSWORD = "correct horse battery staple"
IBAN = "DE89370400440532013000"


@dataclass
class Seeded:
    host: Host
    clock: Clock
    canteen: World
    kiosk: World
    stale_terminal: str
    cards: dict[str, str] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    worlds: list[World] = field(default_factory=list)

    def close(self) -> None:
        for w in self.worlds:
            if w.sam is not None:
                w.sam.close()


def enrolled(host: Host, lab: Lab, clock: Clock, tmp: Path, http: TestClient,
             merchant_id: str, name: str) -> World:
    """A terminal of ``merchant_id`` with a real SAM, enrolled over signed HTTP."""
    w = World(host, lab, clock, tmp, http)
    w.merchant_id = merchant_id
    tid, token = host.tms.create_terminal(merchant_id)
    w.terminal_id = tid
    w.sam = Sam.create(tmp / f"sam-{name}.json", "sam", terminal_id=bytes.fromhex(tid))
    w.client = SignedClient(http, w.sam, clock)
    answer = w.client.enrol(EnrolRequest(terminal_id=tid, csr=w.sam.certificate_request().hex(),
                                         token=token))
    w.sam.install_certificate(
        bytes.fromhex(answer.certificate),
        {KeyRef.decode(k.encode()): bytes.fromhex(v) for k, v in answer.roots.items()},
        at=clock())
    return w


def online_purchase(w: World, card: Card, amount: int, key: str) -> bool:
    """The card signs an online authorisation over a host challenge; the host debits."""
    assert w.client is not None and w.sam is not None
    challenge = w.client.online_challenge()
    purse = PurseClient(ApduClient(card))
    purse.select()
    session = purse.initialize_purchase(w.sam.certificate)
    counter, signature = purse.online_authorise(
        amount=amount, currency=session.currency, tx_type=0, time=w.clock(),
        host_challenge=bytes.fromhex(challenge.challenge))
    request = OnlineRequest(session.card_id, counter, amount, session.currency, 0,
                            w.sam.terminal_id, w.clock(), bytes.fromhex(challenge.challenge))
    answer = w.client.online_authorise(OnlineAuthoriseRequest(
        idempotency_key=key, request=request.to_bytes().hex(), signature=signature.hex()))
    return answer.approved


def new_host(lab: Lab, tmp: Path, clock: Clock) -> Host:
    db = Database.connect(f"sqlite:///{tmp / 'host.sqlite3'}")
    upgrade(db)
    return Host(db, lab.keystore, settings=HostSettings(data_dir=tmp), clock=clock)


def add_users(host: Host, merchant_id: str) -> None:
    create_user(host, "olga", PASSWORD, "operator", display_name="Olga Operator")
    create_user(host, "arne", PASSWORD, "auditor", display_name="Arne Auditor")
    create_user(host, "mia", PASSWORD, "merchant", merchant_id=merchant_id,
                display_name="Mia (Canteen)")


def seed(host: Host, lab: Lab, clock: Clock, tmp: Path) -> Seeded:
    tmp.mkdir(parents=True, exist_ok=True)
    http = TestClient(create_app(host))
    reg = host.registry
    canteen_id = reg.create_merchant("Canteen", iban=IBAN, bic="COBADEFFXXX",
                                     fee_basis_points=150, merchant_id="m_canteen")
    kiosk_id = reg.create_merchant("Station Kiosk", iban="GB82WEST12345698765432",
                                   bic="NWBKGB2L", fee_basis_points=100, merchant_id="m_kiosk")
    canteen = enrolled(host, lab, clock, tmp, http, canteen_id, "canteen")
    kiosk = enrolled(host, lab, clock, tmp, http, kiosk_id, "kiosk")
    stale = enrolled(host, lab, clock, tmp, http, kiosk_id, "stale")
    s = Seeded(host, clock, canteen, kiosk, stale.terminal_id,
               worlds=[canteen, kiosk, stale])
    add_users(host, canteen_id)

    ada = canteen.cardholder(funds=5_000, iban=IBAN)
    bob = canteen.cardholder(funds=0)
    ada_card, ada_spare = canteen.card(ada), canteen.card(ada)
    bob_card, anon, victim = canteen.card(bob), canteen.card(), canteen.card()
    s.cards = {"ada": ada_card.serial.hex(), "ada_spare": ada_spare.serial.hex(),
               "bob": bob_card.serial.hex(), "anon": anon.serial.hex(),
               "victim": victim.serial.hex()}

    # --- day 0: loads, purchases, a gap that stays open -----------------------------------------
    for card, amount in ((ada_card, 3_000), (bob_card, 500), (anon, 2_000), (victim, 3_000)):
        canteen.load(card, amount)
    day0 = [canteen.purchase(ada_card, 450, tx_type=TxType.CANTEEN),
            canteen.purchase(anon, 200)]
    skipped = canteen.purchase(anon, 100)  # never uploaded: a gap on the anonymous card
    day0.append(canteen.purchase(anon, 150))
    canteen.upload(*day0)
    del skipped

    # --- four days later: today ------------------------------------------------------------------
    clock.advance(4 * DAY + 9 * 3600)
    today: list[tuple[World, SignedEvent]] = []
    today.append((canteen, canteen.purchase(ada_card, 600, tx_type=TxType.CANTEEN)))
    today.append((kiosk, kiosk.purchase(anon, 300, tx_type=TxType.TRANSIT)))
    # Split purchases: Ada's remainder is collected from her online account; Bob has no
    # online funds and no bank account, so his goes to collection.
    ada_split = canteen.purchase(ada_card, 1_950, split=550, tx_type=TxType.CANTEEN)
    bob_split = canteen.purchase(bob_card, 500, split=300, tx_type=TxType.CANTEEN)
    for event in (ada_split, bob_split):
        assert canteen.client is not None
        canteen.client.agent_debit(canteen.agent_request(event))
    # A cloned card: the twin spends the same counter at the kiosk.
    twin = Card(copy.deepcopy(victim.eeprom))
    victim_tap = kiosk.purchase(victim, 1_000)
    twin_tap = kiosk.purchase(twin, 2_000)
    canteen.upload(today[0][1], ada_split, bob_split)
    kiosk.upload(today[1][1], victim_tap, twin_tap)
    approved = online_purchase(kiosk, ada_card, 1_200, "online-ada-1")
    assert approved
    # The canteen terminal syncs its lists; the kiosk's terminal does not (behind).
    assert canteen.client is not None
    with host.uow() as uow:
        heads = {n: host.lists.head(uow.session, n) for n in ("blacklist", "actions")}
    canteen.client.sync(SyncRequest(blacklist_version=heads["blacklist"],
                                    actions_version=heads["actions"], parameters_version=1))
    # Day 0 is settled; today is not yet.
    day0_date = dt.datetime.fromtimestamp(clock() - 4 * DAY, dt.UTC).date()
    host.settlement.run(day0_date)

    s.expected = {
        # offline = purse-only debits cleared today (the clone's accepted one counts once)
        "offline_count": 3, "offline_amount": 600 + 300 + 1_000,
        "split_count": 2, "split_amount": 1_950 + 550 + 500 + 300,
        "online_count": 1, "online_amount": 1_200,
        "clones": 1, "old_gaps": 1, "stale_terminals": 1,
        "debts_collected_online": 1, "debts_failed": 1,
        "day0": day0_date.toordinal(),
    }
    http.close()
    return s
