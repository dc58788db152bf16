"""The FastAPI application.

* ``/v1/terminal/...``: the terminal API of :data:`tallypurse.core.hostapi.ROUTES`,
  every request signed by the terminal's SAM (RFC 9421);
* ``/v1/ops/...``: operators (bearer token, role ``operator``);
* ``/v1/reports/...``: operators and auditors;
* ``/v1/merchant/...``: merchants (their own data only), operators, auditors;
* ``/console/``: the operator console, web pages with their own login (docs/console.md);
* ``/health`` (the process answers), ``/ready`` (the database answers, schema at
  head), ``/openapi.json`` (no authentication); ``/metrics`` (Prometheus text,
  operator or auditor token).

Errors are RFC 9457 problem documents (``application/problem+json``) with a
stable numeric ``code`` (:mod:`tallypurse.host.errors`). The app keeps no
state between requests: everything is in the database, but for the rate
limits' token buckets, kept per process.

Every request first passes :mod:`tallypurse.host.api.guard`: the body size
limit (413), the rate limit of its address (429 with ``Retry-After``; proven
identities are counted where they are proven), and, for operator actions, the
audit log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import asdict
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tallypurse.core import hostapi as api
from tallypurse.core.errors import BadInput, CryptoError, TallypurseError
from tallypurse.host import errors as E
from tallypurse.host.agent import TerminalChanged
from tallypurse.host.db.migrate import current_revision, head_revision
from tallypurse.host.errors import HostError
from tallypurse.host.ledger import LedgerError
from tallypurse.host.ratelimit import RateLimited
from tallypurse.host.service import Host

from . import schemas as S
from .auth import (
    NotKept,
    Principal,
    Role,
    TerminalKeys,
    authenticate_terminal,
    create_token,
    principal,
    purge_due,
    purge_nonces,
    verify_terminal,
)
from .guard import OperatorAudit, RequestGuard

log = logging.getLogger("tallypurse.host.api")
PROBLEM = "application/problem+json"

Handler = Callable[[str, Any], BaseModel]


def problem(what: E.Code, detail: str = "", status: int | None = None) -> JSONResponse:
    body = api.Problem(type=E.PROBLEM_BASE + what.slug, title=what.title,
                       status=status or what.status, detail=detail, code=what.code)
    return JSONResponse(body.model_dump(), status_code=body.status, media_type=PROBLEM)


def _summary(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("tallypurse_http_requests", "HTTP requests",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("tallypurse_http_request_seconds", "HTTP request latency",
                                 ["route"], registry=registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.problems = Counter("tallypurse_problems", "Problem documents sent", ["code"],
                                registry=registry)
        self.agent_debits = Counter("tallypurse_agent_debits", "Agent debits", ["status"],
                                    registry=registry)
        self.batch_entries = Counter("tallypurse_batch_entries", "Uploaded journal entries",
                                     ["outcome"], registry=registry)
        self.online = Counter("tallypurse_online_authorisations", "Online authorisations",
                              ["approved"], registry=registry)
        self.agent_groups = Histogram(
            "tallypurse_agent_debit_group_size", "Agent debits written in one transaction "
            "(see host.agent_groups)", registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64))
        self.rate_limited = Counter("tallypurse_rate_limited", "Requests refused by a rate "
                                    "limit (HTTP 429)", ["identity"], registry=registry)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


_bearer = HTTPBearer(auto_error=False)
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def needs(*roles: Role) -> Callable[[Request, HTTPAuthorizationCredentials | None], Principal]:
    """A dependency that admits a bearer token of one of ``roles``."""

    def dependency(request: Request, creds: Creds) -> Principal:
        host: Host = request.app.state.host
        who = principal(host, f"Bearer {creds.credentials}" if creds else None, tuple(Role))
        request.state.principal = who  # for the audit log (guard.OperatorAudit)
        if who.role not in roles:
            raise HostError(E.FORBIDDEN, f"{who.role} may not use this endpoint")
        return who

    return dependency


Operator = Annotated[Principal, Depends(needs(Role.OPERATOR))]
Reader = Annotated[Principal, Depends(needs(Role.OPERATOR, Role.AUDITOR))]
Anyone = Annotated[Principal, Depends(needs(Role.OPERATOR, Role.AUDITOR, Role.MERCHANT))]


# Every status a problem document can carry (see host/errors.py), documented on every route.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": "a problem document (RFC 9457)",
             "content": {"application/problem+json": {
                 "schema": {"$ref": "#/components/schemas/Problem"}}}}
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


async def _handled(app: FastAPI, request: Request, exc: Exception) -> Response:
    """The answer the app's exception handlers give ``exc`` (the most specific one)."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            answer = handler(request, exc)
            return await answer if inspect.isawaitable(answer) else answer
    raise exc


