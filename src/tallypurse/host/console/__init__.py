"""The operator console: web pages for operators, auditors and merchants, served by
the host at ``/console`` (see docs/console.md)."""

from .audit import AuditEntry, record
from .users import User, authenticate, create_user, set_password, set_status, users
from .web import create_console

__all__ = [
    "AuditEntry",
    "User",
    "authenticate",
    "create_console",
    "create_user",
    "record",
    "set_password",
    "set_status",
    "users",
]
