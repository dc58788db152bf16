"""`tallypurse bench pcsc`, and a private pcscd with a virtual reader to run it (and tests) on.

Debian's pcscd (pcsc-lite 1.9.9) has its socket compiled in, ``/run/pcscd/pcscd.comm``;
only the client library reads ``PCSCLITE_CSOCK_NAME``. So a pcscd of our own gets a
socket of its own by running in a private mount namespace (``unshare --mount``, root)
with a temporary directory bound over ``/run/pcscd``; this process then points its
PC/SC client at the socket in that directory. Without root (or with ``unshare``
refused) it runs on the standard socket, which must then be free. ``pcscd -c DIR``
reads only our ``reader.conf.d``: one vpcd reader on a free port (vpcd 3.3 opens two
slots, on PORT and PORT+1, named "Virtual PCD 00 00" and "Virtual PCD 00 01").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tallypurse.card.vpcd import VPCD_PORT, ServedCard, VpcdCardServer
from tallypurse.core.protocol import PURSE_AID

from .benchutil import ms, percentile

DEFAULT_SOCKET = Path("/run/pcscd/pcscd.comm")
VPCD_DRIVER_DIRS = (
    Path("/usr/lib/pcsc/drivers/serial"),
    Path("/usr/local/lib/pcsc/drivers/serial"),
)
READER_PREFIX = "Virtual PCD"
GET_BALANCE = bytes.fromhex("80CA010200")
SELECT_PURSE = bytes((0x00, 0xA4, 0x04, 0x00, len(PURSE_AID))) + PURSE_AID + b"\x00"


class PcscUnavailable(Exception):
    """What the PC/SC stack needs is missing (the message names it)."""


def pcscd_path() -> str | None:
    return shutil.which("pcscd") or next(
        (p for p in ("/usr/sbin/pcscd", "/usr/local/sbin/pcscd") if os.access(p, os.X_OK)), None
    )


def vpcd_driver() -> Path | None:
    for d in VPCD_DRIVER_DIRS:
        for name in ("libifdvpcd.so", "libifdvpcd.so.0"):
            if (d / name).exists():
                return d / name
    return None


def missing_parts() -> list[str]:
    """The PC/SC pieces that are not installed, each with how to get it."""
    missing = []
    if pcscd_path() is None:
        missing.append("pcscd (apt-get install pcscd)")
    if vpcd_driver() is None:
        missing.append("vsmartcard-vpcd (apt-get install vsmartcard-vpcd)")
    try:
        import smartcard  # noqa: F401
    except ImportError:
        missing.append(
            "pyscard (uv sync --extra pcsc; it builds from source and needs "
            "apt-get install swig libpcsclite-dev)"
        )
    return missing


def socket_alive(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def tcp_listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` (read from /proc, no connection made:
    a connection to vpcd's port would count as a card)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "0A":
                return True
    return False


def free_port_pair() -> int:
    """A port P such that P and P+1 are free (vpcd listens on both, on all addresses)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("", port + 1))
            except OSError:
                continue
        return port
    raise PcscUnavailable("no free pair of TCP ports for vpcd")


def can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


