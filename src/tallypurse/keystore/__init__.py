"""The operator's keystore: the KeyStore protocol, its software implementation and
(in :mod:`tallypurse.keystore.pkcs11`, needing python-pkcs11) its PKCS#11 one.

:func:`open_keystore` opens either from a directory or a ``pkcs11:`` URI."""

from tallypurse.keystore.base import (
    HOST_API,
    HOST_LIST,
    HOST_LOAD,
    ISSUER_ROOT,
    KEY_SPECS,
    MASTER_APP,
    MASTER_ISD,
    MASTER_SD,
    KeyInfo,
    KeyKind,
    KeySpec,
    KeyStore,
    ManagedKeyStore,
)
from tallypurse.keystore.locate import create_keystore, open_keystore
from tallypurse.keystore.software import DEFAULT_KDF_PARAMS, KdfParams, SoftwareKeyStore

__all__ = [
    "DEFAULT_KDF_PARAMS",
    "HOST_API",
    "HOST_LIST",
    "HOST_LOAD",
    "ISSUER_ROOT",
    "KEY_SPECS",
    "MASTER_APP",
    "MASTER_ISD",
    "MASTER_SD",
    "KdfParams",
    "KeyInfo",
    "KeyKind",
    "KeySpec",
    "KeyStore",
    "ManagedKeyStore",
    "SoftwareKeyStore",
    "create_keystore",
    "open_keystore",
]
