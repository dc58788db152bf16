"""The city simulator: the real card, terminal and host code, simulated time and network.

One seeded :class:`random.Random` drives everything the simulator decides
(who taps where, how much, when the network fails, where the power is cut),
and is also the random source of every card and terminal, so a seed names a
run. Time is one simulated clock shared by the host and the terminals
(terminals may run ahead or behind it with the clock-skew fault). The run is
a queue of timed events, each one a numbered *step*: a violation reports its
step, and ``--stop-at STEP`` replays the run up to it.

A day in the city: cardholders tap at the terminals they usually use (and top
up when their purse runs low), terminals sync every four hours and close the
day in the evening, the host processes direct debits every two hours and at
the end of the day sweeps collections, settles merchants, and the simulator
checks the ledger. After the last day the faults stop, the network heals,
every terminal uploads what it holds, the bank answers, every card taps once
more after a sync (to receive its outcomes), and every rule of the system
is checked against the cards themselves, the terminals' journals
and the host's books (:mod:`tallypurse.sim.checks`).
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import select

from tallypurse.card.card import Card
from tallypurse.core.hostapi import BatchAck, BatchUpload, LoadConfirm
from tallypurse.core.messages import SignedEvent
from tallypurse.core.purse_client import Counters, PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.config import HostSettings
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import upgrade
from tallypurse.host.db.models import Card as CardRow
from tallypurse.host.db.models import WriteBackAction
from tallypurse.host.service import Host
from tallypurse.keystore.software import KdfParams, SoftwareKeyStore
from tallypurse.terminal.engine import TapResult, Terminal
from tallypurse.terminal.errors import DeclineCode, Declined, TapInterrupted, TerminalError
from tallypurse.terminal.journal import SimulatedCrash
from tallypurse.terminal.reader import InProcessReader

from .bank import SimBank
from .checks import Copy
from .city import (
    SAM_PASSPHRASE,
    TRADES,
    CardPort,
    CrashSwitch,
    Person,
    Pos,
    Shop,
    Trade,
    copy_card,
    iban_de,
    poisson,
)
from .faults import Faults
from .network import Network, SimHostApi
from .report import SimReport, Violation

log = logging.getLogger("tallypurse.sim")

T = TypeVar("T")
START = 1_767_225_600  # 2026-01-01T00:00:00Z, the first simulated day
DAY = 86_400
HOUR = 3_600
KEYSTORE_PASSPHRASE = "simulated operator keystore"
SIM_KDF = KdfParams(memory_cost=8 * 1024, iterations=1, lanes=1)  # throw-away keystore
MAX_TRIES = 5  # a tap is tried again after a fault; the last try is fault-free
CARD_SERIAL_BASE = 0x5349_4D43_0000_0000  # "SIMC"
TERMINAL_ID_BASE = 0x5349_4D54_0000_0000  # "SIMT"
LOW_BALANCE = 1_000
# Declines after which a customer may top up and pay again.
SHORT = frozenset({DeclineCode.INSUFFICIENT_FUNDS, DeclineCode.CREDIT_TYPE_NOT_ALLOWED,
                   DeclineCode.NO_ONLINE_ACCOUNT, DeclineCode.CREDIT_RECORD_INVALID,
                   DeclineCode.OVERDRAFT_LIMIT, DeclineCode.MAX_OUTSTANDING,
                   DeclineCode.NO_FREE_DEBT_SLOT, DeclineCode.FAILED_DEBT_OUTSTANDING,
                   DeclineCode.LISTS_TOO_OLD})


@dataclass(frozen=True, slots=True)
class SimConfig:
    cards: int = 200
    terminals: int = 10
    days: int = 3
    seed: int = 1
    faults: Faults = field(default_factory=Faults)
    db_url: str = ""  # empty: a SQLite file in the work directory
    db_schema: str | None = None  # PostgreSQL: the (fresh) schema to use
    stop_at: int | None = None  # stop before this step (replay up to it)
    daily_checks: bool = True


class Clock:
    """The simulated time (unix seconds), shared by the host and the terminals."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


class Stop(Exception):
    """--stop-at reached."""


