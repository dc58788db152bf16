"""The cashier's screen: a Textual UI over :class:`~tallypurse.terminal.engine.Terminal`.

It is a face on the same engine the ``tallypurse terminal`` commands drive, not a
second implementation: a sale is :meth:`Terminal.purchase`, a cash load
:meth:`Terminal.load`, a cancel :meth:`Terminal.cancel_last`, and so on. The
screen only keys amounts (parsed exactly, in minor units of the terminal's
currency, as the command line does), chooses the transaction type and
offline / online, taps the card (``reader_factory`` gives the reader for each tap:
a card file opened anew, or a PC/SC reader) and shows what came of it.

Every engine call runs in a worker thread, one at a time (the screen refuses a
second action while one runs); the journal's SQLite connection allows that. Bad
input is refused before anything is sent to a card or the host.

Keys (also in the footer): F2 or Enter pay, F3 load cash, F4 cancel the last
sale, F5 sync, F6 tap only (apply write-backs, settle an interrupted payment),
F7 next transaction type, F8 next mode, F9 close the day, Esc clear, Ctrl+Q quit.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Input, Label, Select, Static
from textual.worker import Worker, WorkerState

from tallypurse.core.errors import BadInput, TallypurseError
from tallypurse.core.money import MAX_MINOR, Money, currency, format_minor
from tallypurse.core.protocol import TxType

from . import receipts
from .engine import CloseDayReport, TapResult, Terminal
from .errors import DeclineCode, Declined, TapInterrupted
from .reader import Reader

MODES: tuple[str, ...] = ("auto", "offline", "online")
TX_TYPES: tuple[str, ...] = tuple(t.name.lower() for t in TxType)
STATUS_REFRESH_S = 10.0

# what the outcome panel shows: its headline's style
APPROVED, DECLINED, INTERRUPTED, ERROR, INFO, REFUSED = (
    "approved", "declined", "interrupted", "error", "info", "refused")
_STYLE = {
    APPROVED: "bold black on green",
    DECLINED: "bold white on red",
    INTERRUPTED: "bold black on yellow",
    ERROR: "bold white on red",
    INFO: "bold black on cyan",
    REFUSED: "bold black on yellow",
}
_HOST_UNREACHABLE = {DeclineCode.HOST_UNAVAILABLE, DeclineCode.ONLINE_TIMEOUT_REVERSED}
_HOST_ANSWERED = {DeclineCode.HOST_DECLINED, DeclineCode.HOST_REJECTED}


def parse_amount(text: str, currency_code: str) -> int:
    """A keyed amount in minor units of ``currency_code``: "12.50" -> 1250. Exact (no
    floats); empty, negative, zero, too many decimals or above 2^32-1 is BadInput."""
    if not text.strip():
        raise BadInput("key an amount first, e.g. 12.50")
    if text.strip().startswith("-"):
        raise BadInput(f"{text.strip()!r}: an amount cannot be negative")
    minor = Money.parse(text, currency_code).minor
    if minor <= 0:
        raise BadInput("the amount must be more than zero")
    if minor > MAX_MINOR:
        raise BadInput(f"{text.strip()!r} is too large: at most "
                       f"{format_minor(MAX_MINOR, currency(currency_code))}")
    return minor


def age(seconds: int | float | None) -> str:
    """A short age for the status panel: 45 s, 12 min, 3 h, 2 d."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def status_lines(data: dict[str, Any], host_state: str) -> list[str]:
    """The status panel: journal counts, outbox depth, lists, last sync, host."""
    j, o, lists = data["journal"], data["outbox"], data["lists"]

    def row(label: str, value: str) -> str:
        return f"{label:<10}{value}"

    uncertain = len(data["open_attempts"])
    out = [
        row("journal", f"{j['unacknowledged']} unacked / {j['limit'] or '-'}"),
        row("", f"head {j['head_seq']}, {j['attempts'].get('committed', 0)} committed"),
        row("attempts", f"{uncertain} open" + (" - TAP THAT CARD" if uncertain else "")),
        row("outbox", f"{o['depth']} waiting"
            + (f", {len(o['rejected'])} refused" if o["rejected"] else "")),
    ]
    for kind in ("blacklist", "actions", "parameters"):
        s = lists[kind]
        out.append(row(kind if kind != "parameters" else "params", "never synced" if s is None
                       else f"v{s['version']}, age {age(s['age_s'])}"))
    out.append(row("sync", age(data["last_sync_age_s"])
                   + (" ago" if data["last_sync"] is not None else "")))
    if data.get("undelivered_receipt"):
        u = data["undelivered_receipt"]
        out.append(row("receipt", f"entry {u['journal_seq']} NOT GIVEN - F10"))
    last = data["last_close"]
    if last:
        out.append(row("close", "TOTALS MISMATCH" if last.get("mismatch")
                       else "refused" if "refused" in last else "balanced"))
    out.append(row("host", host_state))
    return out


