"""The contract between terminals and the host: message bodies and the client interface.

Both sides import these models: the host's HTTP API validates requests with
them and the terminal's client builds them. Binary values travel as lowercase
hex strings; amounts are integers in minor units with an ISO 4217 alphabetic
currency beside them. Every terminal request is signed with the terminal's
SAM key (HTTP Message Signatures, RFC 9421); see docs/host-api.md.

Signed lists and parameters are canonical JSON (sorted keys, no spaces, UTF-8)
of the object without its ``signature`` field, prefixed by the domain
separator ``b"TP\\x01\\x20"`` (lists) or ``b"TP\\x01\\x21"`` (parameters), and
signed with the host's list key.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef

Hex = Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{2})*$", max_length=4096)]
CardId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
TerminalId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{8,128}$")]
Minor = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]
Counter = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]

DOMAIN_LIST = b"TP\x01\x20"
DOMAIN_PARAMETERS = b"TP\x01\x21"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(Model):
    """RFC 9457 problem document with a stable numeric code."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    code: int


# --- enrolment ---------------------------------------------------------------------------------
class EnrolRequest(Model):
    terminal_id: TerminalId
    csr: Hex  # the SAM's certificate request (proof of possession)
    token: Annotated[str, StringConstraints(min_length=8, max_length=128)]


class EnrolResponse(Model):
    certificate: Hex  # the terminal's certificate (role TERMINAL)
    roots: dict[str, Hex]  # key ref "name/version" -> public key point
    host_certificates: list[Hex]  # host list, load and API key certificates
    merchant_id: str


# --- lists and parameters -------------------------------------------------------------------------
class BlacklistEntry(Model):
    card_id: CardId
    op: Literal["add", "remove"]
    reason: str = ""


class ActionEntry(Model):
    """A write-back for one card, sealed under the card's APP key by the host."""

    action_id: str
    card_id: CardId
    op: Literal["add", "remove"] = "add"  # remove: the action is done or withdrawn
    kind: Literal["settle_debt", "fail_debt", "credit_record", "block", "unblock"] = "settle_debt"
    seq: Counter = 0  # the card's write-back sequence number
    sealed: Hex = ""  # WRITE-BACK command data


class SignedList(Model):
    kind: Literal["blacklist", "actions"]
    from_version: Counter  # 0 with full=True: a whole snapshot
    to_version: Counter
    full: bool
    blacklist: list[BlacklistEntry] = []
    actions: list[ActionEntry] = []
    issued: int
    key: str  # host list key ref "name/version"
    signature: Hex = ""

    def signed_bytes(self) -> bytes:
        return DOMAIN_LIST + canonical(self.model_dump(exclude={"signature"}))


class Parameters(Model):
    version: Counter
    currency: CurrencyCode
    offline_limit: Minor  # per tap, purse part
    online_threshold: Minor  # above this, an online purchase is proposed
    credit_types: list[str]  # transaction types allowed on credit (split)
    max_list_age_s: Annotated[int, Field(ge=60)]
    cancel_window_s: Annotated[int, Field(ge=0, le=3600)]
    fee_basis_points: dict[str, Annotated[int, Field(ge=0, le=10_000)]] = {}
    journal_limit: Annotated[int, Field(ge=100)] = 100_000


class SignedParameters(Model):
    parameters: Parameters
    issued: int
    key: str
    signature: Hex = ""

    def signed_bytes(self) -> bytes:
        return DOMAIN_PARAMETERS + canonical(self.model_dump(exclude={"signature"}))


class SyncRequest(Model):
    blacklist_version: Counter
    actions_version: Counter
    parameters_version: Counter
    trust_tag: Annotated[str, StringConstraints(max_length=64)] = ""  # the last TrustBundle.tag


class TrustBundle(Model):
    """The keys a terminal trusts, sent at a sync whenever they changed (key rotation).

    Nothing here is believed on the host's word: a root is added only through a
    certificate signed by a root the terminal already trusts, a host key only through a
    certificate that verifies against a trusted root, the terminal's own certificates
    only if they certify its SAM's key. ``roots`` names the roots in force: a trusted
    root not named (revoked) is dropped.
    """

    tag: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    roots: list[str]  # issuer root key refs in force, "issuer-root/2"
    root_certificates: list[Hex] = []  # each root in force, certified by each older one
    host_certificates: list[Hex]  # every host key version in force, under every root
    terminal_certificates: list[Hex] = []  # this terminal's key, under every root