class Simulation:
    def __init__(self, config: SimConfig, workdir: Path,
                 progress: Callable[[str], None] | None = None) -> None:
        self.cfg = config
        self.workdir = Path(workdir)
        self.progress = progress or (lambda _msg: None)
        self.rng = Random(config.seed)
        self.faults = config.faults
        self.rates = config.faults.rates
        self.clock = Clock(START - DAY)
        self.db_url = config.db_url or f"sqlite:///{(self.workdir / 'host.sqlite3').resolve()}"
        db_name = "postgresql" if self.db_url.startswith("postgres") else "sqlite"
        self.report = SimReport(config.seed, config.cards, config.terminals, config.days,
                                config.faults.names(), db_name)
        self.counts = self.report.counts
        self.step = 0
        self._heap: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self._order = itertools.count()
        self.bank = SimBank(config.seed,
                            failure_rate=self.rates.bank_failure_rate
                            if "bank_failure" in self.faults else 0.0,
                            latency_s=self.rates.bank_latency_s
                            if "bank_failure" in self.faults else (0, 0))
        self.network = Network(lambda: self.host, self.rng, self.faults, self.clock,
                               observe=self._observe, problem=self._internal_error)
        self.shops: list[Shop] = []
        self.poses: list[Pos] = []
        self.people: list[Person] = []
        self.clones: list[Person] = []
        self.clone_records: dict[tuple[str, int], list[str]] = defaultdict(list)
        self.clones_seen_detected: set[str] = set()
        self.online_receipts: list[tuple[str, str, int]] = []  # (terminal, auth code, amount)
        self._host: Host | None = None
        self._db: Database | None = None
        self.final_sync_at = 0

    # --- the host process --------------------------------------------------------------------
    @property
    def host(self) -> Host:
        assert self._host is not None
        return self._host

    # --- what the rule checks look at (sim.checks.Subject) --------------------------------------
    def cards(self) -> dict[str, CardPort]:
        return {p.card_id.hex(): p.port for p in self.people}

    def copies(self) -> list[Copy]:
        return [Copy(p.card_id.hex(), p.port, p.clone, p.clone_seqno)
                for p in self.clones if p.clone is not None]

    def merchants(self) -> list[str]:
        return [s.merchant_id for s in self.shops]

    def terminals(self) -> dict[str, str]:
        return {pos.terminal_id: pos.shop.merchant_id for pos in self.poses}

    def terminal(self, terminal_id: str) -> Terminal:
        return next(pos for pos in self.poses if pos.terminal_id == terminal_id).term()

    def bank_collections(self) -> list[str]:
        return [ref for ref, _ in self.bank.settled.values()]

    def _open_host(self) -> Host:
        self._db = Database.connect(self.db_url, schema=self.cfg.db_schema)
        keys = SoftwareKeyStore.open(self.workdir / "keystore", KEYSTORE_PASSPHRASE)
        settings = HostSettings(data_dir=self.workdir / "host", db_url=self.db_url)
        return Host(self._db, keys, settings=settings, clock=self.clock, bank=self.bank)

    def restart_host(self) -> None:
        """Drop the host process and start another on the same database."""
        if self._db is not None:
            self._db.dispose()
        self._host = self._open_host()

    # --- problems ----------------------------------------------------------------------------
    def violation(self, rule: str, detail: str) -> None:
        v = Violation(rule, self.step, self.clock.t, detail)
        self.report.violations.append(v)
        log.info("violation [%s] at step %d: %s", rule, self.step, detail)

    def _internal_error(self, detail: str) -> None:
        self.violation("no_internal_errors", detail)

    # --- scheduling ----------------------------------------------------------------------------
    def at(self, when: int, kind: str, *args: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._order), kind, args))

    def now(self) -> int:
        return self.clock.t

    # --- the run -----------------------------------------------------------------------------
    def run(self) -> SimReport:
        started = time.perf_counter()
        try:
            self.setup()
            self.report.setup_s = time.perf_counter() - started
            self.progress(f"city ready in {self.report.setup_s:.1f} s: {len(self.people)} cards, "
                          f"{len(self.poses)} terminals")
            self.loop()
            # The settle-up and the final checks are one more step: --stop-at it stops
            # with every event done and nothing delivered yet.
            self.next_step("settle-up", self.now())
            self.progress("settling up: faults off, every terminal uploads, every card taps")
            self.settle_up()
            from .checks import Checks

            Checks(self).final()
        except Stop:
            self.report.stopped_at = self.step
        except Exception as exc:  # a failure nothing caught: a finding, with its step
            log.exception("the simulation stopped at step %d", self.step)
            self._internal_error(f"the run stopped: {exc.__class__.__name__}: {exc}")
        finally:
            for k, v in self.network.stats.items():
                self.counts[k if k.startswith("fault.") else f"net.{k}"] += v
            self.report.steps = self.step
            self.report.wall_s = time.perf_counter() - started
            self.close()
        return self.report

    def close(self) -> None:
        for pos in self.poses:
            if pos.terminal is not None and not pos.terminal.db.dead:
                pos.terminal.close()
            pos.terminal = None
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def loop(self) -> None:
        for d in range(self.cfg.days):
            self.at(START + d * DAY, "day", d)
        handlers: dict[str, Callable[..., None]] = {
            "day": self.plan_day, "tap": self.tap, "sync": self.sync, "close": self.close_day,
            "bank": self.bank_round, "eod": self.end_of_day, "restart": self.host_restart,
            "release": self.release, "partition": self.partition, "bank_down": self.bank_down,
            "fund": self.fund, "clone": self.inject_clone, "clone_tap": self.clone_tap,
        }
        while self._heap:
            when, _, kind, args = heapq.heappop(self._heap)
            self.next_step(f"{kind}{args}", when)
            self.clock.t = max(self.clock.t, when)
            handlers[kind](*args)

    def next_step(self, what: str, when: int) -> None:
        self.step += 1
        if self.cfg.stop_at is not None and self.step >= self.cfg.stop_at:
            self.progress(f"stopped before step {self.step}: {what} at {_stamp(when)}")
            raise Stop()

    # --- setting up the city ---------------------------------------------------------------------
    def setup(self) -> None:
        rng = self.rng
        SoftwareKeyStore.create(self.workdir / "keystore", KEYSTORE_PASSPHRASE,
                                now=START - 30 * DAY, kdf_params=SIM_KDF)
        db = Database.connect(self.db_url, schema=self.cfg.db_schema)
        upgrade(db)
        db.dispose()
        self._host = self._open_host()
        self.network.on = False  # no faults while the city is built
        n_terms = max(1, self.cfg.terminals)
        n_shops = max(1, min(n_terms, (n_terms + 1) // 2))
        for i in range(n_shops):
            trade = TRADES[i % len(TRADES)]
            name = f"{trade.kind.title()} {i + 1}"
            mid = self.host.registry.create_merchant(
                name, iban=iban_de(900_000 + i), bic="COBADEFFXXX", fee_basis_points=trade.fee_bp,
                merchant_id=f"m{i + 1:04d}")
            self.shops.append(Shop(mid, name, trade))
        skew = self.rates.skew_s if "clock_skew" in self.faults else 0
        for i in range(n_terms):
            shop = self.shops[i % n_shops]
            tid = f"{TERMINAL_ID_BASE + i:016x}"
            _, token = self.host.tms.create_terminal(shop.merchant_id, tid)
            # Enrolled with the clock nearly right (within the host's allowance); it drifts later.
            pos = Pos(i, tid, shop, self.workdir / "terminals" / tid, SimHostApi(self.network, tid),
                      CrashSwitch(), rng.randint(-50, 50) if skew else 0)
            pos.terminal = Terminal.enrol(
                pos.directory, passphrase=SAM_PASSPHRASE, host=pos.api, token=token,
                terminal_id=bytes.fromhex(tid), merchant_name=f"{shop.name} #{i + 1}",
                clock=self._terminal_clock(pos), random=rng.randbytes, jitter=rng.random,
                write_hook=pos.crash)
            shop.terminals.append(i)
            self.poses.append(pos)
            if skew:
                pos.skew = rng.randint(-skew, skew)
        self.clock.t = START - DAY + 5 * HOUR
        failing_share = self.rates.bank_failing_accounts if "bank_failure" in self.faults else 0.0
        for i in range(self.cfg.cards):
            self.people.append(self._person(i, failing_share))
            if (i + 1) % 500 == 0:
                self.progress(f"issued {i + 1} cards")
        # First loads, at a usual terminal, before the first day.
        self.clock.t = START - DAY + 18 * HOUR
        for p in self.people:
            if rng.random() < 0.85:
                self.load(self.poses[p.haunts[0]], p, p.topup_amount, "cash")
        for pos in self.poses:
            self.sync(pos.index)
        n_clones = 0
        if "clone" in self.faults and self.people:
            n_clones = max(1, round(len(self.people) * self.rates.clones_per_1000_cards / 1000))
        for _ in range(n_clones):
            day = rng.randrange(max(1, self.cfg.days - 1)) if self.cfg.days > 1 else 0
            self.at(START + day * DAY + rng.randint(8 * HOUR, 18 * HOUR), "clone")
        self.counts["setup.cards"] = len(self.people)
        self.counts["setup.terminals"] = len(self.poses)
        self.network.on = True

    def _terminal_clock(self, pos: Pos) -> Callable[[], float]:
        clock = self.clock
        return lambda: clock.t + pos.skew

    def _person(self, i: int, failing_share: float) -> Person:
        rng = self.rng
        registry = self.host.registry
        holder: str | None = None
        online_funded = False
        failing = False
        if rng.random() >= 0.1:  # most cards belong to a registered cardholder
            holder = registry.create_cardholder(f"Cardholder {i + 1}", "EUR",
                                                grade=rng.choice((1, 2, 2, 2, 3, 4, 0)))
            if rng.random() < 0.55:  # some online accounts stay empty
                registry.fund_online_account(holder, rng.randint(5, 100) * 100, f"sim-init-{i}")
                online_funded = True
            if rng.random() < 0.6:
                iban = iban_de(i + 1)
                registry.link_bank_account(holder, iban=iban, bic="COBADEFFXXX",
                                           holder_name=f"Cardholder {i + 1}")
                if rng.random() < failing_share:
                    self.bank.failing_ibans.add(iban)
                    failing = True
        serial = (CARD_SERIAL_BASE + i).to_bytes(8, "big")
        card = Card.manufacture(serial, random=rng.randbytes)
        registry.issue_card(card, serial=serial, cardholder_id=holder)
        haunts = rng.sample(range(len(self.poses)), k=min(len(self.poses), rng.randint(2, 4)))
        return Person(
            index=i, card_id=serial, port=CardPort(card), holder=holder, haunts=haunts,
            taps_per_day=rng.uniform(0.5, 3.5),
            topup_p=rng.choice((0.95, 0.8, 0.5, 0.1)),
            topup_amount=rng.choice((2_000, 3_000, 5_000, 10_000)),
            funding="online_account" if online_funded and rng.random() < 0.4 else "cash",
            online_funding=rng.choice((0, 0, 2_000, 5_000)) if holder else 0,
            failing_bank=failing,
        )

    # --- a day ---------------------------------------------------------------------------------
    def plan_day(self, d: int) -> None:
        rng, rates, faults = self.rng, self.rates, self.faults
        base = START + d * DAY
        self.progress(f"day {d + 1}/{self.cfg.days} ({_stamp(base)[:10]}): step {self.step}, "
                      f"{self.counts['taps']} taps so far")
        for p in self.people:
            for _ in range(poisson(rng, p.taps_per_day)):
                self.at(base + rng.randint(6 * HOUR, 22 * HOUR), "tap", p.index)
            if p.online_funding and rng.random() < 0.15:
                self.at(base + rng.randint(7 * HOUR, 20 * HOUR), "fund", p.index)
        for pos in self.poses:
            first = base + 6 * HOUR + rng.randint(0, 1_800)
            for k in range(5):
                self.at(first + k * 4 * HOUR, "sync", pos.index)
            self.at(base + 22 * HOUR + 1_800 + rng.randint(0, 2_400), "close", pos.index)
            if "partition" in faults and rng.random() < rates.partition_per_day:
                lo, hi = rates.partition_hours
                self.at(base + rng.randint(0, DAY - 1), "partition", pos.index,
                        rng.randint(lo, hi) * HOUR)
            if "late_batch" in faults and rng.random() < rates.late_batch_per_day:
                pos.skip_close_until = max(pos.skip_close_until, base + rng.randint(1, 3) * DAY)
                self.counts["fault.late_batch"] += 1
        for h in range(6, 23, 2):
            self.at(base + h * HOUR + 900, "bank")
        self.at(base + 23 * HOUR + 45 * 60, "eod", d)
        if "host_restart" in faults:
            for _ in range(poisson(rng, rates.host_restarts_per_day)):
                self.at(base + rng.randint(0, DAY - 1), "restart")
        if "reorder" in faults:
            for h in range(24):
                self.at(base + h * HOUR + 1_234, "release")
        if "bank_failure" in faults and rng.random() < rates.bank_down_per_day:
            self.at(base + rng.randint(0, DAY - 1), "bank_down", rng.randint(2, 10) * HOUR)

    # --- taps ------------------------------------------------------------------------------------
    def attempt(self, pos: Pos, port: CardPort | None,
                op: Callable[[Terminal, InProcessReader | None], T], what: str) -> T:
        """Run a terminal operation the way a cashier would: after a power cut the
        terminal is switched on again (reopened from its data directory), after a
        pulled card the customer taps again; each try may meet a new fault, the
        last one none."""
        rng, rates, faults = self.rng, self.rates, self.faults
        for i in range(MAX_TRIES):
            faulty = self.network.on and i < MAX_TRIES - 1
            if faulty and "terminal_crash" in faults and rng.random() < rates.terminal_crash:
                pos.crash.arm(rng.randrange(0, 8))
            if (port is not None and faulty and "card_pull" in faults
                    and rng.random() < rates.card_pull):
                if rng.random() < 0.25:
                    port.arm(lose=True)
                else:
                    port.arm(cut=rng.randrange(0, 10))
            reader = port.reader() if port is not None else None
            try:
                return op(pos.term(), reader)
            except SimulatedCrash:
                self.counts["fault.terminal_crash"] += 1
                self.reopen(pos)
            except TapInterrupted:
                self.counts["fault.card_pulled"] += 1
                if i == MAX_TRIES - 1:
                    raise
            finally:
                pos.crash.disarm()
                if port is not None:
                    port.disarm()
        raise AssertionError(f"{what} did not complete in {MAX_TRIES} tries")

    def reopen(self, pos: Pos) -> None:
        """Power the terminal up again from what its data directory holds."""
        if pos.terminal is not None:
            pos.terminal.close()
        pos.crash.disarm()
        pos.crashes += 1
        pos.terminal = Terminal.open(pos.directory, passphrase=SAM_PASSPHRASE, host=pos.api,
                                     clock=self._terminal_clock(pos), random=self.rng.randbytes,
                                     jitter=self.rng.random, write_hook=pos.crash)

    def _guard(self, what: str, fn: Callable[[], T]) -> T | None:
        """Unexpected failures of the terminal are findings, not the end of the run."""
        try:
            return fn()
        except (Stop, KeyboardInterrupt, Declined):
            raise
        except TerminalError as exc:
            self._internal_error(f"{what}: terminal error {exc.__class__.__name__}: {exc}")
        except Exception as exc:
            log.exception("unexpected failure in %s", what)
            self._internal_error(f"{what}: {exc.__class__.__name__}: {exc}")
        return None

    def tap(self, index: int) -> None:
        p = self.people[index]
        pos = self.poses[self.rng.choice(p.haunts)]
        trade = pos.shop.trade
        self.counts["taps"] += 1
        if p.balance < LOW_BALANCE and self.rng.random() < p.topup_p:
            self.load(pos, p, p.topup_amount, self._funding(p))
        amount = self._amount(trade)
        result, why = self.purchase(pos, p, p.port, amount, trade)
        if why in SHORT and self.rng.random() < p.topup_p:
            # Short of money (or of credit): top up at the till and pay again.
            self.counts["taps.topup_and_retry"] += 1
            self.load(pos, p, p.topup_amount, self._funding(p))
            result, why = self.purchase(pos, p, p.port, amount, trade)
        if (result is not None and result.receipt is not None and not result.recovered
                and result.receipt.kind in ("purchase", "split purchase")
                and self.rng.random() < 0.02):
            self.cancel(pos, p)

    def _funding(self, p: Person) -> str:
        return p.funding if self.rng.random() < 0.8 else "cash"

    def _amount(self, trade: Trade) -> int:
        if trade.big_ticket and self.rng.random() < trade.big_ticket:
            return self.rng.randint(10_100, 25_000)  # above the offline limit: online
        lo, hi = trade.amounts
        return self.rng.randint(lo, hi)

    def purchase(self, pos: Pos, p: Person, port: CardPort, amount: int,
                 trade: Trade) -> tuple[TapResult | None, DeclineCode | None]:
        kind = trade.tx_type.name.lower()

        def op(t: Terminal, reader: InProcessReader | None) -> TapResult:
            assert reader is not None
            started = time.perf_counter()
            out = t.purchase(reader, amount, tx_type=kind)
            self.report.tap_ms.append((time.perf_counter() - started) * 1000)
            return _handed(t, out)

        try:
            result = self._guard("purchase", lambda: self.attempt(pos, port, op, "purchase"))
        except Declined as exc:
            self.counts[f"declined.{exc.reason.name.lower()}"] += 1
            return None, exc.reason
        if result is None or result.receipt is None:
            return None, None
        receipt = result.receipt
        label = {"purchase": "purchase.offline", "split purchase": "purchase.split",
                 "online purchase": "purchase.online"}.get(receipt.kind, f"purchase.{receipt.kind}")
        self.counts[label] += 1
        if result.recovered:
            self.counts["purchase.recovered_after_fault"] += 1
        self.counts["writebacks.applied"] += len(result.writebacks)
        if receipt.kind == "online purchase":
            self.online_receipts.append((pos.terminal_id, receipt.reference,
                                         receipt.online_amount))
        elif port is p.port and receipt.balance_after is not None:
            p.balance = receipt.balance_after
        return result, None

    def cancel(self, pos: Pos, p: Person) -> None:
        try:
            result = self._guard("cancel", lambda: self.attempt(
                pos, p.port, lambda t, r: _handed(t, t.cancel_last(_reader(r))), "cancel"))
        except Declined as exc:
            self.counts[f"cancel.declined.{exc.reason.name.lower()}"] += 1
            return
        if result is not None and result.receipt is not None:
            self.counts["cancel.ok"] += 1
            p.balance = result.receipt.balance_after or 0

    def load(self, pos: Pos, p: Person, amount: int, funding: str) -> None:
        try:
            result = self._guard("load", lambda: self.attempt(
                pos, p.port, lambda t, r: _handed(t, t.load(_reader(r), amount, funding=funding)),
                "load"))
        except Declined as exc:
            self.counts[f"load.declined.{exc.reason.name.lower()}"] += 1
            return
        if result is not None and result.receipt is not None:
            self.counts[f"load.{funding}"] += 1
            if result.recovered:
                self.counts["load.recovered_after_fault"] += 1
            p.balance = result.receipt.balance_after or 0

    # --- terminals' host work --------------------------------------------------------------------
    def sync(self, index: int) -> None:
        pos = self.poses[index]
        try:
            self.attempt(pos, None, lambda t, _r: t.sync(), "sync")
        except Stop:
            raise
        except TerminalError as exc:
            if "host unavailable" in str(exc):
                self.counts["sync.no_network"] += 1
            else:
                self._internal_error(f"sync of terminal {pos.terminal_id}: {exc}")
        except Exception as exc:
            log.exception("sync failed")
            self._internal_error(f"sync of terminal {pos.terminal_id}: "
                                 f"{exc.__class__.__name__}: {exc}")
        else:
            self.counts["sync.ok"] += 1

    def close_day(self, index: int) -> None:
        pos = self.poses[index]
        if pos.skip_close_until > self.now():
            self.counts["close.skipped_late_batch"] += 1
            return
        report = self._guard("close-day", lambda: self.attempt(
            pos, None, lambda t, _r: t.close_day(), "close-day"))
        if report is None:
            return
        self.counts["close.delivered" if report.delivered else "close.waiting"] += 1
        if report.mismatch or report.rejected or report.refused:
            self.violation("nothing_lost",
                           f"terminal {pos.terminal_id} day-end close: mismatch={report.mismatch} "
                           f"rejected={report.rejected[:3]} refused={report.refused[:3]}")

    # --- the host's own work ---------------------------------------------------------------------
    def bank_round(self) -> None:
        done = self.host.agent.process_bank()
        for status, n in done.items():
            self.counts[f"bank.{status}"] += n

    def end_of_day(self, d: int) -> None:
        self.bank_round()
        self.counts["collections.blacklisted"] += self.host.agent.sweep_collections()
        views = self.host.settlement.run(_day(START + d * DAY))
        self.counts["settlements"] += len(views)
        if self.cfg.daily_checks:
            from .checks import Checks

            Checks(self).daily()

    def host_restart(self) -> None:
        self.counts["fault.host_restart"] += 1
        self.restart_host()

    def release(self) -> None:
        self.network.release(0.5)

    def partition(self, index: int, seconds: int) -> None:
        self.network.partition(self.poses[index].terminal_id, self.now() + seconds)
        self.counts["fault.partition_hours"] += seconds // HOUR

    def bank_down(self, seconds: int) -> None:
        self.bank.down_until = self.now() + seconds
        self.counts["fault.bank_down"] += 1

    def fund(self, index: int) -> None:
        p = self.people[index]
        if p.holder is not None and p.online_funding:
            self.host.registry.fund_online_account(p.holder, p.online_funding,
                                                   f"sim-fund-{index}-{self.step}")
            self.counts["online.funded"] += 1

    # --- clones --------------------------------------------------------------------------------
    def inject_clone(self) -> None:
        rng = self.rng
        blacklisted = self._blacklisted()
        candidates = [p for p in self.people if p.clone is None and p.balance >= 900
                      and p.card_id.hex() not in blacklisted]
        if not candidates:
            self.counts["clones.no_candidate"] += 1
            return
        p = rng.choice(candidates)
        p.port.present()
        counters = _counters(p.port)
        p.clone = CardPort(copy_card(p.card, rng.randbytes))
        p.clone_seqno = counters.atc + counters.load_counter
        self.clones.append(p)
        self.counts["clones.made"] += 1
        # The fraudster spends the copy at once, elsewhere; the owner spends the original.
        strangers = [i for i in range(len(self.poses)) if i not in p.haunts] or p.haunts
        self.clone_tap(p.index, rng.choice(strangers), counters.balance // 3)
        own = self.poses[rng.choice(p.haunts)]
        self.purchase(own, p, p.port, max(1, counters.balance // 3), own.shop.trade)
        for _ in range(rng.randint(0, 2)):
            self.at(self.now() + rng.randint(1, 6) * HOUR, "clone_tap", p.index,
                    rng.choice(strangers), 0)

    def clone_tap(self, index: int, pos_index: int, amount: int) -> None:
        p = self.people[index]
        assert p.clone is not None
        pos = self.poses[pos_index]
        if amount <= 0:
            p.clone.present()
            amount = max(1, min(2_000, _counters(p.clone).balance // 2))
        self.counts["clones.taps"] += 1
        self.purchase(pos, p, p.clone, amount, pos.shop.trade)

    def _blacklisted(self) -> set[str]:
        with self.host.uow() as uow:
            return set(uow.session.scalars(select(CardRow.card_id).where(CardRow.blacklisted)))

    # --- what the host took (for the clone rule) ------------------------------------------------
    def _observe(self, terminal_id: str, name: str, body: BaseModel | None,
                 answer: BaseModel) -> None:
        if not self.clones:
            return
        clone_ids = {p.card_id.hex() for p in self.clones}
        records: list[str] = []
        if name == "upload_batch" and isinstance(body, BatchUpload) and isinstance(answer,
                                                                                   BatchAck):
            taken = set(answer.accepted) | set(answer.duplicates)
            records = [e.record for e in body.entries
                       if e.record and e.card_id in clone_ids and e.seq in taken]
        elif name == "confirm_load" and isinstance(body, LoadConfirm):
            records = [body.record]
        touched = False
        for raw in records:
            ev = SignedEvent.parse(bytes.fromhex(raw)).event
            cid = ev.card_id.hex()
            if cid not in clone_ids:
                continue
            key = (cid, ev.atc + ev.load_counter)
            if raw not in self.clone_records[key]:
                self.clone_records[key].append(raw)
                touched = True
        if touched:
            self._check_clones_caught()

    def _check_clones_caught(self) -> None:
        """Rule 5 during the run: once the host has taken two different events with the
        same number from one card, that clearing run must have blacklisted the card."""
        for (cid, seqno), records in self.clone_records.items():
            if len(records) < 2 or cid in self.clones_seen_detected:
                continue
            with self.host.uow() as uow:
                row = uow.session.get(CardRow, cid)
                caught = row is not None and row.blacklisted and row.status == "cloned"
            if caught:
                self.clones_seen_detected.add(cid)
                self.counts["clones.detected_in_run"] += 1
            else:
                self.violation("clones_caught",
                               f"card {cid}: two different events with number {seqno} reached "
                               "the host, yet the clearing run that took the second did not "
                               "blacklist the card")
                self.clones_seen_detected.add(cid)

    # --- the end of the run ------------------------------------------------------------------
    def settle_up(self) -> None:
        """Faults stop, the network heals, everything is delivered and every card taps."""
        self.clock.t = START + self.cfg.days * DAY + 2 * HOUR
        self.network.on = False
        self.network.heal()
        self.network.release(1.0)
        self.bank.down_until = 0
        for pos in self.poses:
            pos.skip_close_until = 0
        self.deliver_everything()
        self.clock.t += self.bank.latency_s[1] + HOUR
        for _ in range(3):
            self.bank_round()
        # Every card taps once more, after its terminal synced, to receive its outcomes;
        # a write-back published meanwhile (one re-sealed after a receipt) takes a round more.
        tapping = list(self.people)
        for r in range(3):
            self.clock.t += 60
            for pos in self.poses:
                self.sync(pos.index)
            if r == 0:
                self.final_sync_at = self.now()
            for p in tapping:
                self.clock.t += 1
                self.final_tap(p, r)
            self.clock.t += HOUR
            self.deliver_everything()
            waiting = self._cards_with_pending_actions()
            tapping = [p for p in self.people if p.card_id.hex() in waiting]
            if not tapping:
                break
        self.counts["settlements"] += len(self.host.settlement.run(_day(self.now() + 2 * DAY)))
        self.void_unconfirmed_loads()

    def void_unconfirmed_loads(self) -> None:
        """The operator's last job: every batch is in, so a load no card event confirmed
        never reached its card; its funds go back where they came from."""
        while unconfirmed := self.host.loads.unconfirmed(limit=1000):
            for load in unconfirmed:
                self.host.loads.void(load["load_id"], reason="no card event after the "
                                     "settle-up", by="simulator")
                self.counts[f"loads.voided_{load['evidence']}"] += 1

    def final_tap(self, p: Person, round_: int) -> None:
        pos = self.poses[p.haunts[0]]
        result = self._guard("final tap", lambda: self.attempt(
            pos, p.port, lambda t, r: t.resolve(_reader(r)), "resolve"))
        if result is not None:
            self.counts["writebacks.applied"] += len(result.writebacks)
            self.counts[f"final.taps_round_{round_ + 1}"] += 1

    def _cards_with_pending_actions(self) -> set[str]:
        clone_ids = {p.card_id.hex() for p in self.clones}
        with self.host.uow() as uow:
            ids = set(uow.session.scalars(select(WriteBackAction.card_id).where(
                WriteBackAction.status == "pending")))
        return ids - clone_ids

    def deliver_everything(self) -> None:
        for _ in range(4):
            busy = False
            for pos in self.poses:
                self.clock.t += 1
                self.sync(pos.index)
                self.close_day(pos.index)
                t = pos.term()
                self._guard("flush", lambda t=t: t.flush(force=True))  # type: ignore[misc]
                if t.outbox.due(include_waiting=True) or t.journal.open_entries:
                    busy = True
            if not busy:
                return


def _reader(r: InProcessReader | None) -> InProcessReader:
    assert r is not None
    return r


def _handed(t: Terminal, result: TapResult) -> TapResult:
    """The cashier hands the receipt over: the terminal marks it delivered (a power cut
    before that mark leaves it to be handed over at the retry)."""
    t.receipt_delivered(result.receipt)
    return result


def _counters(port: CardPort) -> Counters:
    purse = PurseClient(ApduClient(port))
    purse.select()
    return purse.counters()


def _day(t: int) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.UTC).date()


def _stamp(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def simulate(config: SimConfig, workdir: Path,
             progress: Callable[[str], None] | None = None) -> SimReport:
    """Run one simulation in ``workdir`` (which it fills: keystore, host database,
    terminal data directories)."""
    sim = Simulation(config, workdir, progress)
    report = sim.run()
    report.replay = replay_command(config, report)
    return report


def replay_command(config: SimConfig, report: SimReport) -> str:
    faults = ",".join(config.faults.names()) or "none"
    step = report.violations[0].step if report.violations else report.steps
    cmd = (f"tallypurse simulate --cards {config.cards} --terminals {config.terminals} "
           f"--days {config.days} --seed {config.seed} --faults {faults}")
    if config.db_url and config.db_url.startswith("postgres"):
        cmd += f" --db {config.db_url}"
    return f"{cmd} --stop-at {step}"
