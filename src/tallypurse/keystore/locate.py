"""Open a keystore from how it is named on a command line or in a configuration file.

* a directory: the software keystore (``keystore.json``) in it, opened with a
  passphrase;
* a PKCS#11 URI, ``pkcs11:module=PATH;token=LABEL;pin-source=env:VAR``: the
  HSM backend (:mod:`tallypurse.keystore.pkcs11`, which needs python-pkcs11,
  the ``hsm`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tallypurse.core.errors import KeystoreError
from tallypurse.keystore.base import ManagedKeyStore
from tallypurse.keystore.ceremony import LOG_FILE

PKCS11_PREFIX = "pkcs11:"


def is_pkcs11(spec: str) -> bool:
    return spec.startswith(PKCS11_PREFIX)


def default_ceremony_log(spec: str) -> Path | None:
    """Where a keystore's ceremony log lives unless told otherwise: beside
    ``keystore.json``; None for a token (give the path explicitly)."""
    return None if is_pkcs11(spec) else Path(spec) / LOG_FILE


def _pkcs11_module() -> object:
    try:
        from tallypurse.keystore import pkcs11 as backend
    except ImportError as exc:
        raise KeystoreError(
            f"PKCS#11 keystores need python-pkcs11 (install tallypurse[hsm]): {exc}"
        ) from None
    return backend


def open_keystore(
    spec: str,
    *,
    passphrase: Callable[[], str] | None = None,
    pin: Callable[[], str] | None = None,
    allow_empty: bool = False,
) -> ManagedKeyStore:
    """Open an existing keystore. ``passphrase`` is asked for a directory only;
    ``pin`` for a token only, and only when its URI names no pin-source.
    ``allow_empty`` accepts a token without tallypurse keys yet."""
    if is_pkcs11(spec):
        _pkcs11_module()
        from tallypurse.keystore.pkcs11 import Pkcs11KeyStore, parse_uri

        uri = parse_uri(spec)
        given = uri.pin()
        if given is None and pin is not None:
            given = pin()
        return Pkcs11KeyStore.open(uri, pin=given, allow_empty=allow_empty)
    from tallypurse.keystore.software import SoftwareKeyStore

    if passphrase is None:
        raise KeystoreError("a software keystore needs a passphrase")
    return SoftwareKeyStore.open(spec, passphrase())


def create_keystore(
    spec: str,
    *,
    now: int,
    passphrase: Callable[[], str] | None = None,
    pin: Callable[[], str] | None = None,
) -> ManagedKeyStore:
    """Create a keystore with every key of KEY_SPECS (in a new directory or on an
    initialised, empty token)."""
    if is_pkcs11(spec):
        _pkcs11_module()
        from tallypurse.keystore.pkcs11 import Pkcs11KeyStore, parse_uri

        uri = parse_uri(spec)
        given = uri.pin()
        if given is None and pin is not None:
            given = pin()
        return Pkcs11KeyStore.create(uri, now=now, pin=given)
    from tallypurse.keystore.software import SoftwareKeyStore

    if passphrase is None:
        raise KeystoreError("a software keystore needs a passphrase")
    return SoftwareKeyStore.create(spec, passphrase(), now=now)
