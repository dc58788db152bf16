"""Key rotation end to end: a host serving terminals over loopback HTTP, every key class
rotated by the ``tallypurse keys`` ceremonies on the host's keystore, the host restarted
on the same database and port, old cards and terminals still paying and clearing, cards
re-keyed through the TSM, then the old versions revoked and refused. On SQLite and
PostgreSQL (the ``database`` fixture)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallypurse.card.card import Card
from tallypurse.cli.main import app
from tallypurse.core import cert
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import CardError
from tallypurse.core.messages import WriteBackHeader, seal_writeback
from tallypurse.core.protocol import ISD_AID, OPERATOR_SD_AID, WriteBackAction
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.db.engine import Database
from tallypurse.host.keyring import ReloadingKeyStore
from tallypurse.host.tsm.channel import SecureChannel
from tallypurse.host.tsm.keys import app_key, isd_keys, sd_keys
from tallypurse.host.tsm.rekey import read_card_keys
from tallypurse.keystore.base import (
    HOST_LIST,
    HOST_LOAD,
    ISSUER_ROOT,
    MASTER_APP,
    MASTER_ISD,
    MASTER_SD,
)
from tallypurse.system import EmbeddedHost, Till, enrol_till, issue_card
from tallypurse.system.invariants import money_conserved
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.errors import DeclineCode, Declined, ListRejected

PASSPHRASE = "rotation day passphrase"
ROTATED = (ISSUER_ROOT, HOST_LIST, HOST_LOAD, MASTER_ISD, MASTER_SD, MASTER_APP)
runner = CliRunner()


def keys(*args: str) -> str:
    result = runner.invoke(app, ["keys", *args])
    assert result.exit_code == 0, result.output
    return result.output


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def purse(card: Card) -> PurseClient:
    p = PurseClient(ApduClient(card))
    p.select()
    return p


class Site:
    """A running host, its keystore directory, tills and cards; restartable in place."""

    def __init__(self, tmp: Path, database: Database) -> None:
        self.tmp = tmp
        self.database = database
        self.data = tmp / "host"
        self.eh = EmbeddedHost(self.data, db=database)
        self.port = self.eh.port
        self.tills: list[Till] = []

    @property
    def keystore(self) -> str:
        return str(self.data / "keystore")

    def restart(self) -> None:
        """Stop the host and start it again on the same port: it reads the keystore anew."""
        self.eh.stop()
        self.eh = EmbeddedHost(self.data, db=self.database, port=self.port)

    def till(self, name: str, merchant: str, tid: str) -> Till:
        till = enrol_till(self.eh, self.tmp / name, name=name, merchant_id=merchant,
                          terminal_id=bytes.fromhex(tid))
        self.tills.append(till)
        return till

    def card(self, serial: str, holder: str) -> Card:
        return issue_card(self.eh, bytes.fromhex(serial), cardholder_id=holder,
                          path=self.tmp / f"{serial}.card")

    def close(self) -> None:
        for till in self.tills:
            till.close()
        self.eh.stop()


@pytest.fixture
def site(tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("TALLYPURSE_KEYSTORE_PASSPHRASE", PASSPHRASE)
    s = Site(tmp_path, database)
    yield s
    s.close()


def pay(till: Till, card: Card, amount: int) -> int:
    result = till.terminal.purchase(till.reader(card), amount, tx_type="canteen")
    till.terminal.receipt_delivered(result.receipt)  # handed to the customer
    return result.receipt.balance_after


def load(till: Till, card: Card, amount: int, funding: str = "cash") -> None:
    result = till.terminal.load(till.reader(card), amount, funding=funding)
    till.terminal.receipt_delivered(result.receipt)  # handed to the customer


def test_rotation_day(site: Site) -> None:
    reg = site.eh.host.registry
    merchant = reg.create_merchant("Canteen", iban="DE89370400440532013000", bic="COBADEFFXXX",
                                   merchant_id="canteen")
    holder = reg.create_cardholder("Alice", "EUR")
    reg.fund_online_account(holder, 50_000, "fund-alice")
    old_till = site.till("old-till", merchant, "00000000000000c1")
    old_card = site.card("00000000000000a1", holder)  # re-keyed later
    stray_card = site.card("00000000000000a2", holder)  # never re-keyed
    for card in (old_card, stray_card):
        load(old_till, card, 5_000, "cash")
        pay(old_till, card, 100)
    with site.eh.host.uow() as uow:
        params_v1 = site.eh.host.tms.parameters(uow.session)
    assert params_v1.key == "host-list/1"

    # --- the ceremonies: a dry run changes nothing, then every key class is rotated ---------
    keystore_file = site.data / "keystore" / "keystore.json"
    log_file = site.data / "keystore" / "ceremony.log"
    before = digest(keystore_file)
    out = keys("rotate", ISSUER_ROOT, "--keystore", site.keystore, "--operator", "ops",
               "--reason", "rotation day", "--dry-run")
    assert "dry run" in out and "nothing changed" in out
    assert digest(keystore_file) == before and not log_file.exists()
    for name in ROTATED:
        keys("rotate", name, "--keystore", site.keystore, "--operator", "ops",
             "--reason", "rotation day")
    site.restart()
    host = site.eh.host
    assert {host.keys.current(n).version for n in ROTATED} == {2}

    # --- before any terminal has synced: old cards still pay at the old terminal ------------
    pay(old_till, old_card, 100)
    # the host signs with the new versions; the terminal learns them at its sync, through
    # certificates signed by the root it already trusts
    changes = old_till.terminal.sync()["changes"]
    assert changes["trust"]["roots"] == ["issuer-root/1", "issuer-root/2"]
    assert changes["trust"]["list_keys"] == ["host-list/1", "host-list/2"]
    assert changes["parameters"]["to"] == params_v1.parameters.version  # signed again
    assert old_till.terminal.lists.state["blacklist"].version >= 0
    sam = old_till.terminal.sam
    assert [cert.parse(c).authority for c in sam.certificates] == [
        KeyRef(ISSUER_ROOT, 2), KeyRef(ISSUER_ROOT, 1)]

    # a new card is issued under the new keys; a terminal enrolled today trusts both roots
    new_card = site.card("00000000000000b1", holder)
    new_keys = read_card_keys(new_card)
    assert (new_keys.root, new_keys.isd_version, new_keys.sd_version, new_keys.app_version) == (
        KeyRef(ISSUER_ROOT, 2), 2, 2, 2)
    new_till = site.till("new-till", merchant, "00000000000000c2")
    # old and new cards pay and load at old and new terminals (old cards: the terminal
    # shows the certificate under the root they hold; loads: the new load key, certified
    # under the card's root)
    for till in (old_till, new_till):
        for card in (old_card, stray_card, new_card):
            load(till, card, 1_000, "online_account")
            pay(till, card, 250)
    # a write-back sealed under the old APP key still reaches the old card
    host.registry.set_card_status("00000000000000a1", "blocked")
    host.registry.set_card_status("00000000000000a1", "active")
    for till in (old_till, new_till):
        till.terminal.sync()
    assert pay(new_till, old_card, 50) > 0
    # both terminals' days clear; money is conserved on every card
    for till in (old_till, new_till):
        report = till.terminal.close_day()
        assert report.delivered and not report.mismatch and not report.rejected
    ok, detail = money_conserved(host, [old_card, stray_card, new_card])
    assert ok, detail

    # --- re-keying: the TSM puts the new keys on the old card -----------------------------
    serial = bytes.fromhex("00000000000000a1")
    plan = host.registry.rekey_card(old_card, dry_run=True)
    assert read_card_keys(old_card).app_version == 1  # the dry run changed nothing
    assert len(plan.steps) == 5  # ISD, operator domain, APP key, root + certificate, credit
    host.registry.rekey_card(old_card)
    after = read_card_keys(old_card)
    assert (after.root, after.isd_version, after.sd_version, after.app_version) == (
        KeyRef(ISSUER_ROOT, 2), 2, 2, 2)
    assert not host.registry.rekey_card(old_card, dry_run=True).needed
    assert purse(old_card).credit_record().verify(host.keys.public_key(KeyRef(HOST_LIST, 2)))
    # the old versions no longer open the card
    client = ApduClient(old_card)
    for aid, old_keys in ((ISD_AID, isd_keys(host.keys, serial, version=1)),
                          (OPERATOR_SD_AID, sd_keys(host.keys, serial, version=1))):
        with pytest.raises(CardError):
            SecureChannel.open(client, aid, old_keys)
    _, old_app = app_key(host.keys, serial, version=1)
    wb_seq = purse(old_card).counters().writeback_seq + 1
    forged = seal_writeback(old_app, WriteBackHeader(serial, wb_seq,
                                                     int(WriteBackAction.BLOCK)), b"")
    with pytest.raises(CardError):
        purse(old_card).write_back(forged)
    # the host's write-backs follow the card's new APP key
    host.registry.set_card_status("00000000000000a1", "blocked")
    host.registry.set_card_status("00000000000000a1", "active")
    new_till.terminal.sync()
    assert pay(new_till, old_card, 50) > 0

    # --- retirement: the old versions are revoked; the host restarts -----------------------
    for name in ROTATED:
        keys("revoke", f"{name}/1", "--keystore", site.keystore, "--operator", "ops",
             "--reason", "rotation day: retire")
    site.restart()
    host = site.eh.host
    assert list(host.roots()) == [KeyRef(ISSUER_ROOT, 2)]
    for till in (old_till, new_till):
        changes = till.terminal.sync()["changes"]
        assert changes["trust"]["roots"] == ["issuer-root/2"]
        assert changes["trust"]["list_keys"] == ["host-list/2"]
        assert [cert.parse(c).authority for c in till.terminal.sam.certificates] == [
            KeyRef(ISSUER_ROOT, 2)]
    # re-keyed and new cards keep paying, loading and clearing
    for till in (old_till, new_till):
        for card in (old_card, new_card):
            load(till, card, 500, "cash")
            pay(till, card, 100)
    # the card never re-keyed still holds only issuer-root/1: every terminal is refused
    with pytest.raises(Declined) as refused:
        pay(old_till, stray_card, 100)
    assert refused.value.reason == DeclineCode.CARD_UNKNOWN_ISSUER, refused.value
    # a list or parameter set signed with the old list key is refused by the terminals
    with pytest.raises(ListRejected):
        old_till.terminal.lists.verify_parameters(params_v1)
    # terminals reopened from disk keep only the new trust
    old_till.terminal.close()
    site.tills.remove(old_till)
    reopened = Terminal.open(site.tmp / "old-till", passphrase="till", host=old_till.client)
    old_till.client.sign_request = reopened.request_signer()
    try:
        assert list(reopened.lists.list_keys) == [KeyRef(HOST_LIST, 2)]
        assert list(reopened.sam.trusted_roots) == [KeyRef(ISSUER_ROOT, 2)]
        assert reopened.purchase(old_till.reader(new_card), 10, tx_type="canteen")
        assert reopened.close_day().delivered
    finally:
        reopened.close()
        old_till.client.close()
    for till in site.tills:
        assert till.terminal.close_day().delivered
    ok, detail = money_conserved(host, [old_card, new_card])
    assert ok, detail
    # the keystore itself refuses to use a retired version
    with pytest.raises(Exception, match="revoked"):
        host.keys.sign(KeyRef(HOST_LIST, 1), b"x")


def test_a_running_host_follows_the_ceremonies_without_a_restart(site: Site) -> None:
    host = site.eh.host
    assert isinstance(host.keys, ReloadingKeyStore)
    host.keys.interval = 0  # look at the keystore file at every use
    merchant = host.registry.create_merchant("Kiosk", iban="DE89370400440532013000",
                                             bic="COBADEFFXXX", merchant_id="kiosk")
    till = site.till("till", merchant, "00000000000000c3")
    old_card = site.card("00000000000000a3", host.registry.create_cardholder("Bo", "EUR"))
    load(till, old_card, 2_000, "cash")
    for name in (ISSUER_ROOT, HOST_LIST, HOST_LOAD):
        keys("rotate", name, "--keystore", site.keystore, "--operator", "ops",
             "--reason", "rotate while serving")
    assert host.keys.current(HOST_LIST) == KeyRef(HOST_LIST, 2)
    changes = till.terminal.sync()["changes"]
    assert changes["trust"]["list_keys"] == ["host-list/1", "host-list/2"]
    new_card = site.card("00000000000000b3", host.registry.create_cardholder("Cy", "EUR"))
    assert read_card_keys(new_card).root == KeyRef(ISSUER_ROOT, 2)
    for card in (old_card, new_card):
        load(till, card, 1_000, "cash")
        pay(till, card, 300)
    keys("revoke", "host-list/1", "--keystore", site.keystore, "--operator", "ops",
         "--reason", "retire while serving")
    changes = till.terminal.sync()["changes"]
    assert changes["trust"]["list_keys"] == ["host-list/2"]
    with pytest.raises(Exception, match="revoked"):
        host.keys.sign(KeyRef(HOST_LIST, 1), b"x")
    assert till.terminal.close_day().delivered
    ok, detail = money_conserved(host, [old_card, new_card])
    assert ok, detail
