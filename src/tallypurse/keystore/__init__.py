"""The operator's keystore: the KeyStore protocol and its software implementation."""

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
)
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
    "SoftwareKeyStore",
]
