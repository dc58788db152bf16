"""`tallypurse terminal`: run a POS terminal from the command line, and `bench tap`.

A terminal lives in a data directory (``--data-dir``, default ``./terminal`` or
$TALLYPURSE_TERMINAL_DIR): its SAM, its journal and its config. The SAM
passphrase comes from $TALLYPURSE_SAM_PASSPHRASE (or a prompt).

The host is the host service over HTTP (``--host URL``, remembered at
enrolment), or, until one runs, the operator's keystore (``--keystore DIR``,
remembered as ``keystore:DIR``): :class:`KeystoreHost` certifies the SAM,
signs parameters, empty lists and load authorisations with the operator's
own keys, and answers everything that needs the host's books (agent debits,
online payments, batches) with "unavailable", so those wait in the outbox.

Exit status: 0 done; 2 bad input or error; 3 declined; 4 tap interrupted
(tap the same card again); 5 day-end totals mismatch.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tallypurse.core.errors import TallypurseError
from tallypurse.core.hostapi import (
    Ack,
    AgentDebitAck,
    AgentDebitRequest,
    BatchAck,
    BatchUpload,
    EnrolRequest,
    EnrolResponse,
    HostApi,
    HostUnavailable,
    LoadAuthorisationResponse,
    LoadConfirm,
    LoadRequest,
    OnlineAuthoriseRequest,
    OnlineAuthoriseResponse,
    OnlineChallenge,
    Parameters,
    ReversalRequest,
    ReversalResponse,
    SignedList,
    SignedParameters,
    SyncRequest,
    SyncResponse,
    WriteBackReport,
)
from tallypurse.core.messages import LoadAuthorisation
from tallypurse.core.money import Money, currency, format_minor
from tallypurse.core.protocol import CertRole
from tallypurse.core.samproto import CertificateRequest
from tallypurse.keystore.base import HOST_API, HOST_LIST, HOST_LOAD, KeyStore
from tallypurse.terminal import receipts
from tallypurse.terminal.engine import CONFIG_FILE, TapResult, Terminal, TerminalConfig
from tallypurse.terminal.errors import Declined, TapInterrupted
from tallypurse.terminal.http_client import HttpHostClient
from tallypurse.terminal.reader import InProcessReader, PcscReader, Reader

from .benchutil import ms, percentile

app = typer.Typer(
    help="Run a POS terminal: enrol, sync, purchase, load, cancel, close-day, journal, status.",
    no_args_is_help=True,
)

SAM_PASSPHRASE_ENV = "TALLYPURSE_SAM_PASSPHRASE"
KEYSTORE_PASSPHRASE_ENV = "TALLYPURSE_KEYSTORE_PASSPHRASE"
DIR_ENV = "TALLYPURSE_TERMINAL_DIR"
EXIT_ERROR, EXIT_DECLINED, EXIT_INTERRUPTED, EXIT_MISMATCH = 2, 3, 4, 5
YEAR = 365 * 24 * 3600

DEFAULT_PARAMETERS = Parameters(
    version=1,
    currency="EUR",
    offline_limit=10_000,
    online_threshold=5_000,
    credit_types=["canteen", "transit"],
    max_list_age_s=24 * 3600,
    cancel_window_s=120,
    journal_limit=100_000,
)


# --- a host stand-in backed by the operator's keystore -------------------------------------------
class KeystoreHost:
    """The parts of the host that need only the operator's keys (see the module doc)."""

    def __init__(self, keystore: KeyStore | Callable[[], KeyStore], *,
                 clock: Callable[[], float] = time.time,
                 parameters: Parameters = DEFAULT_PARAMETERS,
                 merchant_id: str = "local") -> None:
        self._ks = keystore
        self.clock = clock
        self.parameters = parameters
        self.merchant_id = merchant_id

    @property
    def ks(self) -> KeyStore:
        if callable(self._ks) and not isinstance(self._ks, KeyStore):
            self._ks = self._ks()
        assert isinstance(self._ks, KeyStore)
        return self._ks

    def _sign(self, data: bytes) -> tuple[str, str]:
        ref = self.ks.current(HOST_LIST)
        return str(ref), self.ks.sign(ref, data).hex()

    def enrol(self, body: EnrolRequest) -> EnrolResponse:
        req = CertificateRequest.parse(bytes.fromhex(body.csr))
        now = int(self.clock())
        cert = self.ks.issue_certificate(holder=req.terminal_id, role=CertRole.TERMINAL,
                                         public_key=req.public_key, not_before=now - 60,
                                         not_after=now + 3 * YEAR)
        root = self.ks.current("issuer-root")
        return EnrolResponse(
            certificate=cert.encode().hex(),
            roots={str(root): self.ks.public_key(root).hex()},
            host_certificates=[self.ks.certificate(self.ks.current(n)).encode().hex()
                               for n in (HOST_LIST, HOST_LOAD, HOST_API)],
            merchant_id=self.merchant_id,
        )

    def sync(self, body: SyncRequest) -> SyncResponse:
        now = int(self.clock())
        params = None
        if body.parameters_version != self.parameters.version:
            unsigned = SignedParameters(parameters=self.parameters, issued=now,
                                        key=str(self.ks.current(HOST_LIST)))
            params = unsigned.model_copy(
                update={"signature": self._sign(unsigned.signed_bytes())[1]}
            )
        lists: dict[str, SignedList | None] = {}
        for kind, version in (("blacklist", body.blacklist_version),
                              ("actions", body.actions_version)):
            lists[kind] = None
            if version != 0:  # the keystore keeps no lists: an empty snapshot
                unsigned_list = SignedList(kind=kind, from_version=0, to_version=0,  # type: ignore[arg-type]
                                           full=True, issued=now,
                                           key=str(self.ks.current(HOST_LIST)))
                lists[kind] = unsigned_list.model_copy(
                    update={"signature": self._sign(unsigned_list.signed_bytes())[1]}
                )
        return SyncResponse(blacklist=lists["blacklist"], actions=lists["actions"],
                            parameters=params, host_time=now)

    def load_authorisation(self, body: LoadRequest) -> LoadAuthorisationResponse:
        auth = LoadAuthorisation(
            card_id=bytes.fromhex(body.card_id), load_counter=body.load_counter,
            amount=body.amount, currency=currency(body.currency).numeric,
            card_challenge=bytes.fromhex(body.card_challenge),
            auth_id=os.urandom(8), time=int(self.clock()),
        )
        ref = self.ks.current(HOST_LOAD)
        return LoadAuthorisationResponse(
            idempotency_key=body.idempotency_key, authorisation=auth.to_bytes().hex(),
            signature=self.ks.sign(ref, auth.signed_data()).hex(),
            load_certificate=self.ks.certificate(ref).encode().hex(),
        )

    def _no_books(self, what: str) -> NoReturn:
        raise HostUnavailable(f"{what} needs the host service (the keystore has no books)")

    def upload_batch(self, body: BatchUpload) -> BatchAck:
        self._no_books("a batch upload")

    def agent_debit(self, body: AgentDebitRequest) -> AgentDebitAck:
        self._no_books("an agent debit")

    def online_challenge(self) -> OnlineChallenge:
        self._no_books("an online payment")

    def online_authorise(self, body: OnlineAuthoriseRequest) -> OnlineAuthoriseResponse:
        self._no_books("an online payment")

    def reverse(self, body: ReversalRequest) -> ReversalResponse:
        self._no_books("a reversal")

    def confirm_load(self, body: LoadConfirm) -> Ack:
        self._no_books("a load confirmation")

    def report_writeback(self, body: WriteBackReport) -> Ack:
        self._no_books("a write-back report")


