"""Debit orders, generic domain-separated signing, card certificates (with cache) and TACs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tallypurse.core import cert, crypto
from tallypurse.core.errors import BadInput, CertificateError
from tallypurse.core.messages import CancelOrder, CardEvent, DebitOrder, SignedEvent
from tallypurse.core.protocol import CertRole, EventKind
from tallypurse.sam import (
    PURPOSE_BATCH,
    PURPOSE_CSR,
    PURPOSE_JOURNAL,
    PURPOSE_REQUEST,
    PURPOSE_STATE,
    Sam,
    emulator,
    signed_data,
    verify_signature,
)

from .conftest import NOT_AFTER, NOW, TERMINAL_ID, Issuer

CARD_ID = bytes.fromhex("0102030405060708")


def _order(terminal_id: bytes = TERMINAL_ID, cls: type[DebitOrder] = DebitOrder) -> DebitOrder:
    return cls(
        card_id=CARD_ID, atc=7, amount=1250, split=0, currency=156, tx_type=1,
        terminal_id=terminal_id, terminal_seq=42, time=NOW,
        card_challenge=b"\x01" * 8, terminal_challenge=b"\x02" * 8,
    )


def test_debit_order_signature_verifies_with_the_sam_public_key(sam: Sam) -> None:
    order = _order()
    signature = sam.sign_debit_order(order)
    assert len(signature) == 64
    assert crypto.verify(sam.public_key, signature, order.signed_data())
    altered = dataclasses.replace(order, amount=1251)
    assert not crypto.verify(sam.public_key, signature, altered.signed_data())


def test_cancel_order_is_signed_in_its_own_domain(sam: Sam) -> None:
    cancel = _order(cls=CancelOrder)
    signature = sam.sign_debit_order(cancel)
    assert crypto.verify(sam.public_key, signature, cancel.signed_data())
    assert not crypto.verify(sam.public_key, signature, _order().signed_data())


def test_debit_order_for_a_foreign_terminal_id_is_refused(sam: Sam) -> None:
    with pytest.raises(BadInput, match="terminal id"):
        sam.sign_debit_order(_order(terminal_id=b"FOREIGN!"))


def test_debit_order_out_of_its_layout_is_refused(sam: Sam) -> None:
    with pytest.raises(BadInput, match="layout"):
        sam.sign_debit_order(dataclasses.replace(_order(), amount=-1))


@pytest.mark.parametrize("purpose", [PURPOSE_BATCH, PURPOSE_JOURNAL, PURPOSE_REQUEST])
def test_generic_signature_is_domain_separated_by_purpose(sam: Sam, purpose: bytes) -> None:
    signature = sam.sign(b"payload", purpose=purpose)
    assert signed_data(b"payload", purpose=purpose) == b"TP\x01" + purpose + b"payload"
    assert verify_signature(sam.public_key, signature, b"payload", purpose=purpose)
    for other in {PURPOSE_BATCH, PURPOSE_JOURNAL, PURPOSE_REQUEST} - {purpose}:
        assert not verify_signature(sam.public_key, signature, b"payload", purpose=other)
    assert not crypto.verify(sam.public_key, signature, b"payload")


@pytest.mark.parametrize(
    "purpose", [PURPOSE_CSR, PURPOSE_STATE, b"\x01", b"\x03", b"", b"\x11\x11"]
)
def test_generic_signing_refuses_reserved_or_unknown_purposes(sam: Sam, purpose: bytes) -> None:
    with pytest.raises(BadInput, match="purpose"):
        sam.sign(b"x", purpose=purpose)


def test_generic_signing_cannot_forge_a_debit_order(sam: Sam) -> None:
    # a debit order's domain is TP 01 01: no allowed purpose produces that prefix
    order = _order()
    signature = sam.sign(order.to_bytes(), purpose=PURPOSE_BATCH)
    assert not crypto.verify(sam.public_key, signature, order.signed_data())


# --- card certificates ----------------------------------------------------------------


def _card_key() -> bytes:
    return crypto.encode_public_key(crypto.generate_private_key().public_key())


def test_card_certificate_verifies_and_returns_the_card_public_key(
    enrolled_sam: Sam, issuer: Issuer
) -> None:
    card_pub = _card_key()
    card_cert = issuer.issue(holder=CARD_ID, role=CertRole.CARD, public_key=card_pub)
    assert enrolled_sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOW) == card_pub


def test_card_certificate_cache_hit_avoids_signature_verification(
    enrolled_sam: Sam, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"crypto": 0, "cert": 0}
    real_crypto_verify, real_cert_verify = crypto.verify, cert.verify

    def counting_crypto_verify(*args: object, **kwargs: object) -> bool:
        calls["crypto"] += 1
        return real_crypto_verify(*args, **kwargs)  # type: ignore[arg-type]

    def counting_cert_verify(*args: object, **kwargs: object) -> cert.Certificate:
        calls["cert"] += 1
        return real_cert_verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(crypto, "verify", counting_crypto_verify)
    monkeypatch.setattr(cert, "verify", counting_cert_verify)
    card_pub = _card_key()
    card_cert = issuer.issue(holder=CARD_ID, role=CertRole.CARD, public_key=card_pub)

    assert enrolled_sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOW) == card_pub
    assert calls == {"crypto": 1, "cert": 1}
    for i in range(10):
        got = enrolled_sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOW + i)
        assert got == card_pub
    assert calls == {"crypto": 1, "cert": 1}  # ten repeat taps, no signature verification
    assert enrolled_sam.card_cache_info == (1, 10)


def test_cached_card_certificate_still_checks_holder_and_validity(
    enrolled_sam: Sam, issuer: Issuer
) -> None:
    card_cert = issuer.issue(holder=CARD_ID, role=CertRole.CARD, public_key=_card_key())
    enrolled_sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOW)
    with pytest.raises(CertificateError, match="holder"):
        enrolled_sam.verify_card_certificate(card_cert, card_id=b"\x09" * 8, at=NOW)
    with pytest.raises(CertificateError, match="valid"):
        enrolled_sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOT_AFTER + 1)


def test_card_certificate_cache_is_bounded_lru(issuer: Issuer, tmp_path: Path) -> None:
    path = tmp_path / "small.json"
    with Sam.create(path, "pw", terminal_id=TERMINAL_ID, card_cache_size=2) as sam:
        sam.install_certificate(
            issuer.issue(holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=sam.public_key),
            issuer.roots, at=NOW,
        )
        certs = [
            issuer.issue(holder=bytes([i]) * 8, role=CertRole.CARD, public_key=_card_key())
            for i in range(3)
        ]
        for i, c in enumerate(certs):
            sam.verify_card_certificate(c, card_id=bytes([i]) * 8, at=NOW)
        assert sam.card_cache_info == (2, 0)
        sam.verify_card_certificate(certs[2], card_id=b"\x02" * 8, at=NOW)
        assert sam.card_cache_info == (2, 1)
        sam.verify_card_certificate(certs[0], card_id=b"\x00" * 8, at=NOW)  # evicted: a miss
        assert sam.card_cache_info == (2, 1)


def test_card_certificate_from_untrusted_issuer_or_wrong_role_is_refused(
    enrolled_sam: Sam, issuer: Issuer, other_issuer: Issuer
) -> None:
    rogue = other_issuer.issue(holder=CARD_ID, role=CertRole.CARD, public_key=_card_key())
    with pytest.raises(CertificateError, match="unknown key"):
        enrolled_sam.verify_card_certificate(rogue, card_id=CARD_ID, at=NOW)
    terminal = issuer.issue(holder=CARD_ID, role=CertRole.TERMINAL, public_key=_card_key())
    with pytest.raises(CertificateError, match="role"):
        enrolled_sam.verify_card_certificate(terminal, card_id=CARD_ID, at=NOW)
    with pytest.raises(CertificateError):
        enrolled_sam.verify_card_certificate(b"garbage", card_id=CARD_ID, at=NOW)
    assert enrolled_sam.card_cache_info == (0, 0)  # failures are not cached


def test_card_certificate_needs_trusted_roots(sam: Sam, issuer: Issuer) -> None:
    card_cert = issuer.issue(holder=CARD_ID, role=CertRole.CARD, public_key=_card_key())
    with pytest.raises(CertificateError, match="no trusted roots"):
        sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOW)


def test_installing_new_roots_clears_the_card_certificate_cache(
    enrolled_sam: Sam, issuer: Issuer, other_issuer: Issuer
) -> None:
    card_cert = issuer.issue(holder=CARD_ID, role=CertRole.CARD, public_key=_card_key())
    enrolled_sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOW)
    new_cert = other_issuer.issue(
        holder=TERMINAL_ID, role=CertRole.TERMINAL, public_key=enrolled_sam.public_key
    )
    enrolled_sam.install_certificate(new_cert, other_issuer.roots, at=NOW)
    with pytest.raises(CertificateError, match="unknown key"):
        enrolled_sam.verify_card_certificate(card_cert, card_id=CARD_ID, at=NOW)


# --- TAC ---------------------------------------------------------------------------------


def _event() -> CardEvent:
    return CardEvent(
        kind=EventKind.DEBIT, card_id=CARD_ID, atc=8, load_counter=1, amount=1250, split=0,
        currency=156, tx_type=1, balance_before=5000, balance_after=3750,
        terminal_id=TERMINAL_ID, terminal_seq=42, time=NOW,
        card_challenge=b"\x01" * 8, terminal_challenge=b"\x02" * 8, debt_slot=0xFF, cvr=0,
    )


def test_tac_verification_is_true_for_the_card_signature(sam: Sam) -> None:
    card_key = crypto.generate_private_key()
    event = _event()
    signed = SignedEvent(event, crypto.sign(card_key, event.signed_data()))
    assert sam.verify_tac(signed, crypto.encode_public_key(card_key.public_key()))


def test_tac_verification_is_false_for_a_wrong_key_altered_event_or_garbage(sam: Sam) -> None:
    card_key = crypto.generate_private_key()
    card_pub = crypto.encode_public_key(card_key.public_key())
    event = _event()
    tac = crypto.sign(card_key, event.signed_data())
    assert not sam.verify_tac(SignedEvent(event, tac), _card_key())
    assert not sam.verify_tac(SignedEvent(dataclasses.replace(event, amount=1), tac), card_pub)
    assert not sam.verify_tac(SignedEvent(event, b"\x00" * 64), card_pub)
    assert not sam.verify_tac(SignedEvent(event, tac[:10]), card_pub)
    assert not sam.verify_tac(SignedEvent(event, tac), b"\x04" + b"\x01" * 64)


def test_the_sam_module_imports_no_component() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(emulator))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert all(
        not name.startswith(("tallypurse.card", "tallypurse.terminal", "tallypurse.host"))
        for name in imported
    )
