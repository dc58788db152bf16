"""``tallypurse host user``: the people who log in to the operator console (/console).

Every change is written to the host's audit log (actor: the system user running the
command, role ``cli``)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from tallypurse.host.service import Host

from .host import DataDirOption, DbOption, JsonOption, KeystoreOption, echo_json, opened

app = typer.Typer(help="People who log in to the operator console (/console): operators act, "
                       "auditors read, merchants see their own settlement.",
                  no_args_is_help=True)
UsernameArgument = Annotated[str, typer.Argument(help="Login name (lowercase).",
                                                 show_default=False)]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


def _audit(host: Host, action: str, target: str, detail: str = "") -> None:
    from tallypurse.host.console import record

    record(host, actor=getpass.getuser(), role="cli", action=action, target=target,
           detail=detail, source="tallypurse host user")


@app.command("add")
def add(
    username: UsernameArgument,
    role: Annotated[str, typer.Option(help="operator, auditor or merchant")],
    merchant: Annotated[str | None, typer.Option(help="The merchant (role merchant).")] = None,
    name: Annotated[str, typer.Option(help="Name shown in the console.")] = "",
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin.")] = False,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Add a console user (the password is stored only as an Argon2id hash)."""
    from tallypurse.host.console import create_user

    if role not in ("operator", "auditor", "merchant"):
        raise typer.BadParameter("role is operator, auditor or merchant")
    password = _password(password_stdin)
    with opened(db, data_dir, keystore, migrate=True) as host:
        user = create_user(host, username, password, role, merchant_id=merchant,
                           display_name=name)
        _audit(host, "user.add", user.username, f"role {user.role.value}"
               + (f" merchant {merchant}" if merchant else ""))
    typer.echo(f"user {user.username} ({user.role.value}) added")


@app.command("password")
def password(
    username: UsernameArgument,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin.")] = False,
    db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
) -> None:
    """Set a user's password."""
    from tallypurse.host.console import set_password

    new = _password(password_stdin)
    with opened(db, data_dir, keystore) as host:
        set_password(host, username, new)
        _audit(host, "user.password", username)
    typer.echo(f"password of {username} set")


def _set_status(username: str, status: str, action: str, db: str | None,
                data_dir: Path | None, keystore: str | None) -> None:
    from tallypurse.host.console import set_status

    with opened(db, data_dir, keystore) as host:
        set_status(host, username, status)
        _audit(host, action, username)


@app.command("disable")
def disable(username: UsernameArgument, db: DbOption = None,
            data_dir: DataDirOption = None, keystore: KeystoreOption = None) -> None:
    """Disable a user: every session of it ends at its next request."""
    _set_status(username, "disabled", "user.disable", db, data_dir, keystore)
    typer.echo(f"{username} disabled")


@app.command("enable")
def enable(username: UsernameArgument, db: DbOption = None,
           data_dir: DataDirOption = None, keystore: KeystoreOption = None) -> None:
    """Enable a disabled user again."""
    _set_status(username, "active", "user.enable", db, data_dir, keystore)
    typer.echo(f"{username} enabled")


@app.command("list")
def list_users(db: DbOption = None, data_dir: DataDirOption = None,
    keystore: KeystoreOption = None,
               as_json: JsonOption = False) -> None:
    """Console users: role, merchant, status, last login."""
    from tallypurse.host.console import users

    with opened(db, data_dir, keystore) as host:
        rows = users(host)
    if as_json:
        echo_json([{"username": u.username, "role": u.role.value, "merchant_id": u.merchant_id,
                    "display_name": u.display_name, "status": u.status,
                    "last_login": u.last_login} for u in rows])
        return
    for u in rows:
        typer.echo(f"{u.username:<20} {u.role.value:<9} {u.merchant_id or '':<16} "
                   f"{u.status:<9} {u.display_name}")
