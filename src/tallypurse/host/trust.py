"""What the host gives terminals and cards to trust, across key rotations.

Every key has versions (``issuer-root/1``, ``issuer-root/2``, ...). A version is
*in force* from its creation until it is revoked in the keystore. While several
versions of the issuer root are in force, cards and terminals keyed with any of
them keep working:

* each host key version in force (list, load, API) is certified under *every*
  root in force: the keystore's own certificate under the root that was current
  when it was made, and a cross-certificate under each other root;
* each root in force is certified by every older root in force (a link
  certificate), so that a terminal that trusts only the old root learns the new
  one through a signature it already trusts;
* a terminal's key is certified under every root in force, so that it can show
  a card keyed with either root a certificate the card accepts.

A terminal receives all of it as a :class:`TrustBundle` at its next sync after
anything changed (the bundle's ``tag`` names the versions in force).
Cross-certificates are made on demand and kept for the life of the process.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

from tallypurse.core import cert, crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.hostapi import TrustBundle
from tallypurse.core.protocol import CertRole
from tallypurse.keystore.base import HOST_KEYS, ISSUER_ROOT

if TYPE_CHECKING:
    from tallypurse.host.db.models import Terminal
    from tallypurse.host.service import Host


class Trust:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._cache: dict[tuple[KeyRef, KeyRef], bytes] = {}
        self._lock = threading.Lock()

    # --- versions in force -----------------------------------------------------------------
    def in_force(self, name: str) -> list[KeyRef]:
        """The versions of ``name`` the keystore holds and has not revoked, oldest first."""
        keys = self.host.keys
        return [r for r in keys.refs() if r.name == name and keys.info(r).revoked is None]

    def roots(self) -> dict[KeyRef, bytes]:
        """Every issuer root version in force (certificates may be signed by older ones)."""
        return {r: self.host.keys.public_key(r) for r in self.in_force(ISSUER_ROOT)}

    def card_root(self, card_certificate: bytes) -> KeyRef:
        """The root a card holds: the one that certified it (re-keying replaces both)."""
        return cert.parse(card_certificate).authority

    # --- certificates --------------------------------------------------------------------
    def certificate(self, ref: KeyRef, root: KeyRef) -> bytes:
        """The certificate of the keystore's EC key ``ref`` issued by ``root``: its own
        when ``root`` made it, otherwise a cross-certificate with the same validity."""
        own = self.host.keys.certificate(ref)
        if own.authority == root:
            return own.encode()
        with self._lock:
            cached = self._cache.get((ref, root))
        if cached is not None:
            return cached
        made = cert.issue(
            self.host.keys.signer(root), authority=root, holder=own.holder, role=own.role,
            public_key=own.public_key, not_before=own.not_before, not_after=own.not_after,
        ).encode()
        with self._lock:
            self._cache[(ref, root)] = made
        return made

    def host_certificates(self) -> list[bytes]:
        """Every host key version in force, certified under every root in force."""
        roots = self.in_force(ISSUER_ROOT)
        return [self.certificate(ref, root)
                for name in HOST_KEYS for ref in self.in_force(name) for root in roots]

    def root_certificates(self) -> list[bytes]:
        """Link certificates: each root in force certified by each older root in force."""
        roots = self.in_force(ISSUER_ROOT)
        return [self.certificate(new, old)
                for i, new in enumerate(roots) for old in roots[:i]]

    def load_certificate(self, ref: KeyRef, card_certificate: bytes) -> bytes:
        """The load key's certificate under the root the card holds (the current root if
        the card's is no longer in force: the card will refuse it, as it should)."""
        root = self.card_root(card_certificate)
        if root not in self.in_force(ISSUER_ROOT):
            root = self.host.keys.current(ISSUER_ROOT)
        return self.certificate(ref, root)

    def terminal_certificates(self, terminal: Terminal) -> list[bytes]:
        """Fresh certificates of the terminal's key under every root in force, the current
        root's first; the terminal's row keeps the current root's."""
        assert terminal.public_key is not None
        now = self.host.now()
        settings = self.host.settings
        roots = self.in_force(ISSUER_ROOT)
        current = self.host.keys.current(ISSUER_ROOT)
        out = []
        for root in sorted(roots, key=lambda r: r != current):
            c = cert.issue(self.host.keys.signer(root), authority=root,
                           holder=bytes.fromhex(terminal.terminal_id), role=CertRole.TERMINAL,
                           public_key=bytes.fromhex(terminal.public_key),
                           not_before=now - settings.clock_skew_s,
                           not_after=now + settings.terminal_cert_validity_s)
            out.append(c.encode())
        if out:
            first = cert.parse(out[0])
            terminal.certificate = out[0].hex()
            terminal.cert_not_after = first.not_after
        return out

    # --- what a terminal is sent -----------------------------------------------------------
    def tag(self) -> str:
        """Names the key versions in force; a terminal that sends it back is current."""
        names = (ISSUER_ROOT, *HOST_KEYS)
        doc = {n: [r.version for r in self.in_force(n)] for n in names}
        return crypto.sha256(json.dumps(doc, sort_keys=True).encode()).hex()[:32]

    def bundle(self, terminal: Terminal) -> TrustBundle:
        return TrustBundle(
            tag=self.tag(),
            roots=[str(r) for r in self.in_force(ISSUER_ROOT)],
            root_certificates=[c.hex() for c in self.root_certificates()],
            host_certificates=[c.hex() for c in self.host_certificates()],
            terminal_certificates=[c.hex() for c in self.terminal_certificates(terminal)],
        )
