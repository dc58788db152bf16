"""Registry and terminal management: cards issued through the card's own commands,
life cycle, enrolment tokens, certificates, revocation, terminal status."""

from __future__ import annotations

import pytest

from tallypurse.card.card import Card
from tallypurse.core import cert as certs
from tallypurse.core.errors import BadInput
from tallypurse.core.hostapi import EnrolRequest, HostRejected
from tallypurse.core.protocol import CertRole
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.errors import CONFLICT, CSR_INVALID, ENROLMENT_REFUSED, HostError
from tallypurse.sam import Sam

from .world import World, new_serial


def test_an_issued_card_is_certified_registered_and_carries_its_credit_record(
        world: World) -> None:
    holder = world.cardholder(grade=1)
    card = world.card(holder)
    purse = PurseClient(ApduClient(card))
    purse.select()
    c = certs.verify(purse.certificate(), world.host.roots(), role=CertRole.CARD,
                     at=world.clock(), holder=card.serial)
    info = world.host.registry.card_info(card.serial.hex())
    assert (info.status, info.cardholder_id, info.purse_host_view) == ("active", holder, 0)
    record = purse.credit_record()
    assert record.verify(world.host.keys.public_key(world.host.list_key()))
    assert (record.record.grade, record.record.per_tap_overdraft) == (
        1, world.host.credit.terms(1, "EUR").per_tap_overdraft)
    with world.host.uow() as uow:
        assert world.host.registry.card(uow.session, card.serial.hex()).public_key == (
            c.public_key.hex())


def test_a_card_is_registered_once(world: World) -> None:
    serial = new_serial()
    world.host.registry.issue_card(Card.manufacture(serial), serial=serial)
    with pytest.raises(HostError) as exc:
        world.host.registry.issue_card(Card.manufacture(serial), serial=serial,
                                       cardholder_id=world.cardholder())
    assert exc.value.what is CONFLICT


def test_a_lost_cards_cleared_value_moves_to_the_online_account_for_the_new_card(
        world: World) -> None:
    holder = world.cardholder()
    old, new = world.card(holder), world.card(holder)
    world.load(old, 3_000)
    world.upload(world.purchase(old, 1_000))
    world.host.registry.set_card_status(old.serial.hex(), "lost")
    assert world.host.registry.card_info(old.serial.hex()).blacklisted
    moved = world.host.registry.replace_card(old.serial.hex(), new.serial.hex())
    assert moved == 2_000 and world.host.registry.online_balance(holder) == 2_000
    world.load(new, 2_000, funding="online_account")
    assert PurseClient(ApduClient(new)).counters().balance == 2_000
    assert world.host.registry.card_info(old.serial.hex()).status == "replaced"
    assert world.host.reports.audit()["balanced"] is True


def test_bank_details_are_checked(world: World) -> None:
    holder = world.cardholder()
    with pytest.raises(BadInput, match="check digits"):
        world.host.registry.link_bank_account(holder, iban="DE00370400440532013000",
                                              bic="COBADEFFXXX", holder_name="A")
    with pytest.raises(BadInput, match="BIC"):
        world.host.registry.link_bank_account(holder, iban="DE89370400440532013000",
                                              bic="nope", holder_name="A")


def enrol_request(sam: Sam, token: str) -> EnrolRequest:
    return EnrolRequest(terminal_id=sam.terminal_id.hex(),
                        csr=sam.certificate_request().hex(), token=token)


def test_an_enrolment_token_is_good_once_and_a_retry_gets_the_same_certificate(
        world: World) -> None:
    tid, token = world.host.tms.create_terminal(world.merchant_id)
    sam = Sam.create(world.tmp / "sam2.json", "pw", terminal_id=bytes.fromhex(tid))
    try:
        body = enrol_request(sam, token)
        first = world.host.tms.enrol(body)
        assert world.host.tms.enrol(body) == first  # the answer was lost: same certificate
        c = certs.verify(bytes.fromhex(first.certificate), world.host.roots(),
                         role=CertRole.TERMINAL, at=world.clock(), holder=sam.terminal_id)
        assert c.public_key == sam.public_key and first.merchant_id == world.merchant_id
        other = Sam.create(world.tmp / "sam3.json", "pw", terminal_id=bytes.fromhex(tid))
        with pytest.raises(HostError) as exc:
            world.host.tms.enrol(enrol_request(other, token))
        assert exc.value.what is ENROLMENT_REFUSED
        other.close()
    finally:
        sam.close()


def test_an_expired_or_foreign_token_or_a_mismatched_csr_is_refused(world: World) -> None:
    tid, token = world.host.tms.create_terminal(world.merchant_id)
    sam = Sam.create(world.tmp / "sam4.json", "pw", terminal_id=bytes.fromhex(tid))
    try:
        with pytest.raises(HostError) as exc:
            world.host.tms.enrol(enrol_request(sam, "not-a-token"))
        assert exc.value.what is ENROLMENT_REFUSED
        forged = enrol_request(sam, token).model_copy(update={"terminal_id": world.tid})
        with pytest.raises(HostError) as exc:
            world.host.tms.enrol(forged)
        assert exc.value.what is CSR_INVALID
        world.clock.advance(world.host.settings.enrolment_token_ttl_s + 1)
        with pytest.raises(HostError) as exc:
            world.host.tms.enrol(enrol_request(sam, token))
        assert exc.value.what is ENROLMENT_REFUSED
    finally:
        sam.close()


def test_a_certificate_is_renewed_with_a_new_token(world: World) -> None:
    assert world.sam is not None and world.client is not None
    token = world.host.tms.new_token(world.tid)
    answer = world.client.enrol(enrol_request(world.sam, token))
    assert certs.parse(bytes.fromhex(answer.certificate)).not_before == (
        world.clock() - world.host.settings.clock_skew_s)


def test_enrolment_over_http_must_be_signed_with_the_requested_key(world: World) -> None:
    assert world.client is not None
    tid, token = world.host.tms.create_terminal(world.merchant_id)
    sam = Sam.create(world.tmp / "sam5.json", "pw", terminal_id=bytes.fromhex(tid))
    try:  # the world's SAM signs a request for another SAM's key
        with pytest.raises(HostRejected) as exc:
            world.client.enrol(enrol_request(sam, token))
        assert exc.value.problem.status == 401
    finally:
        sam.close()


def test_terminal_status_flags_a_stale_terminal(world: World) -> None:
    (status,) = world.host.tms.terminals()
    assert status.status == "active" and not status.stale
    world.clock.advance(world.host.settings.stale_terminal_after_s + 1)
    (status,) = world.host.tms.terminals()
    assert status.stale and "no contact" in status.reasons
