"""Wire a host from its settings: database, keystore, bank connector.

On a fresh machine there is nothing to configure: the data directory gets a
SQLite database and a keystore. The keystore passphrase comes from
``$TALLYPURSE_KEYSTORE_PASSPHRASE``; when that is unset and no keystore
exists yet, a random passphrase is generated and kept in
``<data dir>/keystore/passphrase`` (mode 0600), which is fine for a trial and
wrong for production (set the variable, or use an HSM-backed keystore).

``settings.keystore`` (``--keystore`` on the host commands, ``$TALLYPURSE_KEYSTORE``
for the workers) names another keystore: a directory that holds one, or a
PKCS#11 token on which ``tallypurse keys init`` made the keys. The host never
creates keys on a token and never creates a keystore in a directory it was
named explicitly: a typo must not start a host on fresh keys.

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
from tallypurse.keystore import locate
from tallypurse.keystore.base import KEY_SPECS, KeyStore, ManagedKeyStore
from tallypurse.keystore.software import KEYSTORE_FILE, SoftwareKeyStore

from .config import HostSettings
from .db.engine import Database
from .keyring import ReloadingKeyStore, file_stamp
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


def open_keystore(settings: HostSettings, *, create: bool = True) -> ManagedKeyStore:
    """The host's keystore: the one ``settings.keystore`` names, else the software
    keystore in the data directory (created there when missing and ``create``)."""
    if settings.keystore:
        return _open_named(settings.keystore)
    directory = settings.keystore_dir
    if (directory / KEYSTORE_FILE).exists():
        return SoftwareKeyStore.open(directory, passphrase(directory, create=False))
    if not create:
        raise KeystoreError(f"no keystore in {directory}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SoftwareKeyStore.create(directory, passphrase(directory, create=True),
                                   now=int(time.time()))


def _open_named(spec: str) -> ManagedKeyStore:
    if locate.is_pkcs11(spec):
        # The PIN comes from the URI's pin-source only: a server asks no one.
        store = locate.open_keystore(spec)
        held = {ref.name for ref in store.refs()}
        missing = [name for name in KEY_SPECS if name not in held]
        if missing:
            store.close()
            raise KeystoreError(f"the keystore {store.location} lacks {', '.join(missing)} "
                                "(a host needs every key 'tallypurse keys init' makes)")
        log.info("keystore: PKCS#11 token %s", store.location)
        return store
    directory = Path(spec)
    if not (directory / KEYSTORE_FILE).exists():
        raise KeystoreError(f"no keystore in {directory} "
                            f"(make one with 'tallypurse keys init --keystore {directory}')")
    return SoftwareKeyStore.open(directory, passphrase(directory, create=False))


def following_keystore(settings: HostSettings, store: ManagedKeyStore) -> KeyStore:
    """``store``, following the ceremonies other processes run on it (host.keyring):
    a software keystore is opened again when a ceremony rewrites its file; a token's
    keys are read again, in the same session, when its change stamp changes."""
    if settings.keystore and locate.is_pkcs11(settings.keystore):
        from tallypurse.keystore.pkcs11 import Pkcs11KeyStore

        if not isinstance(store, Pkcs11KeyStore):  # pragma: no cover - locate opens one
            raise KeystoreError(f"{store.location} is not a PKCS#11 keystore")
        token = store

        def refresh() -> KeyStore:
            token.reload()
            return token

        return ReloadingKeyStore(token, token.change_stamp, refresh, where=token.location)
    directory = Path(settings.keystore) if settings.keystore else settings.keystore_dir
    return ReloadingKeyStore(store, file_stamp(directory / KEYSTORE_FILE),
                             lambda: open_keystore(settings, create=False),
                             where=str(directory / KEYSTORE_FILE))


def open_host(settings: HostSettings, *, create_keystore: bool = True) -> Host:
    """The host on its database and keystore. The keystore is opened first, so that a
    keystore that cannot be opened leaves the data directory and database untouched."""
    keys = open_keystore(settings, create=create_keystore)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database.connect(settings.database_url)
    except BaseException:
        keys.close()
        raise
    return Host(db, following_keystore(settings, keys), settings=settings)


SWITCH_INTERVAL_S = 0.0005


def app_from_env() -> FastAPI:
    """uvicorn factory: ``uvicorn --factory tallypurse.host.bootstrap:app_from_env``."""
    import gc
    import logging
    import sys

    from .api import create_app

    # A worker process that uvicorn spawned has none of the parent's logging set up:
    # the structured event log (one JSON object per line) goes to stderr here too.
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # The agent-debit writer thread waits for its database answers while the event loop
    # thread holds the interpreter: with the default 5 ms switch interval each of the
    # group's round trips could wait that long for its turn.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(open_host(HostSettings.from_env(), create_keystore=False))
    # Everything loaded so far lives as long as the process: keep it out of the garbage
    # collector's full walks, which otherwise stall every request now and then.
    gc.freeze()
    return app
