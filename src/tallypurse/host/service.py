"""The host: one object that wires the database, the keystore, the clock, the bank
connector and the services. It keeps no business state of its own: every
answer comes from the database, so any number of processes can serve one
PostgreSQL database at once.
"""

from __future__ import annotations

from tallypurse.core.cert import KeyRef
from tallypurse.keystore.base import HOST_LIST, HOST_LOAD, KeyStore

from .agent import AgentDebits
from .audit import AuditLog
from .bank import BankConnector, SandboxBank
from .clearing import Clearing
from .common import Clock, wall_clock
from .config import HostSettings
from .credit import HostCredit
from .db.engine import Database, UnitOfWork
from .lists import Lists
from .loads import Loads
from .online import Online
from .ratelimit import Limit, RateLimits
from .registry import Registry
from .reports import Reports
from .settlement import Settlements
from .tms import Tms
from .trust import Trust
from .writeback import WriteBacks


class Host:
    """The operator's back office. Services are attributes: ``host.clearing`` etc."""

    def __init__(
        self,
        db: Database,
        keys: KeyStore,
        *,
        settings: HostSettings | None = None,
        clock: Clock = wall_clock,
        bank: BankConnector | None = None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.settings = settings or HostSettings()
        self.clock = clock
        self.bank: BankConnector = bank if bank is not None else SandboxBank()
        self.registry = Registry(self)
        self.trust = Trust(self)
        self.tms = Tms(self)
        self.lists = Lists(self)
        self.writebacks = WriteBacks(self)
        self.clearing = Clearing(self)
        self.agent = AgentDebits(self)
        self.online = Online(self)
        self.loads = Loads(self)
        self.settlement = Settlements(self)
        self.reports = Reports(self)
        self.credit = HostCredit(self)
        self.audit = AuditLog(self)
        st = self.settings
        self.limits = RateLimits({
            "terminal": Limit(st.rate_terminal_per_s, st.rate_terminal_burst),
            "token": Limit(st.rate_token_per_s, st.rate_token_burst),
            "console": Limit(st.rate_console_per_s, st.rate_console_burst),
            "address": Limit(st.rate_address_per_s, st.rate_address_burst),
        })

    def now(self) -> int:
        return self.clock()

    def uow(self) -> UnitOfWork:
        return self.db.uow()

    # --- keys -------------------------------------------------------------------------------
    def list_key(self) -> KeyRef:
        return self.keys.current(HOST_LIST)

    def load_key(self) -> KeyRef:
        return self.keys.current(HOST_LOAD)

    def roots(self) -> dict[KeyRef, bytes]:
        """Every issuer root version in force (certificates may be signed by older ones);
        a revoked version is no longer trusted."""
        return self.trust.roots()

    def host_certificates(self) -> list[bytes]:
        """Every host key version in force, under every root in force (see host.trust)."""
        return self.trust.host_certificates()
