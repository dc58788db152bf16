"""A running host sees key ceremonies without a restart.

``tallypurse keys rotate`` and ``revoke`` rewrite the software keystore's file
(atomically: a new file renamed over the old). :class:`ReloadingKeyStore`
wraps the store the host opened and, at most once per ``interval`` seconds,
looks at the file (inode, size, modification time); when it changed, it opens
the keystore again and uses the new one from then on. A new version is then
current for signing and certifying; a revoked one signs no more.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tallypurse.core.cert import Certificate, KeyRef, Signer
from tallypurse.core.protocol import CertRole
from tallypurse.keystore.base import KeyInfo, KeyStore

from .common import log_event


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ReloadingKeyStore:
    """A KeyStore that follows its file. ``reopen`` opens the keystore again."""

    def __init__(self, inner: KeyStore, path: Path, reopen: Callable[[], KeyStore], *,
                 interval: float = 1.0) -> None:
        self._inner = inner
        self._path = path
        self._reopen = reopen
        self.interval = interval
        self._stamp = _stamp(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @property
    def inner(self) -> KeyStore:
        """The store in use, opened again first if its file changed."""
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._inner
        with self._lock:
            self._checked = now
            stamp = _stamp(self._path)
            if stamp is not None and stamp != self._stamp:
                self._inner = self._reopen()
                self._stamp = stamp
                log_event("keystore_reloaded", keystore=str(self._path))
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
            self._stamp = _stamp(self._path)  # our own write: nothing to reopen
        return ref
