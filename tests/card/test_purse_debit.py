"""INITIALIZE PURCHASE and DEBIT: certificates, orders, replays, limits."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tallypurse.card.card import Card
from tallypurse.core import cert, crypto
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.cert import KeyRef
from tallypurse.core.messages import DebitOrder
from tallypurse.core.protocol import CLA_PROPRIETARY, FLAG_BLOCKED, CertRole, Ins, WriteBackAction
from tallypurse.core.purse_client import PurchaseSession, PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.lab import YEAR, Lab
from tallypurse.sam import Sam


def apdu(ins: int, data: bytes = b"", p1: int = 0, p2: int = 0) -> bytes:
    return Command(CLA_PROPRIETARY, ins, p1, p2, data, 0).to_bytes()


def assert_refused(card: Card, raw: bytes, sw: int) -> None:
    """The card answers ``sw`` with no data and its memory is exactly as before."""
    before = card.eeprom.snapshot()
    resp = Response.parse(card.transmit(raw))
    assert (resp.sw, resp.data) == (sw, b""), f"{resp.sw:04X}"
    assert card.eeprom.snapshot() == before


def begin(card: Card, certificate: bytes) -> tuple[PurseClient, PurchaseSession]:
    purse = PurseClient(ApduClient(card))
    purse.select()
    return purse, purse.initialize_purchase(certificate)


def order_for(
    session: PurchaseSession, terminal_id: bytes, amount: int, *, time: int, **changes: object
) -> DebitOrder:
    order = DebitOrder(
        card_id=session.card_id,
        atc=session.atc,
        amount=amount,
        split=0,
        currency=session.currency,
        tx_type=0,
        terminal_id=terminal_id,
        terminal_seq=1,
        time=time,
        card_challenge=session.challenge,
        terminal_challenge=os.urandom(8),
    )
    return replace(order, **changes)  # type: ignore[arg-type]


def debit(order: DebitOrder, signature: bytes) -> bytes:
    return apdu(Ins.DEBIT, order.to_bytes() + signature)


def signed_debit(
    session: PurchaseSession, sam: Sam, amount: int, *, time: int, **changes: object
) -> bytes:
    order = order_for(session, sam.terminal_id, amount, time=time, **changes)
    return debit(order, sam.sign_debit_order(order))


@pytest.fixture
def loaded(lab: Lab, card: Card) -> Card:
    lab.load(card, 5_000)
    return card


def own_terminal(
    lab: Lab, holder: bytes = b"TERM0099", **validity: int
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A terminal key made here (not in a SAM) and its lab-issued certificate."""
    key = crypto.generate_private_key()
    c = lab.keystore.issue_certificate(
        holder=holder,
        role=CertRole.TERMINAL,
        public_key=crypto.encode_public_key(key.public_key()),
        not_before=validity.get("not_before", lab.now),
        not_after=validity.get("not_after", lab.now + YEAR),
    )
    return key, c.encode()


# --- INITIALIZE PURCHASE ------------------------------------------------------------------


def test_initialize_purchase_reports_the_purse_and_a_fresh_challenge(
    lab: Lab, loaded: Card, sam: Sam
) -> None:
    _, one = begin(loaded, sam.certificate)
    _, two = begin(loaded, sam.certificate)
    assert (one.card_id, one.atc, one.balance, one.currency) == (loaded.serial, 0, 5_000, 978)
    assert len(one.challenge) == 8 and one.challenge != two.challenge
    assert one.credit is not None and one.credit.verify(lab.host_list_key())
    assert len(one.debts) == 4


def test_a_fresh_purse_accepts_a_terminal_certified_after_its_last_use(
    lab: Lab, card: Card, tmp_path: Path
) -> None:
    # The card has no clock: a terminal enrolled later than the card's last transaction
    # is fine, and so is a card that has never seen any time at all.
    begin(card, lab.new_sam(tmp_path / "new.json", b"TERM0042").certificate)
    lab.load(card, 1_000)
    _, later = own_terminal(lab, not_before=lab.now + 30 * 86_400)
    begin(card, later)


