"""Wire a host from its settings: database, keystore, bank connector.

On a fresh machine there is nothing to configure: the data directory gets a
SQLite database and a keystore. The keystore passphrase comes from
``$TALLYPURSE_KEYSTORE_PASSPHRASE``; when that is unset and no keystore
exists yet, a random passphrase is generated and kept in
``<data dir>/keystore/passphrase`` (mode 0600), which is fine for a trial and
wrong for production (set the variable, or use an HSM-backed keystore).

``app_from_env`` is the factory uvicorn's worker processes call: each worker
opens its own connections and keystore from the same environment, and shares
nothing else with the others.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from fastapi import FastAPI

from tallypurse.core.errors import KeystoreError
from tallypurse.keystore.base import KeyStore
from tallypurse.keystore.software import KEYSTORE_FILE, SoftwareKeyStore

from .config import HostSettings
from .db.engine import Database
from .keyring import ReloadingKeyStore
from .service import Host

PASSPHRASE_ENV = "TALLYPURSE_KEYSTORE_PASSPHRASE"
PASSPHRASE_FILE = "passphrase"
log = logging.getLogger("tallypurse.host")


def passphrase(keystore_dir: Path, *, create: bool) -> str:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    path = keystore_dir / PASSPHRASE_FILE
    if path.is_file():
        return path.read_text().strip()
    if not create:
        raise KeystoreError(f"set ${PASSPHRASE_ENV} to open the keystore in {keystore_dir}")
    keystore_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    log.warning("generated a keystore passphrase in %s; set $%s in production",
                path, PASSPHRASE_ENV)
    return value


def open_keystore(settings: HostSettings, *, create: bool = True) -> SoftwareKeyStore:
    directory = settings.keystore_dir
    if (directory / KEYSTORE_FILE).exists():
        return SoftwareKeyStore.open(directory, passphrase(directory, create=False))
    if not create:
        raise KeystoreError(f"no keystore in {directory}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SoftwareKeyStore.create(directory, passphrase(directory, create=True),
                                   now=int(time.time()))


def following_keystore(settings: HostSettings, store: KeyStore) -> ReloadingKeyStore:
    """``store``, opened again whenever a ceremony rewrites its file (host.keyring)."""
    return ReloadingKeyStore(store, settings.keystore_dir / KEYSTORE_FILE,
                             lambda: open_keystore(settings, create=False))


def open_host(settings: HostSettings, *, create_keystore: bool = True) -> Host:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database.connect(settings.database_url)
    store = open_keystore(settings, create=create_keystore)
    return Host(db, following_keystore(settings, store), settings=settings)


def app_from_env() -> FastAPI:
    """uvicorn factory: ``uvicorn --factory tallypurse.host.bootstrap:app_from_env``."""
    from .api import create_app

    return create_app(open_host(HostSettings.from_env(), create_keystore=False))
