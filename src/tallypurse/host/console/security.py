"""Who is at the console: the session, the roles, and the CSRF check.

* The session is Starlette's ``SessionMiddleware``: a cookie signed with
  itsdangerous (HMAC-SHA1 over a timestamped payload, refused after
  :data:`SESSION_MAX_AGE`), ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when
  the host's public URL is https. It holds the username, a CSRF token and
  flash messages; nothing else. The user is looked up again on every request,
  so a disabled user is out at the next click.
* The signing key is derived by the keystore (``diversify`` under the APP
  master key, purpose ``CONSOLE-SESSION``): every worker and every host on one
  keystore derives the same key and it is stored nowhere.
* CSRF: a synchronizer token kept in the session; every POST carries it as the
  form field ``csrf_token`` or the header ``X-CSRF-Token`` (HTMX sends the
  header, see ``base.html``), compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Form, Header, Request

from tallypurse.host.api.auth import Role
from tallypurse.host.service import Host
from tallypurse.keystore.base import MASTER_APP

from .users import User, active_user

SESSION_COOKIE = "tp_console"
SESSION_MAX_AGE = 8 * 3600
SESSION_PURPOSE = b"CONSOLE-SESSION"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class LoginRequired(Exception):
    """No session, or its user is gone or disabled."""


class Refused(Exception):
    """The user's role may not do this (or the CSRF token is wrong)."""

    def __init__(self, user: User | None, why: str) -> None:
        super().__init__(why)
        self.user = user
        self.why = why


def session_secret(host: Host) -> str:
    key = host.keys.diversify(host.keys.current(MASTER_APP), SESSION_PURPOSE, bytes(8))
    return key.hex()


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def start_session(request: Request, user: User) -> None:
    """A fresh session for ``user`` (new CSRF token; nothing carried over)."""
    request.session.clear()
    request.session["user"] = user.username
    request.session["csrf"] = secrets.token_urlsafe(32)


def flash(request: Request, kind: str, text: str) -> None:
    messages = list(request.session.get("flash", []))[-4:]
    messages.append([kind, text[:300]])
    request.session["flash"] = messages


def take_flashes(request: Request) -> list[tuple[str, str]]:
    return [(str(k), str(t)) for k, t in request.session.pop("flash", [])]


def host_of(request: Request) -> Host:
    host: Host = request.app.state.host
    return host


def current_user(request: Request) -> User:
    name = request.session.get("user")
    if not isinstance(name, str):
        raise LoginRequired
    host = host_of(request)
    user = active_user(host, name)
    if user is None:
        request.session.clear()
        raise LoginRequired
    host.limits.charge("console", user.username)  # counted once the session is valid
    return user


def role(*roles: Role) -> Callable[[User], User]:
    def dependency(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in roles:
            raise Refused(user, f"a{'n' if user.role.value[0] in 'aeiou' else ''} "
                                f"{user.role.value} may not do this")
        return user

    return dependency


def check_csrf(request: Request, csrf_token: Annotated[str, Form()] = "",
               x_csrf_token: Annotated[str, Header()] = "") -> None:
    expected = request.session.get("csrf")
    given = csrf_token or x_csrf_token
    if not isinstance(expected, str) or not given or not hmac.compare_digest(
            expected.encode(), given.encode()):
        name = request.session.get("user")
        user = active_user(host_of(request), name) if isinstance(name, str) else None
        raise Refused(user, "the form's CSRF token is missing or wrong; reload the page")


Anyone = Annotated[User, Depends(current_user)]
Reader = Annotated[User, Depends(role(Role.OPERATOR, Role.AUDITOR))]
Operator = Annotated[User, Depends(role(Role.OPERATOR))]
Csrf = Annotated[None, Depends(check_csrf)]