def test_initialize_purchase_refuses_a_terminal_certificate_expired_before_the_last_use(
    lab: Lab, card: Card
) -> None:
    _, old = own_terminal(lab, not_before=lab.now - YEAR, not_after=lab.now + 60)
    lab.load(card, 1_000, time=lab.now + 120)
    PurseClient(ApduClient(card)).select()
    assert_refused(card, apdu(Ins.INITIALIZE_PURCHASE, old), SW.INVALID_CERTIFICATE)


def test_initialize_purchase_refuses_a_certificate_from_an_untrusted_issuer(
    loaded: Card, sam: Sam, lab: Lab
) -> None:
    rogue = crypto.generate_private_key()
    fake = cert.issue(
        cert.KeySigner(rogue),
        authority=KeyRef("rogue-root", 1),
        holder=sam.terminal_id,
        role=CertRole.TERMINAL,
        public_key=sam.public_key,
        not_before=lab.now,
        not_after=lab.now + YEAR,
    ).encode()
    PurseClient(ApduClient(loaded)).select()
    assert_refused(loaded, apdu(Ins.INITIALIZE_PURCHASE, fake), SW.INVALID_CERTIFICATE)


def test_initialize_purchase_refuses_a_certificate_forged_in_the_issuers_name(
    loaded: Card, sam: Sam, lab: Lab
) -> None:
    [root_ref] = lab.roots()
    forged = cert.issue(
        cert.KeySigner(crypto.generate_private_key()),
        authority=root_ref,
        holder=sam.terminal_id,
        role=CertRole.TERMINAL,
        public_key=sam.public_key,
        not_before=lab.now,
        not_after=lab.now + YEAR,
    ).encode()
    PurseClient(ApduClient(loaded)).select()
    assert_refused(loaded, apdu(Ins.INITIALIZE_PURCHASE, forged), SW.INVALID_CERTIFICATE)


def test_initialize_purchase_refuses_a_card_certificate(loaded: Card) -> None:
    purse = PurseClient(ApduClient(loaded))
    purse.select()
    card_cert = purse.certificate()
    assert_refused(loaded, apdu(Ins.INITIALIZE_PURCHASE, card_cert), SW.INVALID_CERTIFICATE)


def test_initialize_purchase_refuses_a_terminal_id_that_is_not_8_bytes(
    lab: Lab, loaded: Card
) -> None:
    _, short = own_terminal(lab, holder=b"TERM")
    PurseClient(ApduClient(loaded)).select()
    assert_refused(loaded, apdu(Ins.INITIALIZE_PURCHASE, short), SW.INVALID_CERTIFICATE)


@pytest.mark.parametrize("garbage", [b"", b"\x7f\x21\x00", os.urandom(120), b"\x00" * 300])
def test_initialize_purchase_refuses_garbage(loaded: Card, garbage: bytes) -> None:
    PurseClient(ApduClient(loaded)).select()
    assert_refused(loaded, apdu(Ins.INITIALIZE_PURCHASE, garbage), SW.INVALID_CERTIFICATE)


def test_initialize_purchase_refuses_nonzero_p1_p2(loaded: Card, sam: Sam) -> None:
    PurseClient(ApduClient(loaded)).select()
    raw = apdu(Ins.INITIALIZE_PURCHASE, sam.certificate, p1=1)
    assert_refused(loaded, raw, SW.INCORRECT_P1P2)


# --- DEBIT ------------------------------------------------------------------------------------


def test_a_debit_decrements_the_balance_and_returns_a_verifiable_tac(
    lab: Lab, loaded: Card, sam: Sam
) -> None:
    purse, session = begin(loaded, sam.certificate)
    order = order_for(session, sam.terminal_id, 1_234, time=lab.now)
    result = purse.debit(order, sam.sign_debit_order(order))
    assert (result.atc, result.balance_after, result.debt_slot) == (1, 3_766, 0xFF)
    counters = purse.counters()
    assert (counters.balance, counters.atc) == (3_766, 1)
    proof = purse.transaction_proof(result.atc)
    assert proof.tac == result.tac
    key = cert.verify(
        purse.certificate(), lab.roots(), role=CertRole.CARD, at=lab.now, holder=loaded.serial
    ).public_key
    assert proof.verify(key)
    e = proof.event
    assert (e.amount, e.balance_before, e.balance_after, e.terminal_id) == (
        1_234,
        5_000,
        3_766,
        sam.terminal_id,
    )
    assert (e.card_challenge, e.terminal_challenge) == (
        order.card_challenge,
        order.terminal_challenge,
    )


