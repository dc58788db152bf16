"""What every request passes through before any route, the console included:

* :class:`RequestGuard`: the body size limit (``HostSettings.max_body_bytes``; a
  larger body, declared or streamed, is refused with 413 before a route sees it)
  and the rate limit of the client's address (:mod:`tallypurse.host.ratelimit`:
  a request refused when its address's bucket is empty, and counted against the
  address when no proven identity was counted for it);
* :class:`OperatorAudit`: every operator action through the API (a POST, PUT,
  PATCH or DELETE under ``/v1/ops/`` by a known token) goes into the audit log
  (:mod:`tallypurse.host.audit`) with who, when, why, what and how it ended,
  before its answer's last byte is sent.

Both are plain ASGI middleware: they know no route.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi.concurrency import run_in_threadpool

from tallypurse.core import hostapi as api
from tallypurse.host import errors as E
from tallypurse.host.ratelimit import Charged, current, retry_after
from tallypurse.host.service import Host

log = logging.getLogger("tallypurse.host.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REASON_HEADER = b"audit-reason"
KEEP = 4096  # bytes of a request (and of a refusal) the audit entry looks at


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def send_problem(send: Send, what: E.Code, detail: str,
                       headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = api.Problem(type=E.PROBLEM_BASE + what.slug, title=what.title, status=what.status,
                       detail=detail, code=what.code).model_dump_json().encode()
    await send({"type": "http.response.start", "status": what.status, "headers": [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Body size limit and the per-address rate limit."""

    def __init__(self, app: ASGIApp, host: Host) -> None:
        self.app = app
        self.host = host
        self.max_body = host.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.host.limits
        address = client_address(scope)
        # A token is taken on arrival, so that requests sent side by side cannot all pass
        # a peek; it is given back when a proven identity was counted for the request.
        wait = limits.buckets["address"].take(address)
        if wait > 0:
            limits.refused("address")
            seconds = retry_after(wait)
            await send_problem(send, E.RATE_LIMITED,
                               f"too many requests from {address}; retry after {seconds} s",
                               [(b"retry-after", str(seconds).encode())])
            return
        marker = Charged()
        token = current.set(marker)
        try:
            if scope["method"] in WRITES:
                body = await self._body(scope, receive)
                if body is None:
                    await send_problem(send, E.TOO_LARGE, f"at most {self.max_body} bytes")
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send)
        finally:
            current.reset(token)
            if marker.kind:
                limits.buckets["address"].give_back(address)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is (or says it is) over the limit."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body:
                    return None
        chunks = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body
            chunks.extend(message.get("body", b""))
            if len(chunks) > self.max_body:
                return None
            if not message.get("more_body", False):
                break
        return bytes(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class OperatorAudit:
    """Write every operator action through the API to the audit log.

    Who: the token's name and role (the ``needs`` dependency leaves the principal in
    the request's state). Why: the body's ``reason`` or the ``Audit-Reason``
    header. What: the route's name, its path parameters as target, the body as
    detail. Outcome: done (2xx/3xx), refused (401/403), failed (any other error,
    with the problem's code). Requests with no valid token are not operator
    actions (the metrics count them). Routes whose service writes its own entry
    in the action's transaction (grades set by hand: ``audited_by_service`` maps
    the route to the action name the service writes) are written here only when
    they fail, under that name.
    """

    def __init__(self, app: ASGIApp, host: Host, *, prefix: str = "/v1/ops/",
                 audited_by_service: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.host = host
        self.prefix = prefix
        self.audited_by_service = dict(audited_by_service or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in WRITES
                or not str(scope["path"]).startswith(self.prefix)):
            await self.app(scope, receive, send)
            return
        seen = bytearray()
        answer = bytearray()
        status = 0
        written = False

        async def receive_(_inner: Receive = receive) -> Message:
            message = await _inner()
            if message["type"] == "http.request" and len(seen) < KEEP:
                seen.extend(message.get("body", b"")[:KEEP - len(seen)])
            return message

        async def send_(message: Message) -> None:
            nonlocal status, written
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                if status >= 400 and len(answer) < KEEP:
                    answer.extend(message.get("body", b"")[:KEEP - len(answer)])
                if not message.get("more_body", False) and not written:
                    written = True
                    await run_in_threadpool(self._write, scope, bytes(seen), status,
                                            bytes(answer))
            await send(message)

        await self.app(scope, receive_, send_)

    def _write(self, scope: Scope, body: bytes, status: int, answer: bytes) -> None:
        who = (scope.get("state") or {}).get("principal")
        if who is None:
            return
        route = getattr(scope.get("route"), "name", None) or str(scope["path"])
        if route in self.audited_by_service:
            if status < 400:
                return
            route = self.audited_by_service[route]
        data = _json_object(body)
        reason = data.get("reason")
        if not isinstance(reason, str):
            reason = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                           if k == REASON_HEADER), "")
        params = scope.get("path_params") or {}
        target = next((str(v) for v in params.values()), "") or next(
            (str(data[k]) for k in ("day", "merchant_id", "terminal_id", "role", "name")
             if k in data), "")
        if status < 400:
            outcome, detail = "done", json.dumps(data, sort_keys=True, separators=(",", ":"))
        else:
            outcome = "refused" if status in (401, 403) else "failed"
            problem = _json_object(answer)
            detail = f"{problem.get('code', status)}: {problem.get('detail', '')}"
        entry = {"actor": who.name or f"{who.role.value} token", "role": who.role.value,
                 "action": route, "target": target, "reason": reason, "outcome": outcome,
                 "detail": detail, "source": f"api {client_address(scope)}"}
        try:
            self.host.audit.record(**entry)
        except Exception:
            # the action itself is done (or refused) already: say so loudly, with the entry
            log.exception("audit log write failed: %s", json.dumps(entry, sort_keys=True))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
