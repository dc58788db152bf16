"""The HTTP protocol `tallypurse host serve` gives uvicorn: httptools (a C parser) with
``TCP_NODELAY``, on uvloop.

With ``--workers N`` uvicorn binds the listening socket itself, with protocol number 0,
and asyncio then leaves Nagle's algorithm on for the connections it accepts (it sets
``TCP_NODELAY`` only on sockets whose protocol is ``IPPROTO_TCP``). uvicorn writes a
response's headers and its body separately, so the body waited for the client's
delayed acknowledgement of the headers: about 40 ms on every answer. These protocols
turn Nagle off on every connection, whatever socket it came from.

httptools parses a request in C; h11, uvicorn's pure-Python parser, took about a fifth of
the host's CPU per agent debit. The h11 protocol stays for a platform without httptools.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _no_delay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a socket that is already gone: the parser notices it
            pass


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)


def protocol() -> type[asyncio.Protocol]:
    """The fastest protocol this platform has."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return NoDelayH11Protocol
    return NoDelayHttpToolsProtocol


def loop() -> str:
    """uvicorn's event loop setting: uvloop where it is installed, else asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
