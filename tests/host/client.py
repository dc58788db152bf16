"""A terminal-side HTTP client for tests: the HostApi protocol over a FastAPI TestClient,
every request signed by a real SAM through tallypurse.core.httpsig."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import httpx
from pydantic import BaseModel

from tallypurse.core import hostapi as api
from tallypurse.core.httpsig import sign_request
from tallypurse.core.samproto import PURPOSE_REQUEST
from tallypurse.sam import Sam

M = TypeVar("M", bound=BaseModel)
BASE = "http://testserver"


class SignedClient:
    """Implements :class:`tallypurse.core.hostapi.HostApi`."""

    def __init__(self, http: httpx.Client, sam: Sam, clock: Callable[[], int]) -> None:
        self.http = http
        self.sam = sam
        self.clock = clock

    def headers(self, path: str, raw: bytes, *, nonce: str | None = None,
                created: int | None = None) -> dict[str, str]:
        return sign_request("POST", BASE + path, raw, key_id=self.sam.terminal_id.hex(),
                            signer=lambda base: self.sam.sign(base, purpose=PURPOSE_REQUEST),
                            created=self.clock() if created is None else created, nonce=nonce)

    def post(self, path: str, raw: bytes, **kw: object) -> httpx.Response:
        headers = self.headers(path, raw, **kw)  # type: ignore[arg-type]
        return self.http.post(path, content=raw,
                              headers={**headers, "Content-Type": "application/json"})

    def call(self, name: str, body: BaseModel | None, answer: type[M]) -> M:
        raw = body.model_dump_json().encode() if body is not None else b""
        response = self.post(api.ROUTES[name], raw)
        if response.status_code != 200:
            raise api.HostRejected(api.Problem.model_validate(response.json()))
        return answer.model_validate(response.json())

    def enrol(self, body: api.EnrolRequest) -> api.EnrolResponse:
        return self.call("enrol", body, api.EnrolResponse)

    def sync(self, body: api.SyncRequest) -> api.SyncResponse:
        return self.call("sync", body, api.SyncResponse)

    def upload_batch(self, body: api.BatchUpload) -> api.BatchAck:
        return self.call("upload_batch", body, api.BatchAck)

    def agent_debit(self, body: api.AgentDebitRequest) -> api.AgentDebitAck:
        return self.call("agent_debit", body, api.AgentDebitAck)

    def online_challenge(self) -> api.OnlineChallenge:
        return self.call("online_challenge", None, api.OnlineChallenge)

    def online_authorise(self, body: api.OnlineAuthoriseRequest) -> api.OnlineAuthoriseResponse:
        return self.call("online_authorise", body, api.OnlineAuthoriseResponse)

    def reverse(self, body: api.ReversalRequest) -> api.ReversalResponse:
        return self.call("reverse", body, api.ReversalResponse)

    def load_authorisation(self, body: api.LoadRequest) -> api.LoadAuthorisationResponse:
        return self.call("load_authorisation", body, api.LoadAuthorisationResponse)

    def confirm_load(self, body: api.LoadConfirm) -> api.Ack:
        return self.call("confirm_load", body, api.Ack)

    def report_writeback(self, body: api.WriteBackReport) -> api.Ack:
        return self.call("report_writeback", body, api.Ack)


def _conforms(client: SignedClient) -> api.HostApi:
    return client  # mypy checks that SignedClient implements the HostApi protocol
