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
