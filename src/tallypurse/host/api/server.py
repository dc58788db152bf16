"""The HTTP protocol `tallypurse host serve` gives uvicorn: h11 with ``TCP_NODELAY``.

With ``--workers N`` uvicorn binds the listening socket itself, with protocol number 0,
and asyncio then leaves Nagle's algorithm on for the connections it accepts (it sets
``TCP_NODELAY`` only on sockets whose protocol is ``IPPROTO_TCP``). uvicorn writes a
response's headers and its body separately, so the body waited for the client's
delayed acknowledgement of the headers: about 40 ms on every answer. This protocol
turns Nagle off on every connection, whatever socket it came from.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # a socket that is already gone: h11 notices it
                pass
        super().connection_made(transport)
