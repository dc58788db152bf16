"""`host serve` turns Nagle's algorithm off on every connection, also on a listening socket
bound the way uvicorn binds it for several workers (protocol number 0), where asyncio
leaves it on."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tallypurse.host.api import server
from tallypurse.host.api.server import NoDelayH11Protocol, NoDelayHttpToolsProtocol


async def _nodelay_of_accepted(protocol: type[H11Protocol] | type[HttpToolsProtocol]) -> int:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # never called
        raise AssertionError("no request is sent")

    config = Config(app=app)
    config.load()
    state = ServerState()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # protocol 0, as uvicorn's
    listener.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}), sock=listener)
    try:
        _, writer = await asyncio.open_connection(*listener.getsockname())
        for _ in range(200):
            if state.connections:
                break
            await asyncio.sleep(0.01)
        (connection,) = state.connections
        sock = connection.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        value = int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        return value
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("protocol", [NoDelayH11Protocol, NoDelayHttpToolsProtocol])
def test_the_hosts_protocols_turn_nagle_off(
        protocol: type[H11Protocol] | type[HttpToolsProtocol]) -> None:
    assert asyncio.run(_nodelay_of_accepted(protocol)) != 0


def test_host_serve_takes_the_c_parser_and_uvloop_where_installed() -> None:
    # both are the project's dependencies: a machine set up from the lock file has them
    assert server.protocol() is NoDelayHttpToolsProtocol
    assert server.loop() == "uvloop"