class SyncResponse(Model):
    blacklist: SignedList | None = None  # None: already current
    actions: SignedList | None = None
    parameters: SignedParameters | None = None
    host_time: int
    trust: TrustBundle | None = None  # None: the terminal's trust_tag is current


# --- journal upload (day-end close) ---------------------------------------------------------------
JournalKind = Literal["debit", "cancel", "load", "online", "reversal", "writeback"]


class JournalEntry(Model):
    seq: Counter  # terminal journal number, gap-free per terminal
    kind: JournalKind
    time: int
    card_id: CardId
    tx_type: str
    amount: Minor  # purse part (debit/cancel/load) or online amount
    split: Minor = 0  # online remainder of a split debit
    currency: CurrencyCode
    record: Hex = ""  # card-signed event (135 bytes) for debit/cancel/load
    reference: str = ""  # online auth code, write-back action id, agent idempotency key
    prev_hash: Hex
    entry_hash: Hex
    sam_signature: Hex


class Totals(Model):
    count: int
    amount: int


class BatchUpload(Model):
    batch_id: IdempotencyKey
    terminal_id: TerminalId
    entries: list[JournalEntry]
    totals: dict[str, Totals]  # per journal kind
    signature: Hex  # SAM signature over the batch (purpose batch)


class Rejected(Model):
    seq: Counter
    code: int
    reason: str


class BatchAck(Model):
    batch_id: str
    accepted: list[Counter]  # newly taken
    duplicates: list[Counter]  # already taken before, identical
    rejected: list[Rejected]
    host_totals: dict[str, Totals]
    mismatch: bool  # host totals differ from the terminal's


# --- agent debits (split purchases) ---------------------------------------------------------------
class AgentDebitRequest(Model):
    idempotency_key: IdempotencyKey
    terminal_id: TerminalId
    card_id: CardId
    atc: Counter
    amount: Minor  # the split remainder
    currency: CurrencyCode
    tx_type: str
    record: Hex  # the split debit's card-signed event


class AgentDebitAck(Model):
    idempotency_key: str
    status: Literal["accepted", "duplicate"]
    debt_id: str


# --- online purchase ------------------------------------------------------------------------------
class OnlineChallenge(Model):
    challenge: Hex  # 16 bytes
    expires: int


class OnlineAuthoriseRequest(Model):
    idempotency_key: IdempotencyKey
    request: Hex  # OnlineRequest layout (47 bytes)
    signature: Hex  # the card's signature


class OnlineAuthoriseResponse(Model):
    idempotency_key: str
    approved: bool
    reason_code: int = 0
    auth_code: str = ""
    available_after: int | None = None


class ReversalRequest(Model):
    idempotency_key: IdempotencyKey  # of the authorisation being reversed
    reason: str = "timeout"


class ReversalResponse(Model):
    idempotency_key: str
    reversed: bool


# --- load (top-up) --------------------------------------------------------------------------------
class LoadRequest(Model):
    idempotency_key: IdempotencyKey
    card_id: CardId
    load_counter: Counter
    card_challenge: Hex
    amount: Annotated[int, Field(gt=0, le=0xFFFFFFFF)]
    currency: CurrencyCode
    funding: Literal["cash", "online_account"]


class LoadAuthorisationResponse(Model):
    idempotency_key: str
    authorisation: Hex  # LoadAuthorisation layout (38 bytes)
    signature: Hex
    load_certificate: Hex


class LoadConfirm(Model):
    idempotency_key: IdempotencyKey
    record: Hex  # the card's LOAD event


# --- write-back report ----------------------------------------------------------------------------
class WriteBackReport(Model):
    action_id: str
    card_id: CardId
    receipt: Hex  # WriteBackReceipt layout
    mac: Hex


class Ack(Model):
    ok: bool = True


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# A journal entry in canonical JSON, written field by field (clearing puts every uploaded
# batch in canonical JSON, and ``json.dumps`` of the dumped models was a tenth of its work).
# Strings go through the encoder ``canonical`` uses (``ensure_ascii=False``), ints as ints.
_ENTRY_FIELDS = ("amount", "card_id", "currency", "entry_hash", "kind", "prev_hash", "record",
                 "reference", "sam_signature", "seq", "split", "time", "tx_type")