class PcscdProcess:
    """pcscd in the foreground with one vpcd reader on ``port``; :meth:`stop` ends it."""

    def __init__(self, workdir: Path, port: int | None = None, *, debug: bool = False) -> None:
        self.debug = debug
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port_pair()
        self.conf_dir = self.workdir / "reader.conf.d"
        self.run_dir = self.workdir / "run"
        self.log_path = self.workdir / "pcscd.log"
        self.private = False
        self.socket_path = DEFAULT_SOCKET
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        missing = [m for m in missing_parts() if not m.startswith("pyscard")]
        if missing:
            raise PcscUnavailable("not installed: " + "; ".join(missing))
        pcscd = pcscd_path()
        driver = vpcd_driver()
        assert pcscd is not None and driver is not None
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{self.port:04X}\n"
            f"LIBPATH      {driver}\n"
            f"CHANNELID    0x{self.port:04X}\n"
        )
        if can_unshare():
            self.private = True
            self.socket_path = self.run_dir / "pcscd.comm"
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mkdir -p /run/pcscd && mount --bind "$1" /run/pcscd && shift && exec "$@"',
                   "pcscd-private", str(self.run_dir), *self._pcscd_cmd(pcscd)]
        else:
            if socket_alive(DEFAULT_SOCKET):
                raise PcscUnavailable(
                    f"a pcscd already runs on {DEFAULT_SOCKET}, and a pcscd with a socket of "
                    "its own needs root and unshare (a private mount namespace)"
                )
            self.private = False
            self.socket_path = DEFAULT_SOCKET
            cmd = self._pcscd_cmd(pcscd)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        if self.private:
            # Read once by libpcsclite, at the first PC/SC call of this process.
            os.environ["PCSCLITE_CSOCK_NAME"] = str(self.socket_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PcscUnavailable(
                    f"pcscd exited with status {self.proc.returncode}: {self.log_tail()}"
                )
            if socket_alive(self.socket_path) and tcp_listening(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise PcscUnavailable(f"pcscd did not come up in {timeout} s: {self.log_tail()}")

    def _pcscd_cmd(self, pcscd: str) -> list[str]:
        return [pcscd, "-f", *(["-d", "-a"] if self.debug else []), "-c", str(self.conf_dir)]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> PcscdProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def served(card: ServedCard, port: int, host: str = "127.0.0.1") -> Iterator[VpcdCardServer]:
    """A card server for ``card`` in a thread for the duration of the block."""
    server = VpcdCardServer(card, host, port, retry_delay=0.05, max_retry_delay=0.5)
    thread = threading.Thread(target=server.serve_forever, name="vpcd-card", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)


def connect_reader(name_prefix: str = READER_PREFIX, timeout: float = 10.0) -> Any:
    """A pyscard connection to the first reader whose name starts with ``name_prefix``
    (e.g. "Virtual PCD 00 00"), retried until a card is present."""
    from smartcard.Exceptions import CardConnectionException, NoCardException
    from smartcard.System import readers

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = [r for r in readers() if str(r).startswith(name_prefix)]
        except Exception as exc:  # pyscard raises its own error types for "no service"
            last = exc
            found = []
        if found:
            conn = found[0].createConnection()
            try:
                conn.connect()
                return conn
            except (NoCardException, CardConnectionException) as exc:
                last = exc
                release(conn)
        time.sleep(0.05)
    raise PcscUnavailable(f"no card in a reader named {name_prefix!r} after {timeout} s: {last}")


def release(connection: Any) -> None:
    """Disconnect and release a pyscard connection's context, whatever state it is in."""
    inner = getattr(connection, "component", connection)
    with contextlib.suppress(Exception):
        connection.disconnect()
    with contextlib.suppress(Exception):
        connection.release()
    # A context that failed to release (pcscd gone) must not raise again in __del__.
    if getattr(inner, "hcontext", None) is not None:
        inner.hcontext = None


class PcscTransport:
    """``transmit(apdu) -> response`` through a pyscard connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def transmit(self, apdu: bytes) -> bytes:
        data, sw1, sw2 = self.connection.transmit(list(apdu))
        return bytes(data) + bytes((sw1, sw2))


def bench_pcsc(
    apdus: Annotated[int, typer.Option(help="GET DATA round trips to time.")] = 1000,
    taps: Annotated[int, typer.Option(help="Purchases to time.")] = 200,
    use_running: Annotated[
        bool,
        typer.Option("--use-running", help="Use the running pcscd and its vpcd on --port "
                     "instead of starting a private one."),
    ] = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="vpcd's port with --use-running.")]
    = VPCD_PORT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """APDU round trip and full purchase through pcscd and the virtual reader (vpcd),
    beside the same on the in-process card."""
    from tallypurse.lab import Lab

    from .keys import fail

    if apdus < 10 or taps < 10:
        raise typer.BadParameter("at least 10 APDUs and 10 taps")
    missing = missing_parts()
    if missing:
        fail("PC/SC benchmark needs: " + "; ".join(missing))
    from smartcard.scard import SCARD_PCI_T1, SCardTransmit

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        pcscd = None
        if not use_running:
            pcscd = PcscdProcess(Path(tmp) / "pcscd")
            try:
                pcscd.start()
            except PcscUnavailable as exc:
                fail(str(exc))
            stack.callback(pcscd.stop)
            port = pcscd.port
        lab = Lab.create(Path(tmp) / "lab")
        serial = bytes.fromhex("00000000000000b2")
        card, _ = lab.new_card(serial, path=Path(tmp) / "bench.card")
        sam = lab.new_sam(Path(tmp) / "sam.json", b"BENCHPC1")
        stack.callback(sam.close)
        lab.load(card, 100_000)

        # In process, for comparison.
        card.transmit(SELECT_PURSE)
        in_apdu = _time_calls(lambda: card.transmit(GET_BALANCE), apdus)
        lab.purchase(card, sam, 1)
        in_tap = _time_calls(lambda: lab.purchase(card, sam, 1), taps)

        stack.enter_context(served(card, port))
        try:
            conn = connect_reader(f"{READER_PREFIX} 00 00")
        except PcscUnavailable as exc:
            fail(str(exc))
        stack.callback(release, conn)
        transport = PcscTransport(conn)
        transport.transmit(SELECT_PURSE)
        hcard = getattr(conn, "component", conn).hcard
        apdu = list(GET_BALANCE)

        def raw() -> None:
            hresult, _ = SCardTransmit(hcard, SCARD_PCI_T1, apdu)
            if hresult != 0:
                raise RuntimeError(f"SCardTransmit failed: {hresult:#x}")

        pc_apdu = _time_calls(raw, apdus)
        pc_apdu_pyscard = _time_calls(lambda: transport.transmit(GET_BALANCE), apdus)
        lab.purchase(transport, sam, 1)  # type: ignore[arg-type]
        pc_tap = _time_calls(lambda: lab.purchase(transport, sam, 1), taps)  # type: ignore[arg-type]

    result: dict[str, Any] = {
        "apdus": apdus,
        "taps": taps,
        "pcscd": "running" if use_running else ("private" if pcscd and pcscd.private else "own"),
        "apdu_p50_ms": ms(percentile(pc_apdu, 0.5)),
        "apdu_p99_ms": ms(percentile(pc_apdu, 0.99)),
        "apdu_pyscard_p50_ms": ms(percentile(pc_apdu_pyscard, 0.5)),
        "tap_p50_ms": ms(percentile(pc_tap, 0.5)),
        "tap_p99_ms": ms(percentile(pc_tap, 0.99)),
        "in_process_apdu_p50_ms": ms(percentile(in_apdu, 0.5)),
        "in_process_tap_p50_ms": ms(percentile(in_tap, 0.5)),
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"through pcscd and vpcd ({result['pcscd']} pcscd), GET DATA x{apdus}, "
               f"purchase x{taps}")
    typer.echo(f"  APDU round trip   p50 {result['apdu_p50_ms']} ms  p99 "
               f"{result['apdu_p99_ms']} ms  (pyscard high level p50 "
               f"{result['apdu_pyscard_p50_ms']} ms; in process p50 "
               f"{result['in_process_apdu_p50_ms']} ms)")
    typer.echo(f"  purchase          p50 {result['tap_p50_ms']} ms  p99 "
               f"{result['tap_p99_ms']} ms  (in process p50 {result['in_process_tap_p50_ms']} ms)")


def _time_calls(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
