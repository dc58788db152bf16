"""SoftHSM2 for the PKCS#11 keystore tests: a token directory of the tests' own.

SoftHSM2 reads ``$SOFTHSM2_CONF`` once, when the PKCS#11 module is initialised,
and a process loads the module once; so one configuration (one token
directory, under pytest's temporary directory) serves the whole session, and
each test initialises tokens of its own in it with ``softhsm2-util``. A test module
uses the fixtures ``softhsm`` and ``token_uri`` by importing ``softhsm_fixture`` and
``token_uri_fixture``.

Without SoftHSM2 or python-pkcs11 the tests skip with the reason, except when
``$CI`` is set: there they fail, so that CI cannot pass without running them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
PIN = "246810"
SO_PIN = "13579135"
PIN_ENV = "TALLYPURSE_TEST_HSM_PIN"
_labels = itertools.count(1)


def require(condition: bool, why: str) -> None:
    """Skip with ``why`` unless running in CI, where a missing HSM is a failure."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so the PKCS#11 tests must run (see .ci/run)")
    pytest.skip(why)


def find_module() -> str | None:
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return None


@dataclass(frozen=True)
class SoftHsm:
    module: str
    util: str
    tokens: Path

    def init_token(self, label: str | None = None) -> str:
        """Initialise a fresh token; return its label."""
        label = label or f"tp-{os.getpid()}-{next(_labels)}"
        subprocess.run(
            [
                self.util,
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                PIN,
            ],
            check=True,
            capture_output=True,
            env=os.environ.copy(),
        )
        return label

    def uri(self, label: str, *, pin: str = f"env:{PIN_ENV}") -> str:
        return f"pkcs11:module={self.module};token={label};pin-source={pin}"


@pytest.fixture(scope="session", name="softhsm")
def softhsm_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        require(False, "python-pkcs11 is not installed (the hsm extra)")
    util = shutil.which("softhsm2-util")
    require(util is not None, "softhsm2-util is not installed (Debian package softhsm2)")
    module = find_module()
    require(module is not None, "libsofthsm2.so is not installed (Debian package softhsm2)")
    assert util is not None and module is not None
    root = tmp_path_factory.mktemp("softhsm")
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield SoftHsm(module=module, util=util, tokens=tokens)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(name="token_uri")
def token_uri_fixture(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty, initialised token; its URI reads the PIN from $PIN_ENV."""
    monkeypatch.setenv(PIN_ENV, PIN)
    return softhsm.uri(softhsm.init_token())
