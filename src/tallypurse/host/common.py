"""Small helpers every host service uses: ids, payload hashes, structured logs."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from tallypurse.core import crypto
from tallypurse.core.errors import BadInput
from tallypurse.core.hostapi import canonical
from tallypurse.core.money import currency, currency_by_numeric
from tallypurse.host.db.engine import AFTER_COMMIT, after_commit

Clock = Callable[[], int]
T = TypeVar("T")
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
ATTEMPTS = 4
log = logging.getLogger("tallypurse.host")


def wall_clock() -> int:
    return int(time.time())


def new_id(prefix: str, nbytes: int = 10) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def payload_hash(body: BaseModel) -> str:
    """SHA-256 of the canonical JSON of a request body: binds an idempotency key."""
    return crypto.sha256(canonical(body.model_dump(mode="json"))).hex()


def log_event(event: str, **fields: Any) -> None:
    """One structured (JSON) log line."""
    log.info(json.dumps({"event": event, **fields}, sort_keys=True, default=str))


def log_on_commit(session: Session, event: str, **fields: Any) -> None:
    """:func:`log_event` once ``session``'s unit of work commits: nothing is said of what
    a rolled-back transaction did (clearing takes a batch again when a TAC fails)."""
    key = f"log.{event}.{len(session.info.get(AFTER_COMMIT, {}))}"
    after_commit(session, key, lambda: log_event(event, **fields))


def numeric_currency(code: str) -> int:
    return currency(code).numeric


def alpha_currency(numeric: int) -> str:
    return currency_by_numeric(numeric).code


def hex_bytes(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BadInput(f"{what} is not hex") from None


def retrying(work: Callable[[], T]) -> T:
    """Run a unit of work again when a concurrent transaction won a race.

    A unique constraint that fired (a twin request committed first) or a
    deadlock or serialization failure that PostgreSQL resolved by aborting us:
    the next attempt reads the winner's result and answers from it.
    """
    for attempt in range(ATTEMPTS):
        try:
            return work()
        except IntegrityError:
            if attempt == ATTEMPTS - 1:
                raise
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRY_SQLSTATES or (
                    attempt == ATTEMPTS - 1):
                raise
    raise AssertionError("unreachable")
