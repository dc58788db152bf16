"""Fixtures for the keystore tests: cheap KDF parameters, a fixed clock, a fresh store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tallypurse.core import crypto
from tallypurse.keystore import KEY_SPECS, KeyKind, SoftwareKeyStore
from tallypurse.keystore.software import KdfParams

PASSPHRASE = "correct horse battery staple"
NOW = 1_760_000_000
CHEAP_KDF = KdfParams(memory_cost=8, iterations=1, lanes=1)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def store(directory: Path) -> Iterator[SoftwareKeyStore]:
    with SoftwareKeyStore.create(directory, PASSPHRASE, now=NOW, kdf_params=CHEAP_KDF) as s:
        yield s


def secret_hexes(store: SoftwareKeyStore) -> list[str]:
    """Every secret the store holds, as hex (upper and lower case): what must never leak."""
    out: list[str] = []
    for ref in store.refs():
        if KEY_SPECS[ref.name].kind == KeyKind.AES_128:
            raw = store._aes_key(ref)
        else:
            raw = crypto.private_scalar(store._ec_key(ref))
        out += [raw.hex(), raw.hex().upper()]
    return out