def test_a_debit_of_the_whole_balance_leaves_zero(lab: Lab, loaded: Card, sam: Sam) -> None:
    assert lab.purchase(loaded, sam, 5_000).result.balance_after == 0


def test_an_order_replayed_after_a_new_initialize_is_refused_as_a_replay(
    lab: Lab, loaded: Card, sam: Sam
) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now)
    assert Response.parse(loaded.transmit(raw)).sw == SW.OK
    begin(loaded, sam.certificate)
    assert_refused(loaded, raw, SW.REPLAY)


def test_an_order_sent_twice_in_one_session_is_refused_as_a_replay(
    lab: Lab, loaded: Card, sam: Sam
) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now)
    assert Response.parse(loaded.transmit(raw)).sw == SW.OK
    assert_refused(loaded, raw, SW.REPLAY)


def test_an_order_signed_for_an_old_challenge_is_refused_as_a_replay(
    lab: Lab, loaded: Card, sam: Sam
) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now)
    begin(loaded, sam.certificate)  # a new challenge; the order was never sent
    assert_refused(loaded, raw, SW.REPLAY)


@pytest.mark.parametrize("offset", [0, 9, 15, 30, 50, 70, 80])
def test_an_order_with_an_altered_byte_fails_its_signature(
    lab: Lab, loaded: Card, sam: Sam, offset: int
) -> None:
    _, session = begin(loaded, sam.certificate)
    order = order_for(session, sam.terminal_id, 100, time=lab.now)
    data = bytearray(order.to_bytes() + sam.sign_debit_order(order))
    data[offset] ^= 0x01
    assert_refused(loaded, apdu(Ins.DEBIT, bytes(data)), SW.INVALID_SIGNATURE)


def test_an_order_signed_by_another_sam_than_the_presented_certificate_is_refused(
    lab: Lab, loaded: Card, sam: Sam, tmp_path: Path
) -> None:
    other = lab.new_sam(tmp_path / "other.json", b"TERM0002")
    try:
        _, session = begin(loaded, sam.certificate)
        order = order_for(session, other.terminal_id, 100, time=lab.now)
        assert_refused(loaded, debit(order, other.sign_debit_order(order)), SW.INVALID_SIGNATURE)
    finally:
        other.close()


def test_an_order_naming_another_terminal_than_the_certificate_is_refused(
    lab: Lab, loaded: Card
) -> None:
    key, certificate = own_terminal(lab, holder=b"TERM0099")
    _, session = begin(loaded, certificate)
    order = order_for(session, b"TERM0100", 100, time=lab.now)
    raw = debit(order, crypto.sign(key, order.signed_data()))
    assert_refused(loaded, raw, SW.SECURITY_NOT_SATISFIED)


def test_an_order_for_another_card_is_refused_as_a_replay(lab: Lab, loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now, card_id=b"\x20" * 8)
    assert_refused(loaded, raw, SW.REPLAY)


def test_an_order_with_a_stale_atc_is_refused_as_a_replay(lab: Lab, loaded: Card, sam: Sam) -> None:
    lab.purchase(loaded, sam, 10)
    _, session = begin(loaded, sam.certificate)
    assert session.atc == 1
    assert_refused(loaded, signed_debit(session, sam, 100, time=lab.now, atc=0), SW.REPLAY)


def test_a_debit_above_the_balance_is_refused_for_insufficient_funds(
    lab: Lab, loaded: Card, sam: Sam
) -> None:
    _, session = begin(loaded, sam.certificate)
    assert_refused(loaded, signed_debit(session, sam, 5_001, time=lab.now), SW.INSUFFICIENT_FUNDS)