@dataclass
class Outcome:
    """What one action came to, for the outcome panel."""

    kind: str  # APPROVED, DECLINED, ...
    headline: str
    lines: list[str] = field(default_factory=list)
    receipt: str = ""
    host_state: str | None = None  # online / offline, when the action learnt it
    clear_amount: bool = False
    status: dict[str, Any] | None = None
    handed: receipts.Receipt | None = None  # marked delivered once it is on the screen


def _tap_lines(result: TapResult) -> list[str]:
    out = [f"write-back {w} applied" for w in result.writebacks]
    out += [f"interrupted attempt {r.attempt} ({r.kind}): {r.outcome} - {r.detail}"
            for r in result.resolutions]
    return out


def _close_day_lines(report: CloseDayReport) -> list[str]:
    out = [f"batch {report.batch_id or '(no new entries)'}: {report.entries} entries"]
    out += [f"  {kind:<10} {tot.count:>5} {tot.amount:>12}" for kind, tot in
            report.totals.items()]
    if report.delivered:
        out.append(f"host took {report.accepted} (+{report.duplicates} already known)")
    out += [f"REJECTED entry {r['seq']}: {r['code']} {r['reason']}" for r in report.rejected]
    if report.message:
        out.append(report.message)
    return out


class CashierApp(App[None]):
    """The cashier's terminal screen (80x24 is enough)."""

    TITLE = "tallypurse terminal"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #banner { height: 1; background: $primary; color: $text; padding: 0 1; }
    #body { height: 1fr; }
    #left { width: 38; padding: 0 1; }
    #left Label { margin-top: 1; }
    #left Label.first { margin-top: 0; }
    #amount { width: 100%; }
    #mode-hint { color: $text-muted; }
    #status { height: 1fr; margin-top: 1; border: round $secondary;
              border-title-align: left; padding: 0 1; }
    #outcome-box { width: 1fr; border: round $accent; border-title-align: left; }
    #headline { padding: 0 1; }
    #details { padding: 0 1; }
    #receipt { padding: 0 1; margin-top: 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "pay", "Pay"),
        Binding("f3", "load", "Load"),
        Binding("f4", "cancel_last", "Cancel"),
        Binding("f5", "sync", "Sync"),
        Binding("f6", "resolve", "Tap"),
        Binding("f7", "next_type", "Type"),
        Binding("f8", "next_mode", "Mode"),
        Binding("f9", "close_day", "Close"),
        Binding("f10", "reprint", "Reprint"),
        Binding("escape", "clear", "Clear", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, terminal: Terminal, reader_factory: Callable[[], Reader], *,
                 tx_type: str = "general", mode: str = "auto", reader_label: str = "") -> None:
        super().__init__()
        TxType.parse(tx_type)  # BadInput names the known types
        if mode not in MODES:
            raise BadInput(f"unknown mode {mode!r} (one of: auto, offline, online)")
        self.terminal = terminal
        self.reader_factory = reader_factory
        self.reader_label = reader_label
        self._tx_type = tx_type.lower()
        self._mode = mode
        self.busy = False
        self.last: Outcome | None = None
        url = terminal.config.host_url
        self.host_state = ("no host" if terminal.host is None
                           else "keystore (no books)" if url.startswith("keystore:")
                           else "not contacted yet")

    # --- layout ------------------------------------------------------------------------------
    @property
    def currency_code(self) -> str:
        p = self.terminal.lists.parameters
        return p.currency if p else "EUR"

    def compose(self) -> ComposeResult:
        t = self.terminal
        name = t.config.merchant_name or t.merchant_id
        yield Static(Text(f"{name}  terminal {t.terminal_id.hex()}  card: "
                          f"{self.reader_label or '-'}", no_wrap=True, overflow="ellipsis"),
                     id="banner")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Label(f"Amount ({self.currency_code})", classes="first", id="amount-label")
                yield Input(placeholder="0.00", id="amount", compact=True)
                yield Label("Type (F7)")
                yield Select([(n, n) for n in TX_TYPES], value=self._tx_type, allow_blank=False,
                             id="type", compact=True)
                yield Label("Mode (F8)")
                yield Select([(m, m) for m in MODES], value=self._mode, allow_blank=False,
                             id="mode", compact=True)
                yield Static(self._mode_hint(self._mode), id="mode-hint")
                yield Static(id="status")
            with VerticalScroll(id="outcome-box"):
                yield Static(id="headline")
                yield Static(id="details")
                yield Static(id="receipt")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#status", Static).border_title = "Status"
        self.query_one("#outcome-box").border_title = "Outcome"
        self.query_one("#amount", Input).focus()
        self._show(Outcome(INFO, "READY", ["key an amount, then F2 (pay) or F3 (load cash)"]))
        self.refresh_status()
        self.set_interval(STATUS_REFRESH_S, self.refresh_status)

    # --- what the cashier chose -----------------------------------------------------------------
    @property
    def tx_type(self) -> str:
        value = self.query_one("#type", Select).value
        return str(value) if isinstance(value, str) else self._tx_type

    @property
    def mode(self) -> str:
        value = self.query_one("#mode", Select).value
        return str(value) if isinstance(value, str) else self._mode

    @property
    def amount_text(self) -> str:
        return self.query_one("#amount", Input).value

    def _mode_hint(self, mode: str) -> str:
        p = self.terminal.lists.parameters
        limit = format_minor(p.offline_limit, currency(p.currency)) if p else "the limit"
        return {"auto": f"online above {limit}", "offline": "purse only (split if short)",
                "online": "from the online account"}[mode]

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "mode":
            self.query_one("#mode-hint", Static).update(self._mode_hint(self.mode))

    def action_next_type(self) -> None:
        sel: Select[str] = self.query_one("#type", Select)
        sel.value = TX_TYPES[(TX_TYPES.index(self.tx_type) + 1) % len(TX_TYPES)]

    def action_next_mode(self) -> None:
        sel: Select[str] = self.query_one("#mode", Select)
        sel.value = MODES[(MODES.index(self.mode) + 1) % len(MODES)]

    def action_clear(self) -> None:
        self.query_one("#amount", Input).value = ""
        self.query_one("#amount", Input).focus()

    async def action_quit(self) -> None:
        if self.busy:  # never close the journal under a card command
            self.bell()
            self.notify("a tap or host call is running: quit when it is done",
                        severity="warning")
            return
        self.exit()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "amount":
            self.action_pay()

    # --- actions -------------------------------------------------------------------------------
    def _amount_or_refuse(self) -> int | None:
        try:
            return parse_amount(self.amount_text, self.currency_code)
        except BadInput as exc:
            self._show(Outcome(REFUSED, "NOT ACCEPTED", [exc.message, "nothing was done"]))
            return None

    def action_pay(self) -> None:
        amount = self._amount_or_refuse()
        if amount is None:
            return
        tx_type, mode = self.tx_type, self.mode
        online = {"auto": None, "offline": False, "online": True}[mode]
        cur = currency(self.currency_code)
        self._run(f"PAY {format_minor(amount, cur)} ({tx_type}, {mode}): tap the card",
                  lambda t, r: t.purchase(r, amount, tx_type=tx_type, online=online),
                  "nothing was charged")

    def action_load(self) -> None:
        amount = self._amount_or_refuse()
        if amount is None:
            return
        cur = currency(self.currency_code)
        self._run(f"LOAD {format_minor(amount, cur)} cash: tap the card",
                  lambda t, r: t.load(r, amount, funding="cash"), "nothing was loaded")

    def action_cancel_last(self) -> None:
        self._run("CANCEL the last sale: tap the card", lambda t, r: t.cancel_last(r),
                  "nothing was refunded")

    def action_resolve(self) -> None:
        self._run("TAP: write-backs and interrupted payments", lambda t, r: t.resolve(r))

    def action_reprint(self) -> None:
        self._start("REPRINT the last receipt", self._reprint)

    def _reprint(self) -> Outcome:
        r = self.terminal.last_receipt()
        if r is None:
            return Outcome(REFUSED, "NO RECEIPT TO PRINT AGAIN", ["nothing was done"])
        return Outcome(APPROVED, f"COPY of journal entry {r.journal_seq}",
                       ["printed again; nothing was charged"], receipts.text(r), handed=r)

    def action_sync(self) -> None:
        self._start("SYNC with the host", self._sync)

    def action_close_day(self) -> None:
        self._start("CLOSE DAY: batch to the host", self._close_day)

    # --- running the engine ----------------------------------------------------------------------
    def _run(self, what: str, action: Callable[[Terminal, Reader], TapResult],
             nothing: str = "nothing was done") -> None:
        self._start(what, lambda: self._tap(action), nothing)

    def _start(self, what: str, work: Callable[[], Outcome],
               nothing: str = "nothing was done") -> None:
        if self.busy:
            self.bell()
            return
        self.busy = True
        self._show(Outcome(INFO, what, ["working..."]))
        self.run_worker(lambda: self._guarded(work, nothing), thread=True, group="engine",
                        name=what, exit_on_error=False)

    def _guarded(self, work: Callable[[], Outcome], nothing: str) -> Outcome:
        try:
            out = work()
        except Declined as exc:
            out = Outcome(DECLINED, f"DECLINED {exc.reason.label} {exc.reason.text}",
                          [exc.detail or exc.message, nothing])
            if exc.reason in _HOST_UNREACHABLE and self.terminal.host is not None:
                out.host_state = "offline"
            elif exc.reason in _HOST_ANSWERED:
                out.host_state = "online"
        except TapInterrupted as exc:
            out = Outcome(INTERRUPTED, "INTERRUPTED - TAP THE SAME CARD AGAIN", [
                exc.message,
                "keep the amount and press the same key again with the same card; "
                "no receipt until then" if exc.attempt is not None
                else "present the card and press the key again",
            ])
        except TallypurseError as exc:
            out = Outcome(ERROR, "ERROR", [exc.message])
        except Exception as exc:  # a fault must not take the till down mid-day
            out = Outcome(ERROR, "ERROR", [f"{type(exc).__name__}: {exc}",
                                           *traceback.format_exc().splitlines()[-3:]])
        try:
            out.status = self.terminal.status()
        except Exception:  # the outcome is shown even when status cannot be read
            out.status = None
        return out

    def _tap(self, action: Callable[[Terminal, Reader], TapResult]) -> Outcome:
        reader = self.reader_factory()
        try:
            result = action(self.terminal, reader)
        finally:
            try:
                reader.disconnect()
            except Exception:  # the card may already be gone
                pass
        lines = _tap_lines(result)
        if result.receipt is None:
            return Outcome(APPROVED, "DONE", lines or ["nothing was pending for this card"])
        r = result.receipt
        cur = r.currency
        if r.kind == "load":
            headline = f"LOADED {format_minor(r.purse_amount, cur)}"
        elif r.kind == "cancel":
            headline = f"CANCELLED: {format_minor(r.purse_amount, cur)} back on the card"
        else:
            headline = f"APPROVED {format_minor(r.total, cur)}"
        if r.kind == "split purchase":
            lines.append(f"split: purse {format_minor(r.purse_amount, cur)} + online account "
                         f"{format_minor(r.online_amount, cur)} (pending)")
        if result.recovered:
            headline += " (RECOVERED)"
            lines.append("the interrupted payment had gone through: its receipt follows "
                         "(nothing new was charged)")
        state = "online" if r.kind in ("online purchase", "load") else None
        return Outcome(APPROVED, headline, lines, receipts.text(r), host_state=state,
                       clear_amount=r.kind != "cancel", handed=r)

    def _sync(self) -> Outcome:
        try:
            out = self.terminal.sync()
        except TallypurseError as exc:
            state = (None if self.terminal.host is None
                     else "online" if "refused by the host" in exc.message else "offline")
            return Outcome(ERROR, "SYNC FAILED", [exc.message, "lists and parameters unchanged"],
                           host_state=state)
        flushed = out["outbox"]
        changes = out["changes"]
        lines = [f"{kind} now v{change['to']}" for kind, change in changes.items()] if changes \
            else ["lists current"]
        lines.append(f"outbox sent {flushed.acked}, waiting "
                     f"{sum(self.terminal.outbox.depth().values())}")
        if flushed.stopped:
            lines.append(f"outbox stopped: {flushed.stopped}")
        return Outcome(APPROVED, "SYNCED", lines,
                       host_state="offline" if flushed.stopped else "online")

    def _close_day(self) -> Outcome:
        report = self.terminal.close_day()
        lines = _close_day_lines(report)
        if report.mismatch:
            return Outcome(ERROR, "CLOSE DAY: TOTALS MISMATCH", [
                *lines, "the host's totals differ from the terminal's"], host_state="online")
        if not report.delivered:
            return Outcome(REFUSED, "CLOSE DAY: BATCH WAITING FOR THE HOST", lines,
                           host_state=None if self.terminal.host is None else "offline")
        if report.refused:
            return Outcome(ERROR, "CLOSE DAY: REFUSED BY THE HOST", lines, host_state="online")
        return Outcome(APPROVED, "DAY CLOSED", lines, host_state="online")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "engine":
            return
        if event.state == WorkerState.SUCCESS:
            self.busy = False
            result = event.worker.result
            assert isinstance(result, Outcome)
            if result.host_state is not None:
                self.host_state = result.host_state
            amount = self.query_one("#amount", Input)
            if result.clear_amount:
                amount.value = ""
            amount.focus()  # ready for the next amount
            self._show(result)
            if result.handed is not None:  # on the screen now: the cashier has it
                try:
                    self.terminal.receipt_delivered(result.handed)
                    result.status = self.terminal.status()
                except TallypurseError as exc:
                    self.notify(f"receipt not marked delivered: {exc.message}",
                                severity="warning")
            if result.status is not None:
                self._show_status(result.status)
        elif event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
            self.busy = False
            self._show(Outcome(ERROR, "ERROR", [str(event.worker.error)]))

    # --- drawing -------------------------------------------------------------------------------
    def _show(self, out: Outcome) -> None:
        self.last = out
        self.query_one("#headline", Static).update(Text(f" {out.headline} ",
                                                        style=_STYLE[out.kind]))
        self.query_one("#details", Static).update(Text("\n".join(out.lines)))
        self.query_one("#receipt", Static).update(Text(out.receipt.rstrip("\n")))

    def refresh_status(self) -> None:
        if self.busy:  # the worker reads it when it is done
            return
        self._show_status(self.terminal.status())

    def _show_status(self, data: dict[str, Any]) -> None:
        self.query_one("#status", Static).update(Text("\n".join(status_lines(
            data, self.host_state))))
