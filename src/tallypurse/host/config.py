"""The host's settings, validated once at start.

Everything has a default so that ``tallypurse host serve`` starts on a fresh
machine with no configuration: SQLite in the data directory and a software
keystore created there. ``keystore`` names another one instead: a keystore
directory, or a PKCS#11 token (``pkcs11:module=PATH;token=LABEL;pin-source=env:VAR``)
on which ``tallypurse keys init`` made the keys. Environment variables
(``TALLYPURSE_HOST_*``, ``TALLYPURSE_KEYSTORE``) override the defaults; the
command line overrides both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from tallypurse.core.errors import BadInput
from tallypurse.host.db.engine import normalise_url, sqlite_url

ENV_DB = "TALLYPURSE_HOST_DB"
ENV_DATA_DIR = "TALLYPURSE_HOST_DATA_DIR"
ENV_PUBLIC_URL = "TALLYPURSE_HOST_PUBLIC_URL"
ENV_KEYSTORE = "TALLYPURSE_KEYSTORE"
ENV_RATE = "TALLYPURSE_HOST_RATE_"  # + TERMINAL, TOKEN, CONSOLE or ADDRESS: "RATE/BURST" or "0"
RATE_IDENTITIES = ("terminal", "token", "console", "address")
DEFAULT_DATA_DIR = Path("tallypurse-host")


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    """The operator as it appears in payment files."""

    name: str = "Tallypurse Operator"
    iban: str = "DE89370400440532013000"
    bic: str = "COBADEFFXXX"
    creditor_id: str = "DE98ZZZ09999999999"  # SEPA creditor identifier for direct debits


@dataclass(frozen=True, slots=True)
class HostSettings:
    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str = ""  # empty: SQLite file in data_dir
    public_url: str = ""  # the base URL terminals sign (@target-uri) when behind a proxy
    keystore: str = ""  # empty: the software keystore in data_dir/keystore
    # request signatures
    signature_max_age_s: int = 300
    clock_skew_s: int = 60
    # terminals and lists
    enrolment_token_ttl_s: int = 7 * 86400
    terminal_cert_validity_s: int = 3 * 365 * 86400
    stale_terminal_after_s: int = 2 * 86400
    list_delta_max: int = 5000  # further behind than this: a full snapshot
    # clearing
    max_batch_entries: int = 5000
    max_body_bytes: int = 4 * 1024 * 1024
    gap_report_after_s: int = 3 * 86400
    # online and loads
    challenge_ttl_s: int = 120
    max_load: int = 100_000
    # collections
    collection_blacklist_after_s: int = 30 * 86400
    # rate limits: a token bucket per identity and process (tallypurse.host.ratelimit);
    # requests a second and burst; a rate of 0 turns that limit off
    rate_terminal_per_s: float = 500.0
    rate_terminal_burst: int = 5000
    rate_token_per_s: float = 100.0
    rate_token_burst: int = 1000
    rate_console_per_s: float = 20.0
    rate_console_burst: int = 400
    rate_address_per_s: float = 50.0
    rate_address_burst: int = 1000
    operator: OperatorIdentity = field(default_factory=OperatorIdentity)

    @property
    def database_url(self) -> str:
        return normalise_url(self.db_url) if self.db_url else sqlite_url(self.data_dir)

    @property
    def keystore_dir(self) -> Path:
        """Where the default software keystore lives."""
        return self.data_dir / "keystore"

    @property
    def keystore_spec(self) -> str:
        """The keystore as ``tallypurse keys --keystore`` names it (a directory or a URI)."""
        return self.keystore or str(self.keystore_dir)

    @classmethod
    def from_env(cls, **overrides: object) -> HostSettings:
        settings = cls(
            data_dir=Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR),
            db_url=os.environ.get(ENV_DB, ""),
            public_url=os.environ.get(ENV_PUBLIC_URL, ""),
            keystore=os.environ.get(ENV_KEYSTORE, ""),
        )
        settings = replace(settings, **rate_limits_from_env(os.environ))  # type: ignore[arg-type]
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = replace(settings, **given)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        for who in RATE_IDENTITIES:
            rate, burst = getattr(self, f"rate_{who}_per_s"), getattr(self, f"rate_{who}_burst")
            if rate < 0 or burst < 1:
                raise BadInput(f"the {who} rate limit must be 0 (off) or positive, "
                               "with a burst of at least 1")
        if self.signature_max_age_s < 10 or self.clock_skew_s < 0:
            raise BadInput("signature age and clock skew must be sensible")
        if self.max_batch_entries < 1 or self.max_body_bytes < 1024:
            raise BadInput("batch and body limits must be positive")
        self.database_url  # noqa: B018 - validates the URL
        if self.keystore.startswith("pkcs11:"):
            check_keystore_uri(self.keystore)


def check_keystore_uri(spec: str) -> None:
    """Refuse a PKCS#11 URI the host must not take: one that carries its PIN.

    The host's keystore name travels on command lines and in the environment of
    worker processes, and shows in logs; the PIN comes from ``pin-source``
    (``env:VAR`` or ``file:PATH``), never from the URI itself.
    """
    for part in spec[len("pkcs11:"):].replace("?", ";").replace("&", ";").split(";"):
        if part.partition("=")[0].strip() == "pin-value":
            raise BadInput("the host takes no PIN in its keystore URI; "
                           "give pin-source=env:VAR and put the PIN in that variable")


def rate_limits_from_env(env: os._Environ[str] | dict[str, str]) -> dict[str, float | int]:
    """``TALLYPURSE_HOST_RATE_TERMINAL=500/5000`` (requests a second / burst), or ``=0``
    to turn that limit off; the same for TOKEN, CONSOLE and ADDRESS."""
    out: dict[str, float | int] = {}
    for who in RATE_IDENTITIES:
        name = ENV_RATE + who.upper()
        text = env.get(name, "").strip()
        if not text:
            continue
        rate_text, _, burst_text = text.partition("/")
        try:
            rate = float(rate_text)
            burst = int(burst_text) if burst_text else None
        except ValueError:
            raise BadInput(f"${name} is RATE/BURST (e.g. 500/5000) or 0, not {text!r}"
                           ) from None
        if rate != rate or rate < 0 or (burst is not None and burst < 1):  # NaN, negative
            raise BadInput(f"${name}: a rate of 0 or more and a burst of 1 or more")
        out[f"rate_{who}_per_s"] = rate
        if burst is not None:
            out[f"rate_{who}_burst"] = burst
    return out