def test_a_debit_above_the_offline_limit_is_refused(lab: Lab, card: Card, sam: Sam) -> None:
    lab.load(card, 20_000)
    _, session = begin(card, sam.certificate)
    assert session.offline_limit == 10_000
    raw = signed_debit(session, sam, 10_001, time=lab.now)
    assert_refused(card, raw, SW.OFFLINE_LIMIT_EXCEEDED)
    assert lab.purchase(card, sam, 10_000).result.balance_after == 10_000


def test_a_debit_of_zero_is_refused(lab: Lab, loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    assert_refused(loaded, signed_debit(session, sam, 0, time=lab.now), SW.WRONG_DATA)


def test_a_debit_in_another_currency_is_refused(lab: Lab, loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now, currency=840)
    assert_refused(loaded, raw, SW.WRONG_DATA)


def test_a_debit_on_a_blocked_card_is_refused(lab: Lab, loaded: Card, sam: Sam) -> None:
    lab.write_back(loaded, WriteBackAction.BLOCK)
    _, session = begin(loaded, sam.certificate)
    assert session.flags & FLAG_BLOCKED
    assert_refused(loaded, signed_debit(session, sam, 100, time=lab.now), SW.CARD_BLOCKED)


def test_a_debit_dated_after_the_card_expiry_is_refused(loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=session.expiry + 1)
    assert_refused(loaded, raw, SW.CARD_EXPIRED)


def test_a_debit_dated_on_the_expiry_day_is_accepted(loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=session.expiry)
    assert Response.parse(loaded.transmit(raw)).sw == SW.OK


def test_a_debit_without_initialize_purchase_is_refused(lab: Lab, loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now)
    PurseClient(ApduClient(loaded)).select()  # a new selection forgets the session
    assert_refused(loaded, raw, SW.CONDITIONS_NOT_SATISFIED)


def test_a_debit_after_initialize_load_is_refused(lab: Lab, loaded: Card, sam: Sam) -> None:
    purse, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now)
    purse.initialize_load()
    assert_refused(loaded, raw, SW.CONDITIONS_NOT_SATISFIED)


def test_a_debit_after_a_power_cycle_is_refused(lab: Lab, loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    raw = signed_debit(session, sam, 100, time=lab.now)
    loaded.power_off()
    loaded.power_up()
    PurseClient(ApduClient(loaded)).select()
    assert_refused(loaded, raw, SW.CONDITIONS_NOT_SATISFIED)


@pytest.mark.parametrize("cut", [1, 64, 100])
def test_a_debit_of_the_wrong_length_is_refused(lab: Lab, loaded: Card, sam: Sam, cut: int) -> None:
    _, session = begin(loaded, sam.certificate)
    order = order_for(session, sam.terminal_id, 100, time=lab.now)
    data = order.to_bytes() + sam.sign_debit_order(order)
    assert_refused(loaded, apdu(Ins.DEBIT, data[:-cut]), SW.WRONG_LENGTH)
    assert_refused(loaded, apdu(Ins.DEBIT, data + b"\x00"), SW.WRONG_LENGTH)


def test_a_debit_with_nonzero_p1_is_refused(lab: Lab, loaded: Card, sam: Sam) -> None:
    _, session = begin(loaded, sam.certificate)
    order = order_for(session, sam.terminal_id, 100, time=lab.now)
    raw = apdu(Ins.DEBIT, order.to_bytes() + sam.sign_debit_order(order), p1=1)
    assert_refused(loaded, raw, SW.INCORRECT_P1P2)


def test_a_refused_debit_leaves_the_session_usable(lab: Lab, loaded: Card, sam: Sam) -> None:
    purse, session = begin(loaded, sam.certificate)
    assert_refused(loaded, signed_debit(session, sam, 9_999, time=lab.now), SW.INSUFFICIENT_FUNDS)
    order = order_for(session, sam.terminal_id, 99, time=lab.now)
    assert purse.debit(order, sam.sign_debit_order(order)).balance_after == 4_901
