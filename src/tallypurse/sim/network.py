"""The simulated network between terminals and the host.

Each terminal gets a :class:`SimHostApi`, a :class:`~tallypurse.core.hostapi.HostApi`
that calls the host in process through the very service methods the HTTP
routes call (``tallypurse.host.api.app``: ``host.tms.sync``,
``host.clearing.upload``, ``host.agent.submit``...), with every body and
answer serialised to JSON and parsed back as on the wire. Refusals become
:class:`HostRejected` with the problem document the HTTP API would send; a
database that does not answer, or a request the network lost, becomes
:class:`HostUnavailable`. Request signatures (RFC 9421) are not made: the
terminal is known by the :class:`SimHostApi` it holds.

Faults happen here: a request lost before the host sees it, an answer lost
after the host applied it, a request delivered twice, a request held in the
network and delivered later (shuffled with others, after the terminal has
retried it), and partitions that cut a terminal off for hours or days.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from tallypurse.core import hostapi as api
from tallypurse.core.errors import BadInput, CryptoError, TallypurseError
from tallypurse.core.hostapi import HostRejected, HostUnavailable, Problem
from tallypurse.host import errors as E
from tallypurse.host.errors import HostError
from tallypurse.host.ledger import LedgerError
from tallypurse.host.service import Host

from .faults import Faults

log = logging.getLogger("tallypurse.sim")

Handler = Callable[[Host, str, Any], BaseModel]


def _writeback(host: Host, tid: str, body: api.WriteBackReport) -> api.Ack:
    host.writebacks.report(tid, body)
    return api.Ack()


# The routes of host/api/app.py: request model, answer model, service method.
ROUTES: dict[str, tuple[type[BaseModel] | None, type[BaseModel], Handler]] = {
    "enrol": (api.EnrolRequest, api.EnrolResponse, lambda h, _t, b: h.tms.enrol(b)),
    "sync": (api.SyncRequest, api.SyncResponse, lambda h, t, b: h.tms.sync(t, b)),
    "upload_batch": (api.BatchUpload, api.BatchAck, lambda h, t, b: h.clearing.upload(t, b)),
    "agent_debit": (api.AgentDebitRequest, api.AgentDebitAck,
                    lambda h, t, b: h.agent.submit(t, b)),
    "online_challenge": (None, api.OnlineChallenge, lambda h, t, _b: h.online.challenge(t)),
    "online_authorise": (api.OnlineAuthoriseRequest, api.OnlineAuthoriseResponse,
                         lambda h, t, b: h.online.authorise(t, b)),
    "reverse": (api.ReversalRequest, api.ReversalResponse, lambda h, t, b: h.online.reverse(t, b)),
    "load_authorisation": (api.LoadRequest, api.LoadAuthorisationResponse,
                           lambda h, t, b: h.loads.authorise(t, b)),
    "confirm_load": (api.LoadConfirm, api.Ack, lambda h, t, b: h.loads.confirm(t, b)),
    "report_writeback": (api.WriteBackReport, api.Ack, _writeback),
}


def problem_of(exc: Exception) -> Problem:
    """The problem document the HTTP API answers for a refusal."""
    if isinstance(exc, HostError):
        return Problem(type=E.PROBLEM_BASE + exc.what.slug, title=exc.what.title,
                       status=exc.what.status, detail=exc.detail, code=exc.what.code)
    if isinstance(exc, BadInput):
        return Problem(type=E.PROBLEM_BASE + "bad-input", title="Bad input", status=400,
                       detail=exc.message, code=exc.code)
    if isinstance(exc, CryptoError):
        return Problem(type=E.PROBLEM_BASE + E.RECORD_INVALID.slug, title=E.RECORD_INVALID.title,
                       status=E.RECORD_INVALID.status, detail=exc.message,
                       code=E.RECORD_INVALID.code)
    assert isinstance(exc, TallypurseError)
    return Problem(type=E.PROBLEM_BASE + "refused", title="Refused", status=422,
                   detail=exc.message, code=exc.code)


@dataclass
class Held:
    """A request the network holds back, delivered later."""

    terminal_id: str
    name: str
    wire: str


class Network:
    """What lies between every terminal and the host (see the module docstring).

    ``host`` returns the host process of the moment (a restart replaces it);
    ``observe(terminal_id, name, body, answer)`` is told of every request the host
    applied, whether or not its answer reached the terminal; ``problem(text)``
    reports an unexpected failure inside the host (an HTTP 500)."""

    def __init__(self, host: Callable[[], Host], rng: Random, faults: Faults,
                 clock: Callable[[], int], *,
                 observe: Callable[[str, str, BaseModel | None, BaseModel], None],
                 problem: Callable[[str], None]) -> None:
        self.host = host
        self.rng = rng
        self.faults = faults
        self.clock = clock
        self.observe = observe
        self.problem = problem
        self.partitioned_until: dict[str, int] = {}
        self.held: list[Held] = []
        self.stats: Counter[str] = Counter()  # per route and per fault
        self.on = True  # False: faults off (the final settle-up)

    # --- partitions ------------------------------------------------------------------------------
    def partition(self, terminal_id: str, until: int) -> None:
        self.partitioned_until[terminal_id] = max(until,
                                                  self.partitioned_until.get(terminal_id, 0))
        self.stats["fault.partition"] += 1

    def partitioned(self, terminal_id: str) -> bool:
        return self.on and self.partitioned_until.get(terminal_id, 0) > self.clock()

    def heal(self) -> None:
        self.partitioned_until.clear()

    # --- delivery --------------------------------------------------------------------------------
    def _chance(self, fault: str, p: float) -> bool:
        return self.on and fault in self.faults and self.rng.random() < p

    def _apply(self, terminal_id: str, name: str, wire: str) -> str:
        """The host takes the request; its answer as JSON, or HostRejected."""
        model, _, handler = ROUTES[name]
        body = model.model_validate_json(wire) if model is not None else None
        host = self.host()
        try:
            answer = handler(host, terminal_id, body)
        except (HostError, BadInput, CryptoError) as exc:
            self.stats[f"rejected.{name}"] += 1
            raise HostRejected(problem_of(exc)) from None
        except OperationalError as exc:
            raise HostUnavailable(f"{name}: database unavailable ({exc.__class__.__name__})") \
                from None
        except LedgerError as exc:  # a host bug: the HTTP API answers 500 and the terminal retries
            self.problem(f"{name} from {terminal_id}: the ledger refused: {exc.message}")
            raise HostUnavailable(f"{name}: the ledger refused") from None
        except TallypurseError as exc:
            self.stats[f"rejected.{name}"] += 1
            raise HostRejected(problem_of(exc)) from None
        except Exception as exc:  # an HTTP 500: the terminal retries
            self.problem(f"{name} from {terminal_id}: {exc.__class__.__name__}: {exc}")
            raise HostUnavailable(f"{name}: internal error") from None
        self.observe(terminal_id, name, body, answer)
        return answer.model_dump_json()

    def deliver(self, terminal_id: str, name: str, body: BaseModel | None) -> BaseModel:
        rates = self.faults.rates
        self.stats[f"route.{name}"] += 1
        if self.partitioned(terminal_id):
            self.stats["fault.partitioned_request"] += 1
            raise HostUnavailable("no network (partition)")
        wire = body.model_dump_json() if body is not None else ""
        if self._chance("lost_request", rates.lost_request):
            self.stats["fault.lost_request"] += 1
            raise HostUnavailable("the request was lost")
        if name != "enrol" and self._chance("reorder", rates.reorder):
            self.stats["fault.held"] += 1
            self.held.append(Held(terminal_id, name, wire))
            raise HostUnavailable("no answer in time (the request is still in the network)")
        answer = self._apply(terminal_id, name, wire)
        if self._chance("duplicate", rates.duplicate):
            self.stats["fault.duplicate"] += 1
            try:
                answer = self._apply(terminal_id, name, wire)
            except HostRejected as exc:
                self.problem(f"{name} from {terminal_id} was taken once and refused when it "
                             f"came again: {exc}")
                raise
        if self._chance("lost_response", rates.lost_response):
            self.stats["fault.lost_response"] += 1
            raise HostUnavailable("the answer was lost")
        return ROUTES[name][1].model_validate_json(answer)

    def release(self, share: float = 0.5) -> int:
        """Deliver some held requests, in shuffled order; their answers go nowhere."""
        if not self.held:
            return 0
        self.rng.shuffle(self.held)
        keep: list[Held] = []
        done = 0
        for h in self.held:
            if share < 1.0 and self.rng.random() >= share:
                keep.append(h)
                continue
            done += 1
            self.stats["fault.held_delivered"] += 1
            try:
                self._apply(h.terminal_id, h.name, h.wire)
            except (HostRejected, HostUnavailable):
                pass
        self.held = keep
        return done


class SimHostApi:
    """One terminal's end of the network (a :class:`~tallypurse.core.hostapi.HostApi`)."""

    def __init__(self, network: Network, terminal_id: str) -> None:
        self.network = network
        self.terminal_id = terminal_id

    def _call(self, name: str, body: BaseModel | None) -> Any:
        return self.network.deliver(self.terminal_id, name, body)

    def enrol(self, body: api.EnrolRequest) -> api.EnrolResponse:
        answer: api.EnrolResponse = self._call("enrol", body)
        return answer

    def sync(self, body: api.SyncRequest) -> api.SyncResponse:
        answer: api.SyncResponse = self._call("sync", body)
        return answer

    def upload_batch(self, body: api.BatchUpload) -> api.BatchAck:
        answer: api.BatchAck = self._call("upload_batch", body)
        return answer

    def agent_debit(self, body: api.AgentDebitRequest) -> api.AgentDebitAck:
        answer: api.AgentDebitAck = self._call("agent_debit", body)
        return answer

    def online_challenge(self) -> api.OnlineChallenge:
        answer: api.OnlineChallenge = self._call("online_challenge", None)
        return answer

    def online_authorise(self, body: api.OnlineAuthoriseRequest) -> api.OnlineAuthoriseResponse:
        answer: api.OnlineAuthoriseResponse = self._call("online_authorise", body)
        return answer

    def reverse(self, body: api.ReversalRequest) -> api.ReversalResponse:
        answer: api.ReversalResponse = self._call("reverse", body)
        return answer

    def load_authorisation(self, body: api.LoadRequest) -> api.LoadAuthorisationResponse:
        answer: api.LoadAuthorisationResponse = self._call("load_authorisation", body)
        return answer

    def confirm_load(self, body: api.LoadConfirm) -> api.Ack:
        answer: api.Ack = self._call("confirm_load", body)
        return answer

    def report_writeback(self, body: api.WriteBackReport) -> api.Ack:
        answer: api.Ack = self._call("report_writeback", body)
        return answer
