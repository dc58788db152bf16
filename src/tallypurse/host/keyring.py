"""A running host sees key ceremonies without a restart.

``tallypurse keys rotate``, ``revoke`` and the other ceremonies change the keystore
from another process: the software keystore's file is rewritten (atomically: a new
file renamed over the old); on a PKCS#11 token the ceremony adds its objects and
then sets the token's change stamp (``keystore.pkcs11``). :class:`ReloadingKeyStore`
wraps the store the host opened and, at most once per ``interval`` seconds, asks a
*stamp* function for something cheap that changes with every ceremony: the file's
inode, size and modification time (:func:`file_stamp`), or the token's change stamp
(``Pkcs11KeyStore.change_stamp``, one attribute read). When the stamp changed it
calls ``reopen`` (open the file again; read the token's keys again in the same
session) and uses that store from then on. A new version is then current for
signing and certifying; a revoked one signs no more.

Each process (each uvicorn worker, with its own session on a token) follows on its
own. A stamp of None (no file; a token no ceremony has stamped yet) is not a change.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path

from tallypurse.core.cert import Certificate, KeyRef, Signer
from tallypurse.core.errors import TallypurseError
from tallypurse.core.protocol import CertRole
from tallypurse.keystore.base import KeyInfo, KeyStore

from .common import log_event

Stamp = Callable[[], Hashable | None]


def file_stamp(path: Path) -> Stamp:
    """The stamp of a keystore file: its inode, size and modification time (None
    while it is missing). One ``stat``."""

    def stamp() -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    return stamp


class ReloadingKeyStore:
    """A KeyStore that follows ceremonies run elsewhere: when ``stamp()`` changes,
    ``reopen()`` gives the store to use (a new one, or the same one refreshed).
    ``where`` names the keystore in the log (never with a PIN)."""

    def __init__(self, inner: KeyStore, stamp: Stamp, reopen: Callable[[], KeyStore], *,
                 where: str, interval: float = 1.0) -> None:
        self._inner = inner
        self._stamp_of = stamp
        self._reopen = reopen
        self.where = where
        self.interval = interval
        self._stamp = stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @property
    def inner(self) -> KeyStore:
        """The store in use, opened again (or refreshed) first if the stamp changed.
        If that fails the error is logged and raised, the store in use stays, and the
        next look (after ``interval``) tries again."""
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._inner
        with self._lock:
            self._checked = now
            try:
                stamp = self._stamp_of()
                if stamp is not None and stamp != self._stamp:
                    self._inner = self._reopen()
                    self._stamp = stamp
                    log_event("keystore_reloaded", keystore=self.where)
            except TallypurseError as exc:
                log_event("keystore_reload_failed", keystore=self.where, error=exc.message)
                raise
            return self._inner

    def refs(self) -> list[KeyRef]:
        return self.inner.refs()

    def current(self, name: str) -> KeyRef:
        return self.inner.current(name)

    def info(self, ref: KeyRef) -> KeyInfo:
        return self.inner.info(ref)

    def sign(self, ref: KeyRef, data: bytes) -> bytes:
        return self.inner.sign(ref, data)

    def signer(self, ref: KeyRef) -> Signer:
        return self.inner.signer(ref)

    def public_key(self, ref: KeyRef) -> bytes:
        return self.inner.public_key(ref)

    def certificate(self, ref: KeyRef) -> Certificate:
        return self.inner.certificate(ref)

    def kcv(self, ref: KeyRef) -> bytes:
        return self.inner.kcv(ref)

    def diversify(self, master: KeyRef, purpose: bytes, serial: bytes) -> bytes:
        return self.inner.diversify(master, purpose, serial)

    def issue_certificate(self, *, holder: bytes, role: CertRole, public_key: bytes,
                          not_before: int, not_after: int) -> Certificate:
        return self.inner.issue_certificate(holder=holder, role=role, public_key=public_key,
                                            not_before=not_before, not_after=not_after)

    def close(self) -> None:
        """Close the store in use (a token's session; nothing for a file)."""
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()

    def rotate(self, name: str, *, now: int | None = None) -> KeyRef:
        ref = self.inner.rotate(name, now=now)
        with self._lock:
            self._stamp = self._stamp_of()  # our own change: nothing to reopen
        return ref
