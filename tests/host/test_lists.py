"""Lists and parameters: versioned, signed with the host's list key, deltas since a
terminal's version, a full snapshot when it is too far behind; write-backs sealed under
the card's APP key and withdrawn once the card's receipt is reported."""

from __future__ import annotations

import dataclasses

import pytest

from tallypurse.core.cert import KeyRef
from tallypurse.core.hostapi import (
    HostRejected,
    SignedList,
    SyncRequest,
    WriteBackReport,
    verify_signed,
)
from tallypurse.core.messages import DebtOutcome, WriteBackReceipt, open_writeback
from tallypurse.core.protocol import WriteBackAction
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.errors import RECORD_INVALID
from tallypurse.host.tsm.keys import app_key
from tallypurse.keystore import HOST_LIST

from .world import World


def host_keys(world: World) -> dict[KeyRef, bytes]:
    ks = world.host.keys
    return {r: ks.public_key(r) for r in ks.refs() if r.name == HOST_LIST}


def verified(world: World, signed: SignedList | None) -> SignedList:
    assert signed is not None
    assert verify_signed(signed.signed_bytes(), signed.signature, signed.key, host_keys(world))
    return signed


def sync(world: World, blacklist: int = 0, actions: int = 0, parameters: int = 0):
    assert world.client is not None
    return world.client.sync(SyncRequest(blacklist_version=blacklist, actions_version=actions,
                                         parameters_version=parameters,
                                         trust_tag=world.host.trust.tag()))


def test_the_blacklist_comes_as_signed_deltas_since_the_terminals_version(world: World) -> None:
    cards = [world.card() for _ in range(3)]
    for card in cards:
        world.host.registry.set_card_status(card.serial.hex(), "lost")
    world.host.registry.set_card_status(cards[0].serial.hex(), "active")
    full = verified(world, sync(world).blacklist)
    assert (full.from_version, full.to_version, full.full) == (0, 4, False)
    assert [(e.card_id, e.op) for e in full.blacklist][-1] == (cards[0].serial.hex(), "remove")
    delta = verified(world, sync(world, blacklist=3).blacklist)
    assert (delta.from_version, delta.to_version) == (3, 4) and len(delta.blacklist) == 1
    assert sync(world, blacklist=4).blacklist is None  # already current


def test_a_terminal_too_far_behind_gets_a_full_snapshot(world: World) -> None:
    world.host.settings = dataclasses.replace(world.host.settings, list_delta_max=2)
    cards = [world.card() for _ in range(4)]
    for card in cards:
        world.host.registry.set_card_status(card.serial.hex(), "stolen")
    world.host.registry.set_card_status(cards[1].serial.hex(), "active")
    snapshot = verified(world, sync(world, blacklist=1).blacklist)
    assert snapshot.full and snapshot.from_version == 0 and snapshot.to_version == 5
    assert sorted(e.card_id for e in snapshot.blacklist) == sorted(
        c.serial.hex() for c in cards if c is not cards[1])
    assert all(e.op == "add" for e in snapshot.blacklist)
    future = verified(world, sync(world, blacklist=99).blacklist)  # a confused terminal
    assert future.full


def test_a_tampered_list_does_not_verify(world: World) -> None:
    world.host.registry.set_card_status(world.card().serial.hex(), "lost")
    signed = verified(world, sync(world).blacklist)
    bent = signed.model_copy(update={"to_version": 7})
    assert not verify_signed(bent.signed_bytes(), bent.signature, bent.key, host_keys(world))


def test_parameters_are_versioned_and_signed(world: World) -> None:
    first = sync(world).parameters
    assert first is not None and first.parameters.version == 1
    published = world.host.tms.publish_parameters(offline_limit=2_000)
    answer = sync(world, parameters=1).parameters
    assert answer == published and answer.parameters.offline_limit == 2_000
    keys = host_keys(world)
    assert verify_signed(answer.signed_bytes(), answer.signature, answer.key, keys)
    assert sync(world, parameters=2).parameters is None


def test_a_write_back_is_sealed_under_the_cards_app_key_with_its_own_sequence(
        world: World) -> None:
    card = world.card(world.cardholder())
    with world.host.uow() as uow:
        row = world.host.registry.card(uow.session, card.serial.hex())
        a = world.host.writebacks.publish(uow.session, row, "block", b"")
        b = world.host.writebacks.publish(uow.session, row, "unblock", b"")
        uow.commit()
    assert (a.seq, b.seq) == (1, 2)
    _, key = app_key(world.host.keys, card.serial)
    header, payload = open_writeback(key, bytes.fromhex(b.sealed))
    assert (header.seq, header.action, payload) == (2, WriteBackAction.UNBLOCK, b"")


def test_a_receipt_for_a_later_write_back_reissues_the_earlier_ones(world: World) -> None:
    assert world.client is not None
    card = world.card(world.cardholder())
    card_id = card.serial.hex()
    with world.host.uow() as uow:
        row = world.host.registry.card(uow.session, card_id)
        first = world.host.writebacks.publish(uow.session, row, "settle_debt",
                                              DebtOutcome(1, 10).to_bytes())
        second = world.host.writebacks.publish(uow.session, row, "block", b"")
        uow.commit()
    purse = PurseClient(ApduClient(card))
    purse.select()
    receipt, mac = purse.write_back(bytes.fromhex(second.sealed))  # a terminal skipped #1
    world.client.report_writeback(WriteBackReport(action_id=second.action_id, card_id=card_id,
                                                  receipt=receipt.to_bytes().hex(),
                                                  mac=mac.hex()))
    actions = verified(world, sync(world).actions).actions
    reissued = [x for x in actions if x.op == "add" and x.kind == "settle_debt" and x.seq == 3]
    assert len(reissued) == 1
    removed = {x.action_id for x in actions if x.op == "remove"}
    assert {first.action_id, second.action_id} <= removed
    purse.select()
    receipt, _ = purse.write_back(bytes.fromhex(reissued[0].sealed))  # the card takes it now
    assert receipt.seq == 3


def test_a_write_back_report_with_a_bad_mac_is_refused(world: World) -> None:
    assert world.client is not None
    card = world.card(world.cardholder())
    with world.host.uow() as uow:
        row = world.host.registry.card(uow.session, card.serial.hex())
        action = world.host.writebacks.publish(uow.session, row, "block", b"")
        uow.commit()
    receipt = WriteBackReceipt(card.serial, 1, int(WriteBackAction.BLOCK), 0, 0, 0)
    with pytest.raises(HostRejected) as exc:
        world.client.report_writeback(WriteBackReport(
            action_id=action.action_id, card_id=card.serial.hex(),
            receipt=receipt.to_bytes().hex(), mac="00" * 16))
    assert exc.value.problem.code == RECORD_INVALID.code
    actions = verified(world, sync(world).actions).actions
    assert [x.op for x in actions] == ["add"]