if tuple(sorted(JournalEntry.model_fields)) != _ENTRY_FIELDS:  # pragma: no cover
    raise ImportError("JournalEntry's fields changed: update _entry_json")
_string = json.encoder.encode_basestring


def _entry_json(e: JournalEntry) -> str:
    s = _string
    return (f'{{"amount":{int(e.amount)},"card_id":{s(e.card_id)},"currency":{s(e.currency)},'
            f'"entry_hash":{s(e.entry_hash)},"kind":{s(e.kind)},"prev_hash":{s(e.prev_hash)},'
            f'"record":{s(e.record)},"reference":{s(e.reference)},'
            f'"sam_signature":{s(e.sam_signature)},"seq":{int(e.seq)},"split":{int(e.split)},'
            f'"time":{int(e.time)},"tx_type":{s(e.tx_type)}}}')


def batch_json(batch: BatchUpload) -> tuple[bytes, bytes]:
    """The batch in canonical JSON (what its payload hash is taken of), and the same
    without its ``signature`` (what the SAM signs): byte for byte
    ``canonical(batch.model_dump(mode="json"))`` and the same with the signature left out,
    from one pass over the entries."""
    s = _string
    totals = canonical({k: t.model_dump() for k, t in batch.totals.items()}).decode()
    head = f'{{"batch_id":{s(batch.batch_id)},"entries":[' + ",".join(
        _entry_json(e) for e in batch.entries) + "]"
    tail = f',"terminal_id":{s(batch.terminal_id)},"totals":{totals}}}'
    return ((head + f',"signature":{s(batch.signature)}' + tail).encode(),
            (head + tail).encode())


def verify_signed(signed_bytes: bytes, signature_hex: str, key_ref: str,
                  host_keys: dict[KeyRef, bytes]) -> bool:
    """Verify a host signature over signed bytes with the named host list key."""
    try:
        ref = KeyRef.decode(key_ref.encode())
        signature = bytes.fromhex(signature_hex)
    except Exception:
        return False
    public = host_keys.get(ref)
    return public is not None and crypto.verify(public, signature, signed_bytes)


# --- the client interface -------------------------------------------------------------------------
class HostUnavailable(Exception):
    """The host could not be reached or did not answer in time: retry later."""


class HostRejected(Exception):
    """The host answered with a definitive refusal (a problem document): do not retry."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"{problem.code} {problem.title}: {problem.detail}")
        self.problem = problem


class HostApi(Protocol):
    """What a terminal asks of the host. Each call either returns the host's answer,
    raises HostUnavailable (retryable) or raises HostRejected (definitive)."""

    def enrol(self, body: EnrolRequest) -> EnrolResponse: ...

    def sync(self, body: SyncRequest) -> SyncResponse: ...

    def upload_batch(self, body: BatchUpload) -> BatchAck: ...

    def agent_debit(self, body: AgentDebitRequest) -> AgentDebitAck: ...

    def online_challenge(self) -> OnlineChallenge: ...

    def online_authorise(self, body: OnlineAuthoriseRequest) -> OnlineAuthoriseResponse: ...

    def reverse(self, body: ReversalRequest) -> ReversalResponse: ...

    def load_authorisation(self, body: LoadRequest) -> LoadAuthorisationResponse: ...

    def confirm_load(self, body: LoadConfirm) -> Ack: ...

    def report_writeback(self, body: WriteBackReport) -> Ack: ...


# HTTP routes of the terminal API (all POST, JSON bodies, RFC 9421 signed).
ROUTES: dict[str, str] = {
    "enrol": "/v1/terminal/enrol",
    "sync": "/v1/terminal/sync",
    "upload_batch": "/v1/terminal/batches",
    "agent_debit": "/v1/terminal/agent-debits",
    "online_challenge": "/v1/terminal/online/challenge",
    "online_authorise": "/v1/terminal/online/authorise",
    "reverse": "/v1/terminal/online/reverse",
    "load_authorisation": "/v1/terminal/loads/authorise",
    "confirm_load": "/v1/terminal/loads/confirm",
    "report_writeback": "/v1/terminal/writebacks",
}
