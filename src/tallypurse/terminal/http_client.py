"""The host API over HTTP: :class:`HostApi` on top of httpx, JSON bodies, ROUTES.

Every call is a POST of the request model's JSON to ``base_url + ROUTES[name]``.
The answer is mapped onto the contract of :mod:`tallypurse.core.hostapi`:

* 2xx with a body that validates: the response model;
* a transport error, a timeout, 408, 429 or 5xx, or a 2xx body that does not
  validate: :class:`HostUnavailable` (retry later);
* any other 4xx: :class:`HostRejected` with the host's problem document (RFC 9457),
  or one made up from the status when the body is not one.

Request signing (RFC 9421, the terminal's SAM key) is the host team's
``core/httpsig.py``; until then the client takes a hook: ``sign_request(method,
url, body) -> headers``, called for every request, whose headers are sent as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from tallypurse.core.hostapi import (
    ROUTES,
    Ack,
    AgentDebitAck,
    AgentDebitRequest,
    BatchAck,
    BatchUpload,
    EnrolRequest,
    EnrolResponse,
    HostRejected,
    HostUnavailable,
    LoadAuthorisationResponse,
    LoadConfirm,
    LoadRequest,
    OnlineAuthoriseRequest,
    OnlineAuthoriseResponse,
    OnlineChallenge,
    Problem,
    ReversalRequest,
    ReversalResponse,
    SyncRequest,
    SyncResponse,
    WriteBackReport,
)

M = TypeVar("M", bound=BaseModel)

SignRequest = Callable[[str, str, bytes], Mapping[str, str]]
"""``sign_request(method, url, body) -> headers`` (RFC 9421 Signature and
Signature-Input, Content-Digest); supplied by the host team's core/httpsig.py."""

RETRYABLE = {408, 425, 429}


class HttpHostClient:
    """A :class:`~tallypurse.core.hostapi.HostApi` speaking HTTP to the host service."""

    def __init__(
        self,
        base_url: str,
        *,
        sign_request: SignRequest | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"host URL must start with http:// or https://: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.sign_request = sign_request
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpHostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, name: str, body: BaseModel | None, answer: type[M]) -> M:
        url = self.base_url + ROUTES[name]
        content = body.model_dump_json().encode() if body is not None else b"{}"
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.sign_request is not None:
            headers.update(self.sign_request("POST", url, content))
        try:
            resp = self._client.post(url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise HostUnavailable(f"{name}: {type(exc).__name__}: {exc}") from None
        status = resp.status_code
        if status >= 500 or status in RETRYABLE:
            raise HostUnavailable(f"{name}: HTTP {status}")
        if status >= 400:
            raise HostRejected(self._problem(resp))
        if not 200 <= status < 300:
            raise HostUnavailable(f"{name}: unexpected HTTP {status}")
        try:
            return answer.model_validate_json(resp.content)
        except ValidationError as exc:
            raise HostUnavailable(
                f"{name}: malformed answer ({exc.error_count()} errors)"
            ) from None

    @staticmethod
    def _problem(resp: httpx.Response) -> Problem:
        try:
            return Problem.model_validate_json(resp.content)
        except ValidationError:
            return Problem(title=resp.reason_phrase or "refused", status=resp.status_code,
                           detail=resp.text[:200], code=resp.status_code)

    # --- HostApi --------------------------------------------------------------------------------
    def enrol(self, body: EnrolRequest) -> EnrolResponse:
        return self._post("enrol", body, EnrolResponse)

    def sync(self, body: SyncRequest) -> SyncResponse:
        return self._post("sync", body, SyncResponse)

    def upload_batch(self, body: BatchUpload) -> BatchAck:
        return self._post("upload_batch", body, BatchAck)

    def agent_debit(self, body: AgentDebitRequest) -> AgentDebitAck:
        return self._post("agent_debit", body, AgentDebitAck)

    def online_challenge(self) -> OnlineChallenge:
        return self._post("online_challenge", None, OnlineChallenge)

    def online_authorise(self, body: OnlineAuthoriseRequest) -> OnlineAuthoriseResponse:
        return self._post("online_authorise", body, OnlineAuthoriseResponse)

    def reverse(self, body: ReversalRequest) -> ReversalResponse:
        return self._post("reverse", body, ReversalResponse)

    def load_authorisation(self, body: LoadRequest) -> LoadAuthorisationResponse:
        return self._post("load_authorisation", body, LoadAuthorisationResponse)

    def confirm_load(self, body: LoadConfirm) -> Ack:
        return self._post("confirm_load", body, Ack)

    def report_writeback(self, body: WriteBackReport) -> Ack:
        return self._post("report_writeback", body, Ack)
