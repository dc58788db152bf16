"""The host's settings, validated once at start.

Everything has a default so that ``tallypurse host serve`` starts on a fresh
machine with no configuration: SQLite in the data directory and a keystore
created there. Environment variables (``TALLYPURSE_HOST_*``) override the
defaults; the command line overrides both.
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
        return self.data_dir / "keystore"

    @classmethod
    def from_env(cls, **overrides: object) -> HostSettings:
        settings = cls(
            data_dir=Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR),
            db_url=os.environ.get(ENV_DB, ""),
            public_url=os.environ.get(ENV_PUBLIC_URL, ""),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = replace(settings, **given)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        if self.signature_max_age_s < 10 or self.clock_skew_s < 0:
            raise BadInput("signature age and clock skew must be sensible")
        if self.max_batch_entries < 1 or self.max_body_bytes < 1024:
            raise BadInput("batch and body limits must be positive")
        self.database_url  # noqa: B018 - validates the URL
