"""People who log in to the console: username, role, and an Argon2id password hash.

The roles are the host's own (:class:`tallypurse.host.api.auth.Role`): an
operator acts, an auditor reads everything and changes nothing, a merchant
sees its own terminals and settlements. Passwords are hashed with
argon2-cffi's defaults (Argon2id, RFC 9106's low-memory profile) and
rehashed at the next login when those defaults grow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import Parameters, PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select

from tallypurse.core.errors import BadInput
from tallypurse.host.api.auth import Role
from tallypurse.host.db.models import ConsoleUser, Merchant
from tallypurse.host.errors import CONFLICT, NOT_FOUND, HostError
from tallypurse.host.service import Host

MIN_PASSWORD = 10
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_hasher = PasswordHasher()
_dummy: dict[int, str] = {}


def set_hash_parameters(parameters: Parameters) -> None:
    """Hash new passwords with other Argon2 parameters (tests use argon2's CHEAPEST
    profile). Stored hashes keep verifying, and are rehashed at the next login."""
    global _hasher
    _hasher = PasswordHasher.from_parameters(parameters)


def _dummy_hash() -> str:
    """Verified against when the username is unknown, so that a wrong name costs as
    long as a wrong password and the answer's timing does not tell which names exist."""
    key = id(_hasher)
    if key not in _dummy:
        _dummy[key] = _hasher.hash("not the password of anyone")
    return _dummy[key]


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: Role
    merchant_id: str | None
    display_name: str
    status: str = "active"
    last_login: int | None = None

    @property
    def label(self) -> str:
        return self.display_name or self.username

    @property
    def can_act(self) -> bool:
        return self.role == Role.OPERATOR


def _view(row: ConsoleUser) -> User:
    return User(row.username, Role(row.role), row.merchant_id, row.display_name, row.status,
                row.last_login)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise BadInput(f"a password has at least {MIN_PASSWORD} characters")


def create_user(host: Host, username: str, password: str, role: Role | str, *,
                merchant_id: str | None = None, display_name: str = "") -> User:
    """Add a console user. A merchant user names its merchant; other roles name none."""
    role = Role(role)
    if not USERNAME.match(username):
        raise BadInput("a username is 2..64 of a-z, 0-9, '.', '_', '-' (lowercase first)")
    if (role == Role.MERCHANT) != (merchant_id is not None):
        raise BadInput("a merchant user names its merchant; other roles name none")
    if len(display_name) > 100:
        raise BadInput("a display name has at most 100 characters")
    _check_password(password)
    hashed = _hasher.hash(password)
    with host.uow() as uow:
        s = uow.session
        if merchant_id is not None and s.get(Merchant, merchant_id) is None:
            raise HostError(NOT_FOUND, f"no merchant {merchant_id}")
        if s.get(ConsoleUser, username) is not None:
            raise HostError(CONFLICT, f"user {username} exists")
        row = ConsoleUser(username=username, role=role.value, merchant_id=merchant_id,
                          display_name=display_name.strip(), password_hash=hashed,
                          status="active", created=host.now())
        s.add(row)
        uow.commit()
        return _view(row)


def set_password(host: Host, username: str, password: str) -> None:
    _check_password(password)
    hashed = _hasher.hash(password)
    with host.uow() as uow:
        row = uow.session.get(ConsoleUser, username)
        if row is None:
            raise HostError(NOT_FOUND, f"no user {username}")
        row.password_hash = hashed
        uow.commit()


def set_status(host: Host, username: str, status: str) -> None:
    """``disabled`` ends every session of the user at its next request; ``active`` again."""
    if status not in ("active", "disabled"):
        raise BadInput("status is active or disabled")
    with host.uow() as uow:
        row = uow.session.get(ConsoleUser, username)
        if row is None:
            raise HostError(NOT_FOUND, f"no user {username}")
        row.status = status
        uow.commit()


def users(host: Host) -> list[User]:
    with host.uow() as uow:
        return [_view(r) for r in uow.session.scalars(
            select(ConsoleUser).order_by(ConsoleUser.username))]


def active_user(host: Host, username: str) -> User | None:
    """The user behind a session, if it still exists and is active."""
    with host.uow() as uow:
        row = uow.session.get(ConsoleUser, username)
        return _view(row) if row is not None and row.status == "active" else None


def authenticate(host: Host, username: str, password: str) -> User | None:
    """The user when the password is right (and the user active), else None."""
    name = username.strip().lower()
    with host.uow() as uow:
        row = uow.session.get(ConsoleUser, name)
        stored = row.password_hash if row is not None else _dummy_hash()
        usable = row is not None and row.status == "active"
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if not usable:
        return None
    with host.uow() as uow:
        fresh = uow.session.get(ConsoleUser, name)
        if fresh is None:
            return None
        if _hasher.check_needs_rehash(fresh.password_hash):
            fresh.password_hash = _hasher.hash(password)
        fresh.last_login = host.now()
        uow.commit()
        return _view(fresh)
