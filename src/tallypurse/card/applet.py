"""What an applet is, and what the card OS hands it (its context)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.sw import ISOException

from .storage import Store

if TYPE_CHECKING:
    from .os import CardManager


class AppletContext:
    """Everything an applet may reach: its own storage, randomness, the card serial,
    and other applets' interfaces that they export on purpose."""

    __slots__ = ("_lookup", "aid", "manager", "random", "serial", "store")

    def __init__(
        self,
        *,
        aid: bytes,
        store: Store,
        random: Callable[[int], bytes],
        serial: bytes,
        lookup: Callable[[bytes, bytes, str], object | None],
        manager: CardManager | None,
    ) -> None:
        self.aid = aid
        self.store = store
        self.random = random
        self.serial = serial
        self._lookup = lookup
        self.manager = manager

    def shareable(self, server_aid: bytes, name: str) -> object:
        """Ask another applet for an interface it exports; refused (6982) otherwise."""
        obj = self._lookup(self.aid, server_aid, name)
        if obj is None:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "firewall: no such shared interface")
        return obj


class Applet(ABC):
    """Base of every applet. Instances live in RAM; their state lives in ``ctx.store``."""

    def __init__(self, ctx: AppletContext) -> None:
        self.ctx = ctx

    def install(self, params: bytes) -> None:
        """Called once, inside the INSTALL command's transaction."""

    def select(self) -> bytes:
        """Called on SELECT; returns the FCI."""
        return b""

    def deselect(self) -> None:
        """Called when another applet is selected or the card is reset."""

    @abstractmethod
    def process(self, cmd: Command) -> bytes:
        """Process a command; return response data or raise ISOException."""

    def personalize(self, data: bytes, last: bool) -> bytes:
        """STORE DATA forwarded by this applet's security domain (data already unwrapped)."""
        raise ISOException(SW.FUNC_NOT_SUPPORTED, "applet takes no personalisation data")

    def shareable(self, client_aid: bytes, name: str) -> object | None:
        """Return an interface object for ``client_aid``, or None to refuse."""
        return None

    def uninstall(self) -> None:
        """Called before the applet's storage is erased by DELETE."""