# --- plumbing ------------------------------------------------------------------------------------
def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _secret(env: str, prompt: str, *, confirm: bool = False) -> str:
    value = os.environ.get(env)
    if value:
        return value
    answer: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    return answer


def _keystore_host(directory: Path) -> KeystoreHost:
    from tallypurse.keystore.software import SoftwareKeyStore

    def load() -> KeyStore:
        return SoftwareKeyStore.open(directory, _secret(KEYSTORE_PASSPHRASE_ENV,
                                                        "Keystore passphrase"))

    return KeystoreHost(load)


def _host_for(url: str) -> HostApi | None:
    if not url:
        return None
    if url.startswith("keystore:"):
        return _keystore_host(Path(url.removeprefix("keystore:")))
    try:
        return HttpHostClient(url)  # _open() attaches the SAM's request signer
    except ValueError as exc:
        fail(str(exc))


DataDir = Annotated[Path, typer.Option("--data-dir", envvar=DIR_ENV, file_okay=False,
                                       help="The terminal's data directory.")]
HostOpt = Annotated[str | None, typer.Option("--host",
                                              help="Host URL (overrides the enrolled one).")]
CardOpt = Annotated[Path | None, typer.Option(
    "--card", exists=True, dir_okay=False,
    help="Card file (tallypurse card new); or use --pcsc for a card in a PC/SC reader.")]
