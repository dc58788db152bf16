"""Rate limits: a token bucket per client identity, in each host process.

Who a request counts against, in this order:

* a terminal: the key id of its request signature, once the signature verified
  (:func:`tallypurse.host.api.auth.authenticate_terminal`);
* a person with a bearer token: the token (its hash), once the token is known
  (:func:`tallypurse.host.api.auth.principal`);
* a console session: its user, once the session is valid
  (:func:`tallypurse.host.console.security.current_user`);
* anything else (no credentials, credentials that did not verify, health checks,
  static files, the login form): the client's address, charged by
  :class:`tallypurse.host.api.guard.RequestGuard`, which also refuses every request
  from an address whose bucket is empty.

An identity is counted only after it is proven, so that nobody drains another's
bucket by naming it, and made-up credentials count against the sender's address.
A refusal is HTTP 429 with a problem document (code 2006) and ``Retry-After``.

The buckets live in the process's memory: with ``--workers N`` each worker has
its own, so one client gets up to N times the configured rate. The defaults are
far above what a terminal, the demo, the simulator or the benchmarks send; they
stop a runaway or hostile client, not a busy one.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tallypurse.core.errors import BadInput
from tallypurse.host.errors import RATE_LIMITED, HostError

KINDS = ("terminal", "token", "console", "address")
MAX_KEYS = 50_000  # buckets kept per kind; full (idle) buckets are dropped beyond that


class RateLimited(HostError):
    """Too many requests from one identity: retry after ``retry_after`` seconds."""

    def __init__(self, kind: str, retry_after: int) -> None:
        super().__init__(RATE_LIMITED, f"too many requests from this {kind}; "
                                       f"retry after {retry_after} s")
        self.kind = kind
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` tokens a second, at most ``burst`` saved up; rate 0 means no limit."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 1 or not math.isfinite(self.rate):
            raise BadInput("a rate limit is a rate >= 0 per second and a burst >= 1")


class TokenBuckets:
    """One token bucket per key, all with the same limit. Thread-safe."""

    def __init__(self, limit: Limit, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.limit.burst), now))
        return min(float(self.limit.burst), tokens + (now - at) * self.limit.rate)

    def take(self, key: str) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        if self.limit.rate == 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens = self._level(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self.max_keys:
                    self._prune(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.limit.rate

    def give_back(self, key: str) -> None:
        """Return a token taken by :meth:`take` (the request was counted elsewhere)."""
        if self.limit.rate == 0:
            return
        with self._lock:
            now = self.clock()
            if key in self._buckets:
                self._buckets[key] = (min(float(self.limit.burst),
                                          self._level(key, now) + 1.0), now)

    def wait(self, key: str) -> float:
        """The seconds until ``key`` has a token (0.0: it has one now); takes nothing."""
        if self.limit.rate == 0:
            return 0.0
        with self._lock:
            tokens = self._level(key, self.clock())
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.limit.rate

    def _prune(self, now: float) -> None:
        """Forget full buckets (a full bucket is what a new key gets anyway), then, if
        more than half the limit are left, the least recently used: down to half, so
        that the next prune is ``max_keys / 2`` new keys away."""
        full = [k for k in self._buckets if self._level(k, now) >= self.limit.burst]
        for key in full:
            del self._buckets[key]
        excess = len(self._buckets) - self.max_keys // 2
        if excess > 0:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in oldest[:excess]:
                del self._buckets[key]


@dataclass
class Charged:
    """Set for one request by the request guard: whether an identity was charged."""

    kind: str = ""


current: contextvars.ContextVar[Charged | None] = contextvars.ContextVar(
    "tallypurse_rate_charged", default=None)


@dataclass
class RateLimits:
    """``host.limits``: the buckets of every kind of identity, and who to tell about
    a refusal (the API's metrics)."""

    limits: dict[str, Limit]
    clock: Callable[[], float] = time.monotonic
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    buckets: dict[str, TokenBuckets] = field(init=False)

    def __post_init__(self) -> None:
        self.buckets = {k: TokenBuckets(v, clock=self.clock) for k, v in self.limits.items()}

    def charge(self, kind: str, identity: str) -> None:
        """Count one request against ``identity``; raises :class:`RateLimited` when its
        bucket is empty."""
        marker = current.get()
        if marker is not None:
            marker.kind = kind
        wait = self.buckets[kind].take(identity)
        if wait > 0:
            self.refused(kind)
            raise RateLimited(kind, retry_after(wait))

    def refused(self, kind: str) -> None:
        for listener in list(self.listeners):
            listener(kind)


def retry_after(seconds: float) -> int:
    """Whole seconds for the Retry-After header (at least 1)."""
    return max(1, math.ceil(seconds))