def create_app(host: Host, *, registry: CollectorRegistry | None = None) -> FastAPI:
    app = FastAPI(
        title="tallypurse host",
        version="1",
        description=(__doc__ or "").strip(),
        docs_url=None,
        redoc_url=None,
        # The host's own metrics are Prometheus (/metrics) and its log is structured JSON;
        # FastAPI's OpenTelemetry bridge asked the global providers at every request.
        telemetry={"tracing": False, "metrics": False, "logs": False,
                   "operation_spans": False},
    )
    app.state.host = host
    metrics = Metrics(registry or CollectorRegistry())
    app.state.metrics = metrics
    limit = host.settings.max_body_bytes

    # --- errors ---------------------------------------------------------------------------------
    @app.exception_handler(HostError)
    async def _host_error(_: Request, exc: HostError) -> JSONResponse:
        metrics.problems.labels(str(exc.code)).inc()
        response = problem(exc.what, exc.detail)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.problems.labels(str(E.VALIDATION.code)).inc()
        return problem(E.VALIDATION, _summary(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        what = {404: E.NOT_FOUND, 405: E.METHOD_NOT_ALLOWED, 413: E.TOO_LARGE}.get(
            exc.status_code, E.BAD_REQUEST)
        return problem(what, str(exc.detail), status=exc.status_code)

    @app.exception_handler(BadInput)
    async def _bad_input(_: Request, exc: BadInput) -> JSONResponse:
        body = api.Problem(type=E.PROBLEM_BASE + "bad-input", title="Bad input", status=400,
                           detail=exc.message, code=exc.code)
        return JSONResponse(body.model_dump(), status_code=400, media_type=PROBLEM)

    @app.exception_handler(CryptoError)
    async def _crypto(_: Request, exc: CryptoError) -> JSONResponse:
        return problem(E.RECORD_INVALID, exc.message)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return problem(E.UNAVAILABLE, "the database did not answer; retry")

    @app.exception_handler(LedgerError)
    async def _ledger(_: Request, exc: LedgerError) -> JSONResponse:
        # A host bug (an unbalanced or malformed transaction), never the client's: nothing
        # was written, and a 500 keeps the terminal's request queued for a retry.
        log.error("ledger refused a transaction: %s", exc.message)
        metrics.problems.labels(str(E.LEDGER_REFUSED.code)).inc()
        return problem(E.LEDGER_REFUSED, exc.message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path,
                      exc_info=exc)
        metrics.problems.labels(str(E.INTERNAL.code)).inc()
        return problem(E.INTERNAL, "an internal error; nothing was acknowledged")

    @app.exception_handler(TallypurseError)
    async def _other(_: Request, exc: TallypurseError) -> JSONResponse:
        body = api.Problem(type=E.PROBLEM_BASE + "refused", title="Refused", status=422,
                           detail=exc.message, code=exc.code)
        return JSONResponse(body.model_dump(), status_code=422, media_type=PROBLEM)

    # --- every request: body size, rate limits, the operator audit (api/guard.py) ----------------
    host.limits.listeners.append(lambda kind: metrics.rate_limited.labels(kind).inc())
    host.agent.groups.listeners.append(lambda debits, _: metrics.agent_groups.observe(debits))
    app.add_middleware(OperatorAudit, host=host, audited_by_service={
        "credit_override": "credit_override", "credit_clear_override": "credit_clear",
        "load_void": "load_void", "credit_promote": "credit_promote"})
    app.add_middleware(RequestGuard, host=host)

    # --- metrics middleware ---------------------------------------------------------------------
    # A plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a stream per
    # request): counts each answer by route and status, and its latency.
    def measure(inner: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            started = time.perf_counter()
            status = [500]

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await inner(scope, receive, sending)
            finally:
                path = getattr(scope.get("route"), "path", "unmatched")
                metrics.requests.labels(path, scope["method"], str(status[0])).inc()
                metrics.latency.labels(path).observe(time.perf_counter() - started)

        return middleware

    app.add_middleware(measure)

    # --- health ----------------------------------------------------------------------------------
    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["health"], responses={503: {"description": "not ready"}})
    def ready() -> Response:
        try:
            revision = current_revision(host.db)
        except OperationalError:
            return problem(E.UNAVAILABLE, "the database does not answer")
        if revision != head_revision():
            return problem(E.UNAVAILABLE, f"schema at {revision}, expected {head_revision()}; "
                                          "run tallypurse host migrate")
        return JSONResponse({"status": "ready", "schema": revision})

    # --- the terminal API ------------------------------------------------------------------------
    def target_uri(request: Request) -> str:
        base = host.settings.public_url.rstrip("/")
        if not base:
            return str(request.url)
        query = f"?{request.url.query}" if request.url.query else ""
        return base + request.url.path + query

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HostError(E.TOO_LARGE, f"at most {limit} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HostError(E.TOO_LARGE, f"at most {limit} bytes")
        return body

    def parse(model: type[BaseModel], body: bytes) -> Any:
        try:
            return model.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise HostError(E.VALIDATION, _summary(exc)) from None

    def report_writeback(tid: str, body: api.WriteBackReport) -> api.Ack:
        host.writebacks.report(tid, body)
        return api.Ack()

    terminal_routes: dict[str, tuple[type[BaseModel] | None, type[BaseModel], Handler]] = {
        "enrol": (api.EnrolRequest, api.EnrolResponse, lambda _, b: host.tms.enrol(b)),
        "sync": (api.SyncRequest, api.SyncResponse, host.tms.sync),
        "upload_batch": (api.BatchUpload, api.BatchAck, host.clearing.upload),
        "agent_debit": (api.AgentDebitRequest, api.AgentDebitAck, host.agent.submit),
        "online_challenge": (None, api.OnlineChallenge, lambda t, _: host.online.challenge(t)),
        "online_authorise": (api.OnlineAuthoriseRequest, api.OnlineAuthoriseResponse,
                             host.online.authorise),
        "reverse": (api.ReversalRequest, api.ReversalResponse, host.online.reverse),
        "load_authorisation": (api.LoadRequest, api.LoadAuthorisationResponse,
                               host.loads.authorise),
        "confirm_load": (api.LoadConfirm, api.Ack, host.loads.confirm),
        "report_writeback": (api.WriteBackReport, api.Ack, report_writeback),
    }

    def count(name: str, result: BaseModel) -> None:
        if isinstance(result, api.AgentDebitAck):
            metrics.agent_debits.labels(result.status).inc()
        elif isinstance(result, api.BatchAck):
            metrics.batch_entries.labels("accepted").inc(len(result.accepted))
            metrics.batch_entries.labels("duplicate").inc(len(result.duplicates))
            metrics.batch_entries.labels("rejected").inc(len(result.rejected))
        elif isinstance(result, api.OnlineAuthoriseResponse):
            metrics.online.labels(str(result.approved).lower()).inc()

    terminal_keys = TerminalKeys(host)

    def agent_debit(method: str, url: str, headers: dict[str, str], body: bytes, *,
                    fresh: bool = False) -> BaseModel:
        """An agent debit on a worker thread: the signature checked with the terminal's
        cached key, then the debit taken with its group (which records the nonce and
        re-reads the terminal); once more with the key from the database if it changed."""
        if not fresh:
            signed = verify_terminal(host, terminal_keys, method, url, headers, body)
            request = parse(api.AgentDebitRequest, body)
            try:
                return host.agent.submit(signed.terminal_id, request, signed=signed)
            except TerminalChanged:
                terminal_keys.forget(signed.terminal_id)
        signed = verify_terminal(host, terminal_keys, method, url, headers, body, fresh=True)
        request = parse(api.AgentDebitRequest, body)
        try:
            return host.agent.submit(signed.terminal_id, request, signed=signed)
        except TerminalChanged:
            raise HostError(E.SIGNATURE_INVALID, "the terminal changed while signing") from None

    def purge_quietly() -> None:
        try:
            purge_nonces(host)
        except Exception:  # the next purge catches up; the request did not wait for this one
            log.warning("purging old nonces failed", exc_info=True)

    async def agent_debit_in_loop(method: str, url: str, headers: dict[str, str],
                                  body: bytes) -> BaseModel:
        """The hot path, on the event loop: the checks that need no database (the
        signature with the terminal's kept key, the card's record with the card's kept
        key, or by the group writer with the key it reads) here, then the debit waits for
        its group without holding a thread. A terminal key this process does not hold,
        and a debit the group gives back, go to a worker thread (:func:`agent_debit`)."""
        try:
            signed = verify_terminal(host, terminal_keys, method, url, headers, body,
                                     kept_only=True)
        except NotKept:
            return await run_in_threadpool(agent_debit, method, url, headers, body)
        if purge_due():
            asyncio.get_running_loop().run_in_executor(None, purge_quietly)
        agent = host.agent
        request = parse(api.AgentDebitRequest, body)
        digest = agent.digest(signed.terminal_id, request)
        offered = agent.offer(signed.terminal_id, request, digest, signed,
                              agent.cached_card(request.card_id))
        result = await asyncio.wrap_future(offered) if isinstance(offered, Future) else offered
        if isinstance(result, api.AgentDebitAck):
            return result
        try:
            return await run_in_threadpool(agent.finish, signed.terminal_id, request, digest,
                                           signed, result)
        except TerminalChanged:
            terminal_keys.forget(signed.terminal_id)
        return await run_in_threadpool(partial(agent_debit, fresh=True), method, url, headers,
                                       body)

    def terminal_endpoint(name: str, model: type[BaseModel] | None,
                          handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        def work(method: str, url: str, headers: dict[str, str], body: bytes) -> BaseModel:
            if name == "enrol":
                enrol = parse(api.EnrolRequest, body)
                tid = authenticate_terminal(host, method, url, headers, body, csr_hex=enrol.csr,
                                            claimed_terminal=enrol.terminal_id)
                return handler(tid, enrol)
            tid = authenticate_terminal(host, method, url, headers, body)
            parsed = parse(model, body) if model is not None else None
            result = handler(tid, parsed)
            count(name, result)
            return result

        async def endpoint(request: Request) -> Response:
            body = await read_body(request)  # (agent debits are taken before: see below)
            result = await run_in_threadpool(work, request.method, target_uri(request),
                                             dict(request.headers), body)
            return JSONResponse(result.model_dump(mode="json"))

        endpoint.__name__ = f"terminal_{name}"
        return endpoint

    signed_headers = [
        {"name": h, "in": "header", "required": True, "schema": {"type": "string"},
         "description": "RFC 9421 / RFC 9530, signed by the terminal's SAM (see docs)"}
        for h in ("Signature-Input", "Signature", "Content-Digest")
    ]
    request_models: list[type[BaseModel]] = [api.Problem]  # schemas the document names
    for name, path in api.ROUTES.items():
        model, answer, handler = terminal_routes[name]
        extra: dict[str, Any] = {"parameters": signed_headers}
        if model is not None:
            request_models.append(model)
            extra["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        app.add_api_route(path, terminal_endpoint(name, model, handler), methods=["POST"],
                          response_model=answer, tags=["terminal"], openapi_extra=extra,
                          responses=PROBLEM_RESPONSES)

    # The agent debit's own way in, without FastAPI's routing and handler layers (a fifth of
    # the host's CPU per debit): every POST to its path is answered here. It sits inside
    # every middleware (metrics, body limit, rate limit, audit), and a failure is answered by
    # the same exception handlers. The route stays registered for the OpenAPI document.
    agent_path = api.ROUTES["agent_debit"]
    agent_route = next(r for r in app.routes if getattr(r, "path", None) == agent_path)

    def agent_debit_direct(inner: ASGIApp) -> ASGIApp:
        async def direct(scope: Scope, receive: Receive, send: Send) -> None:
            if (scope["type"] != "http" or scope["path"] != agent_path
                    or scope["method"] != "POST"):
                await inner(scope, receive, send)
                return
            scope["route"] = agent_route  # the metrics' route label
            request = Request(scope, receive)
            try:
                body = await read_body(request)
                result = await agent_debit_in_loop("POST", target_uri(request),
                                                   dict(request.headers), body)
                count("agent_debit", result)
            except Exception as exc:
                response = await _handled(app, request, exc)
                await response(scope, receive, send)
                return
            payload = result.model_dump_json().encode()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})

        return direct

    app.user_middleware.append(Middleware(agent_debit_direct))  # the innermost

    # --- people ---------------------------------------------------------------------------------
    problems = PROBLEM_RESPONSES

    def merchant_scope(who: Principal, merchant_id: str | None) -> str | None:
        if who.role == Role.MERCHANT:
            if merchant_id is not None and merchant_id != who.merchant_id:
                raise HostError(E.FORBIDDEN, "a merchant sees only its own data")
            return who.merchant_id
        return merchant_id

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, responses=problems)
    def metrics_endpoint(_: Reader) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/ops/cardholders", tags=["operator"], responses=problems)
    def create_cardholder(body: S.CardholderCreate, _: Operator) -> S.Created:
        return S.Created(id=host.registry.create_cardholder(body.name, body.currency,
                                                            grade=body.grade))

    @app.get("/v1/ops/cardholders/{cardholder_id}", tags=["operator"], responses=problems)
    def get_cardholder(cardholder_id: str, _: Reader) -> S.CardholderPublic:
        with host.uow() as uow:
            holder = host.registry.cardholder(uow.session, cardholder_id)
            linked = host.registry.bank_account(uow.session, holder.id) is not None
        return S.CardholderPublic(id=holder.id, name=holder.name, currency=holder.currency,
                                  grade=holder.credit_grade,
                                  online_balance=host.registry.online_balance(holder.id),
                                  bank_account=linked)

    @app.post("/v1/ops/cardholders/{cardholder_id}/bank-account", tags=["operator"],
              responses=problems)
    def link_bank(cardholder_id: str, body: S.BankAccountLink, _: Operator) -> S.Created:
        return S.Created(id=str(host.registry.link_bank_account(
            cardholder_id, iban=body.iban, bic=body.bic, holder_name=body.holder_name,
            mandate_id=body.mandate_id)))

    @app.post("/v1/ops/cardholders/{cardholder_id}/fund", tags=["operator"], responses=problems)
    def fund(cardholder_id: str, body: S.Funding, _: Operator) -> S.Done:
        booked = host.registry.fund_online_account(cardholder_id, body.amount, body.reference)
        return S.Done(ok=True, detail="booked" if booked else "already booked")

    @app.post("/v1/ops/merchants", tags=["operator"], responses=problems)
    def create_merchant(body: S.MerchantCreate, _: Operator) -> S.Created:
        return S.Created(id=host.registry.create_merchant(
            body.name, iban=body.iban, bic=body.bic, currency_code=body.currency,
            fee_basis_points=body.fee_basis_points, merchant_id=body.merchant_id))

    @app.post("/v1/ops/terminals", tags=["operator"], responses=problems)
    def create_terminal(body: S.TerminalCreate, _: Operator) -> S.TerminalCreated:
        tid, token = host.tms.create_terminal(body.merchant_id, body.terminal_id)
        return S.TerminalCreated(terminal_id=tid, enrolment_token=token)

    @app.post("/v1/ops/terminals/{terminal_id}/token", tags=["operator"], responses=problems)
    def terminal_token(terminal_id: str, _: Operator) -> S.TerminalCreated:
        return S.TerminalCreated(terminal_id=terminal_id,
                                 enrolment_token=host.tms.new_token(terminal_id))

    @app.post("/v1/ops/terminals/{terminal_id}/revoke", tags=["operator"], responses=problems)
    def revoke_terminal(terminal_id: str, _: Operator) -> S.Done:
        host.tms.revoke(terminal_id)
        return S.Done()

    @app.get("/v1/ops/terminals", tags=["operator"], responses=problems)
    def terminals(who: Anyone, merchant_id: str | None = None) -> list[dict[str, Any]]:
        scope = merchant_scope(who, merchant_id)
        return [t.to_json() for t in host.tms.terminals(scope)]

    @app.get("/v1/ops/cards/{card_id}", tags=["operator"], responses=problems)
    def card(card_id: api.CardId, _: Reader) -> S.CardPublic:
        return S.CardPublic(**asdict(host.registry.card_info(card_id)))

    @app.post("/v1/ops/cards/{card_id}/status", tags=["operator"], responses=problems)
    def card_status(card_id: api.CardId, body: S.CardStatusChange, _: Operator) -> S.Done:
        host.registry.set_card_status(card_id, body.status, reason=body.reason)
        return S.Done()

    @app.post("/v1/ops/parameters", tags=["operator"], responses=problems)
    def parameters(body: S.ParameterChange, _: Operator) -> api.SignedParameters:
        try:
            return host.tms.publish_parameters(**body.changes())
        except ValidationError as exc:
            raise HostError(E.VALIDATION, _summary(exc)) from None

    @app.post("/v1/ops/settlements", tags=["operator"], responses=problems)
    def settle(body: S.DayRequest, _: Operator) -> list[dict[str, Any]]:
        return [v.to_json() for v in host.settlement.run(body.day)]

    @app.post("/v1/ops/payout-files", tags=["operator"], responses=problems)
    def payout_file(body: S.DayRequest, _: Operator) -> Response:
        xml = host.settlement.payout_file(body.day, body.currency)
        if xml is None:
            raise HostError(E.NOT_FOUND, "nothing to pay out for that day")
        return Response(xml, media_type="application/xml")

    @app.post("/v1/ops/collection-files", tags=["operator"], responses=problems)
    def collection_file(body: S.DayRequest, _: Operator) -> Response:
        xml = host.settlement.collections_file(body.day, body.currency)
        if xml is None:
            raise HostError(E.NOT_FOUND, "no debt to collect by direct debit")
        return Response(xml, media_type="application/xml")

    @app.post("/v1/ops/bank/process", tags=["operator"], responses=problems)
    def bank_process(_: Operator) -> dict[str, int]:
        return host.agent.process_bank()

    @app.post("/v1/ops/collections/sweep", tags=["operator"], responses=problems)
    def sweep(_: Operator) -> S.Done:
        return S.Done(detail=f"{host.agent.sweep_collections()} cards blacklisted")

    @app.post("/v1/ops/debts/{debt_id}/write-off", tags=["operator"], responses=problems)
    def write_off(debt_id: str, _: Operator) -> S.Done:
        host.agent.write_off(debt_id)
        return S.Done()

    @app.get("/v1/ops/debts/{debt_id}", tags=["operator"], responses=problems)
    def debt(debt_id: str, _: Reader) -> dict[str, Any]:
        return asdict(host.agent.debt(debt_id))

    @app.post("/v1/ops/tokens", tags=["operator"], responses=problems)
    def new_token(body: S.TokenCreate, _: Operator) -> S.TokenCreated:
        token = create_token(host, body.role, merchant_id=body.merchant_id, name=body.name)
        return S.TokenCreated(token=token, role=body.role)

    @app.get("/v1/reports/audit", tags=["reports"], responses=problems)
    def audit(_: Reader) -> dict[str, Any]:
        """The ledger audit (``balanced``) and the operator audit log's chain
        (``audit_log.ok``), as ``tallypurse host audit --json`` prints them."""
        return host.reports.audit() | {"audit_log": host.audit.verify().to_json()}

    @app.get("/v1/reports/gaps", tags=["reports"], responses=problems)
    def gaps(_: Reader, older_than_s: Annotated[int | None, Query(ge=0)] = None
             ) -> list[dict[str, Any]]:
        return host.reports.gaps(older_than_s=older_than_s)

    @app.get("/v1/reports/clones", tags=["reports"], responses=problems)
    def clones(_: Reader) -> list[dict[str, Any]]:
        return host.reports.clones()

    @app.get("/v1/reports/alerts", tags=["reports"], responses=problems)
    def alerts(_: Reader) -> list[dict[str, Any]]:
        return host.reports.alerts()

    @app.get("/v1/reports/reconciliation", tags=["reports"], responses=problems)
    def reconciliation(_: Reader) -> dict[str, Any]:
        return host.reports.reconciliation()

    @app.get("/v1/merchant/settlements", tags=["merchant"], responses=problems)
    def merchant_settlements(who: Anyone, merchant_id: str | None = None,
                             day: dt.date | None = None,
                             format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
                             ) -> Response:
        views = host.settlement.settlements(day=day, merchant_id=merchant_scope(who, merchant_id))
        if format == "csv":
            return PlainTextResponse(host.settlement.report_csv(views), media_type="text/csv")
        return JSONResponse([v.to_json() for v in views])

    @app.get("/v1/merchant/balance", tags=["merchant"], responses=problems)
    def merchant_balance(who: Anyone, merchant_id: str | None = None) -> dict[str, Any]:
        scope = merchant_scope(who, merchant_id)
        if scope is None:
            raise HostError(E.NOT_FOUND, "name a merchant_id")
        return {"merchant_id": scope, "payable": host.settlement.merchant_balance(scope)}

    # --- credit (tallypurse.host.credit) ----------------------------------------------------------
    def actor(who: Principal) -> str:
        return who.name or f"{who.role.value} token"

    # --- loads (tallypurse.host.loads) ------------------------------------------------------------
    @app.get("/v1/ops/loads", tags=["operator"], responses=problems)
    def loads(_: Reader, unconfirmed: bool = False,
              card_id: Annotated[str | None, Query(pattern="^[0-9a-f]{16}$")] = None,
              older_than_s: Annotated[int, Query(ge=0, le=10**9)] = 0,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        """Loads, newest first; ``unconfirmed``: the authorised loads no card event has
        confirmed, oldest first, with what clearing knows of each (``evidence``)."""
        if unconfirmed:
            return host.loads.unconfirmed(card_id=card_id, older_than_s=older_than_s,
                                          limit=limit)
        return host.loads.recent(card_id=card_id, limit=limit)

    @app.post("/v1/ops/loads/{load_id}/void", tags=["operator"], responses=problems)
    def load_void(load_id: str, body: S.LoadVoid, who: Operator) -> dict[str, Any]:
        """Give an unconfirmed load's funds back (who and why go to the audit trail)."""
        return host.loads.void(load_id, reason=body.reason, by=actor(who),
                               role=who.role.value, source="api")

    # (before /v1/ops/credit/{ref}, which would otherwise take "models" for a reference)
    @app.get("/v1/ops/credit/models", tags=["credit"], responses=problems)
    def credit_models(_: Operator) -> dict[str, Any]:
        """The model registry: each model's version, status (current, candidate,
        promoted, built_in), held-out metrics (AUC, Gini, KS, PSI) and last promotion."""
        return host.credit.models()

    @app.post("/v1/ops/credit/models/{version}/promote", tags=["credit"], responses=problems)
    def credit_promote(version: str, body: S.ModelPromotion, who: Operator) -> dict[str, Any]:
        """Make a model current (the token's name is who; the reason is why)."""
        return host.credit.promote(version, by=actor(who), reason=body.reason,
                                   role=who.role.value, source="api")

    @app.get("/v1/ops/credit/{ref}", tags=["credit"], responses=problems)
    def credit_explain(ref: str, _: Reader) -> dict[str, Any]:
        """Score, grade, indicators with their points, reason codes, model version,
        what would raise the grade, override, and each card's credit record."""
        return host.credit.explain(ref)

    @app.get("/v1/ops/credit/{ref}/history", tags=["credit"], responses=problems)
    def credit_history(ref: str, _: Reader,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
        return host.credit.history(ref, limit)

    @app.post("/v1/ops/credit/run", tags=["credit"], responses=problems)
    def credit_run(body: S.CreditRun, _: Operator) -> dict[str, Any]:
        return host.credit.run(body.day).to_json()

    @app.post("/v1/ops/credit/catch-up", tags=["credit"], responses=problems)
    def credit_catch_up(_: Operator) -> list[dict[str, Any]]:
        return [o.to_json() for o in host.credit.catch_up()]

    @app.post("/v1/ops/credit/{ref}/rescore", tags=["credit"], responses=problems)
    def credit_rescore(ref: str, _: Operator) -> dict[str, Any]:
        return host.credit.rescore(ref, trigger="manual").to_json()

    @app.post("/v1/ops/credit/{ref}/override", tags=["credit"], responses=problems)
    def credit_override(ref: str, body: S.CreditOverrideSet, who: Operator) -> dict[str, Any]:
        from tallypurse.credit import Grade

        if body.expires is not None and body.days is not None:
            raise HostError(E.VALIDATION, "give expires or days, not both")
        expires = host.now() + body.days * 86_400 if body.days is not None else body.expires
        return host.credit.override(ref, Grade[body.grade], reason=body.reason,
                                    actor=actor(who), role=who.role.value, expires=expires,
                                    source="api").to_json()

    @app.post("/v1/ops/credit/{ref}/override/clear", tags=["credit"], responses=problems)
    def credit_clear_override(ref: str, body: S.CreditOverrideClear,
                              who: Operator) -> dict[str, Any]:
        return host.credit.clear_override(ref, reason=body.reason, actor=actor(who),
                                          role=who.role.value, source="api").to_json()

    # --- OpenAPI with the terminal request bodies -------------------------------------------------
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in request_models:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    # --- the operator console (web pages; its own session, CSRF and audit log) -----------------
    from tallypurse.host.console import create_console

    app.mount("/console", create_console(host), name="console")
    return app
