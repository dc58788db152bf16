"""Fixtures shared across the suite: a lab issuer (keystore), cards, SAMs."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tallypurse.card.card import Card
from tallypurse.host.tsm.personalise import PursePolicy
from tallypurse.lab import Lab
from tallypurse.sam import Sam

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
_serials = itertools.count(1)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """One issuer (keystore with cheap KDF) for the whole session."""
    return Lab.create(tmp_path_factory.mktemp("lab"), now=NOW)


def next_serial() -> bytes:
    return (0x1000_0000_0000_0000 + next(_serials)).to_bytes(8, "big")


@pytest.fixture
def make_card(lab: Lab) -> Callable[..., Card]:
    """Factory: a personalised card (with a credit record unless credit=False)."""

    def make(*, credit: bool = True, policy: PursePolicy | None = None,
             path: Path | None = None) -> Card:
        serial = next_serial()
        record = lab.credit_record(serial) if credit else None
        card, _ = lab.new_card(serial, policy=policy, credit=record, path=path)
        return card

    return make


@pytest.fixture
def card(make_card: Callable[..., Card]) -> Card:
    return make_card()


@pytest.fixture
def sam(lab: Lab, tmp_path: Path) -> Iterator[Sam]:
    s = lab.new_sam(tmp_path / "sam.json", b"TERM0001")
    yield s
    s.close()
