"""``tallypurse keys``: create and inspect the operator's software keystore.

Secrets are never printed: AES keys show as their key check value, EC keys as
the fingerprint of their public key.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tallypurse.core.errors import TallypurseError
from tallypurse.keystore.base import KeyInfo
from tallypurse.keystore.software import KEYSTORE_FILE, SoftwareKeyStore

PASSPHRASE_ENV = "TALLYPURSE_KEYSTORE_PASSPHRASE"
EXIT_ERROR = 2

app = typer.Typer(
    help="Create and inspect the operator's keystore (issuer root, host keys, master keys).",
    no_args_is_help=True,
)

KeystoreOption = Annotated[
    Path,
    typer.Option(
        "--keystore",
        help="Directory that holds keystore.json.",
        file_okay=False,
        show_default=False,
    ),
]


def passphrase_from_env_or_prompt(confirm: bool) -> str:
    """The keystore passphrase: $TALLYPURSE_KEYSTORE_PASSPHRASE if set and non-empty,
    otherwise a hidden prompt (typed twice when ``confirm``)."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    value: str = typer.prompt(
        "Keystore passphrase",
        hide_input=True,
        confirmation_prompt=confirm,
    )
    return value


def fail(message: str) -> NoReturn:
    """Print one line to stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def _id_of(info: KeyInfo) -> str:
    if info.kcv is not None:
        return f"kcv {info.kcv.hex().upper()}"
    assert info.fingerprint is not None
    return f"fingerprint {info.fingerprint.hex()}"


def _line(info: KeyInfo, current: bool) -> str:
    created = time.strftime("%Y-%m-%d", time.gmtime(info.created))
    mark = "*" if current else " "
    return f"{mark} {info.ref!s:<24} {info.kind!s:<8} {_id_of(info):<30} created {created}"


def _as_json(info: KeyInfo, current: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ref": str(info.ref),
        "name": info.ref.name,
        "version": info.ref.version,
        "kind": str(info.kind),
        "created": info.created,
        "current": current,
    }
    if info.kcv is not None:
        out["kcv"] = info.kcv.hex()
    if info.public_key is not None and info.fingerprint is not None:
        out["public_key"] = info.public_key.hex()
        out["fingerprint"] = info.fingerprint.hex()
    if info.certificate is not None:
        out["certificate"] = info.certificate.encode().hex()
        out["authority"] = str(info.certificate.authority)
        out["not_before"] = info.certificate.not_before
        out["not_after"] = info.certificate.not_after
    return out


def _print_keys(store: SoftwareKeyStore) -> None:
    for info in store.infos():
        typer.echo(_line(info, store.current(info.ref.name) == info.ref))


@app.command("init")
def init(keystore: KeystoreOption) -> None:
    """Create a new keystore with a fresh issuer root, host keys and master keys."""
    if (keystore / KEYSTORE_FILE).exists():
        fail(f"a keystore already exists at {keystore / KEYSTORE_FILE}")
    passphrase = passphrase_from_env_or_prompt(confirm=True)
    try:
        store = SoftwareKeyStore.create(keystore, passphrase, now=int(time.time()))
    except TallypurseError as exc:
        fail(exc.message)
    typer.echo(f"created keystore {store.path}")
    _print_keys(store)


@app.command("list")
def list_keys(
    keystore: KeystoreOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every key version with its KCV or public-key fingerprint (never a secret)."""
    passphrase = passphrase_from_env_or_prompt(confirm=False)
    try:
        store = SoftwareKeyStore.open(keystore, passphrase)
    except TallypurseError as exc:
        fail(exc.message)
    if as_json:
        keys = [_as_json(i, store.current(i.ref.name) == i.ref) for i in store.infos()]
        typer.echo(json.dumps({"keystore": str(store.path), "keys": keys}, indent=2))
    else:
        _print_keys(store)
