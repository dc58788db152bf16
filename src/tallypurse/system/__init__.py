"""The whole system in one process: an embedded host served over loopback HTTP,
terminals enrolled against it, and cards issued by it. :class:`ServedHost` is the
same with the host's HTTP side in a ``tallypurse host serve`` child process (the
way an operator runs it, e.g. on a PKCS#11 token).

Like :mod:`tallypurse.lab`, this is a composition root (it may import every
component); the demo and end-to-end tests use it. Nothing here shortcuts the
protocols: terminals reach the host only through signed HTTP requests on
127.0.0.1, and the host reaches cards only through APDUs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import uvicorn

from tallypurse.card.card import Card
from tallypurse.host.api import create_app
from tallypurse.host.bank import SandboxBank
from tallypurse.host.bootstrap import following_keystore, open_host, open_keystore
from tallypurse.host.config import HostSettings
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import upgrade
from tallypurse.host.keyring import ReloadingKeyStore
from tallypurse.host.service import Host
from tallypurse.keystore.base import ManagedKeyStore
from tallypurse.terminal.engine import Terminal
from tallypurse.terminal.http_client import HttpHostClient
from tallypurse.terminal.reader import InProcessReader


class Network(httpx.BaseTransport):
    """The terminal's network link: real HTTP over loopback that can be cut."""

    def __init__(self) -> None:
        self.online = True
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.online:
            raise httpx.ConnectError("network unreachable (link down)", request=request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class EmbeddedHost:
    """A host service (SQLite in ``data_dir`` unless ``db_url``) served by uvicorn on a
    free loopback port in a background thread."""

    def __init__(self, data_dir: Path, *, db_url: str = "",
                 bank: SandboxBank | None = None, db: Database | None = None,
                 port: int = 0) -> None:
        """``db`` serves an open database instead of ``db_url``'s; ``port`` (a port a
        stopped EmbeddedHost used) restarts a host where its terminals expect it."""
        settings = HostSettings(data_dir=Path(data_dir), db_url=db_url)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if db is None:
            db = Database.connect(settings.database_url)
        upgrade(db)
        self.bank = bank or SandboxBank()
        keys = following_keystore(settings, open_keystore(settings))
        self.host = Host(db, keys, settings=settings, bank=self.bank)
        self.app = create_app(self.host)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                     access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the embedded host did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
        self.host.db.engine.dispose()

    def __enter__(self) -> EmbeddedHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServedHost:
    """``tallypurse host serve`` in a child process on a free loopback port, and the
    operator's side of the same host (database and keystore) in this process, opened as
    the ``tallypurse host ...`` commands open it. ``keystore`` is passed as
    ``--keystore`` (a PKCS#11 URI's PIN travels in its pin-source variable, in ``env``),
    ``workers`` as ``--workers``. The server's log goes to ``serve.log`` in the data
    directory."""

    def __init__(self, data_dir: Path, *, keystore: str = "", db_url: str = "",
                 env: dict[str, str] | None = None, start_timeout_s: float = 120,
                 workers: int = 1) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "tallypurse.cli.main", "host", "serve",
                   "--data-dir", str(self.data_dir), "--port", str(self.port)]
        if keystore:
            command += ["--keystore", keystore]
        if db_url:
            command += ["--db", db_url]
        if workers != 1:
            command += ["--workers", str(workers)]
        self.log_path = self.data_dir / "serve.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env if env is not None else dict(os.environ),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy(start_timeout_s)
            self.host = open_host(HostSettings(data_dir=self.data_dir, db_url=db_url,
                                               keystore=keystore), create_keystore=False)
        except BaseException:
            self._terminate()
            raise

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tallypurse host serve did not start: {self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def _terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def stop(self) -> None:
        self._terminate()
        self.host.db.engine.dispose()
        if isinstance(self.host.keys, ManagedKeyStore | ReloadingKeyStore):
            self.host.keys.close()

    def __enter__(self) -> ServedHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HostEndpoint(Protocol):
    """A running host: its URL and the operator's side of it (EmbeddedHost, ServedHost)."""

    @property
    def url(self) -> str: ...

    @property
    def host(self) -> Host: ...


@dataclass
class Till:
    """A terminal at a merchant, with its own network link to the host."""

    name: str
    merchant_id: str
    terminal: Terminal
    network: Network
    client: HttpHostClient = field(repr=False)

    def reader(self, card: Card) -> InProcessReader:
        return InProcessReader(card)

    def close(self) -> None:
        self.terminal.close()
        self.client.close()


def enrol_till(eh: HostEndpoint, directory: Path, *, name: str, merchant_id: str,
               terminal_id: bytes, passphrase: str = "till") -> Till:
    """Register a terminal at the host (TMS), then enrol it over HTTP with its SAM."""
    tid, token = eh.host.tms.create_terminal(merchant_id, terminal_id.hex())
    network = Network()
    client = HttpHostClient(eh.url, transport=network)
    terminal = Terminal.enrol(directory, passphrase=passphrase, host=client, token=token,
                              terminal_id=bytes.fromhex(tid), merchant_name=name,
                              host_url=eh.url)
    return Till(name, merchant_id, terminal, network, client)


def issue_card(eh: HostEndpoint, serial: bytes, *, cardholder_id: str | None,
               path: Path | None = None) -> Card:
    """Manufacture a blank card and have the host personalise and register it."""
    card = Card.manufacture(serial, path=path)
    eh.host.registry.issue_card(card, serial=serial, cardholder_id=cardholder_id)
    return card