PcscOpt = Annotated[bool, typer.Option(
    "--pcsc", help="Take the card from a PC/SC reader (a contactless reader, or the virtual "
    "reader `tallypurse card serve` feeds) instead of a card file.")]
ReaderOpt = Annotated[str | None, typer.Option(
    "--reader", help="PC/SC reader name (default: the first reader with a card).")]
AmountOpt = Annotated[str, typer.Option("--amount", help="Amount, e.g. 12.50.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _open(data_dir: Path, host: str | None) -> Terminal:
    if not (data_dir / CONFIG_FILE).exists():
        fail(f"no terminal in {data_dir}: run `tallypurse terminal enrol --data-dir {data_dir}`")
    try:
        config = TerminalConfig.load(data_dir / CONFIG_FILE)
        t = Terminal.open(data_dir, passphrase=_secret(SAM_PASSPHRASE_ENV, "SAM passphrase"),
                          host=_host_for(host if host is not None else config.host_url))
    except TallypurseError as exc:
        fail(exc.message)
    if isinstance(t.host, HttpHostClient):  # every request signed by the SAM (RFC 9421)
        t.host.sign_request = t.request_signer()
    return t


def _amount(text: str, t: Terminal) -> int:
    code = t.lists.parameters.currency if t.lists.parameters else "EUR"
    try:
        minor = Money.parse(text, code).minor
    except TallypurseError as exc:
        fail(exc.message)
    return minor


def _print_result(result: TapResult, escpos: Path | None, t: Terminal) -> None:
    for w in result.writebacks:
        typer.echo(f"write-back {w} applied")
    for r in result.resolutions:
        typer.echo(f"interrupted attempt {r.attempt} ({r.kind}): {r.outcome} - {r.detail}")
    if result.receipt is None:
        return
    if result.recovered:
        typer.echo("the interrupted payment had gone through: its receipt follows "
                   "(nothing new was charged)")
    typer.echo(receipts.text(result.receipt), nl=False)
    if escpos is not None:
        receipts.print_escpos(result.receipt, str(escpos))
        typer.echo(f"ESC/POS receipt written to {escpos}")
    # Only now has the cashier got it: a stop before this line leaves the receipt
    # undelivered, and the retry is answered with it instead of a second charge.
    t.receipt_delivered(result.receipt)


def _reader(card_file: Path | None, pcsc: bool, reader_name: str | None) -> Reader:
    """The card to tap: a card file (the emulator in process) or a PC/SC reader."""
    if pcsc or reader_name:
        if card_file is not None:
            fail("give either --card FILE or --pcsc, not both")
        return PcscReader(reader_name)
    if card_file is None:
        fail("give --card FILE (a card file) or --pcsc (a card in a PC/SC reader)")
    from tallypurse.card.card import Card

    try:
        return InProcessReader(Card.open(card_file), name=str(card_file))
    except TallypurseError as exc:
        fail(exc.message)


def _tap(data_dir: Path, host: str | None, card_file: Path | None,
         action: Callable[[Terminal, Reader], TapResult],
         escpos: Path | None = None, *, pcsc: bool = False,
         reader_name: str | None = None) -> None:
    reader = _reader(card_file, pcsc, reader_name)
    t = _open(data_dir, host)
    try:
        try:
            result = action(t, reader)
        except Declined as exc:
            fail(exc.message, EXIT_DECLINED)
        except TapInterrupted as exc:
            fail(exc.message, EXIT_INTERRUPTED)
        except TallypurseError as exc:
            fail(exc.message)
        try:
            _print_result(result, escpos, t)
        except TallypurseError as exc:
            fail(exc.message)
    finally:
        t.close()


# --- commands ------------------------------------------------------------------------------------
@app.command("enrol")
def enrol(
    data_dir: DataDir = Path("terminal"),
    terminal_id: Annotated[str, typer.Option(help="Terminal id: 16 hex digits.")] = "",
    host: HostOpt = None,
    keystore: Annotated[Path | None, typer.Option(
        help="Enrol against the operator's keystore instead of a host service.")] = None,
    token: Annotated[str, typer.Option(help="Enrolment token from the operator.")] = (
        "local-enrolment"),
    merchant: Annotated[str, typer.Option(help="Merchant name on receipts.")] = "",
) -> None:
    """Create the SAM, get it certified, store the host's keys, download parameters and lists."""
    try:
        tid = bytes.fromhex(terminal_id) if terminal_id else os.urandom(8)
    except ValueError:
        fail("a terminal id is 16 hexadecimal digits")
    if len(tid) != 8:
        fail("a terminal id is 16 hexadecimal digits")
    if (keystore is None) == (host is None):
        fail("give either --host URL (the host service) or --keystore DIR (the operator's keys)")
    url = f"keystore:{keystore.resolve()}" if keystore is not None else str(host)
    api = _host_for(url)
    assert api is not None
    try:
        t = Terminal.enrol(
            data_dir, passphrase=_secret(SAM_PASSPHRASE_ENV, "New SAM passphrase", confirm=True),
            host=api, token=token, terminal_id=tid, merchant_name=merchant, host_url=url,
        )
    except TallypurseError as exc:
        fail(exc.message)
    p = t.lists.parameters
    typer.echo(f"enrolled terminal {tid.hex()} (merchant {t.merchant_id}) in {data_dir}")
    typer.echo(f"parameters v{p.version}: offline limit "
               f"{format_minor(p.offline_limit, currency(p.currency))}" if p
               else "no parameters yet: run `tallypurse terminal sync`")
    t.close()


@app.command("sync")
def sync(data_dir: DataDir = Path("terminal"), host: HostOpt = None) -> None:
    """Deliver the outbox, then download lists and parameters (verified, applied atomically)."""
    t = _open(data_dir, host)
    try:
        out = t.sync()
    except TallypurseError as exc:
        t.close()
        fail(exc.message)
    flushed = out["outbox"]
    typer.echo(f"synced: {json.dumps(out['changes']) if out['changes'] else 'lists current'}; "
               f"outbox sent {flushed.acked}, waiting {sum(t.outbox.depth().values())}")
    t.close()


@app.command("purchase")
def purchase(
    amount: AmountOpt,
    card: CardOpt = None,
    data_dir: DataDir = Path("terminal"),
    tx_type: Annotated[str, typer.Option("--type", help="Transaction type.")] = "general",
    online: Annotated[bool, typer.Option("--online", help="Pay from the online account.")] = False,
    host: HostOpt = None,
    pcsc: PcscOpt = False,
    reader: ReaderOpt = None,
    escpos: Annotated[Path | None, typer.Option(
        help="Also write the receipt as ESC/POS to this file or printer device.")] = None,
) -> None:
    """Take a payment from the card: offline, split when the purse is short, or online."""

    def act(t: Terminal, reader: Reader) -> TapResult:
        return t.purchase(reader, _amount(amount, t), tx_type=tx_type,
                          online=True if online else None)

    _tap(data_dir, host, card, act, escpos, pcsc=pcsc, reader_name=reader)


@app.command("load")
def load(
    amount: AmountOpt,
    card: CardOpt = None,
    data_dir: DataDir = Path("terminal"),
    funding: Annotated[str, typer.Option(help="cash or online_account.")] = "cash",
    host: HostOpt = None,
    pcsc: PcscOpt = False,
    reader: ReaderOpt = None,
) -> None:
    """Top up the card (online: the host signs the load)."""
    _tap(data_dir, host, card, lambda t, r: t.load(r, _amount(amount, t), funding=funding),
         pcsc=pcsc, reader_name=reader)


@app.command("cancel")
def cancel(card: CardOpt = None, data_dir: DataDir = Path("terminal"), host: HostOpt = None,
           pcsc: PcscOpt = False, reader: ReaderOpt = None) -> None:
    """Cancel this terminal's last purchase on the card, within the cancel window."""
    _tap(data_dir, host, card, lambda t, r: t.cancel_last(r), pcsc=pcsc, reader_name=reader)


@app.command("resolve")
def resolve(card: CardOpt = None, data_dir: DataDir = Path("terminal"), host: HostOpt = None,
            pcsc: PcscOpt = False, reader: ReaderOpt = None) -> None:
    """Tap a card only to apply its write-backs and resolve its interrupted payments."""
    _tap(data_dir, host, card, lambda t, r: t.resolve(r), pcsc=pcsc, reader_name=reader)


@app.command("reprint")
def reprint(
    data_dir: DataDir = Path("terminal"),
    seq: Annotated[int | None, typer.Option(
        "--seq", help="Journal entry of the receipt (default: the last receipt).")] = None,
    escpos: Annotated[Path | None, typer.Option(
        help="Also write the receipt as ESC/POS to this file or printer device.")] = None,
) -> None:
    """Print the last receipt (or that of a journal entry) again, marked COPY; a receipt
    never handed over (the terminal stopped first) counts as delivered from now on."""
    t = _open(data_dir, "")
    try:
        receipt = t.last_receipt(seq)
        if receipt is None:
            fail("no receipt to print again" if seq is None
                 else f"no receipt for journal entry {seq} on this terminal")
        typer.echo(receipts.text(receipt), nl=False)
        if escpos is not None:
            receipts.print_escpos(receipt, str(escpos))
            typer.echo(f"ESC/POS receipt written to {escpos}")
        t.receipt_delivered(receipt)
    except TallypurseError as exc:
        fail(exc.message)
    finally:
        t.close()


@app.command("ui")
def ui(
    card: CardOpt = None,
    data_dir: DataDir = Path("terminal"),
    host: HostOpt = None,
    pcsc: PcscOpt = False,
    reader: ReaderOpt = None,
    tx_type: Annotated[str, typer.Option("--type", help="Transaction type to start with.")] = (
        "general"),
    mode: Annotated[str, typer.Option(
        help="Mode to start with: auto (online above the offline limit), offline, online.")] = (
        "auto"),
) -> None:
    """The cashier's screen: key amounts, tap, see receipts; load cash, cancel, sync, close
    the day, see status. F2 pay, F3 load, F4 cancel, F5 sync, F6 tap only, F7 type,
    F8 mode, F9 close day, Ctrl+Q quit."""
    from tallypurse.core.protocol import TxType

    try:
        TxType.parse(tx_type)
    except TallypurseError as exc:
        fail(exc.message)
    if mode not in ("auto", "offline", "online"):
        fail(f"unknown mode {mode!r} (one of: auto, offline, online)")
    factory, label = _reader_factory(card, pcsc, reader)
    t = _open(data_dir, host)
    from tallypurse.terminal.ui import CashierApp

    try:
        CashierApp(t, factory, tx_type=tx_type, mode=mode, reader_label=label).run()
    finally:
        t.close()


def _reader_factory(card_file: Path | None, pcsc: bool, reader_name: str | None
                    ) -> tuple[Callable[[], Reader], str]:
    """The reader for each tap of the cashier's screen: the card file opened anew (a card
    entering the field), or one PC/SC reader."""
    first = _reader(card_file, pcsc, reader_name)
    if card_file is None:
        return (lambda: first), f"PC/SC {reader_name or '(first reader)'}"
    from tallypurse.card.card import Card

    path = card_file
    return (lambda: InProcessReader(Card.open(path), name=str(path))), str(path)


@app.command("close-day")
def close_day(data_dir: DataDir = Path("terminal"), host: HostOpt = None,
              as_json: JsonOpt = False) -> None:
    """Upload all unacknowledged entries in a signed batch; compare the host's totals."""
    t = _open(data_dir, host)
    try:
        report = t.close_day()
    except TallypurseError as exc:
        t.close()
        fail(exc.message)
    t.close()
    out = {
        "batch_id": report.batch_id, "entries": report.entries, "delivered": report.delivered,
        "totals": {k: v.model_dump() for k, v in report.totals.items()},
        "host_totals": None if report.host_totals is None
        else {k: v.model_dump() for k, v in report.host_totals.items()},
        "accepted": report.accepted, "duplicates": report.duplicates,
        "rejected": report.rejected, "mismatch": report.mismatch, "message": report.message,
    }
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        typer.echo(f"batch {report.batch_id or '(no new entries)'}: {report.entries} entries")
        for kind, tot in report.totals.items():
            typer.echo(f"  {kind:<10} {tot.count:>6}  {tot.amount:>12}")
        if report.delivered:
            typer.echo(f"host took {report.accepted} (+{report.duplicates} already known)")
        for r in report.rejected:
            typer.echo(f"  REJECTED entry {r['seq']}: {r['code']} {r['reason']}")
        if report.message:
            typer.echo(report.message)
    if report.mismatch:
        typer.echo("TOTALS MISMATCH: the host's totals differ from the terminal's", err=True)
        raise typer.Exit(EXIT_MISMATCH)


@app.command("journal")
def journal(
    data_dir: DataDir = Path("terminal"),
    limit: Annotated[int, typer.Option(help="Entries to show.")] = 20,
    verify: Annotated[bool, typer.Option(help="Verify every SAM signature.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the journal's latest entries and interrupted attempts; verify it."""
    t = _open(data_dir, "")
    try:
        n = t.journal.verify(all_signatures=verify)
        entries = t.journal.entries(None)[-limit:]
        attempts = t.journal.open_attempts_for()
        undelivered = t.undelivered()
    except TallypurseError as exc:
        t.close()
        fail(exc.message)
    t.close()
    if as_json:
        typer.echo(json.dumps({
            "verified": n, "entries": [e.model_dump() for e in entries],
            "open_attempts": [{"attempt": a.id, "kind": a.kind, "state": a.state,
                               "card_id": a.card_id.hex(), "amount": a.amount,
                               "detail": a.detail} for a in attempts],
            "undelivered_receipt": None if undelivered is None else {
                "attempt": undelivered[0].id, "journal_seq": undelivered[1].journal_seq},
        }, indent=2))
        return
    typer.echo(f"journal verified: {n} entries chained and signed"
               + (" (every signature checked)" if verify else ""))
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time))
        typer.echo(f"  {e.seq:>6} {when} {e.kind:<9} card {e.card_id} {e.amount:>8}"
                   + (f" + {e.split} online" if e.split else "") + f" {e.currency}"
                   + (f" ref {e.reference}" if e.reference else ""))
    for a in attempts:
        typer.echo(f"  attempt {a.id} {a.kind} {a.state.upper()} card {a.card_id.hex()}: "
                   f"{a.detail} (tap that card again)")
    if undelivered is not None:
        typer.echo(f"  entry {undelivered[1].journal_seq}: its receipt was never handed over "
                   "(`tallypurse terminal reprint`)")


@app.command("status")
def status(data_dir: DataDir = Path("terminal"), as_json: JsonOpt = False) -> None:
    """Journal counts, outbox depth, list versions and age, last sync and close."""
    t = _open(data_dir, "")
    data = t.status()
    t.close()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    j, o, lists = data["journal"], data["outbox"], data["lists"]
    typer.echo(f"terminal {data['terminal_id']}  merchant {data['merchant_id']}  "
               f"host {data['host_url'] or '-'}")
    typer.echo(f"journal: {j['unacknowledged']} unacknowledged of limit {j['limit']}, "
               f"head {j['head_seq']}; attempts {j['attempts']}")
    typer.echo(f"outbox: {o['depth']} waiting {o['by_kind']}; next try in "
               f"{o['next_attempt_in_s']} s; {len(o['rejected'])} refused by the host")
    for r in o["rejected"]:
        typer.echo(f"  REFUSED {r['kind']} {r['key']}: {r['error']}")
    for kind in ("blacklist", "actions", "parameters"):
        s = lists[kind]
        typer.echo(f"{kind}: " + ("never synced" if s is None
                                   else f"v{s['version']}, age {s['age_s']} s"))
    typer.echo(f"last sync: {data['last_sync_age_s']} s ago" if data["last_sync"]
               else "last sync: never")
    for a in data["open_attempts"]:
        typer.echo(f"UNCERTAIN attempt {a['attempt']} ({a['kind']}) card {a['card_id']}: "
                   "tap that card again")
    u = data["undelivered_receipt"]
    if u:
        typer.echo(f"RECEIPT NOT HANDED OVER: {u['kind']} of "
                   f"{format_minor(u['amount'], currency(u['currency']))} card {u['card_id']} "
                   f"(journal {u['journal_seq']}) went through: "
                   "run `tallypurse terminal reprint`")
    last = data["last_close"]
    if last:
        typer.echo(f"last close: batch {last['batch_id']}"
                   + ("  TOTALS MISMATCH" if last.get("mismatch") else ""))


# --- bench tap -----------------------------------------------------------------------------------
class _Timed:
    """Wraps an object and adds the time spent in its methods to ``self.seconds``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def bench_tap(
    taps: Annotated[int, typer.Option(help="Taps of each kind to time.")] = 10_000,
    blacklist: Annotated[int, typer.Option(help="Blacklisted cards in the terminal.")] = 1_000_000,
    as_json: JsonOpt = False,
) -> None:
    """Full terminal taps (card emulator + SAM + journal committed durably): offline and
    split, p50/p99/max, the share of card, SAM and journal, beside the floor."""
    if taps < 10:
        raise typer.BadParameter("at least 10 taps")
    result = run_tap_bench(taps, blacklist)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"terminal tap, {taps} offline and {taps} split taps, journal WAL + "
               f"synchronous=FULL, {result['blacklist_size']} blacklisted cards")
    for kind in ("offline", "split"):
        share = result[f"{kind}_share"]
        typer.echo(
            f"  {kind:<8} p50 {result[f'{kind}_p50_ms']} ms  p99 {result[f'{kind}_p99_ms']} ms"
            f"  max {result[f'{kind}_max_ms']} ms   ratio p50/floor "
            f"{result[f'{kind}_ratio_p50_to_floor']}x   share: card {share['card']:.0%}, "
            f"SAM {share['sam']:.0%}, journal {share['journal']:.0%}, "
            f"other {share['other']:.0%}"
        )
    typer.echo(f"  floor    p50 {result['floor_p50_ms']} ms  (the tap's crypto and two durable "
               f"commits alone: {result['floor_parts_us']})")
    typer.echo(f"  blacklist lookup {result['blacklist_lookup_us']} us; delta of 1,000 "
               f"changes {result['blacklist_delta_1000_ms']} ms")


def run_tap_bench(taps: int, blacklist_size: int) -> dict[str, Any]:
    import sqlite3

    from tallypurse.core import cert, crypto
    from tallypurse.core.hostapi import BlacklistEntry
    from tallypurse.lab import Lab

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        lab = Lab.create(tmp / "lab")
        now = lab.now + 3600

        def clock() -> float:
            return now

        params = DEFAULT_PARAMETERS.model_copy(update={"journal_limit": 10 * taps + 10_000})
        host = KeystoreHost(lab.keystore, clock=clock, parameters=params)
        t = Terminal.enrol(tmp / "terminal", passphrase="bench", host=host, token="bench-token",
                           terminal_id=bytes.fromhex("42454e4348000001"), clock=clock)
        # a big blacklist, as a city's terminal carries
        if blacklist_size:
            with t.db.write() as tx:
                tx.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
                    "WHERE i < ?) INSERT INTO blacklist SELECT CAST(printf('%08d', i) AS BLOB) "
                    "FROM n", (blacklist_size - 1,),
                )
            t.close()
            t = Terminal.open(tmp / "terminal", passphrase="bench", host=host, clock=clock)

        offline_card, _ = lab.new_card(bytes.fromhex("00000000000000c1"))
        lab.load(offline_card, 90_000)
        serial = bytes.fromhex("00000000000000c2")
        split_card, _ = lab.new_card(serial, credit=lab.credit_record(serial))

        term_cert = t.sam.certificate
        sam = _Timed(t.sam)
        t.sam = sam  # type: ignore[assignment]

        # The floor: the same crypto operations and two durable commits, alone. One floor
        # sample is taken after every timed tap, so that both see the same machine.
        key = crypto.generate_private_key()
        pub = crypto.encode_public_key(key.public_key())
        msg = os.urandom(96)
        signature = crypto.sign(key, msg)
        roots = lab.roots()
        scratch = sqlite3.connect(tmp / "floor.db", isolation_level=None)
        scratch.execute("PRAGMA journal_mode=WAL")
        scratch.execute("PRAGMA synchronous=FULL")
        scratch.execute("CREATE TABLE x (id INTEGER PRIMARY KEY, v BLOB)")
        row = os.urandom(400)
        parts: dict[str, list[float]] = {"sign": [], "verify": [], "certificate": [],
                                         "commit": []}
        floors: list[float] = []

        def floor_once() -> None:
            t0 = time.perf_counter()
            cert.verify(term_cert, roots, role=CertRole.TERMINAL, at=int(now))  # card
            t1 = time.perf_counter()
            crypto.verify(pub, signature, msg)  # card: the order
            crypto.verify(pub, signature, msg)  # SAM: the TAC
            t2 = time.perf_counter()
            crypto.sign(key, msg)  # SAM: the order
            crypto.sign(key, msg)  # card: the TAC
            crypto.sign(key, msg)  # SAM: the journal entry
            t3 = time.perf_counter()
            for _commit in range(2):
                scratch.execute("BEGIN IMMEDIATE")
                scratch.execute("INSERT INTO x(v) VALUES (?)", (row,))
                scratch.execute("COMMIT")
            t4 = time.perf_counter()
            parts["certificate"].append(t1 - t0)
            parts["verify"].append((t2 - t1) / 2)
            parts["sign"].append((t3 - t2) / 3)
            parts["commit"].append((t4 - t3) / 2)
            floors.append(t4 - t0)

        def run(card: Any, amount: int, n: int, before: Callable[[int], None]) -> list[
                tuple[float, float, float, float]]:
            reader = _Timed(InProcessReader(card))
            out = []
            for i in range(n):
                before(i)
                c0, s0, j0 = reader.seconds, sam.seconds, t.db.write_seconds
                t0 = time.perf_counter()
                t.purchase(reader, amount, tx_type="canteen")
                total = time.perf_counter() - t0
                out.append((total, reader.seconds - c0, sam.seconds - s0,
                            t.db.write_seconds - j0))
                floor_once()
            return out

        def reload_offline(i: int) -> None:
            if i and i % 80_000 == 0:
                lab.load(offline_card, 80_000)

        debts: list[tuple[int, int]] = []

        def prepare_split(i: int) -> None:
            # the purse must be short; debts are settled outside the timed tap
            if len(debts) >= 4:
                for ref, amount in debts:
                    lab.settle_debt(split_card, ref, amount)
                debts.clear()
            lab.load(split_card, 1)

        run(offline_card, 1, 20, reload_offline)  # warm-up: card certificate cached
        offline = run(offline_card, 1, taps, reload_offline)
        split_atc = [0]

        def prepare_and_track(i: int) -> None:
            prepare_split(i)
            split_atc[0] += 1
            debts.append((split_atc[0], 1))

        run(split_card, 2, 4, prepare_and_track)
        split = run(split_card, 2, taps, prepare_and_track)

        scratch.close()
        floor = percentile(floors, 0.5)

        # blacklist: lookup and a 1,000-change signed delta
        probe = [b"%08d" % i for i in range(0, max(blacklist_size, 1), max(1, blacklist_size
                                                                                // 10_000))]
        t0 = time.perf_counter()
        for p in probe:
            t.lists.is_blacklisted(p)
        lookup = (time.perf_counter() - t0) / max(1, len(probe))
        ref = lab.keystore.current(HOST_LIST)
        entries = [BlacklistEntry(card_id=(0x7000_0000_0000_0000 + i).to_bytes(8, "big").hex(),
                                  op="add") for i in range(1_000)]
        version = t.lists.version("blacklist")
        delta = SignedList(kind="blacklist", from_version=version, to_version=version + 1,
                           full=False, blacklist=entries, issued=int(now), key=str(ref))
        delta = delta.model_copy(update={"signature": lab.keystore.sign(
            ref, delta.signed_bytes()).hex()})
        wire = delta.model_dump_json()
        t0 = time.perf_counter()
        received = SignedList.model_validate_json(wire)
        with t.db.write() as tx:
            t.lists.apply(tx, now=int(now), blacklist=received, actions=None, parameters=None)
        delta_s = time.perf_counter() - t0
        size = len(t.lists.blacklist)
        t.sam = sam._inner
        t.close()

    def summary(kind: str, samples: list[tuple[float, float, float, float]]) -> dict[str, Any]:
        totals = [s[0] for s in samples]
        total = sum(totals)
        card = sum(s[1] for s in samples) / total
        sam_share = sum(s[2] for s in samples) / total
        journal = sum(s[3] for s in samples) / total
        p50 = percentile(totals, 0.5)
        return {
            f"{kind}_p50_ms": ms(p50),
            f"{kind}_p99_ms": ms(percentile(totals, 0.99)),
            f"{kind}_max_ms": ms(max(totals)),
            f"{kind}_mean_ms": ms(statistics.fmean(totals)),
            f"{kind}_ratio_p50_to_floor": round(p50 / floor, 2),
            f"{kind}_share": {"card": round(card, 3), "sam": round(sam_share, 3),
                              "journal": round(journal, 3),
                              "other": round(max(0.0, 1 - card - sam_share - journal), 3)},
        }

    return {
        "taps": taps,
        **summary("offline", offline),
        **summary("split", split),
        "floor_p50_ms": ms(floor),
        "floor_parts_us": {k: round(percentile(v, 0.5) * 1e6, 1) for k, v in parts.items()},
        "blacklist_size": size,
        "blacklist_lookup_us": round(lookup * 1e6, 3),
        "blacklist_delta_1000_ms": ms(delta_s),
    }

